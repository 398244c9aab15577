"""The eval stage: task i evaluates the i-th unit of `ain.eval.registry.eval_units` (a CAMEL-Bench
domain or one of its datasets, ArabicMMLU, or one English benchmark) on one checkpoint.

1. Predictions. Items come in a fixed order (datasets in registry order, rows in file order,
   circular rotations consecutively); every `eval.commit_every` items the window's predictions
   are committed to `predictions-<i>.jsonl` (ResumableJsonl), one row per item:
       {"id", "dataset", "prediction", "gold", "meta", "backend"[, "logits"]}
   A preempted or killed task restarts after the last committed item: no duplicate, no gap.
   Items of a window are batched per dataset (`eval.batch_size`).
2. Scoring, once every prediction exists: the registry's scorer per item (ain.eval.scoring), the
   LLM judge for the open-ended sets (`eval.judge`, answers cached in state/judge-<i>.jsonl so a
   restart does not pay twice). Items whose gold answer is blank are kept and counted as
   withheld. Outputs, written atomically: `scored-<i>.jsonl` (id, correct|null, reason) and
   `scores-<i>.json` (the unit and a summary per dataset) for the eval_report stage.

The checkpoint is `eval.checkpoint`, else this run's export output (stages/export/out/model).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import random
from typing import Any, Iterator, Optional

from ain.atomic import atomic_write_json, atomic_write_text, iter_jsonl
from ain.eval.config import EvalConfig
from ain.eval.data import Item, iter_items
from ain.eval.prompts import LATIN
from ain.eval.registry import DatasetSpec, EvalUnit, eval_units, load_registry
from ain.eval.scoring import SCORERS, WITHHELD, ScoreContext, summarize
from ain.stages import TaskContext, windows

NO_JUDGE = "no LLM judge configured (eval.judge.model)"
JUDGE_INVALID = "judge gave no valid verdict"
JUDGE_REJECTED = "judge rejected the request"

# The CAMEL-Bench judge (GPT-4o there, forced tool call) asked whether two answers mean the same;
# here the verdict is a JSON object, enforced by vLLM and validated by the client.
JUDGE_PROMPT = (
    "أنت حكم. قارن الإجابة المتوقعة بالإجابة الصحيحة للسؤال، وأجب بـ 1 إذا كان لهما المعنى نفسه وبـ 0 إذا لم يكن.\n"
    "You are a judge. Answer 1 if the predicted answer means the same as the gold answer, else 0.\n"
    "مثال: السؤال: ما لون السماء؟ الصحيحة: أزرق المتوقعة: السماء زرقاء -> {{\"same\": 1}}\n"
    "مثال: السؤال: كم عدد القطط؟ الصحيحة: ٣ المتوقعة: اثنتان -> {{\"same\": 0}}\n\n"
    "السؤال: {question}\nالصحيحة: {gold}\nالمتوقعة: {pred}\n"
    "Reply with JSON only: {{\"same\": 0 or 1}}")
JUDGE_SCHEMA = {"title": "same_answer", "type": "object",
                "properties": {"same": {"type": "integer", "enum": [0, 1]}}, "required": ["same"]}


def checkpoint_path(ctx: TaskContext) -> str:
    return ctx.cfg.eval.checkpoint or str(ctx.run.stage("export").out / "model")


def unit_items(unit: EvalUnit, cfg: EvalConfig) -> Iterator[Item]:
    opts = {"mmlu_prompt_language": cfg.mmlu_prompt_language, "mmlu_letters": cfg.mmlu_letters}
    for spec in unit.datasets:
        yield from iter_items(spec, cfg.data_root, cfg.max_items_per_dataset, opts)


@contextlib.contextmanager
def open_backend(ctx: TaskContext) -> Iterator[Any]:
    cfg = ctx.cfg.eval
    model = checkpoint_path(ctx)
    if cfg.backend == "hf":
        from ain.eval.backends import HFBackend  # noqa: PLC0415 (torch only inside tasks)

        yield HFBackend(model, cfg.dtype, cfg.attn_implementation)
        return
    from ain.eval.backends import EndpointBackend  # noqa: PLC0415
    from ain.serve.client import ChatClient, ResponseCache  # noqa: PLC0415
    from ain.serve.server import endpoint  # noqa: PLC0415

    judge = cfg.model_endpoint(ctx.run.root)
    with endpoint(judge, ctx.run.root, "eval_model", ctx.paths.logs) as ep, \
            ResponseCache(ctx.paths.state / f"responses-{ctx.index:05d}.jsonl") as cache:
        yield EndpointBackend(ChatClient.from_judge(judge, ep, cache=cache))


def max_new_tokens(cfg: EvalConfig, spec: DatasetSpec) -> int:
    return cfg.max_new_tokens or spec.max_new_tokens


def predict(backend: Any, cfg: EvalConfig, spec: DatasetSpec, items: list[Item]) -> list[dict[str, Any]]:
    """Prediction rows for a batch of items of one dataset."""
    if spec.scorer == "letter_logprob":
        choices = backend.letter_choice([(it.prompt, it.meta["letters"]) for it in items])
        return [{"prediction": LATIN[i] if i is not None else "", "logits": logits} for i, logits in choices]
    requests = [(it.prompt, it.images(spec.image_side, spec.max_images)) for it in items]
    return [{"prediction": text} for text in backend.generate(requests, max_new_tokens(cfg, spec))]


def run_eval_task(ctx: TaskContext) -> dict[str, Any]:
    cfg: EvalConfig = ctx.cfg.eval
    registry = load_registry(cfg.registry_path())
    units = eval_units(cfg, registry)
    if len(units) != ctx.num_tasks:
        raise RuntimeError(f"eval: the registry now yields {len(units)} units but the stage was planned with "
                           f"{ctx.num_tasks}; the registry or eval.datasets changed since launch")
    unit = units[ctx.index]
    ctx.log.info("eval task %d: unit %s (%s) on %s with the %s backend", ctx.index, unit.name,
                 ", ".join(s.name for s in unit.datasets), checkpoint_path(ctx), cfg.backend)
    specs = {s.name: s for s in unit.datasets}
    out = ctx.resumable_outputs(predictions=f"predictions-{ctx.index:05d}.jsonl")

    def work() -> None:
        remaining = itertools.islice(unit_items(unit, cfg), out.position, None)
        first = next(remaining, None)
        if first is None:  # nothing left (or a restart after the last commit): no model load
            return
        with open_backend(ctx) as backend:
            position = out.position
            for window in windows(itertools.chain([first], remaining), cfg.commit_every):
                for dataset, group in itertools.groupby(window, key=lambda it: it.dataset):
                    group = list(group)
                    for start in range(0, len(group), cfg.batch_size):
                        batch = group[start:start + cfg.batch_size]
                        for item, pred in zip(batch, predict(backend, cfg, specs[dataset], batch)):
                            out.write("predictions", {"id": item.id, "dataset": item.dataset, "gold": item.gold,
                                                      "meta": item.meta, "backend": cfg.backend, **pred})
                            out.count(f"predicted_{dataset}")
                position += len(window)
                out.commit(position)

    marker = ctx.run_resumable(out, work)
    predictions = list(iter_jsonl(ctx.paths.out / f"predictions-{ctx.index:05d}.jsonl"))
    ids = [p["id"] for p in predictions]
    if len(ids) != len(set(ids)):  # ResumableJsonl guarantees it; a broken guarantee must not be scored
        raise RuntimeError(f"eval task {ctx.index}: duplicated prediction ids in predictions-{ctx.index:05d}.jsonl")
    scored = score_predictions(ctx, unit, predictions)
    atomic_write_text(ctx.paths.out / f"scored-{ctx.index:05d}.jsonl",
                      "".join(json.dumps({k: r[k] for k in ("id", "dataset", "correct", "reason")},
                                         ensure_ascii=False) + "\n" for r in scored))
    summaries = {}
    for spec in unit.datasets:
        rows = [r for r in scored if r["dataset"] == spec.name]
        summaries[spec.name] = {**summarize(rows, spec.metric, spec.tasks), "family": spec.family,
                                "domain": spec.domain, "domain_label": spec.domain_label, "scorer": spec.scorer,
                                "backend": cfg.backend,
                                "generation_based": spec.scorer == "letter_logprob" and cfg.backend == "endpoint"}
    atomic_write_json(ctx.paths.out / f"scores-{ctx.index:05d}.json",
                      {"unit": unit.name, "family": unit.family, "domain": unit.domain,
                       "checkpoint": checkpoint_path(ctx), "datasets": summaries})
    return {**marker, "unit": unit.name, "scored": sum(s["scored"] for s in summaries.values()),
            "unscored": sum(s["items"] - s["scored"] for s in summaries.values())}


def score_predictions(ctx: TaskContext, unit: EvalUnit, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each prediction with `correct` (True/False, or None with a `reason`) and its circular/MME group."""
    cfg: EvalConfig = ctx.cfg.eval
    specs = {s.name: s for s in unit.datasets}
    rngs = {name: random.Random(cfg.seed) for name in specs}  # MMMU's random.seed(42), per dataset
    rows, to_judge = [], []
    for p in predictions:
        spec = specs[p["dataset"]]
        row = {**p, "group": p["meta"].get("group") or p["id"].split("@")[0], "correct": None, "reason": None}
        if p["gold"] is None:
            row["reason"] = WITHHELD
        elif spec.scorer == "judge":
            to_judge.append(row)
        elif spec.scorer == "letter_logprob" and not p["prediction"]:
            row["correct"] = False  # endpoint backend: the reply started with no option letter
        else:
            row["correct"] = bool(SCORERS[spec.scorer](p["prediction"], p["gold"], p["meta"],
                                                       ScoreContext(spec.threshold, rngs[spec.name])))
        rows.append(row)
    if to_judge:
        judge_rows(ctx, to_judge)
    return rows


def judge_rows(ctx: TaskContext, rows: list[dict[str, Any]]) -> None:
    cfg: EvalConfig = ctx.cfg.eval
    if not cfg.judge.model:
        for r in rows:
            r["reason"] = NO_JUDGE
        return
    from ain.serve.client import ChatClient, InvalidAnswer, RequestRejected, ResponseCache, run_all  # noqa: PLC0415
    from ain.serve.server import endpoint  # noqa: PLC0415

    items = {it.id: it for it in _items_by_id(ctx, rows)}
    requests = [{"messages": [{"role": "user", "content": JUDGE_PROMPT.format(
        question=items[r["id"]].prompt if r["id"] in items else "", gold=r["gold"], pred=r["prediction"])}],
        "json_schema": JUDGE_SCHEMA} for r in rows]
    with endpoint(cfg.judge, ctx.run.root, "eval_judge", ctx.paths.logs) as ep, \
            ResponseCache(ctx.paths.state / f"judge-{ctx.index:05d}.jsonl") as cache:
        results = run_all(ChatClient.from_judge(cfg.judge, ep, cache=cache), requests)
    for r, res in zip(rows, results):
        if isinstance(res, InvalidAnswer):
            r["reason"] = JUDGE_INVALID
        elif isinstance(res, RequestRejected):
            r["reason"] = JUDGE_REJECTED
        elif isinstance(res, Exception):
            raise res  # endpoint unavailable: fail; the restart re-scores (predictions are kept)
        else:
            r["correct"] = res.parsed["same"] == 1


def _items_by_id(ctx: TaskContext, rows: list[dict[str, Any]]) -> list[Item]:
    """The judged items' questions (prompts are not stored with the predictions)."""
    wanted = {r["id"] for r in rows}
    unit = eval_units(ctx.cfg.eval)[ctx.index]
    return [it for it in unit_items(unit, ctx.cfg.eval) if it.id in wanted]


def read_scores(run_stage_out, num_tasks: int) -> list[Optional[dict[str, Any]]]:
    """scores-<i>.json of every task (None where missing)."""
    out = []
    for i in range(num_tasks):
        path = run_stage_out / f"scores-{i:05d}.json"
        out.append(json.loads(path.read_text(encoding="utf-8")) if path.exists() else None)
    return out
