"""The translate stage: English samples from ingest -> first-attempt round trips (EN->AR->EN).

Each task takes a deterministic share of the English samples, brings up (or connects to) the
translator endpoint per `translate.translator.server.mode`, and works through its share as a
pipeline (`ain.stages.ordered_pipeline`): up to `translate.in_flight_samples` samples are in
translation at once (default `translator.max_concurrency`, so the client always has that many
requests to send and the server's batch stays full), and as any one finishes the next starts;
no window waits for its slowest sample. Rows are written in input order, a finished sample
waiting for every earlier one (at most `translate.max_pending_samples` started and not yet
written), and every `commit_every` samples of that in-order prefix are committed atomically, so
a preempted task resumes exactly at its last committed position, with nothing lost, duplicated
or reordered; the response cache means re-sent requests are not paid for twice.

Output rows (`translations-<i>.jsonl`): {"id", "sample": <English sample>, "attempts": [attempt]}.
Samples the policy excludes (empty, over-long) go to `skipped-<i>.jsonl` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from ain.atomic import ResumableJsonl
from ain.curate.translator import Translator, UntranslatableSample
from ain.serve.client import ChatClient, ResponseCache
from ain.serve.server import endpoint
from ain.stages import TaskContext, ordered_pipeline


def is_english(sample: dict[str, Any]) -> bool:
    return sample.get("language") == "en"


@contextlib.asynccontextmanager
async def translator_session(ctx: TaskContext, endpoint_info, preload: Iterable[Path] = ()) -> Any:
    """A Translator on an open endpoint, with this task's response cache (and, read-only, the
    `preload` caches of runs that asked the same questions: ain.curate.verify)."""
    judge = ctx.cfg.translate.translator
    cache = ResponseCache(ctx.paths.state / f"responses-{ctx.index:05d}.jsonl")
    cache.preload(preload)
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
        await translate_rows(translator, rows, out, temperature, log=ctx.log, label=f"translate task {ctx.index}")


async def translate_rows(translator: Translator, rows: Iterator[dict[str, Any]], out: ResumableJsonl,
                         temperature: float, *, log: logging.Logger, label: str = "translate") -> None:
    """First attempts of `rows` (the samples after `out.position`) into `out`, in input order,
    committed every `commit_every` samples of completed prefix; see the module docstring."""
    cfg = translator.cfg
    start, last = out.position, [out.position, time.time()]

    def emit(sample: dict[str, Any], result: tuple[Optional[dict[str, Any]], Optional[str]]) -> None:
        write_first_attempt(out, sample, *result)

    def commit(done: int) -> None:
        position = start + done
        out.commit(position)
        now = time.time()
        log.info("%s: %d samples committed (%.2f samples/s since the last commit)", label, position,
                 (position - last[0]) / max(now - last[1], 1e-9))
        last[:] = [position, now]

    await ordered_pipeline(rows, lambda sample: first_attempt(translator, sample, temperature), emit, commit,
                           commit_every=cfg.commit_every, in_flight=cfg.samples_in_flight(),
                           max_pending=cfg.pending_samples())


def write_first_attempt(out: ResumableJsonl, sample: dict[str, Any], attempt: Optional[dict[str, Any]],
                        skip_reason: Optional[str]) -> None:
    """The rows and counters of one sample's first attempt (or of its skip)."""
    if skip_reason:
        out.write("skipped", {"id": sample["id"], "reason": skip_reason})
        out.count("skipped")
        out.count(f"skipped_{skip_reason.split(':', 1)[0]}")
        return
    out.write("translations", {"id": sample["id"], "sample": sample, "attempts": [attempt]})
    out.count("translated")
    if attempt["error"]:
        out.count("first_attempt_errors")


async def first_attempt(translator: Translator, sample: dict[str, Any], temperature: float):
    try:
        turns = translator.prepare(sample)
    except UntranslatableSample as exc:
        return None, str(exc)
    return await translator.attempt(turns, 0, temperature), None
