"""The translate stage: English samples from ingest -> first-attempt round trips (EN->AR->EN).

Each task takes a deterministic share of the English samples, brings up (or connects to) the
translator endpoint per `translate.translator.server.mode`, and works through its share in
windows of `commit_every` samples, all requests of a window in flight together (bounded by the
client's concurrency). Each window is committed atomically, so a preempted task resumes at the
first uncommitted window; the response cache means re-sent requests are not paid for twice.

Output rows (`translations-<i>.jsonl`): {"id", "sample": <English sample>, "attempts": [attempt]}.
Samples the policy excludes (empty, over-long) go to `skipped-<i>.jsonl` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from ain.curate.translator import Translator, UntranslatableSample
from ain.serve.client import ChatClient, ResponseCache
from ain.serve.server import endpoint
from ain.stages import TaskContext, windows


def is_english(sample: dict[str, Any]) -> bool:
    return sample.get("language") == "en"


@contextlib.asynccontextmanager
async def translator_session(ctx: TaskContext, endpoint_info) -> Any:
    """A Translator on an open endpoint, with this task's response cache."""
    judge = ctx.cfg.translate.translator
    cache = ResponseCache(ctx.paths.state / f"responses-{ctx.index:05d}.jsonl")
    client = ChatClient.from_judge(judge, endpoint_info, cache=cache)
    try:
        yield Translator(client, ctx.cfg.translate)
    finally:
        await client.aclose()
        cache.close()


def open_endpoint(ctx: TaskContext):
    """Context manager: the translator endpoint for this task (started, shared or external), a
    per_task server on the first tensor_parallel_size GPUs of the task."""
    from ain.serve.placement import plan_gpus, visible_gpus  # noqa: PLC0415

    translator = ctx.cfg.translate.translator
    devices = plan_gpus({"translator": translator}, visible_gpus()).get("translator")
    return endpoint(translator, ctx.run.root, "translator", ctx.paths.logs, devices=devices)


def run_translate_task(ctx: TaskContext) -> dict[str, Any]:
    cfg = ctx.cfg.translate
    out = ctx.resumable_outputs(translations=f"translations-{ctx.index:05d}.jsonl",
                                skipped=f"skipped-{ctx.index:05d}.jsonl")
    rows = ctx.upstream_rows("ingest", "samples-*.jsonl", keep=is_english, skip=out.position)

    def work() -> None:
        with open_endpoint(ctx) as ep:
            asyncio.run(_translate_all(ctx, ep, rows, out, cfg.translator.temperature))

    return ctx.run_resumable(out, work)


async def _translate_all(ctx: TaskContext, ep, rows, out, temperature: float) -> None:
    async with translator_session(ctx, ep) as translator:
        position = out.position
        for window in windows(rows, ctx.cfg.translate.commit_every):
            t0 = time.time()
            results = await asyncio.gather(*(_first_attempt(translator, s, temperature) for s in window))
            for sample, (attempt, skip_reason) in zip(window, results):
                if skip_reason:
                    out.write("skipped", {"id": sample["id"], "reason": skip_reason})
                    out.count("skipped")
                    out.count(f"skipped_{skip_reason.split(':', 1)[0]}")
                    continue
                out.write("translations", {"id": sample["id"], "sample": sample, "attempts": [attempt]})
                out.count("translated")
                if attempt["error"]:
                    out.count("first_attempt_errors")
            position += len(window)
            out.commit(position)
            ctx.log.info("translate task %d: %d samples committed (%.2f samples/s in this window)",
                         ctx.index, position, len(window) / max(time.time() - t0, 1e-9))


async def _first_attempt(translator: Translator, sample: dict[str, Any], temperature: float):
    try:
        turns = translator.prepare(sample)
    except UntranslatableSample as exc:
        return None, str(exc)
    return await translator.attempt(turns, 0, temperature), None
