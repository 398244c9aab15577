"""Prompt builders: a dataset row (its hub columns) -> the questions asked and their gold answers.

CAMEL-Bench builders reproduce mbzuai-oryx/Camel-Bench scripts/utils.py `*_doc_to_text` word for
word (including its quirks: the literal "<image>" in the MMT prompt, Python-list strings with
Arabic commas in MMMU options). English builders follow lmms-eval's wording; ArabicMMLU follows
mbzuai-nlp/ArabicMMLU util_prompt.py.

A builder returns a list of `Question`s (one per row). A malformed row raises RowError (the
caller adds file and row).
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

# Latin option letter -> Arabic letter, as in the official utils.py (the two-character key "هـ"
# can never match a single character: kept for fidelity; "ا" -> "أ" is the bare-alef quirk).
ARABIC_LETTERS = {
    "A": "أ", "B": "ب", "C": "ج", "D": "د", "E": "ه", "F": "و", "G": "ز", "H": "ح", "I": "ط", "J": "ي",
    "K": "ك", "L": "ل", "M": "م", "N": "ن", "O": "ع", "P": "ف", "Q": "ص", "R": "ر", "S": "س",
    "هـ": "ه", "ا": "أ",
}
LATIN = "ABCDEFGHIJKLMNOPQRS"

MC_AR = "أجب بحرف الخيار من الاختيارات المعطاة مباشرة."
OPEN_AR = "أجب عن السؤال باستخدام كلمة أو عبارة واحدة."
MC_EN = "Answer with the option's letter from the given choices directly."
OPEN_EN = "Answer the question using a single word or phrase."

# ArabicMMLU: mbzuai-nlp/ArabicMMLU util_prompt.py @ 84511e81 (= HEAD 8d5b148b) and util_compute.py
# @ ab5c9fba. Upstream changed the fifth Arabic letter from و to ه (ab5c9fb, 84511e8; 2024-07-12)
# and the level and subject strings (ddc3b0f, PR #2); these are the current ones, quirks included
# (the leading space of Political Science, no "في" for Driving Test).
MMLU_LETTERS = {"en": ["A", "B", "C", "D", "E"], "ar": ["أ", "ب", "ج", "د", "ه"]}
MMLU_LEVEL_EN = {"Primary": "primary school", "Middle": "middle school", "High": "high school",
                 "Univ": "university", "Prof": "professional"}
MMLU_LEVEL_AR = {"Primary": "للمرحلة الابتدائية", "Middle": "للمرحلة المتوسطة", "High": "للمرحلة الثانوية",
                 "Univ": "للجامعات", "Prof": "للمحترفين"}
MMLU_COUNTRY_AR = {"UAE": "في دولة الإمارات العربية المتحدة", "Egypt": "في مصر", "Lebanon": "في لبنان",
                   "Jordan": "في الأردن", "Kuwait": "في الكويت", "KSA": "في المملكة العربية السعودية",
                   "Palestine": "في فلسطين", "Morocco": "في المغرب"}
MMLU_SUBJECT_AR = {
    "Islamic Studies": "في الدراسات الإسلامية", "Driving Test": "اختبار القيادة", "Natural Science": "في العلوم الطبيعية",
    "History": "في التاريخ", "General Knowledge": "في المعلومات العامة", "Law": "في القانون", "Physics": "في الفيزياء",
    "Social Science": "في العلوم الاجتماعية", "Management": "في الإدارة", "Arabic Language": "في اللغة العربية",
    "Political Science": " في العلوم السياسية", "Philosophy": "في الفلسفة", "Accounting": "في المحاسبة",
    "Computer Science": "في علوم الحاسوب", "Geography": "في الجغرافيا", "Math": "في الرياضيات", "Biology": "في علم الأحياء",
    "Economics": "في الاقتصاد", "Arabic Language (General)": "في اللغة العربية (عام)",
    "Arabic Language (Grammar)": "في اللغة العربية (قواعد النحو)", "Civics": "في التربية المدنية"}


class RowError(ValueError):
    """A row that cannot be turned into a question (the reason; the caller names file and row)."""


@dataclass
class Question:
    prompt: str
    gold: Optional[str]
    key: str = ""
    """Suffix of the item id (a rotation of a circular question); empty for most."""
    meta: dict[str, Any] = field(default_factory=dict)


def missing(value: Any) -> bool:
    """None, NaN, "" and the strings pandas leaves behind ("nan", "None") are all 'no value'."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() in ("", "nan", "None")


def gold_of(row: dict[str, Any], column: str = "answer") -> Optional[str]:
    """The gold answer as the official runner records it (str(row[answer])), None when blank:
    the CAMEL-Bench maintainers withheld many answers on the hub."""
    value = row.get(column)
    return None if missing(value) else str(value)


def text(row: dict[str, Any], column: str) -> str:
    if column not in row:
        raise RowError(f"column {column!r} missing (columns: {sorted(row)})")
    value = row[column]
    return "" if missing(value) else str(value)


def option_list(value: Any, column: str = "options") -> list[str]:
    """Options given as a list, or as a Python-list string (MMMU; Arabic commas allowed)."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        return [str(v) for v in value.tolist()]
    if isinstance(value, str):
        try:
            parsed = ast.literal_eval(value.replace("،", ","))
        except (ValueError, SyntaxError) as exc:
            raise RowError(f"column {column!r}: not a list or a Python-list string: {value[:80]!r}") from exc
        if isinstance(parsed, (list, tuple)):
            return [str(v) for v in parsed]
    raise RowError(f"column {column!r}: expected a list of options, got {type(value).__name__}")


# CAMEL-Bench ------------------------------------------------------------------------------------
def _one(prompt: str, row: dict[str, Any], **meta: Any) -> list[Question]:
    return [Question(prompt, gold_of(row), meta=meta)]


def mmbench(row: dict[str, Any], opts: dict) -> list[Question]:
    options = {k: row[k] for k in sorted(set(row) & set("ABCDE")) if row[k] and not missing(row[k])}
    options_prompt = "هناك عدة خيارات:\n" + "".join(f"{ARABIC_LETTERS[k]}. {v}\n" for k, v in options.items())
    options_prompt = options_prompt.rstrip("\n")
    hint = row.get("hint")
    question = (f"{hint} {text(row, 'question')} {options_prompt}" if not missing(hint)
                else f"{text(row, 'question')} {options_prompt}")
    return _one(f"{question}\n{MC_AR}", row)


def mme(row, opts):
    return _one(text(row, "question").strip(), row)


def gqa(row, opts):
    return _one(f"{text(row, 'question')}\n{OPEN_AR}", row)


def realworldqa(row, opts):
    return _one(f"المستخدم\nالسؤال: {text(row, 'question').strip()}", row)


def vqav2(row, opts):
    return _one(f"{text(row, 'question')}\nأجب على السؤال باستخدام كلمة أو عبارة واحدة.", row)


def vizwiz(row, opts):
    post = "\nعندما تكون المعلومات المقدمة غير كافية، أجب بـ 'لا يمكن الإجابة'.\nأجب عن السؤال باستخدام كلمة واحدة أو عبارة قصيرة."
    return _one(f"{text(row, 'question').capitalize()}{post}", row)


def pope(row, opts):
    return _one(f"{text(row, 'question').strip()}\nأجب عن السؤال باستخدام كلمة واحدة أو عبارة قصيرة.", row)


def countbench(row, opts):
    return _one("كم عدد الأشياء الموجودة في الصورة؟\nأجب برقم فقط.", row)


def _arabic_options(options: list[str]) -> str:
    if len(options) > len(LATIN):
        raise RowError(f"{len(options)} options: at most {len(LATIN)} have letters")
    return "\n".join(f"{ARABIC_LETTERS[LATIN[i]]}. {o}" for i, o in enumerate(options))


def mmmu(row, opts):
    question = text(row, "question")
    if row.get("question_type") == "multiple-choice":
        question = f"{question}\n{_arabic_options(option_list(row.get('options')))}\n\n{MC_AR}"
    else:
        question = f"{question}\n\n{OPEN_AR}"
    return _one(question, row)


def mmmu_pro(row, opts):
    post = "أجب بحرف الخيار من الخيارات المعطاة مباشرة."
    return _one(f"{text(row, 'question')}\n{_arabic_options(option_list(row.get('options')))}\n\n{post}", row)


def mmt(row, opts):
    question_text = "سؤال: <image>\n" + text(row, "question").strip()
    options = [f"{ARABIC_LETTERS[k]}: {str(row[k]).strip()}" for k in "ABCDEFGHI"
               if not missing(row.get(k)) and str(row[k]).strip()]
    prompt = f"{question_text}\n{chr(10).join(options)}" + "\nأجب عن السؤال باستخدام حرف واحد من الخيارات المعطاة."
    return _one(prompt, row)


def seed(row, opts):
    q = text(row, "question")
    q += "\n" + f"أ. {text(row, 'choice_a')}\n" + f"ب. {text(row, 'choice_b')}\n" + f"ج. {text(row, 'choice_c')}\n"
    q += f"د. {text(row, 'choice_d')}"
    return _one(f"{q}\n{MC_AR}", row)


def options_list(row, opts):
    """`our_doc_to_text`: isidocvqa, patddocvqa, celebvqa, countriesvqa, foodvqa."""
    options = _arabic_options(option_list(row.get("options")))
    prompt = f"سؤال:\n{text(row, 'question').strip()}\n{options}" + "\nأجب عن السؤال باستخدام حرف واحد من الخيارات المعطاة."
    return _one(prompt, row)


def question(row, opts):
    return _one(text(row, "question"), row)


def _translate_numbers(s: str) -> str:
    return s.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))


def mathvista(row, opts):
    qtype, atype = row.get("question_type"), row.get("answer_type")
    precision = row.get("precision") if not missing(row.get("precision")) else 0
    if qtype == "multi_choice":
        hint = "تلميح: يرجى الإجابة على السؤال وتقديم حرف الخيار الصحيح، مثل أ أو ب أو ج أو د، في النهاية."
    elif atype == "integer":
        hint = "تلميح: يرجى الإجابة على السؤال الذي يتطلب إجابة بعدد صحيح وتقديم القيمة النهائية، مثل 1 أو 2 أو 3، في النهاية."
    elif atype == "float" and int(float(precision)) == 1:
        hint = "تلميح: يرجى الإجابة على السؤال الذي يتطلب رقمًا عشريًا بمنزلة عشرية واحدة وتقديم القيمة النهائية، مثل 1.2 أو 1.3 أو 1.4، في النهاية."
    elif atype == "float" and int(float(precision)) == 2:
        hint = "تلميح: يرجى الإجابة على السؤال الذي يتطلب رقمًا عشريًا بمنزلتين عشريتين وتقديم القيمة النهائية، مثل 1.23 أو 1.34 أو 1.45، في النهاية."
    elif atype == "list":
        hint = "تلميح: يرجى الإجابة على السؤال الذي يتطلب قائمة بايثون كإجابة وتقديم القائمة النهائية، مثل [1, 2, 3] أو [1.2, 1.3, 1.4]، في النهاية."
    else:
        raise RowError(f"mathvista: question_type {qtype!r} / answer_type {atype!r} / precision {precision!r} "
                       "has no hint in the official builder")
    hint = _translate_numbers(hint)
    q = f"سؤال: {text(row, 'question')}"
    unit = row.get("unit")
    if not missing(unit):
        q += f" (الوحدة: {unit})"
    choices_text = ""
    choices = row.get("choices")
    if not missing(choices) and choices != "None":
        if isinstance(choices, str):
            choices = choices.replace("' '", '", "')
        items = option_list(choices, "choices")
        choices_text = "\n".join(["الاختيارات:", *(f"({ARABIC_LETTERS[LATIN[i]]}) {c}" for i, c in enumerate(items))])
    elements = [q, choices_text, hint, "الحل: "]
    return _one(("\n\n" + "\n".join(e for e in elements if e != "")).strip(), row)


def scienceqa(row, opts):
    context = text(row, "hint")
    choices = option_list(row.get("choices"), "choices")
    if gold_of(row) is not None:
        _index_gold(row, len(choices))  # a gold that is not an option's index is a data error
    if context:
        context = f"السياق: {context}\n"
    return _one(f"{context}{text(row, 'question')}\n{_arabic_options(choices)}\n.أجب بحرف الخيار من الخيارات المعطاة مباشرة", row,
                options=choices)


def videomme(row, opts):
    template = ("الترجمات النصية لهذا الفيديو مدرجة أدناه:\n{subtitles}\nاختر أفضل إجابة للسؤال التالي متعدد الخيارات بناءً على "
                "الفيديو. أجب فقط بالحرف (أ، ب، ج، أو د) للخيار الصحيح.\n{question}\n{options}\nأفضل إجابة هي:")
    options = "\n".join(option_list(row.get("options")))
    return _one(template.format(subtitles=text(row, "subtitles"), question=text(row, "question"), options=options), row)


def geochat(row, opts):
    return _one("أجب على السؤال التالي بكلمة أو جملة.\n" + text(row, "question"), row)


# English (lmms-eval wording) ---------------------------------------------------------------------
def _latin_options(options: list[str]) -> str:
    return "\n".join(f"{LATIN[i]}. {o}" for i, o in enumerate(options))


MMBENCH_COPIES = 1_000_000
"""lmms-lab/MMBench stores each CircularEval copy (options shifted) as its own row, index + k * 1e6;
lmms-eval mmbench_evals.py and VLMEvalKit group them by index % 1e6."""


def mmbench_en(row, opts):
    """lmms-eval mmbench/en_utils.py + mmbench_evals.py create_options_prompt (@75571cf): "{hint}
    {question} There are several options:\nA. ..\n\nAnswer with the option's letter ..."; the
    rows already are the rotated copies, so each is asked once and grouped for CircularEval."""
    options = {k: str(row[k]) for k in "ABCDE" if k in row and not missing(row[k]) and row[k]}
    if len(options) < 2:
        raise RowError(f"needs at least 2 options in columns A..E, found {sorted(options)}")
    if missing(row.get("index")):
        raise RowError("column 'index' missing: CircularEval groups the copies of a question by index % 1e6")
    try:
        group = int(float(row["index"])) % MMBENCH_COPIES
    except (TypeError, ValueError) as exc:
        raise RowError(f"column 'index': {row['index']!r} is not a number") from exc
    options_prompt = ("There are several options:\n" + "".join(f"{k}. {v}\n" for k, v in options.items())).rstrip("\n")
    hint = row.get("hint")
    query = (f"{hint} {text(row, 'question')} {options_prompt}" if not missing(hint)
             else f"{text(row, 'question')} {options_prompt}")
    gold = gold_of(row)
    if gold is not None and gold.strip() not in options:
        raise RowError(f"answer {gold!r} is not one of the option letters {sorted(options)}")
    return [Question(f"{query}\n\n{MC_EN}", gold, meta={
        "options": list(options.values()), "letters": list(options), "group": str(group),
        "question": text(row, "question")})]  # options/question: for the choice matcher


def mmt_en(row, opts):
    """lmms-eval mmt/utils.py mmt_doc_to_text (@75571cf): a literal "<image>", options "A: text"."""
    letters = [k for k in "ABCDEFGHI" if row.get(k) and str(row[k]).strip() and not missing(row[k])]
    if len(letters) < 2:
        raise RowError(f"needs at least 2 options in columns A..I, found {letters}")
    options = "\n".join(f"{k}: {str(row[k]).strip()}" for k in letters)
    prompt = (f"Question: <image>\n{text(row, 'question').strip()}\n{options}"
              "\nAnswer the question using a single character from the given options.")
    return [Question(prompt, gold_of(row), meta={"letters": letters})]


def mmmu_en(row, opts):
    q = text(row, "question")
    if row.get("question_type") == "multiple-choice":
        options = option_list(row.get("options"))
        return [Question(f"{q}\n{_latin_options(options)}\n\n{MC_EN}", gold_of(row),
                         meta={"type": "mc", "options": options, "letters": list(LATIN[:len(options)])})]
    return [Question(f"{q}\n\n{OPEN_EN}", gold_of(row), meta={"type": "open"})]


def chartqa_en(row, opts):
    return _one(f"{text(row, 'question')}\nAnswer the question with a single word.", row)


MME_REPLACE = " Please answer yes or no."


def mme_en(row, opts):
    """lmms-eval mme/utils.py mme_doc_to_text: the dataset's " Please answer yes or no." is removed
    and the default post prompt appended."""
    question = text(row, "question").strip().replace(MME_REPLACE, "")
    return _one(f"{question}\n{OPEN_EN}", row, group=str(row.get("question_id", "")),
                category=str(row.get("category", "")))


def short_en(row, opts):
    return _one(f"{text(row, 'question').strip()}\n{OPEN_EN}", row)


def seed_en(row, opts):
    options = [text(row, f"choice_{c}") for c in "abcd"]
    return [Question(f"{text(row, 'question')}\n{_latin_options(options)}\n{MC_EN}", gold_of(row),
                     meta={"options": options, "letters": list("ABCD")})]


def _index_gold(row: dict[str, Any], n: int) -> Optional[str]:
    """The gold letter of a row whose answer is the index of the correct option (an integer)."""
    gold = gold_of(row)
    if gold is None:
        return None
    try:
        return LATIN[option_index(gold, n)]
    except ValueError as exc:
        raise RowError(f"answer: {exc}") from exc


def option_index(gold: Any, n_options: int) -> int:
    """An integer in 0..n_options-1 given as an int or its digits, else ValueError: "1.5", "-1"
    and "B" are errors (the official chr(ord('A') + int(gt)) raises on them or, for -1, would
    wrap to another letter)."""
    value = str(gold).strip()
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"{gold!r} is not the integer index of an option")
    index = int(value)
    if not 0 <= index < n_options:
        raise ValueError(f"index {index} is outside the {n_options} options (0..{n_options - 1})")
    return index


def scienceqa_en(row, opts):
    choices = option_list(row.get("choices"), "choices")
    context = text(row, "hint")
    head = f"Context: {context}\n{text(row, 'question')}" if context else text(row, "question")
    return [Question(f"{head}\n{_latin_options(choices)}\n{MC_EN}", _index_gold(row, len(choices)),
                     meta={"options": choices, "letters": list(LATIN[:len(choices)])})]


def ai2d_en(row, opts):
    options = option_list(row.get("options"))
    return [Question(f"{text(row, 'question')}\n{_latin_options(options)}\n{MC_EN}", _index_gold(row, len(options)),
                     meta={"options": options, "letters": list(LATIN[:len(options)])})]


def mathvista_en(row, opts):
    q = text(row, "query") or text(row, "question")
    # question: the full query (hint and choices included) shown to the judge extractor;
    # precision: decimal places a float answer is rounded to before comparing (official).
    precision = None
    if not missing(row.get("precision")):
        try:
            precision = int(float(row["precision"]))
        except (TypeError, ValueError) as exc:
            raise RowError(f"column 'precision': {row['precision']!r} is not a number") from exc
    meta = {"answer_type": row.get("answer_type"), "question_type": row.get("question_type"), "question": q,
            "precision": precision}
    if not missing(row.get("choices")):
        meta["options"] = option_list(row.get("choices"), "choices")
    return [Question(q, gold_of(row), meta=meta)]


# ArabicMMLU --------------------------------------------------------------------------------------
def arabic_mmlu(row, opts):
    """util_prompt.py's prompt (`lora_weights == "x"` branch: plain prompt, 'Answer: ' suffix),
    in English or Arabic, with English or Arabic option letters."""
    lang, letters = opts.get("mmlu_prompt_language", "en"), MMLU_LETTERS[opts.get("mmlu_letters", "en")]
    options = []
    for i in range(5):
        value = row.get(f"Option {i + 1}")
        if missing(value):
            break
        options.append(f"{letters[i]}{'.' if letters is MMLU_LETTERS['en'] else '-'} {value}")
    if len(options) < 2:
        raise RowError("fewer than 2 options in 'Option 1'..'Option 5'")
    key = text(row, "Answer Key").strip()
    if key and key not in "ABCDE"[:len(options)]:
        raise RowError(f"'Answer Key' {key!r} is not one of A..{'ABCDE'[len(options) - 1]}")
    subject, level, country = text(row, "Subject"), row.get("Level"), row.get("Country")
    ctx = row.get("Context")
    body = text(row, "Question") if missing(ctx) else f"{ctx}\n\n{text(row, 'Question')}"
    if lang == "en":
        lv = "" if missing(level) else " for " + MMLU_LEVEL_EN.get(str(level), str(level))
        co = "" if missing(country) else f" in {country}"
        prompt = (f"This is a {subject} question{lv}{co}. Select the correct answer!\n\nQuestion: {body}\n"
                  + "\n".join(options) + "\n\nAnswer: ")
    else:
        lv = "" if missing(level) else " " + MMLU_LEVEL_AR.get(str(level), str(level))
        co = "" if missing(country) else " " + MMLU_COUNTRY_AR.get(str(country), str(country))
        prompt = (f"هذا سؤال {MMLU_SUBJECT_AR.get(subject, subject)}{lv}{co}. اختر الإجابة الصحيحة!\n\nسؤال: {body}\n"
                  + "\n".join(options) + "\n\nإجابة: ")
    gold = LATIN["ABCDE".index(key)] if key else None
    return [Question(prompt, gold, meta={"letters": letters[:len(options)], "subject": subject,
                                         "group": text(row, "Group")})]


Builder = Callable[[dict[str, Any], dict], list[Question]]
PROMPTS: dict[str, Builder] = {f.__name__: f for f in (
    mmbench, mme, gqa, realworldqa, vqav2, vizwiz, pope, countbench, mmmu, mmmu_pro, mmt, seed, options_list,
    question, mathvista, scienceqa, videomme, geochat, mmbench_en, mmt_en, mmmu_en, chartqa_en, mme_en, short_en, seed_en,
    scienceqa_en, ai2d_en, mathvista_en, arabic_mmlu)}
