"""The verify stage: the report's translation gate, with re-translation of failures.

For every translated sample (translate stage output) and every translated turn:
  - LaBSE cosine(English original, Arabic translation) >= verify.min_labse (batched, GPU if any);
  - BLEU-4, METEOR and ROUGE-L of the back-translation against the English original above
    their thresholds (BLEU-2 and ROUGE-1 are recorded too), computed on the translated words
    only (protected spans removed); an exact match after normalisation passes the overlap
    checks when verify.exact_match_passes (short turns score badly on METEOR/BLEU).
A sample passes when every turn passes. A failing sample is re-translated with the next
temperature of verify.retry_temperatures, up to verify.max_retranslations times; the translator
endpoint is brought up only if some sample of the task needs it. Then it is rejected. Every
score of every attempt goes to `scores-<i>.jsonl` for the curation report.

Outputs: passed-<i>.jsonl (Arabic samples, ready for the mix), rejected-<i>.jsonl (id, reasons,
every attempt's text and scores), scores-<i>.jsonl (one row per attempt).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from typing import Any

from ain.atomic import AppendOnlyCache
from ain.curate.metrics import Embedder, gate, normalize_for_overlap, overlap_scores
from ain.curate.protect import strip_markers
from ain.curate.translate import open_endpoint, translator_session
from ain.curate.translator import arabic_sample
from ain.fingerprint import reusable_siblings
from ain.rundir import StagePaths
from ain.stages import TaskContext, windows

SCORE_CACHE = "score-cache"


class Scorer:
    """Scores attempts: LaBSE in one batch per call, overlap metrics per turn, then the gate.

    A turn's scores depend on the LaBSE model and the three texts only, never on the thresholds,
    so they are cached by content (state/score-cache-<i>.jsonl): a requeued task, or a run that
    differs only in thresholds (a sweep variant: fingerprint.reusable_siblings), reads them back
    instead of computing them again. `computed` and `cache.reused` count both kinds."""

    def __init__(self, ctx: TaskContext, siblings: list[StagePaths] = ()) -> None:
        from ain.serve.placement import in_process_device, plan_gpus, visible_gpus  # noqa: PLC0415

        self.cfg = ctx.cfg.verify
        gpus = visible_gpus()  # LaBSE takes the first GPU the translator's server does not
        self.device = in_process_device(plan_gpus({"translator": ctx.cfg.translate.translator}, gpus), gpus)
        self._embedder: Embedder | None = None  # loaded on the first turn not in the cache
        self.cache = AppendOnlyCache(ctx.paths.state / f"{SCORE_CACHE}-{ctx.index:05d}.jsonl")
        self.cache.preload(p.state / f"{SCORE_CACHE}-{ctx.index:05d}.jsonl" for p in siblings)
        self.computed = 0

    def _key(self, en: str, ar: str, back: str) -> str:
        blob = json.dumps([self.cfg.labse_model, en, ar, back], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _turn_scores(self, turns: list[dict[str, Any]]) -> list[dict[str, float]]:
        """Scores of translated turns, from the cache or computed (LaBSE batched) and cached."""
        texts = [(strip_markers(t["en"]), strip_markers(t["ar"]), strip_markers(t["back"])) for t in turns]
        keys = [self._key(*x) for x in texts]
        found = [self.cache.get(k) for k in keys]
        todo = [i for i, hit in enumerate(found) if hit is None]
        if todo:
            if self._embedder is None:
                self._embedder = Embedder(self.cfg.labse_model, device=self.device)
            cosines = self._embedder.cosine_pairs([texts[i][0] for i in todo], [texts[i][1] for i in todo],
                                                  batch_size=self.cfg.labse_batch_size)
            for i, cosine in zip(todo, cosines):
                en, _, back = texts[i]
                found[i] = {"key": keys[i], "scores": {"labse": float(cosine), **overlap_scores(back, en)}}
                self.cache.put_entry(found[i])
            self.computed += len(todo)
        return [hit["scores"] for hit in found]

    def score(self, attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per attempt: {"passed", "reasons", "turns": [per-turn scores], "min": {metric: min}}."""
        translated = [t for a in attempts if not a["error"] for t in a["turns"] if not t["copied"]]
        scored = iter(self._turn_scores(translated) if translated else [])
        results = []
        for a in attempts:
            if a["error"]:
                results.append({"passed": False, "reasons": [a["error"]], "turns": [], "min": {}})
                continue
            turn_scores, reasons = [], []
            for t in a["turns"]:
                if t["copied"]:
                    continue
                en, back = strip_markers(t["en"]), strip_markers(t["back"])
                scores = dict(next(scored))
                decision = gate(scores, self.cfg, exact_match=normalize_for_overlap(back) == normalize_for_overlap(en))
                turn_scores.append({"turn": t["turn"], **scores, "passed": decision.passed})
                reasons += [f"turn {t['turn']}: {r}" for r in decision.reasons]
            keys = [k for k in turn_scores[0] if k not in ("turn", "passed")] if turn_scores else []
            results.append({"passed": not reasons, "reasons": reasons, "turns": turn_scores,
                            "min": {k: min(s[k] for s in turn_scores) for k in keys}})
        return results


def retry_temperature(cfg, attempt_number: int) -> float:
    temps = cfg.retry_temperatures  # validated non-empty when retries are configured
    return temps[min(attempt_number - 1, len(temps) - 1)]


def run_verify_task(ctx: TaskContext) -> dict[str, Any]:
    out = ctx.resumable_outputs(passed=f"passed-{ctx.index:05d}.jsonl", rejected=f"rejected-{ctx.index:05d}.jsonl",
                                scores=f"scores-{ctx.index:05d}.jsonl")
    rows = ctx.upstream_rows("translate", "translations-*.jsonl", skip=out.position)
    siblings = reusable_siblings(ctx.run, ctx.stage)  # the same work under other thresholds
    if siblings:
        ctx.log.info("reusing the scores and re-translations of %s", ", ".join(str(p.root) for p in siblings))
    scorer = Scorer(ctx, siblings)
    responses: list[AppendOnlyCache] = []  # the translator's response cache, once retries open it

    def work() -> None:
        with contextlib.ExitStack() as stack:  # holds the translator endpoint, if retries open it
            asyncio.run(_verify_all(ctx, scorer, rows, out, stack, siblings, responses))
        out.count("scores_computed", scorer.computed)
        out.count("scores_reused", scorer.cache.reused)
        out.count("translator_requests", sum(c.written for c in responses))        # answered by the server
        out.count("translator_requests_reused", sum(c.reused for c in responses))  # from a sibling's cache

    try:
        return ctx.run_resumable(out, work)
    finally:
        scorer.cache.close()


async def _verify_all(ctx: TaskContext, scorer: Scorer, rows, out, stack: contextlib.ExitStack,
                      siblings: list[StagePaths], responses: list[AppendOnlyCache]) -> None:
    cfg = ctx.cfg.verify
    session: list[Any] = []  # the translator, opened on first need
    async with contextlib.AsyncExitStack() as astack:

        async def translator():
            if not session:
                ep = stack.enter_context(open_endpoint(ctx))
                preload = [p.state / f"responses-{ctx.index:05d}.jsonl" for p in siblings]
                translator = await astack.enter_async_context(translator_session(ctx, ep, preload))
                responses.append(translator.client.cache)
                session.append(translator)
            return session[0]

        position = out.position
        for window in windows(rows, cfg.commit_every):
            pending = list(window)          # rows whose latest attempt is not scored yet
            while pending:
                scored = scorer.score([row["attempts"][-1] for row in pending])
                retry = []
                for row, result in zip(pending, scored):
                    attempt = row["attempts"][-1]
                    attempt["scores"] = result
                    out.write("scores", {"id": row["id"], "attempt": attempt["attempt"],
                                         "temperature": attempt["temperature"], **result})
                    if result["passed"]:
                        out.write("passed", {**arabic_sample(row["sample"], attempt), "verify": result["min"],
                                             "attempts": len(row["attempts"])})
                        out.count("passed")
                        out.count("passed_first_try" if attempt["attempt"] == 0 else "passed_after_retranslation")
                    elif attempt["attempt"] < cfg.max_retranslations:
                        retry.append(row)
                    else:
                        # every attempt's text too (protected spans masked, listed in "spans"): a
                        # reviewer judges a rejection by reading it
                        out.write("rejected", {"id": row["id"], "reasons": result["reasons"],
                                               "attempts": [{"attempt": a["attempt"], "temperature": a["temperature"],
                                                             "error": a.get("error"), "scores": a["scores"],
                                                             "turns": [{k: t.get(k) for k in ("turn", "en", "ar", "back", "spans")}
                                                                       for t in a["turns"]]}
                                                            for a in row["attempts"]]})
                        out.count("rejected")
                        out.count(f"rejected_{_reason_class(result['reasons'])}")
                if retry:
                    t = await translator()
                    out.count("retranslations", len(retry))
                    new = await asyncio.gather(*(t.attempt([_unscored(turn) for turn in row["attempts"][0]["turns"]],
                                                           row["attempts"][-1]["attempt"] + 1,
                                                           retry_temperature(cfg, row["attempts"][-1]["attempt"] + 1))
                                                 for row in retry))
                    for row, attempt in zip(retry, new):
                        row["attempts"].append(attempt)
                pending = retry
            position += len(window)
            out.commit(position)


def _unscored(turn: dict[str, Any]) -> dict[str, Any]:
    """The masked English turn of a previous attempt, without that attempt's answers."""
    return {k: v for k, v in turn.items() if k not in ("ar", "back")}


def _reason_class(reasons: list[str]) -> str:
    """'turn 1: labse 0.71 < 0.80' -> 'labse'; marker/answer errors by their prefix."""
    first = reasons[0] if reasons else "unknown"
    first = first.split(": ", 1)[1] if first.startswith("turn ") else first
    return first.split(" ", 1)[0].split(":", 1)[0]
