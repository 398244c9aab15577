"""PEARL-shaped fixture data for tests, the `vdr_smoke` recipe and benchmarks, generated on demand
(nothing large is committed).

The shape follows UBC-NLP/PEARL-FULL as the blog describes it: one row per question about an
image, several rows per image (so `augmented_caption` repeats), categories x countries. The
columns are UBC-NLP/PEARL's, with its types (its hub card: original_index int64, augmented_caption,
question, answer, answer_letter, choices list<string>, category, country, image_id, question_type,
annotation_id int64, qa_index int64, image), so the metadata pass has real columns to skip.

Two layouts:
- parquet (`write_pearl_fixture`): PEARL's hub export, the image in Hugging Face's parquet encoding
  (a struct of `bytes` and `path`);
- JSON (`write_pearl_full_json_fixture`): PEARL-FULL as distributed (Google Drive zips, unzipped):
  `pearl_part_XX.json` files of records without the image, and `images_part_X/` folders of image
  files named `<image_id>.png`. PEARL-FULL's JSON field names are not published; the fixture uses
  PEARL's column names (the record names its image by `image_id`).

Images are 32x32 PNGs whose colour encodes the category and whose stripe pattern encodes the
country, with per-image noise: a tiny model can learn to retrieve them from the query text, so
the smoke run's NDCG@10 moves when training works.

`python -m ain_testkit.pearl_fixture OUT_DIR [json]` writes the fixture (two parquet shards, or the JSON
layout) into OUT_DIR.
"""

from __future__ import annotations

import io
import json
import os
import random
import sys
from pathlib import Path

CATEGORIES = ["Architecture", "Clothes", "Fauna", "Flora", "Food", "Geography", "Handicrafts", "LandMarks",
              "Music"]
CATEGORY_AR = {"Architecture": "العمارة", "Clothes": "الملابس", "Fauna": "الحيوانات",
               "Flora": "النباتات", "Food": "الطعام", "Geography": "الجغرافيا",
               "Handicrafts": "الحرف اليدوية", "LandMarks": "المعالم", "Music": "الموسيقى"}
COUNTRIES = ["Egypt", "Jordan", "Morocco", "Saudi Arabia"]
COUNTRY_AR = {"Egypt": "مصر", "Jordan": "الأردن", "Morocco": "المغرب", "Saudi Arabia": "السعودية"}
QUESTION_TEMPLATES = ["ما هو عنصر {cat} الظاهر في الصورة من {country}؟",
                      "ماذا يمثل هذا المثال من {cat} في {country}؟",
                      "كيف يعكس {cat} في الصورة ثقافة {country}؟"]
IMAGE_COLUMNS = ("image",)
QUESTION_TYPES = ["multiple_choice", "true_false", "open_ended"]
# UBC-NLP/PEARL's columns in its order (hub card features), with their parquet types
PEARL_COLUMNS = ("original_index", "augmented_caption", "question", "answer", "answer_letter", "choices", "category",
                 "country", "image_id", "question_type", "annotation_id", "qa_index", "image")


def query_text(category: str, country: str, k: int, j: int = 0) -> str:
    """Question k about picture j of a cell. The picture number keeps query texts distinct (the
    NO_DUPLICATES sampler cannot batch equal texts together, and equal queries with different
    positives would make retrieval ill-posed)."""
    return QUESTION_TEMPLATES[k % len(QUESTION_TEMPLATES)].format(
        cat=CATEGORY_AR[category], country=COUNTRY_AR[country]) + f" (الصورة {j + 1})"


def images_per_cell(category: str) -> int:
    """Unequal category sizes (2..4 images per country), so stratification has something to keep."""
    return 2 + CATEGORIES.index(category) % 3


def make_image(category: str, country: str, j: int, size: int = 32) -> bytes:
    from PIL import Image  # noqa: PLC0415

    ci, ki = CATEGORIES.index(category), COUNTRIES.index(country)
    base = ((ci * 53) % 256, (ci * 97 + 40) % 256, (ci * 151 + 80) % 256)
    rng = random.Random(f"{category}/{country}/{j}")
    img = Image.new("RGB", (size, size), base)
    px = img.load()
    period = 2 + ki  # the country's stripe period
    for y in range(size):
        for x in range(size):
            if (x // period) % 2 == 0:
                px[x, y] = tuple(255 - c for c in base)
            if rng.random() < 0.05:  # per-image noise: duplicates in content only via the caption
                px[x, y] = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def fixture_rows(seed: int = 0) -> list[dict]:
    """Rows of the fixture in file order (shuffled with `seed`, as a real dump is not sorted), with
    UBC-NLP/PEARL's columns."""
    rows = []
    annotation = 0
    for category in CATEGORIES:
        for country in COUNTRIES:
            for j in range(images_per_cell(category)):
                caption = f"{category} of {country}, picture {j}: a culturally grounded scene."
                iid = f"pearl_{CATEGORIES.index(category):02d}{COUNTRIES.index(country):02d}{j:02d}"
                image = {"bytes": make_image(category, country, j), "path": f"{iid}.png"}
                # 2-3 questions about the same image: the duplicate captions dedup must collapse.
                for k in range(2 + (j + CATEGORIES.index(category)) % 2):
                    qtype = QUESTION_TYPES[k % len(QUESTION_TYPES)]
                    choices = {"multiple_choice": [f"choice {c}" for c in "ABCD"], "true_false": ["True", "False"],
                               "open_ended": []}[qtype]
                    rows.append({"original_index": len(rows), "augmented_caption": caption,
                                 "question": query_text(category, country, k, j), "answer": f"answer {k}",
                                 "answer_letter": "A" if choices else "", "choices": choices, "category": category,
                                 "country": country, "image_id": iid, "question_type": qtype,
                                 "annotation_id": annotation, "qa_index": k, "image": image})
                annotation += 1
    random.Random(seed).shuffle(rows)
    return rows


def pearl_schema():
    """UBC-NLP/PEARL's parquet schema (the image in Hugging Face's encoding)."""
    import pyarrow as pa  # noqa: PLC0415

    types = {"original_index": pa.int64(), "choices": pa.list_(pa.string()), "annotation_id": pa.int64(),
             "qa_index": pa.int64(), "image": pa.struct([("bytes", pa.binary()), ("path", pa.string())])}
    return pa.schema([(c, types.get(c, pa.string())) for c in PEARL_COLUMNS])


def write_pearl_fixture(out_dir: str | Path, seed: int = 0, num_shards: int = 2, row_group_size: int = 16) -> Path:
    """Write the fixture as `num_shards` parquet files (small row groups, like a real dump, so the
    image pass has row groups to skip) plus a `fixture.json` of its counts; return `out_dir`."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = fixture_rows(seed)
    schema = pearl_schema()
    per = (len(rows) + num_shards - 1) // num_shards
    for s in range(num_shards):
        chunk = rows[s * per:(s + 1) * per]
        table = pa.Table.from_pylist(chunk, schema=schema)
        final = out / f"train-{s:05d}-of-{num_shards:05d}.parquet"
        tmp = final.with_name(final.name + ".tmp")
        pq.write_table(table, tmp, row_group_size=row_group_size)
        os.replace(tmp, final)
    (out / "fixture.json").write_text(json.dumps(_counts(rows), indent=1) + "\n")
    return out


def _counts(rows: list[dict]) -> dict:
    return {"rows": len(rows), "unique_images": len({r["augmented_caption"] for r in rows}),
            "categories": {c: sum(r["category"] == c for r in rows) for c in CATEGORIES}}


def write_pearl_full_json_fixture(out_dir: str | Path, seed: int = 0, num_parts: int = 2,
                                  num_image_parts: int = 2) -> Path:
    """Write the fixture in PEARL-FULL's distributed layout, as unzipped into `out_dir`:
    `pearl_part_00.json` .. (JSON arrays of records: PEARL's columns without `image`) and
    `images_part_1/` .. (each image once, `<image_id>.png`, dealt over the folders), plus
    `fixture.json` of its counts (not a part file); return `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = fixture_rows(seed)
    written: set[str] = set()
    for r in rows:
        if r["image_id"] not in written:
            folder = out / f"images_part_{len(written) % num_image_parts + 1}"
            folder.mkdir(exist_ok=True)
            (folder / r["image"]["path"]).write_bytes(r["image"]["bytes"])
            written.add(r["image_id"])
    per = (len(rows) + num_parts - 1) // num_parts
    for part in range(num_parts):
        records = [{k: v for k, v in r.items() if k != "image"} for r in rows[part * per:(part + 1) * per]]
        final = out / f"pearl_part_{part:02d}.json"
        tmp = final.with_name(final.name + ".tmp")
        tmp.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, final)
    (out / "fixture.json").write_text(json.dumps(_counts(rows), indent=1) + "\n")
    return out


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/pearl"
    print(write_pearl_full_json_fixture(target) if sys.argv[2:] == ["json"] else write_pearl_fixture(target))
