"""Scorers, as the official code computes them, and the per-dataset metrics.

CAMEL-Bench rules are mbzuai-oryx/Camel-Bench scripts/utils.py (after its 2024-12-08 change),
quirks included (kept on purpose so numbers compare with the published ones):
  - mcq: strip; "(X)..." -> X; then only the FIRST CHARACTER of prediction and gold is compared,
    after the Latin A..S -> Arabic letter map and bare alef "ا" -> "أ". So a reply "ب) ..." or
    "Because ..." (-> "B" -> "ب") counts as "ب". An empty reply (the official code raises) is wrong.
  - vizwiz: when the gold is a plain string, the official loop `for x in gt` runs over its
    CHARACTERS: any gold character found in the prediction counts as correct.
  - OCR: its `fastcer`: fast_edit_distance.edit_distance(pred, gold, max_ed=1000) over the longer
    string's length in characters, correct if <= threshold. That library counts edits between the
    UTF-8 BYTES (an Arabic letter is 2 bytes, so a substituted letter costs 1 or 2) and caps the
    distance at min(max_ed, longer length) + 1; see cer_value. `eval.ocr_cer_unit: characters`
    gives a character-level CER instead (not comparable with the published numbers).
English rules: ChartQA relaxed accuracy (pix2struct/lmms-eval), MMMU's eval_utils
(parse_multi_choice_response with a seeded random fallback, parse_open_response/eval_open),
MMBench's `can_infer` (option letter, then option text) with CircularEval, MME's yes/no parsing
and its acc + acc+ score, MathVista's answer normalisation (calculate_score.py).

A scorer is f(pred, gold, meta, ctx) -> bool; "judge" is not a function: the eval stage asks the
LLM judge (ain.eval.stage) for those sets.

LLM fallbacks (registry key `judge_fallback`, see JUDGE_FALLBACKS): the official MMBench and
MathVista pipelines ask GPT when their rules cannot read a reply -- VLMEvalKit's choice matcher
maps a free-form reply onto an option letter (or Z: none), MathVista's extractor pulls the final
answer out of the reply. The pure parts live here (the rule step, the parsing of the judge's
reply, the normalisation and comparison); the eval stage asks the judge only for the replies the
rule step returns None for, then scores the judge's answer with the same functions.
"""

from __future__ import annotations

import ast
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ain.eval.prompts import ARABIC_LETTERS, LATIN, missing, option_index


@dataclass
class ScoreContext:
    """What a scorer may need beyond (pred, gold, meta)."""

    threshold: Optional[float] = None
    rng: random.Random = field(default_factory=lambda: random.Random(42))
    cer_unit: str = "utf8_bytes"
    """OCR CER unit: utf8_bytes (CAMEL-Bench's fastcer, the default) or characters."""


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
    """CAMEL-Bench scienceqa_eval: gold index -> Arabic letter (ScienceQA has at most 5 choices)."""
    n = len((meta or {}).get("options") or []) or 5
    return mcq(pred, ARABIC_LETTERS[LATIN[option_index(gold, n)]])


def edit_distance(a: str, b: str) -> int:
    """Character-level Levenshtein distance (rapidfuzz; MathVista's official code uses the
    Levenshtein package's `distance`, the same quantity)."""
    from rapidfuzz.distance import Levenshtein  # noqa: PLC0415

    return Levenshtein.distance(a, b)


# What CAMEL-Bench passes as fast_edit_distance.edit_distance(..., max_ed=1000).
FASTCER_MAX_ED = 1000


def cer_value(pred: str, gold: str, unit: str = "utf8_bytes") -> float:
    """CAMEL-Bench's `fastcer` (scripts/utils.py @ 8b64eb0): edit distance / max(len(pred), len(gold)).

    utf8_bytes (default, the official numbers): fast_edit_distance 1.2.2's `edit_distance` encodes
    both strings as UTF-8 and runs a banded Levenshtein over the bytes, with the band and the cap
    max_ed = min(1000, longer length in characters); a distance above the cap comes back as cap + 1.
    The denominator counts characters, so an Arabic CER can exceed 1. Identical strings score 0
    (also two empty ones, where the official code divides by zero).

    Deliberate difference: when the byte lengths differ by more than the cap, the official C code
    reads outside its band (undefined behaviour: 0, negative or garbage values, differing between
    processes, often 0 = "correct" for an empty or much shorter reply). The true distance is then
    above the cap, so we return cap + 1, as the library's own contract says: always wrong.

    characters: the plain character-level CER (Levenshtein over characters, no cap)."""
    from rapidfuzz.distance import Levenshtein  # noqa: PLC0415 (only the OCR sets need it)

    if pred == gold:
        return 0.0
    longest = max(len(pred), len(gold))
    if unit == "characters":
        return Levenshtein.distance(pred, gold) / longest
    if unit != "utf8_bytes":
        raise ValueError(f"CER unit {unit!r}: use utf8_bytes or characters")
    cap = min(FASTCER_MAX_ED, longest)
    a, b = pred.encode("utf-8"), gold.encode("utf-8")
    if abs(len(a) - len(b)) > cap:
        return (cap + 1) / longest
    return Levenshtein.distance(a, b, score_cutoff=cap) / longest


def cer(pred, gold, meta=None, ctx=None) -> bool:
    if ctx is None or ctx.threshold is None:
        raise ValueError("the cer scorer needs a threshold (registry key 'threshold')")
    return cer_value(pred.strip(), gold.strip(), ctx.cer_unit) <= ctx.threshold


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
    """lmms-eval chartqa_process_results: relaxed_correctness(reply, doc["answer"]) on the reply as
    the harness passes it (stripped, nothing else) and the gold as stored."""
    return relaxed_correctness(gold, pred.strip())


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


def choice_options(meta: Optional[dict]) -> tuple[list[str], list[str]]:
    """(letters, options) of a multiple-choice item; letters default to A-D as the datasets'."""
    meta = meta or {}
    return list(meta.get("letters") or "ABCD"), [str(o) for o in (meta.get("options") or [])]


def choice_by_rule(pred: str, meta: Optional[dict]) -> Optional[str]:
    """The option letter `can_infer` reads in a reply, or None (the choice matcher's cue)."""
    letters, options = choice_options(meta)
    return can_infer(pred, letters, options)


def letter(pred, gold, meta=None, ctx=None) -> bool:
    return choice_by_rule(pred, meta) == gold.strip()


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
    # \d+\b: an integer glued to a unit ("5km") is not a number; a decimal ("5.5km") still is
    simple = re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])", s)
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
                    # official: `if not shortest_key_response`: an empty tail does not end the
                    # search, the next indicator's tail replaces it
                    if not shortest or len(cand) < len(shortest):
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
        return choice in _gold_letters(gold)  # eval_multi_choice: a list gold accepts any of its letters
    try:
        golds = ast.literal_eval(gold)
        golds = golds if isinstance(golds, list) else gold
    except (ValueError, SyntaxError):
        golds = gold
    return eval_open(golds, parse_open_response(pred))


def _gold_letters(gold: str) -> list[str]:
    """A multiple-choice gold: one letter, or a list of letters (as a list or its Python string)."""
    text = gold.strip()
    if text.startswith("["):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return [text]
        if isinstance(value, (list, tuple)):
            return [str(v).strip() for v in value]
    return [text]


def yes_no_parse(pred: str) -> str:
    """MME's parse_pred_ans (lmms-eval mme/utils.py): lower-cased, stripped, periods removed; "yes"
    or "no"; a single character: y -> yes, n -> no, else other; otherwise "yes"/"no" found in the
    first 4 characters ("None" -> no)."""
    p = pred.lower().strip().replace(".", "")
    if p in ("yes", "no"):
        return p
    if len(p) == 1:
        return {"y": "yes", "n": "no"}.get(p, "other")
    head = p[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def yes_no(pred, gold, meta=None, ctx=None) -> bool:
    return yes_no_parse(pred) == gold.strip().lower()


def yes_no_exact(pred, gold, meta=None, ctx=None) -> bool:
    """lmms-eval pope_process_results: the reply, lower-cased and stripped, equals "yes"/"no"
    ("Yes." is wrong)."""
    return pred.lower().strip() == gold.lower().strip()


def sqa_letter(pred, gold, meta=None, ctx=None) -> bool:
    """lmms-eval sqa_process_results (scienceqa/utils.py): the reply equals the gold letter (any
    case), or starts with an upper-case letter and a period ("B. text"); "(B)" is wrong."""
    target, reply = gold.strip().lower(), pred.strip()
    if reply.lower() == target:
        return True
    return len(reply) >= 2 and reply[0].isupper() and reply[1] == "." and reply[0].lower() == target


def first_letter(pred, gold, meta=None, ctx=None) -> bool:
    """lmms-eval seed_process_result + seed_aggregation_result: the first character of the
    stripped reply against the gold letter, case-insensitively."""
    reply = pred.strip()
    return bool(reply) and reply[0].lower() == gold.strip().lower()


def mmt_parse_choice(response: str, letters: list[str], rng: random.Random) -> str:
    """lmms-eval mmt/utils.py parse_multi_choice_response (adapted there from MMMU): "(X)", then
    " X ", then "X."; several: the last " X "; none: a random letter (seeded here, unseeded there)."""
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = " " + response + " "
    candidates = [c for c in letters if f"({c})" in response]
    if not candidates:
        candidates = [c for c in letters if f" {c} " in response]
    if not candidates:
        candidates = [c for c in letters if f"{c}." in response]
    if not candidates:
        return rng.choice(letters)
    if len(candidates) > 1:
        return candidates[int(np.argmax([response.rfind(f" {c} ") for c in candidates]))]
    return candidates[0]


def mmt_choice(pred, gold, meta=None, ctx=None) -> bool:
    ctx = ctx or ScoreContext()
    return mmt_parse_choice(pred.strip(), list((meta or {})["letters"]), ctx.rng) == gold.strip()


MATHVISTA_NUMERIC = ("integer", "float")


def _last_list(text: str) -> Optional[str]:
    found = re.findall(r"\[[^\[\]]*\]", text)
    return found[-1] if found else None


def mathvista_extract(pred: str, meta: Optional[dict]) -> Optional[str]:
    """Rule-based answer extraction; None when it finds nothing usable (then the eval stage asks
    the judge, as the official pipeline asks GPT):
      - multiple choice: the reply itself when it is one of the options (the official shortcut),
        else the option letter `can_infer` finds;
      - integer / float: the last number in the reply;
      - list: the last [...] in the reply;
      - anything else (no answer_type): the stripped reply."""
    meta = meta or {}
    reply = pred.strip()
    if not reply:
        return None
    options = meta.get("options")
    if options:
        if reply in [str(o) for o in options]:
            return reply
        return can_infer(reply, list(LATIN[:len(options)]), [str(o) for o in options])
    kind = meta.get("answer_type")
    if kind in MATHVISTA_NUMERIC:
        numbers = extract_numbers(reply)
        return numbers[-1] if numbers else None
    if kind == "list":
        return _last_list(reply)
    return reply


def _most_similar(text: str, options: list[str]) -> str:
    """The option at the smallest edit distance (the official get_most_similar; first on ties)."""
    distances = [edit_distance(text, o) for o in options]
    return options[distances.index(min(distances))]


def _precision(meta: dict, gold: str) -> int:
    """Decimal places of a float answer: the dataset's `precision` column, else the gold's own."""
    if not missing(meta.get("precision")):
        return int(float(meta["precision"]))
    return len(gold.strip().split(".")[1]) if "." in gold else 0


def mathvista_normalize(extraction: str, meta: Optional[dict], gold: str = "") -> Optional[str]:
    """The official normalize_extracted_answer: a choice letter ("B" or "(B) ...") -> that option,
    other text -> the most similar option; integer -> int(float(x)) (truncates, as the official
    does); float -> rounded to the answer's precision; list -> without spaces. None when a number
    cannot be read. Thousands separators are dropped first (our rule step keeps "1,000")."""
    meta = meta or {}
    text = extraction.strip()
    options = [str(o) for o in (meta.get("options") or [])]
    if options:
        letter_in_parens = re.findall(r"\(([a-zA-Z])\)", text)
        if letter_in_parens:
            text = letter_in_parens[0].upper()
        letters = list(LATIN[:len(options)])
        if text in letters:
            return options[letters.index(text)]
        return text if text in options else _most_similar(text, options)
    kind = meta.get("answer_type")
    try:
        if kind == "integer":
            return str(int(float(text.replace(",", ""))))
        if kind == "float":
            return str(round(float(text.replace(",", "")), _precision(meta, gold)))
    except ValueError:
        return None
    if kind == "list":
        return re.sub(r"\s+", "", text)
    return text


def mathvista_match(extraction: Optional[str], gold: str, meta: Optional[dict]) -> bool:
    """An extracted answer (rule or judge) against the gold, after the same normalisation.
    Both sides are normalised (the official compares with the raw answer string, which is
    already in normal form in MathVista). Without an answer_type (not MathVista's own data):
    the last number within 1e-6 of a numeric gold, else case-insensitive equality."""
    meta = meta or {}
    if extraction is None or not extraction.strip():
        return False
    kind = meta.get("answer_type")
    if meta.get("options"):
        norm = mathvista_normalize(extraction, meta)
        return norm is not None and norm.strip() == gold.strip()
    if kind in MATHVISTA_NUMERIC or kind == "list":
        norm, want = mathvista_normalize(extraction, meta, gold), mathvista_normalize(gold, meta, gold)
        return norm is not None and norm == want
    numbers = extract_numbers(extraction)
    if numbers and _is_number(gold):
        return abs(float(numbers[-1].replace(",", "")) - float(gold.replace(",", ""))) < 1e-6
    return extraction.strip().lower() == gold.strip().lower()


def mathvista(pred, gold, meta=None, ctx=None) -> bool:
    """MathVista scored by the rule step alone (the eval stage adds the judge extractor when the
    registry's judge_fallback says so)."""
    return mathvista_match(mathvista_extract(pred, meta), gold, meta)


def letter_logprob(pred, gold, meta=None, ctx=None) -> bool:
    """ArabicMMLU: the prediction is already the argmax option (as a Latin index letter)."""
    return pred.strip() == gold.strip()


# LLM fallbacks: the judge's side ------------------------------------------------------------------
JUDGE_FALLBACKS: dict[str, tuple[str, ...]] = {"choice_matcher": ("mmbench", "letter"),
                                                 "answer_extractor": ("mathvista",)}
"""registry `judge_fallback` -> the scorers whose rule step it extends."""
MATCH_PATHS: dict[str, str] = {
    "rule": "rule",
    "judge": "LLM judge",
    "judge_invalid": "judge reply unreadable (wrong)",
    "judge_rejected": "judge rejected the request (wrong)",
    "none": "needed the judge, none configured (wrong)",
}
"""Values of a scored row's `matched_by` (judge_fallback sets) and their report labels."""
NO_OPTION = "Z"
"""The choice matcher's answer for "the reply means none of the options" (VLMEvalKit's Z)."""
NO_ANSWER = "NO_ANSWER"
"""The extractor's answer for "the reply states no answer"."""


def parse_choice_reply(text: str, letters: list[str]) -> Optional[str]:
    """The choice matcher's answer: one of `letters`, NO_OPTION, or None when the reply does not
    name exactly one of them as a standalone letter (garbage: the item is scored wrong)."""
    if NO_OPTION in letters:  # cannot happen with A..I options; refuse rather than misread
        raise ValueError(f"option letters {letters} include the matcher's 'none' letter {NO_OPTION}")
    return can_infer_option(text, [*letters, NO_OPTION])


def parse_extraction(text: str) -> Optional[str]:
    """The extractor's answer: the text after an optional "Extracted answer:" prefix, unquoted;
    "" for NO_ANSWER (a valid verdict: no answer in the reply); None when empty (invalid)."""
    answer = text.strip()
    if answer.lower().startswith("extracted answer:"):
        answer = answer[len("extracted answer:"):].strip()
    answer = answer.splitlines()[0].strip() if answer else ""
    if len(answer) >= 2 and answer[0] == answer[-1] and answer[0] in "\"'`":
        answer = answer[1:-1].strip()
    if not answer:
        return None
    return "" if answer.rstrip(".").upper() == NO_ANSWER else answer


SCORERS: dict[str, Optional[Callable[..., bool]]] = {
    "mcq": mcq, "exact": exact, "mme": mme, "pope": pope, "vizwiz": vizwiz, "countbench": countbench,
    "diagrams_mmmu": diagrams_mmmu, "scienceqa": scienceqa, "cer": cer, "relaxed": relaxed, "letter": letter,
    "mmbench": letter, "mmmu": mmmu, "yes_no": yes_no, "mathvista": mathvista, "letter_logprob": letter_logprob,
    "yes_no_exact": yes_no_exact, "sqa_letter": sqa_letter, "first_letter": first_letter, "mmt_choice": mmt_choice,
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


def pope_metrics(rows: list[dict]) -> dict[str, Any]:
    """POPE as lmms-eval's pope/utils.py aggregates it: accuracy, precision and recall of the
    "yes" class (a reply that is neither "yes" nor "no" is a miss, counted in neither TP, FP nor
    FN), F1, and the share of "yes" replies. `score` is F1, VLMEvalKit's "Overall" (the
    OpenCompass leaderboard the AIN table matches); accuracy is reported beside it. lmms-eval's own
    pope_yes_ratio counts the GOLD answers (always 0.5 on POPE): ours counts the replies."""
    scored = [r for r in rows if r["correct"] is not None]
    if not scored:
        return {"score": None}
    reply = [(r["gold"].lower().strip(), r["prediction"].lower().strip()) for r in scored]
    tp = sum(g == "yes" and p == "yes" for g, p in reply)
    fp = sum(g == "no" and p == "yes" for g, p in reply)
    fn = sum(g == "yes" and p == "no" for g, p in reply)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"score": 100.0 * f1, "accuracy": _accuracy(rows), "precision": 100.0 * precision,
            "recall": 100.0 * recall, "f1": 100.0 * f1,
            "yes_ratio": 100.0 * sum(p == "yes" for _, p in reply) / len(reply)}


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


METRICS = ("accuracy", "circular", "mme", "category_macro", "pope")


def summarize(rows: list[dict], metric: str, categories: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Per-dataset summary from scored rows {"id", "correct": bool|None, "reason"?, "group"?, "meta",
    "matched_by"?}. `status`: scored, or "answers withheld: not scored" when no item has a gold
    answer; `matched_by`: counts per answer-reading path (MATCH_PATHS) where rows carry one."""
    unscored: dict[str, int] = defaultdict(int)
    for r in rows:
        if r["correct"] is None:
            unscored[r.get("reason") or "not scored"] += 1
    n_scored = sum(r["correct"] is not None for r in rows)
    out: dict[str, Any] = {"metric": metric, "items": len(rows), "scored": n_scored,
                           "correct": sum(bool(r["correct"]) for r in rows if r["correct"] is not None),
                           "unscored": dict(unscored)}
    matched = defaultdict(int)  # which path read the answer (registry judge_fallback sets only)
    for r in rows:
        if r.get("matched_by"):
            matched[r["matched_by"]] += 1
    if matched:
        out["matched_by"] = dict(sorted(matched.items()))
    if metric == "circular":
        out.update(circular(rows))
    elif metric == "mme":
        out.update(mme_score(rows))
    elif metric == "category_macro":
        out.update(category_macro(rows, categories or {}))
    elif metric == "pope":
        out.update(pope_metrics(rows))
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
