#!/usr/bin/env python
"""Write the evaluation fixture data: a local mirror shaped like the real benchmark datasets
(same column names and cell types), a few items each, tiny solid-colour images.

    python scripts/make_eval_fixtures.py tests/fixtures/eval

Covers at least one CAMEL-Bench dataset per domain (MM understanding: mme, mmbench, mmmu;
OCR: khatt, isidocvqa; charts: chartqa with its answers blanked as on the hub; video: videomme
with 9 frames; cultural: foodvqa (jsonl + image files); medical: medicalMMMU; agro: agrovqa;
remote sensing: geochat, LLM-judged), ArabicMMLU (few-shot rows included, which are skipped) and
English benchmarks (mmbench_en with its CircularEval copies as rows, mmmu_en, chartqa_en, seed_en with
list-valued images, mathvista_en with decoded_image, mmt_bench_en, pope_en). Deterministic: same bytes
every run.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

COLOURS = [(200, 30, 30), (30, 160, 60), (40, 60, 200), (220, 200, 40), (120, 40, 160), (20, 20, 20),
           (240, 240, 240), (200, 120, 40), (40, 180, 180)]
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png(k: int, size: tuple[int, int] = (48, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, COLOURS[k % len(COLOURS)]).save(buf, format="PNG")
    return buf.getvalue()


def img(k: int, size: tuple[int, int] = (48, 32)) -> dict:
    return {"bytes": png(k, size), "path": f"img{k}.png"}


def write_parquet(path: Path, rows: list[dict], image_columns: list[str]) -> None:
    columns = {}
    for key in rows[0]:
        values = [r.get(key) for r in rows]
        columns[key] = pa.array(values, type=IMAGE) if key in image_columns else pa.array(values)
    pq.write_table(pa.table(columns), path)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)

    write_parquet(out / "mme.parquet", [
        {"question_id": "a.jpg", "question": "هل الصورة حمراء؟ الرجاء الإجابة بنعم أو لا.", "answer": "نعم",
         "category": "color", "image": img(0)},
        {"question_id": "a.jpg", "question": "هل الصورة خضراء؟ الرجاء الإجابة بنعم أو لا.", "answer": "لا",
         "category": "color", "image": img(0)},
        {"question_id": "b.jpg", "question": "هل الصورة زرقاء؟ الرجاء الإجابة بنعم أو لا.", "answer": "نعم",
         "category": "color", "image": img(2)},
    ], ["image"])
    write_parquet(out / "mmbench.parquet", [
        {"index": 0, "question": "ما لون الصورة؟", "hint": "انظر إلى الصورة.", "A": "أحمر", "B": "أخضر", "C": "أزرق",
         "D": "أصفر", "answer": "A", "category": "color", "image": img(0)},
        {"index": 1, "question": "ما لون الصورة؟", "hint": None, "A": "أحمر", "B": "أخضر", "C": None, "D": None,
         "answer": "ب", "category": "color", "image": img(1)},
        {"index": 2, "question": "ما الشكل؟", "hint": "nan", "A": "مربع", "B": "دائرة", "C": "مثلث", "D": "خط",
         "answer": "A", "category": "shape", "image": img(3)},
    ], ["image"])
    mmmu_rows = []
    for i, (options, answer, qtype) in enumerate([("['أحمر'، 'أخضر'، 'أزرق']", "أ", "multiple-choice"),
                                                  ("['واحد', 'اثنان', 'ثلاثة', 'أربعة']", "C", "multiple-choice"),
                                                  ("[]", "٤٢", "open")]):
        row = {"id": f"validation_Art_{i}", "question": f"<image 1> سؤال رقم {i}", "options": options, "answer": answer,
               "question_type": qtype}
        row.update({f"image_{k}": (img(i + k) if k <= 1 + (i == 0) else None) for k in range(1, 8)})
        mmmu_rows.append(row)
    write_parquet(out / "mmmu.parquet", mmmu_rows, [f"image_{k}" for k in range(1, 8)])
    write_parquet(out / "medicalMMMU.parquet", [dict(r, id=f"validation_Clinical_{i}") for i, r in enumerate(mmmu_rows)],
                  [f"image_{k}" for k in range(1, 8)])
    write_parquet(out / "khatt.parquet", [
        {"question": "ما النص المكتوب في الصورة؟", "answer": "مرحبا بكم في المدينة", "image": img(5, (96, 24))},
        {"question": "ما النص المكتوب في الصورة؟", "answer": "كتاب", "image": img(6, (96, 24))},
        {"question": "ما النص المكتوب في الصورة؟", "answer": "السلام عليكم", "image": img(7, (96, 24))},
    ], ["image"])
    write_parquet(out / "isidocvqa.parquet", [
        {"question": "ما عنوان الوثيقة؟", "options": ["تقرير", "فاتورة", "رسالة"], "answer": "أ", "image": img(6, (32, 48))},
        {"question": "ما تاريخ الوثيقة؟", "options": ["٢٠٢٠", "٢٠٢١"], "answer": "(ب)", "image": img(6, (32, 48))},
    ], ["image"])
    # The hub's chartqa has its answers blanked: the report must say so, not print a score.
    write_parquet(out / "chartqa.parquet", [
        {"question": "ما أعلى قيمة في المخطط؟\nأ. ١٠\nب. ٢٠", "answer": "", "image": img(2)},
        {"question": "ما أدنى قيمة في المخطط؟\nأ. ١\nب. ٢", "answer": None, "image": img(3)},
    ], ["image"])
    frames = [f"image_{k}" for k in range(9)]
    write_parquet(out / "videomme.parquet", [
        {"question": "ماذا يحدث في الفيديو؟", "options": ["أ. رجل يركض", "ب. قطة تنام", "ج. سيارة", "د. لا شيء"],
         "subtitles": "لا توجد ترجمة", "answer": "أ", **{f: img(k) for k, f in enumerate(frames)}},
        {"question": "ما لون الخلفية؟", "options": ["أ. أحمر", "ب. أزرق", "ج. أخضر", "د. أسود"], "subtitles": "",
         "answer": "ب", **{f: (img(2) if k < 4 else None) for k, f in enumerate(frames)}},
    ], frames)
    # foodvqa as JSON lines with image files beside it (a mirror made with to_json).
    food = []
    for i, (options, answer) in enumerate([(["كبسة", "فلافل", "حمص"], "أ"), (["شاورما", "منسف"], "B"),
                                           (["كنافة", "بقلاوة", "قطايف"], "ا")]):
        name = f"images/food{i}.png"
        (out / name).write_bytes(png(i + 3))
        food.append({"question": "ما اسم هذا الطبق؟", "options": options, "answer": answer, "image": name})
    write_jsonl(out / "foodvqa.jsonl", food)
    write_parquet(out / "agrovqa.parquet", [
        {"question": "ما نوع النبات؟\nأ. قمح\nب. ذرة\nج. أرز", "answer": "أ", "image": img(1)},
        {"question": "هل النبات مريض؟\nأ. نعم\nب. لا", "answer": "ب", "image": img(4)},
    ], ["image"])
    write_parquet(out / "geochat.parquet", [
        {"question": "كم عدد المباني في الصورة؟", "answer": "ثلاثة", "image": img(5, (64, 64))},
        {"question": "ما نوع المنطقة؟", "answer": "سكنية", "image": img(6, (64, 64))},
    ], ["image"])

    mmlu = []
    for i, (subject, level, country, key, n_opt, few) in enumerate([
            ("Math", "Primary", "Jordan", "A", 4, 0), ("Math", "Primary", None, "B", 3, 0),
            ("History", "High", "KSA", "C", 4, 0), ("Arabic Language (General)", None, None, "A", 2, 0),
            ("Driving Test", None, "UAE", "D", 4, 0), ("Islamic Studies", "Middle", "Egypt", "E", 5, 0),
            ("Physics", "High", None, "A", 4, 1)]):
        row = {"ID": i, "Source": "fixture", "Country": country, "Group": "STEM", "Subject": subject, "Level": level,
               "Question": f"سؤال {i}: ما الإجابة الصحيحة؟", "Context": "سياق قصير" if i == 2 else None,
               "Answer Key": key, "is_few_shot": few}
        row.update({f"Option {k + 1}": (f"خيار {k + 1}" if k < n_opt else None) for k in range(5)})
        mmlu.append(row)
    write_jsonl(out / "arabic_mmlu.jsonl", mmlu)

    # lmms-lab/MMBench (en, dev): every CircularEval copy is a row of its own, index + k * 1e6, its
    # options shifted by k and the answer letter moved with them (as the hub's TSV-derived rows).
    mmb = []
    for index, question, hint, options, answer, k_img in [
            (0, "What colour is the image?", None, ["red", "green", "blue", "yellow"], 0, 0),
            (1, "Which shape is shown?", "A plain picture.", ["square", "circle"], 1, 1)]:
        for k in range(len(options)):
            shifted = options[k:] + options[:k]
            mmb.append({"index": index + k * 1_000_000, "question": question, "hint": hint,
                        **{c: (shifted[i] if i < len(shifted) else None) for i, c in enumerate("ABCD")},
                        "answer": "ABCD"[(answer - k) % len(options)], "category": "color" if index == 0 else "shape",
                        "image": img(k_img), "source": "fixture", "L2-category": "attribute_reasoning",
                        "comment": None, "split": "dev"})
    mmb.sort(key=lambda r: (r["index"] >= 1_000_000, r["index"]))  # main rows first, then the copies
    write_parquet(out / "mmbench_en.parquet", mmb, ["image"])
    write_parquet(out / "mmmu_en.parquet", [
        {"id": "validation_Math_1", "question": "<image 1> What is 2+2?", "options": "['3', '4', '5', '6']",
         "answer": "B", "question_type": "multiple-choice", "image_1": img(2), **{f"image_{k}": None for k in range(2, 8)}},
        {"id": "validation_Math_2", "question": "<image 1> How many sides has a triangle?", "options": "[]",
         "answer": "3", "question_type": "open", "image_1": img(3), **{f"image_{k}": None for k in range(2, 8)}},
    ], [f"image_{k}" for k in range(1, 8)])
    chart = []
    for i, (q, a) in enumerate([("What is the highest value?", "20"), ("Which year is lowest?", "2019"),
                                ("What share is red?", "45%")]):
        name = f"images/chart{i}.png"
        (out / name).write_bytes(png(i, (64, 48)))
        chart.append({"question": q, "answer": a, "type": "human_test", "image": name})
    write_jsonl(out / "chartqa_en.jsonl", chart)
    # lmms-lab/SEED-Bench: `image` is a LIST of images (one for image rows, frames for video rows),
    # data_type image|video; the paper's SEED score is the image split.
    seed = [{"answer": "A", "choice_a": "red", "choice_b": "green", "choice_c": "blue", "choice_d": "yellow",
             "data_id": "1", "data_type": "image", "question": "What colour is the picture?", "question_id": "101",
             "question_type_id": 1, "image": [img(0)], "segment": None},
            {"answer": "B", "choice_a": "walking", "choice_b": "running", "choice_c": "sitting", "choice_d": "sleeping",
             "data_id": "v1", "data_type": "video", "question": "What happens?", "question_id": "102",
             "question_type_id": 10, "image": [img(1), img(2), img(3)], "segment": [0, 3]},
            {"answer": "C", "choice_a": "red", "choice_b": "green", "choice_c": "blue", "choice_d": "yellow",
             "data_id": "2", "data_type": "image", "question": "And this one?", "question_id": "103",
             "question_type_id": 1, "image": [img(2)], "segment": None}]
    pq.write_table(pa.table({key: (pa.array([r[key] for r in seed], type=pa.list_(IMAGE)) if key == "image"
                                   else pa.array([r[key] for r in seed])) for key in seed[0]}), out / "seed_en.parquet")
    # AI4Math/MathVista testmini: the picture is `decoded_image`; `image` is a path string.
    write_parquet(out / "mathvista_en.parquet", [
        {"pid": "1", "question": "How many sides?", "image": "images/1.jpg", "decoded_image": img(4),
         "choices": None, "unit": None, "precision": None, "answer": "3", "question_type": "free_form",
         "answer_type": "integer", "pid_meta": "x", "query": "Hint: Please answer the question requiring an integer "
         "answer and provide the final value, e.g., 1, 2, 3, at the end.\nQuestion: How many sides?"},
    ], ["decoded_image"])
    # lmms-lab/MMT-Benchmark (val): options in columns A..I, a letter answer, l2-category.
    write_parquet(out / "mmt_bench_en.parquet", [
        {"index": 0, "question": "Which colour dominates?", "A": "red", "B": "green", "C": "blue", "D": None,
         "E": None, "F": None, "G": None, "H": None, "I": None, "answer": "A", "category": "vr",
         "l2-category": "visual_recognition", "split": "VAL", "image": img(0)},
    ], ["image"])
    # lmms-lab/POPE: yes/no questions, category adversarial|popular|random.
    write_parquet(out / "pope_en.parquet", [
        {"id": str(i), "question_id": str(i), "question": f"Is there a {o} in the image?", "answer": a,
         "image_source": "coco", "category": c, "image": img(i)}
        for i, (o, a, c) in enumerate([("car", "yes", "adversarial"), ("dog", "no", "popular"), ("cat", "yes", "random"),
                                       ("tree", "no", "random")])], ["image"])
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total / 1024:.1f} KiB)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/eval"))
