"""Scorers, as the official code computes them, and the per-dataset metrics.

CAMEL-Bench rules are mbzuai-oryx/Camel-Bench scripts/utils.py (after its 2024-12-08 change),
quirks included (kept on purpose so numbers compare with the published ones):
  - mcq: strip; "(X)..." -> X; then only the FIRST CHARACTER of prediction and gold is compared,
    after the Latin A..S -> Arabic letter map and bare alef "ا" -> "أ". So a reply "ب) ..." or
    "Because ..." (-> "B" -> "ب") counts as "ب". An empty reply (the official code raises) is wrong.
  - vizwiz: when the gold is a plain string, the official loop `for x in gt` runs over its
    CHARACTERS: any gold character found in the prediction counts as correct.
  - OCR: CER = edit_distance / max(len(pred), len(gold)) (its `fastcer`), correct if <= threshold.
English rules: ChartQA relaxed accuracy (pix2struct/lmms-eval), MMMU's eval_utils
(parse_multi_choice_response with a seeded random fallback, parse_open_response/eval_open),
MMBench's `can_infer` (option letter, then option text; no GPT fallback here: an unparsable
reply is wrong) with CircularEval, MME's yes/no parsing and its acc + acc+ score.

A scorer is f(pred, gold, meta, ctx) -> bool; "judge" is not a function: the eval stage asks the
LLM judge (ain.eval.stage) for those sets.
"""

from __future__ import annotations

import ast
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ain.eval.prompts import ARABIC_LETTERS, LATIN


@dataclass
class ScoreContext:
    """What a scorer may need beyond (pred, gold, meta)."""

    threshold: Optional[float] = None
    rng: random.Random = field(default_factory=lambda: random.Random(42))


# CAMEL-Bench --------------------------------------------------------------------------------------
def translate_numbers(s: str) -> str:
    return s.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))


def mcq(pred: str, gold: str, meta: Optional[dict] = None, ctx: Optional[ScoreContext] = None) -> bool:
    pred, gold = pred.strip(), gold.strip()
    if len(pred) > 2 and pred[0] == "(" and pred[2] == ")":
        pred = pred[1]
    if len(gold) > 2 and gold[0] == "(" and gold[2] == ")":
        gold = gold[1]
    if not pred or not gold:
        return False
    p, g = pred[0], gold[0]
    return ARABIC_LETTERS.get(p, p) == ARABIC_LETTERS.get(g, g)


def exact(pred, gold, meta=None, ctx=None) -> bool:
    return pred.strip() == gold.strip()


def mme(pred, gold, meta=None, ctx=None) -> bool:
    pred = pred.strip()
    if pred == "صح":
        pred = "نعم"
    return gold in pred


def pope(pred, gold, meta=None, ctx=None) -> bool:
    return gold.strip() in pred.strip()


def vizwiz(pred, gold, meta=None, ctx=None) -> bool:
    try:
        ast.literal_eval(gold)
        golds = ast.literal_eval(gold.replace(" ", ", "))
    except (ValueError, SyntaxError, TypeError):
        golds = gold.strip()
    if isinstance(golds, (int, float)):  # the official code would raise iterating a number
        golds = str(golds)
    pred = pred.strip()
    if pred == golds:
        return True
    return any(str(x) in pred for x in golds)


def countbench(pred, gold, meta=None, ctx=None) -> bool:
    return translate_numbers(pred.strip()) == translate_numbers(gold.strip())


def diagrams_mmmu(pred, gold, meta=None, ctx=None) -> bool:
    pred, gold = pred.strip(), gold.strip()
    if len(gold) == 1:
        return bool(pred) and pred[0] == gold
    return translate_numbers(gold) in translate_numbers(pred)


def scienceqa(pred, gold, meta=None, ctx=None) -> bool:
    return mcq(pred, ARABIC_LETTERS[LATIN[int(float(gold))]])


def edit_distance(a: str, b: str) -> int:
    from nltk.metrics.distance import edit_distance as _ed  # noqa: PLC0415 (nltk import is slow)

    return _ed(a, b)


def cer_value(pred: str, gold: str) -> float:
    """The official `fastcer`: edit distance over the longer of the two strings."""
    longest = max(len(pred), len(gold))
    return 0.0 if longest == 0 else edit_distance(pred, gold) / longest


def cer(pred, gold, meta=None, ctx=None) -> bool:
    if ctx is None or ctx.threshold is None:
        raise ValueError("the cer scorer needs a threshold (registry key 'threshold')")
    return cer_value(pred.strip(), gold.strip()) <= ctx.threshold


# English ----------------------------------------------------------------------------------------
def relaxed_correctness(target: str, prediction: str, max_relative_change: float = 0.05) -> bool:
    """ChartQA: numbers within 5% relative error (inclusive), else exact case-insensitive."""

    def to_float(t: str) -> Optional[float]:
        try:
            return float(t.rstrip("%")) / 100.0 if t.endswith("%") else float(t)
        except ValueError:
            return None

    p, t = to_float(prediction), to_float(target)
    if p is not None and t:
        return abs(p - t) / abs(t) <= max_relative_change
    return prediction.lower() == target.lower()


def relaxed(pred, gold, meta=None, ctx=None) -> bool:
    return relaxed_correctness(gold.strip(), pred.strip())


def can_infer_option(answer: str, letters: list[str]) -> Optional[str]:
    """MMBench (VLMEvalKit): the reply's only standalone option letter, if exactly one appears."""
    mod = answer
    for c in ".()[],:;!*#{}":
        mod = mod.replace(c, " ")
    splits = [x.strip() for x in mod.split()]
    found = [c for c in letters if c in splits]
    return found[0] if len(found) == 1 else None


def can_infer_text(answer: str, letters: list[str], options: list[str]) -> Optional[str]:
    answer = answer.lower()
    cands = [k for k, o in zip(letters, options) if str(o).lower() in answer]
    return cands[0] if len(cands) == 1 else None


def can_infer(answer: str, letters: list[str], options: list[str]) -> Optional[str]:
    return can_infer_option(answer, letters) or can_infer_text(answer, letters, options)


def letter(pred, gold, meta=None, ctx=None) -> bool:
    meta = meta or {}
    letters = meta.get("letters") or list("ABCD")
    options = meta.get("options") or []
    return can_infer(pred, letters, options) == gold.strip()


def parse_multi_choice_response(response: str, all_choices: list[str], index2ans: dict[str, str],
                                rng: random.Random) -> str:
    """MMMU eval_utils.parse_multi_choice_response; `rng` replaces the global random.seed(42)."""
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = " " + response + " "
    index_ans, ans_with_brack, candidates = True, False, []
    for choice in all_choices:
        if f"({choice})" in response:
            candidates.append(choice)
            ans_with_brack = True
    if not candidates:
        for choice in all_choices:
            if f" {choice} " in response:
                candidates.append(choice)
    if not candidates and len(response.split()) > 5:
        for index, ans in index2ans.items():
            if ans.lower() in response.lower():
                candidates.append(index)
                index_ans = False
    if not candidates:
        return rng.choice(all_choices)
    if len(candidates) > 1:
        if index_ans:
            pattern = "({})" if ans_with_brack else " {} "
            starts = [response.rfind(pattern.format(c)) for c in candidates]
        else:
            starts = [response.lower().rfind(index2ans[c].lower()) for c in candidates]
        return candidates[int(np.argmax(starts))]
    return candidates[0]


def _is_number(s: str) -> bool:
    try:
        float(s.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_str(s: str) -> list:
    s = s.strip()
    if _is_number(s):
        return [round(float(s.replace(",", "")), 2)]
    s = s.lower()
    return [" " + s, s + " "] if len(s) == 1 else [s]


def extract_numbers(s: str) -> list[str]:
    commas = re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", s)
    scientific = re.findall(r"-?\d+(?:\.\d+)?[eE][+-]?\d+", s)
    simple = re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+)(?![eE][+-]?\d+)(?![,\d])", s)
    return commas + scientific + simple


def parse_open_response(response: str) -> list:
    """MMMU eval_utils.parse_open_response."""

    def key_subresponses(resp: str) -> list[str]:
        resp = resp.strip().strip(".").lower()
        subs = re.split(r"\.\s(?=[A-Z])|\n", resp)
        indicators = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
        keys = []
        for i, sub in enumerate(subs):
            if i == len(subs) - 1:
                indicators = indicators + ["="]
            shortest = None
            for ind in indicators:
                if ind in sub:
                    cand = sub.split(ind)[-1].strip()
                    if shortest is None or len(cand) < len(shortest):
                        shortest = cand
            if shortest and shortest.strip() not in [":", ",", ".", "!", "?", ";", ":", "'"]:
                keys.append(shortest)
        return keys or [resp]

    keys = key_subresponses(response)
    preds: list[Any] = list(keys)
    for k in keys:
        preds.extend(extract_numbers(k))
    out: list[Any] = []
    for p in preds:
        out.extend(normalize_str(p))
    return list(dict.fromkeys(out))


def eval_open(gold: Any, preds: list) -> bool:
    norm: list[Any] = []
    for g in (gold if isinstance(gold, list) else [gold]):
        norm.extend(normalize_str(str(g)))
    for p in preds:
        if isinstance(p, str):
            if any(isinstance(n, str) and n in p for n in norm):
                return True
        elif p in norm:
            return True
    return False


def mmmu(pred, gold, meta=None, ctx=None) -> bool:
    meta = meta or {}
    ctx = ctx or ScoreContext()
    if meta.get("type") == "mc":
        letters = meta["letters"]
        choice = parse_multi_choice_response(pred, letters, dict(zip(letters, meta["options"])), ctx.rng)
        return choice == gold.strip()
    try:
        golds = ast.literal_eval(gold)
        golds = golds if isinstance(golds, list) else gold
    except (ValueError, SyntaxError):
        golds = gold
    return eval_open(golds, parse_open_response(pred))


def yes_no_parse(pred: str) -> str:
    """MME's parse_pred_ans: 'yes'/'no' if the reply is, or its first 4 characters contain, one."""
    p = pred.strip().lower()
    if p in ("yes", "no"):
        return p
    head = p[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def yes_no(pred, gold, meta=None, ctx=None) -> bool:
    return yes_no_parse(pred) == gold.strip().lower()


def mathvista(pred, gold, meta=None, ctx=None) -> bool:
    """Rule-based stand-in for MathVista's GPT answer extraction (documented deviation): an
    option letter/text for multiple choice, else the last number (or the text) of the reply."""
    meta = meta or {}
    options = meta.get("options")
    if options:
        letters = list(LATIN[:len(options)])
        choice = can_infer(pred, letters, options)
        return choice is not None and options[letters.index(choice)].strip() == gold.strip()
    numbers = extract_numbers(pred)
    if numbers and _is_number(gold):
        return abs(float(numbers[-1].replace(",", "")) - float(gold.replace(",", ""))) < 1e-6
    return pred.strip().lower() == gold.strip().lower()


def letter_logprob(pred, gold, meta=None, ctx=None) -> bool:
    """ArabicMMLU: the prediction is already the argmax option (as a Latin index letter)."""
    return pred.strip() == gold.strip()


SCORERS: dict[str, Optional[Callable[..., bool]]] = {
    "mcq": mcq, "exact": exact, "mme": mme, "pope": pope, "vizwiz": vizwiz, "countbench": countbench,
    "diagrams_mmmu": diagrams_mmmu, "scienceqa": scienceqa, "cer": cer, "relaxed": relaxed, "letter": letter,
    "mmbench": letter, "mmmu": mmmu, "yes_no": yes_no, "mathvista": mathvista, "letter_logprob": letter_logprob,
    "judge": None,
}


# metrics ------------------------------------------------------------------------------------------
MME_COGNITION = {"commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"}


def _accuracy(rows: list[dict]) -> Optional[float]:
    scored = [r for r in rows if r["correct"] is not None]
    return 100.0 * sum(bool(r["correct"]) for r in scored) / len(scored) if scored else None


def circular(rows: list[dict]) -> dict[str, Any]:
    """MMBench CircularEval: a question counts only if every rotation is scored and correct."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r)
    scored = [g for g in groups.values() if all(r["correct"] is not None for r in g)]
    passed = sum(all(r["correct"] for r in g) for g in scored)
    return {"score": 100.0 * passed / len(scored) if scored else None, "groups": len(groups),
            "groups_scored": len(scored), "groups_correct": passed, "vanilla_accuracy": _accuracy(rows)}


def mme_score(rows: list[dict]) -> dict[str, Any]:
    """MME: per category acc (questions) + acc+ (images with both questions right), x100, summed;
    `score` is the perception sum (the scale of AIN's 1,675.90), cognition reported beside it."""
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["correct"] is not None:
            by_cat[r["meta"].get("category") or "all"].append(r)
    cats = {}
    for cat, rs in by_cat.items():
        images: dict[str, list[bool]] = defaultdict(list)
        for r in rs:
            images[r["meta"].get("group") or r["id"]].append(bool(r["correct"]))
        acc = 100.0 * sum(bool(r["correct"]) for r in rs) / len(rs)
        acc_plus = 100.0 * sum(all(v) for v in images.values()) / len(images)
        cats[cat] = acc + acc_plus
    perception = sum(v for k, v in cats.items() if k not in MME_COGNITION)
    cognition = sum(v for k, v in cats.items() if k in MME_COGNITION)
    return {"score": perception if cats else None, "cognition": cognition, "categories": cats}


def category_macro(rows: list[dict], categories: dict[str, str]) -> dict[str, Any]:
    """ArabicMMLU as AIN reports it: accuracy per category, then the unweighted mean."""
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_cat[r["meta"]["category"]].append(r)
    per = {c: _accuracy(rs) for c, rs in sorted(by_cat.items())}
    per = {c: v for c, v in per.items() if v is not None}
    return {"score": sum(per.values()) / len(per) if per else None, "categories": per,
            "micro_accuracy": _accuracy(rows), "categories_expected": len(set(categories.values()))}


METRICS = ("accuracy", "circular", "mme", "category_macro")


def summarize(rows: list[dict], metric: str, categories: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Per-dataset summary from scored rows {"id", "correct": bool|None, "reason"?, "group"?, "meta"}.
    `status`: scored, or "answers withheld: not scored" when no item has a gold answer."""
    unscored: dict[str, int] = defaultdict(int)
    for r in rows:
        if r["correct"] is None:
            unscored[r.get("reason") or "not scored"] += 1
    n_scored = sum(r["correct"] is not None for r in rows)
    out: dict[str, Any] = {"metric": metric, "items": len(rows), "scored": n_scored,
                           "correct": sum(bool(r["correct"]) for r in rows if r["correct"] is not None),
                           "unscored": dict(unscored)}
    if metric == "circular":
        out.update(circular(rows))
    elif metric == "mme":
        out.update(mme_score(rows))
    elif metric == "category_macro":
        out.update(category_macro(rows, categories or {}))
    else:
        out["score"] = _accuracy(rows)
    if rows and all(r.get("reason") == WITHHELD for r in rows if r["correct"] is None) and n_scored == 0:
        out["status"] = "answers withheld: not scored"
    elif out.get("score") is None:
        out["status"] = "not scored: " + ", ".join(sorted(unscored)) if unscored else "no items"
    else:
        out["status"] = "scored" if not unscored else "partially scored"
    return out


WITHHELD = "answer withheld (blank on the hub)"
