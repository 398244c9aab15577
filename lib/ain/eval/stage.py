"""The eval stage: task i evaluates the i-th unit of `ain.eval.registry.eval_units` (a CAMEL-Bench
domain or one of its datasets, ArabicMMLU, or one English benchmark) on one checkpoint.

1. Predictions. Items come in a fixed order (datasets in registry order, rows in file order,
   circular rotations consecutively); every `eval.commit_every` items the window's predictions
   are committed to `predictions-<i>.jsonl` (ResumableJsonl), one row per item:
       {"id", "dataset", "prediction", "gold", "meta", "backend"[, "logits"]}
   A preempted or killed task restarts after the last committed item: no duplicate, no gap.
   Items of a window are batched per dataset (`eval.batch_size`).
2. Scoring, once every prediction exists: the registry's scorer per item (ain.eval.scoring), the
   LLM judge (`eval.judge`) for the open-ended sets and, for datasets with a `judge_fallback`,
   for the replies the rule step cannot read (MMBench choice matcher, MathVista answer
   extractor). All judge requests of a task go in one batch through one endpoint session,
   answers cached in state/judge-<i>.jsonl so a restart does not pay twice. Items whose gold
   answer is blank are kept and counted as withheld. Outputs, written atomically:
   `scored-<i>.jsonl` (id, dataset, correct|null, reason; on judge_fallback sets also
   matched_by = rule|judge|judge_invalid|judge_rejected|none and the match / extracted answer)
   and `scores-<i>.json` (the unit and a summary per dataset) for the eval_report stage.

The checkpoint is `eval.checkpoint`, else this run's export output (stages/export/out/model).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
from typing import Any, Callable, Iterator, Optional, Sequence

from ain.atomic import atomic_write_json, atomic_write_text, iter_jsonl
from ain.eval import camel_judge
from ain.eval.config import EvalConfig
from ain.eval.data import Item, iter_items
from ain.eval.prompts import LATIN
from ain.eval.registry import DatasetSpec, EvalUnit, eval_units, load_registry
from ain.eval.scoring import (
    NO_ANSWER,
    SCORERS,
    WITHHELD,
    ScoreContext,
    choice_by_rule,
    choice_options,
    mathvista_extract,
    mathvista_match,
    parse_choice_reply,
    parse_extraction,
    summarize,
)
from ain.stages import TaskContext, windows

NO_JUDGE = "no LLM judge configured (eval.judge.model)"
JUDGE_INVALID = "judge gave no valid verdict"
JUDGE_REJECTED = "judge rejected the request"

# The open-ended CAMEL-Bench sets are judged with CAMEL-Bench's own prompt and verdict format
# (ain.eval.camel_judge: scripts/fuzz_eval.py word for word; GPT-4o there, eval.judge here).

# MMBench choice matcher (judge_fallback: choice_matcher), modelled on VLMEvalKit's build_prompt:
# the question, its options and the free-form reply in, one option letter (or Z: none) out.
# Plain text, not JSON, as there: the reply is read with the same standalone-letter rule as the
# model's own answers (ain.eval.scoring.parse_choice_reply); anything else is scored wrong.
MATCH_PROMPT = (
    "You help grade a single-choice question. You are given the question, its options and a model's answer. "
    "Decide which option the answer corresponds to: the option closest in meaning to it. If the answer's "
    "meaning differs substantially from every option, or it gives no answer at all, output Z. Output one "
    "uppercase letter only: one of {letters}, or Z.\n\n"
    "Example 1:\nQuestion: Which animal is shown in the picture?\nOptions:\nA. a horse\nB. a goat\nC. a cow\n"
    "Answer: It looks like a young goat standing on the rocks.\nYour output: B\n\n"
    "Example 2:\nQuestion: Which animal is shown in the picture?\nOptions:\nA. a horse\nB. a goat\nC. a cow\n"
    "Answer: an eagle\nYour output: Z\n\n"
    "Example 3:\nQuestion: {question}\nOptions:\n{options}\nAnswer: {answer}\nYour output:")

# MathVista answer extractor (judge_fallback: answer_extractor): the official pipeline asks GPT to
# pull the final answer out of the reply with in-context examples in the style of MathVista's
# queries ("Hint: ... Question: ... Choices: ..."); the extracted text then goes through the same
# normalisation and comparison as a rule-extracted one (ain.eval.scoring.mathvista_match).
EXTRACT_PROMPT = (
    "Read a math question and a model's response to it, and copy out the model's final answer in the form "
    "the question's hint asks for: an integer, a decimal number, a list, or the letter of the chosen option. "
    "Write only that answer after 'Extracted answer:'. If the response gives no answer, write {no_answer}.\n\n"
    "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, "
    "at the end.\nQuestion: How many birds are sitting on the wire?\n"
    "Model response: Counting from left to right I see five birds, one of them half hidden by a leaf.\n"
    "Extracted answer: 5\n\n"
    "Hint: Please answer the question requiring a floating-point number with two decimal places and provide "
    "the final value, e.g., 1.23, 1.34, 1.45, at the end.\nQuestion: What is the slope of the red line?\n"
    "Model response: The line rises three units for every four units of run, so its slope is three quarters.\n"
    "Extracted answer: 0.75\n\n"
    "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
    "Question: Which shape has the largest area?\nChoices:\n(A) the circle\n(B) the square\n(C) the triangle\n"
    "Model response: The square covers more of the grid than the other two shapes.\n"
    "Extracted answer: B\n\n"
    "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, "
    "at the end.\nQuestion: What is the value of x in the diagram?\n"
    "Model response: The labels in the image are too blurry for me to read.\n"
    "Extracted answer: {no_answer}\n\n"
    "{question}\nModel response: {response}\nExtracted answer:")
# The judge's default max_tokens (16) is sized for a verdict or a letter; an extracted answer
# (a list, an option's text) can be longer.
EXTRACT_MAX_TOKENS = 64


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
    requests = [(it.prompt, it.image_files(spec.image_side, spec.max_images)) for it in items]
    return [{"prediction": text} for text in backend.generate(requests, max_new_tokens(cfg, spec))]


def run_eval_task(ctx: TaskContext) -> dict[str, Any]:
    cfg: EvalConfig = ctx.cfg.eval
    registry = load_registry(cfg.registry_path(), cfg.camel_grouping)
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
                      "".join(json.dumps({k: r[k] for k in SCORED_KEYS if k in r}, ensure_ascii=False) + "\n"
                              for r in scored))
    summaries = {}
    for spec in unit.datasets:
        rows = [r for r in scored if r["dataset"] == spec.name]
        summaries[spec.name] = {**summarize(rows, spec.metric, spec.tasks), "family": spec.family,
                                "domain": spec.domain, "domain_label": spec.domain_label, "scorer": spec.scorer,
                                "backend": cfg.backend,
                                "endpoint_logprobs": spec.scorer == "letter_logprob" and cfg.backend == "endpoint"}
    atomic_write_json(ctx.paths.out / f"scores-{ctx.index:05d}.json",
                      {"unit": unit.name, "family": unit.family, "domain": unit.domain,
                       "checkpoint": checkpoint_path(ctx), "datasets": summaries})
    return {**marker, "unit": unit.name, "scored": sum(s["scored"] for s in summaries.values()),
            "unscored": sum(s["items"] - s["scored"] for s in summaries.values())}


SCORED_KEYS = ("id", "dataset", "correct", "reason", "matched_by", "match", "extracted", "judge_reply")
"""Columns of scored-<i>.jsonl (the last four only on judge_fallback sets)."""


def score_predictions(ctx: TaskContext, unit: EvalUnit, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each prediction with `correct` (True/False, or None with a `reason`) and its circular/MME group;
    on judge_fallback sets also `matched_by` and the answer read (`match` or `extracted`)."""
    cfg: EvalConfig = ctx.cfg.eval
    specs = {s.name: s for s in unit.datasets}
    rngs = {name: random.Random(cfg.seed) for name in specs}  # MMMU's random.seed(42), per dataset
    rows: list[dict[str, Any]] = []
    to_judge: list[dict[str, Any]] = []
    unread: dict[str, list[dict[str, Any]]] = {"choice_matcher": [], "answer_extractor": []}  # for the judge
    for p in predictions:
        spec = specs[p["dataset"]]
        row = {**p, "group": p["meta"].get("group") or p["id"].split("@")[0], "correct": None, "reason": None}
        if p["gold"] is None:
            row["reason"] = WITHHELD
        elif spec.scorer == "judge":
            to_judge.append(row)
        elif spec.scorer == "letter_logprob" and not p["prediction"]:
            row["correct"] = False  # endpoint backend: the reply started with no option letter
        elif spec.judge_fallback:
            read_by_rule, settle = RULE_STEPS[spec.judge_fallback]
            answer = read_by_rule(p["prediction"], p["meta"])
            if answer is None:
                unread[spec.judge_fallback].append(row)
            else:
                settle(row, answer, "rule")
        else:
            row["correct"] = bool(SCORERS[spec.scorer](p["prediction"], p["gold"], p["meta"],
                                                       ScoreContext(spec.threshold, rngs[spec.name],
                                                                    cfg.ocr_cer_unit)))
        rows.append(row)
    if to_judge or any(unread.values()):
        judge_rows(ctx, to_judge, unread["choice_matcher"], unread["answer_extractor"])
    return rows


def _settle_choice(row: dict[str, Any], choice: Optional[str], path: str) -> None:
    # CircularEval (ain.eval.scoring.circular) then runs on these per-rotation verdicts.
    row.update(matched_by=path, match=choice, correct=choice is not None and choice == row["gold"].strip())


def _settle_extraction(row: dict[str, Any], answer: Optional[str], path: str) -> None:
    row.update(matched_by=path, extracted=answer,
               correct=answer is not None and mathvista_match(answer, row["gold"], row["meta"]))


# judge_fallback -> (the rule step: reply, meta -> answer or None when it cannot read the reply,
# how a read answer settles the row)
RULE_STEPS: dict[str, tuple[Callable[[str, dict[str, Any]], Optional[str]],
                            Callable[[dict[str, Any], Optional[str], str], None]]] = {
    "choice_matcher": (choice_by_rule, _settle_choice),
    "answer_extractor": (mathvista_extract, _settle_extraction),
}


def judge_rows(ctx: TaskContext, rows: list[dict[str, Any]], match: Sequence[dict[str, Any]] = (),
               extract: Sequence[dict[str, Any]] = ()) -> None:
    """Everything this task asks `eval.judge`, as one batch: same-answer verdicts for `rows` (the
    open-ended CAMEL-Bench sets), the choice matcher for `match` (replies can_infer cannot read),
    the answer extractor for `extract` (MathVista replies the rules cannot read).
    No judge configured: verdict rows stay unscored (NO_JUDGE); match/extract rows are scored
    wrong with matched_by "none", as before the fallback existed, and the report counts them."""
    cfg: EvalConfig = ctx.cfg.eval
    match, extract = list(match), list(extract)
    if not cfg.judge.model:
        for r in rows:
            r["reason"] = NO_JUDGE
        for r in match:
            _settle_choice(r, None, "none")
        for r in extract:
            _settle_extraction(r, None, "none")
        return
    questions = _questions(ctx, [*rows, *match, *extract])
    asks: list[tuple[dict[str, Any], dict[str, Any], Callable[[dict[str, Any], Any], None]]] = [
        *((r, _verdict_request(r, questions), _settle_verdict) for r in rows),
        *((r, _match_request(r, questions), _settle_match) for r in match),
        *((r, _extract_request(r, questions, cfg), _settle_extract) for r in extract)]
    for (row, _, settle), answer in zip(asks, ask_judge(ctx, [request for _, request, _ in asks])):
        settle(row, answer)


def ask_judge(ctx: TaskContext, requests: list[dict[str, Any]]) -> list[Any]:
    """`requests` (ChatClient.chat keyword dicts) to `eval.judge` through its endpoint (per_task,
    shared or external), `max_concurrency` in flight, answers cached in state/judge-<i>.jsonl.
    Returns, in order, a ChatResult or the reason it has none (JUDGE_INVALID, JUDGE_REJECTED) for
    the caller to record; an unreachable endpoint raises (the restart re-scores: predictions are
    kept, and the answers already paid for come from the cache)."""
    cfg: EvalConfig = ctx.cfg.eval
    from ain.serve.client import ChatClient, InvalidAnswer, RequestRejected, ResponseCache, run_all  # noqa: PLC0415
    from ain.serve.server import endpoint  # noqa: PLC0415

    with endpoint(cfg.judge, ctx.run.root, "eval_judge", ctx.paths.logs) as ep, \
            ResponseCache(ctx.paths.state / f"judge-{ctx.index:05d}.jsonl") as cache:
        results = run_all(ChatClient.from_judge(cfg.judge, ep, cache=cache), requests)
    out: list[Any] = []
    for res in results:
        if isinstance(res, InvalidAnswer):
            out.append(JUDGE_INVALID)
        elif isinstance(res, RequestRejected):
            out.append(JUDGE_REJECTED)
        elif isinstance(res, Exception):
            raise res  # endpoint unavailable: fail; the restart re-scores (predictions are kept)
        else:
            out.append(res)
    return out


def _user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def _verdict_request(row: dict[str, Any], questions: dict[str, str]) -> dict[str, Any]:
    return {"messages": camel_judge.messages(questions.get(row["id"], ""), row["prediction"], row["gold"]),
            "json_schema": camel_judge.SCHEMA}


def _match_request(row: dict[str, Any], questions: dict[str, str]) -> dict[str, Any]:
    letters, options = choice_options(row["meta"])
    return {"messages": _user(MATCH_PROMPT.format(
        letters=", ".join(letters), question=questions.get(row["id"], ""),
        options="\n".join(f"{k}. {o}" for k, o in zip(letters, options)), answer=row["prediction"].strip()))}


def _extract_request(row: dict[str, Any], questions: dict[str, str], cfg: EvalConfig) -> dict[str, Any]:
    return {"messages": _user(EXTRACT_PROMPT.format(no_answer=NO_ANSWER, question=questions.get(row["id"], ""),
                                                    response=row["prediction"].strip())),
            "max_tokens": max(cfg.judge.max_tokens, EXTRACT_MAX_TOKENS)}


def _settle_verdict(row: dict[str, Any], answer: Any) -> None:
    if isinstance(answer, str):
        row["reason"] = answer
    else:
        row["correct"] = answer.parsed["score"] == 1  # fuzz_eval.py: correct only if score == 1


def _failed_path(answer: str) -> str:
    return "judge_rejected" if answer == JUDGE_REJECTED else "judge_invalid"


def _settle_match(row: dict[str, Any], answer: Any) -> None:
    if isinstance(answer, str):
        _settle_choice(row, None, _failed_path(answer))
        return
    choice = parse_choice_reply(answer.text, choice_options(row["meta"])[0])
    # Z (none of the options) is a valid verdict and never the gold: wrong, matched by the judge.
    _settle_choice(row, choice, "judge" if choice is not None else "judge_invalid")
    if choice is None:
        row["judge_reply"] = answer.text[:200]  # kept for a look at what the matcher said


def _settle_extract(row: dict[str, Any], answer: Any) -> None:
    if isinstance(answer, str):
        _settle_extraction(row, None, _failed_path(answer))
        return
    extracted = parse_extraction(answer.text)
    # "" is the judge's NO_ANSWER: a valid verdict that the reply holds no answer (wrong).
    _settle_extraction(row, extracted, "judge" if extracted is not None else "judge_invalid")
    if extracted is None:
        row["judge_reply"] = answer.text[:200]


def _questions(ctx: TaskContext, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Question text per row id for the judge prompts: meta["question"] where the prompt builder
    stores it (MMBench, MathVista), else the item re-read from the data (its prompt; the CAMEL-Bench
    sets, and predictions made before the builders stored it)."""
    out = {r["id"]: r["meta"]["question"] for r in rows if r["meta"].get("question")}
    rest = [r for r in rows if r["id"] not in out]
    if rest:
        out.update({it.id: it.meta.get("question") or it.prompt for it in _items_by_id(ctx, rest)})
    return out


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
