#!/usr/bin/env python
"""Generate the small bilingual multimodal fixture set used by the unit tests and recipe=smoke.

    python scripts/make_fixtures.py tests/fixtures/smoke

Everything is drawn with PIL and written from fixed tables and a seeded random.Random, so two
runs give the same rows (and, with the same Pillow and pyarrow, the same bytes). Contents:

    images/              solid shapes, bar charts, words, scans, leaves, fields, star patterns
    en_llava.json        40 English rows, LLaVA layout (a top-level list, like llava_instruct_150k)
    ar_native.parquet    20 authentic Arabic rows, native layout, image bytes embedded
    mixed_sharegpt.jsonl 4 ShareGPT rows (OpenAI-style content parts, one Arabic without a language)
    bad_rows.jsonl       15 deliberately broken rows, one per failure the ingest stage must quarantine
    expected.json        what ingest must produce: good ids, counts, and the reason for every bad row
    README.md            the same, for people

The Arabic rows share image files with the English rows, so the content-addressed store must
hold each of those images once.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SEED = 20240
BG = (255, 255, 255)
COLOURS = {  # English name -> (RGB, Arabic masculine, Arabic feminine)
    "red": ((220, 30, 30), "أحمر", "حمراء"),
    "green": ((30, 160, 60), "أخضر", "خضراء"),
    "blue": ((30, 70, 210), "أزرق", "زرقاء"),
    "yellow": ((240, 210, 20), "أصفر", "صفراء"),
}
SHAPES = {  # English -> (Arabic definite, Arabic indefinite, feminine?)
    "square": ("المربع", "مربع", False),
    "circle": ("الدائرة", "دائرة", True),
    "triangle": ("المثلث", "مثلث", False),
}
ORDINAL_AR = {"red": "الأحمر", "green": "الأخضر", "blue": "الأزرق"}


# ---------------------------------------------------------------------------------------- images
class Images:
    """Draws images once, saves them under images/, remembers their bytes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "images"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, bytes] = {}

    def save(self, name: str, im: Image.Image) -> str:
        rel = f"images/{name}"
        if rel not in self.files:
            buf = io.BytesIO()
            if name.endswith(".jpg"):
                im.save(buf, format="JPEG", quality=85)
            else:
                im.save(buf, format="PNG")
            self.files[rel] = buf.getvalue()
            (self.root / rel).write_bytes(self.files[rel])
        return rel

    def raw(self, name: str, data: bytes) -> str:
        rel = f"images/{name}"
        self.files[rel] = data
        (self.root / rel).write_bytes(data)
        return rel


def shape_image(colour: str, shape: str, size: int = 48) -> Image.Image:
    im = Image.new("RGB", (size, size), BG)
    d = ImageDraw.Draw(im)
    rgb, m = COLOURS[colour][0], size // 6
    if shape == "square":
        d.rectangle([m, m, size - m, size - m], fill=rgb)
    elif shape == "circle":
        d.ellipse([m, m, size - m, size - m], fill=rgb)
    else:
        d.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=rgb)
    return im


def bar_chart(heights: list[int], size: int = 64) -> Image.Image:
    im = Image.new("RGB", (size, size), BG)
    d = ImageDraw.Draw(im)
    d.line([(4, size - 4), (size - 4, size - 4)], fill=(0, 0, 0))
    for i, (h, colour) in enumerate(zip(heights, ("red", "green", "blue"))):
        x = 8 + i * 18
        d.rectangle([x, size - 4 - h, x + 12, size - 5], fill=COLOURS[colour][0])
    return im


def word_image(word: str) -> Image.Image:
    im = Image.new("L", (64, 32), 255)
    # The bitmap font is built into Pillow: identical glyphs on every machine.
    ImageDraw.Draw(im).text((6, 10), word, fill=0, font=ImageFont.load_default_imagefont())
    return im


def scan_image(side: str | None) -> Image.Image:
    im = Image.new("L", (48, 48), 20)
    d = ImageDraw.Draw(im)
    d.ellipse([8, 4, 40, 44], fill=90)
    if side:
        x = 14 if side == "left" else 28
        d.ellipse([x, 20, x + 6, 26], fill=250)
    return im


def leaf_image(spots: bool) -> Image.Image:
    im = Image.new("RGB", (48, 48), BG)
    d = ImageDraw.Draw(im)
    d.ellipse([6, 14, 42, 34], fill=(40, 150, 50))
    if spots:
        for x, y in ((15, 20), (26, 25), (33, 19)):
            d.ellipse([x, y, x + 4, y + 4], fill=(120, 70, 20))
    return im


def aerial_image(plots: int, river: bool) -> Image.Image:
    im = Image.new("RGB", (64, 64), (150, 120, 80))
    d = ImageDraw.Draw(im)
    for i in range(plots):
        x, y = 4 + (i % 2) * 30, 4 + (i // 2) * 30
        d.rectangle([x, y, x + 24, y + 24], fill=(60, 170, 60))
    if river:
        d.rectangle([0, 29, 63, 33], fill=(40, 90, 200))
    return im


def star_image(colour: str) -> Image.Image:
    im = Image.new("RGB", (48, 48), BG)
    d = ImageDraw.Draw(im)
    rgb = COLOURS[colour][0]
    d.rectangle([12, 12, 36, 36], outline=rgb, width=2)
    d.polygon([(24, 7), (41, 24), (24, 41), (7, 24)], outline=rgb, width=2)
    return im


# -------------------------------------------------------------------------------------- English
def english_rows(img: Images, rnd: random.Random) -> tuple[list[dict], list[tuple[str, str]]]:
    """The rows, and (image, colour of the tallest bar) of each chart for the Arabic questions."""
    rows: list[dict] = []
    charts: list[tuple[str, str]] = []

    def add(domain: str, image: str | None, qa: list[tuple[str, str]], placeholder: bool = True,
            system: str | None = None) -> None:
        conv = [{"from": "system", "value": system}] if system else []
        for k, (q, a) in enumerate(qa):
            if k == 0 and image and placeholder:
                q = "<image>\n" + q
            conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        row = {"id": f"en-{len(rows):04d}", "domain": domain, "conversations": conv}
        if image:
            row["image"] = image
        rows.append(row)

    # general: 11 shape images (some asked twice) and one text-only row
    combos = [(c, s) for s in SHAPES for c in COLOURS]
    rnd.shuffle(combos)
    for n, (colour, shape) in enumerate(combos[:9]):
        path = img.save(f"{colour}_{shape}.png", shape_image(colour, shape))
        add("general", path, [(f"What colour is the {shape}?", f"The {shape} is {colour}.")],
            placeholder=n % 4 != 3)  # every fourth row relies on the ingest adding <image>
        if n < 2:
            add("general", path, [("What shape is shown in the image?", f"The image shows a {colour} {shape}."),
                                  ("What colour is the background?", "The background is white.")],
                system="You are a helpful assistant.")
    add("general", None, [("What colour is the sky on a clear day?", "On a clear day the sky is blue.")])

    # charts: bar charts of three coloured bars
    for n in range(6):
        heights = rnd.sample(range(10, 55, 5), 3)
        tallest = ("red", "green", "blue")[heights.index(max(heights))]
        path = img.save(f"chart_{n}.png", bar_chart(heights))
        charts.append((path, tallest))
        add("charts", path, [("Which bar is the tallest?", f"The {tallest} bar is the tallest."),
                             ("How many bars are in the chart?", "There are three bars.")][: 1 + n % 2])

    # ocr: single words
    for word in ("CAT", "DOG", "SUN", "MAP", "STOP", "42"):
        path = img.save(f"word_{word.lower()}.png", word_image(word))
        add("ocr", path, [("What is written in the image?", f'The image says "{word}".')])

    # medical: synthetic scans (JPEG, as scans usually are)
    for n, side in enumerate(("left", "right", None, "left")):
        path = img.save(f"scan_{n}.jpg", scan_image(side))
        answer = f"Yes, there is a bright spot on the {side} side." if side else "No, the scan shows no bright spot."
        add("medical", path, [("Is there a bright spot in this scan?", answer)])

    # agro: leaves with or without disease spots
    for n, spots in enumerate((True, False, True, False)):
        path = img.save(f"leaf_{n}.png", leaf_image(spots))
        answer = "Yes, the leaf has brown spots." if spots else "No, the leaf is uniformly green."
        add("agro", path, [("Does the leaf show brown spots?", answer)])

    # remote_sensing: fields from above
    for n, (plots, river) in enumerate(((4, True), (2, False), (3, True), (1, False))):
        path = img.save(f"aerial_{n}.jpg", aerial_image(plots, river))
        words = {1: "one field plot", 2: "two field plots", 3: "three field plots", 4: "four field plots"}
        water = " A blue river crosses the image." if river else " There is no water."
        add("remote_sensing", path, [("Describe this aerial image.", f"It shows {words[plots]}.{water}")])

    # cultural: eight-pointed star
    for colour in ("red", "green", "blue", "yellow"):
        path = img.save(f"star_{colour}.png", star_image(colour))
        add("cultural", path, [("What pattern is shown?",
                                f"A {colour} eight-pointed star made of two overlapping squares, "
                                "a common motif in Islamic art.")])
    return rows, charts


# --------------------------------------------------------------------------------------- Arabic
def colour_ar(colour: str, shape: str) -> str:
    return COLOURS[colour][2 if SHAPES[shape][2] else 1]


def arabic_rows(img: Images, rnd: random.Random, charts: list[tuple[str, str]]) -> list[dict]:
    rows: list[dict] = []

    def add(domain: str, images: list[str], turns: list[tuple[str, str]], language: str | None = "ar",
            system: bool = False) -> None:
        out = [{"role": "system", "content": "أنت مساعد مفيد يجيب باللغة العربية."}] if system else []
        for role, content in turns:
            out.append({"role": role, "content": content})
        rows.append({"id": f"ar-{len(rows):04d}", "turns": out,
                     "images": [{"bytes": img.files[p], "path": p.split("/")[-1]} for p in images],
                     "language": language, "domain": domain, "authentic": True})

    combos = [(c, s) for s in SHAPES for c in COLOURS]
    rnd.shuffle(combos)
    for n, (colour, shape) in enumerate(combos[:12]):
        definite, indefinite, _ = SHAPES[shape]
        path = img.save(f"{colour}_{shape}.png", shape_image(colour, shape))
        adj = colour_ar(colour, shape)
        if n % 3 == 0:
            turns = [("user", f"<image>\nما لون {definite}؟"), ("assistant", f"{definite} {adj}.")]
        elif n % 3 == 1:
            turns = [("user", "<image>\nما الشكل الذي يظهر في الصورة؟"),
                     ("assistant", f"يظهر في الصورة {indefinite} {adj}.")]
        else:
            turns = [("user", "<image>\nصف الصورة باختصار."),
                     ("assistant", f"في الصورة {indefinite} {adj} على خلفية بيضاء."),
                     ("user", "ما لون الخلفية؟"), ("assistant", "الخلفية بيضاء.")]
        # Two rows leave language empty: the ingest must detect Arabic from the script.
        add("general", [path], turns, language=None if n in (4, 9) else "ar", system=n % 4 == 1)

    # two images in one row
    for a, b in ((("red", "square"), ("blue", "circle")), (("green", "triangle"), ("yellow", "square"))):
        pa = img.save(f"{a[0]}_{a[1]}.png", shape_image(*a))
        pb = img.save(f"{b[0]}_{b[1]}.png", shape_image(*b))
        text_a = f"{SHAPES[a[1]][1]} {colour_ar(*a)}"
        text_b = f"{SHAPES[b[1]][1]} {colour_ar(*b)}"
        add("general", [pa, pb], [("user", "الصورة الأولى: <image>\nالصورة الثانية: <image>\nما الفرق بين الصورتين؟"),
                                  ("assistant", f"في الصورة الأولى {text_a}، وفي الصورة الثانية {text_b}.")])

    # charts: the same bar charts as the English rows
    for n in range(3):
        path, tallest = charts[n]
        add("charts", [path], [("user", "<image>\nأي عمود هو الأطول؟"),
                               ("assistant", f"العمود {ORDINAL_AR[tallest]} هو الأطول.")])

    # cultural: the star pattern
    for colour in ("green", "blue", "red"):
        path = f"images/star_{colour}.png"
        add("cultural", [path], [("user", "<image>\nما النقش الظاهر في الصورة؟"),
                                 ("assistant", "نجمة ثمانية الرؤوس مكونة من مربعين متداخلين، وهي من الزخارف "
                                               "الشائعة في الفن الإسلامي.")])
    return rows


def write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("id", pa.string()),
        ("turns", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("language", pa.string()), ("domain", pa.string()), ("authentic", pa.bool_()),
    ])
    table = pa.Table.from_pylist(rows, schema=schema)
    # Small row groups so the reader's batch loop crosses group boundaries, as on real files.
    pq.write_table(table, path, row_group_size=8, compression="zstd")


# ------------------------------------------------------------------------------------- ShareGPT
def sharegpt_rows(img: Images) -> list[dict]:
    blue_circle = img.save("blue_circle.png", shape_image("blue", "circle"))
    yellow_triangle = img.save("yellow_triangle.png", shape_image("yellow", "triangle"))
    return [
        {"messages": [{"role": "user", "content": [{"type": "image"},
                                                   {"type": "text", "text": "What colour is the circle?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "The circle is blue."}]}],
         "images": [blue_circle]},
        {"messages": [{"role": "system", "content": "Answer briefly."},
                      {"role": "user", "content": "<image>\nIs the triangle red?"},
                      {"role": "assistant", "content": "No, the triangle is yellow."}],
         "images": [yellow_triangle], "domain": "general"},
        {"messages": [{"role": "user", "content": "<image>\nما لون المثلث؟"},
                      {"role": "assistant", "content": "المثلث أصفر."}],
         "images": [yellow_triangle]},
        {"messages": [{"role": "user", "content": "Name a primary colour."},
                      {"role": "assistant", "content": "Red is a primary colour."},
                      {"role": "user", "content": "Name another one."},
                      {"role": "assistant", "content": "Blue is another primary colour."}]},
    ]


# ------------------------------------------------------------------------------------- bad rows
def line_starts(rows: list[dict]) -> list[int]:
    """The byte offset of each row's line in the JSON-lines file main() writes for `rows`."""
    lengths = [len((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8")) for r in rows]
    return [sum(lengths[:i]) for i in range(len(rows))]


def bad_rows(img: Images) -> tuple[bytes, list[dict]]:
    """Lines of bad_rows.jsonl and, for each bad row, its expected kind and a reason fragment."""
    good_png = img.files["images/red_square.png"]
    img.raw("garbage.png", bytes(random.Random(SEED).randrange(256) for _ in range(300)))
    img.raw("truncated.png", good_png[: len(good_png) // 2])

    def llava(image: object, conv: list, **extra: object) -> bytes:
        row = {"conversations": conv, **extra}
        if image is not None:
            row["image"] = image
        return json.dumps(row, ensure_ascii=False).encode("utf-8")

    ok = [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A shape."}]
    lines: list[tuple[bytes | None, str | None, str | None]] = [
        (b'{"conversations": [{"from": "human", "value": "cut off"}', "malformed_json", "malformed JSON"),
        (b'{"conversations": [{"from": "human", "value": "caf\xe9?"}, {"from": "gpt", "value": "ok"}]}',
         "not_utf8", "not valid UTF-8 at byte"),
        (llava("images/does_not_exist.png", ok), "missing_image", "image file not found"),
        (llava("images/garbage.png", ok), "bad_image", "not a decodable image"),
        (llava(None, []), "empty_conversation", "empty conversation"),
        (llava(None, [{"from": "human", "value": "How many sides has a square?"}, {"from": "gpt", "value": 4}]),
         "wrong_type", "turn 2: content is int, expected string"),
        (llava("http://example.com/cat.png", ok), "remote_image", "remote image URL not fetched"),
        (llava("images/../../outside.png", ok), "image_escape", "image path escapes image_root"),
        (llava("images/red_square.png", [{"from": "human", "value": "<image>\nWhat colour?"}]),
         "no_assistant", "no assistant turn"),
        (llava("images/red_square.png", [{"from": "human", "value": "<image>\n<image>\nCompare."},
                                         {"from": "gpt", "value": "Same."}]),
         "image_mismatch", "2 <image> placeholder(s) in the text for 1 image(s)"),
        (llava(None, [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Hello"}]),
         "bad_role", "turn 2: from 'bot'"),
        (json.dumps({"text": "no conversation here"}).encode(), "unknown_style", "cannot tell the conversation layout"),
        (b"", None, None),  # a blank line is not a row
        (b"[1, 2, 3]", "wrong_type", "row is list, expected a JSON object"),
        (llava("images/truncated.png", ok), "bad_image", "image does not decode"),
        (llava("images/red_square.png", ok, language="fr"), "bad_value", "language 'fr'"),
    ]
    data = b"".join(line + b"\n" for line, _, _ in lines)
    # A JSON-lines row is numbered by the byte offset its line starts at (ain.data.readers).
    starts = [sum(len(earlier) + 1 for earlier, _, _ in lines[:i]) for i in range(len(lines))]
    expected = [{"file": "bad_rows.jsonl", "row": starts[i], "kind": kind, "reason_contains": frag}
                for i, (_, kind, frag) in enumerate(lines) if kind]
    return data, expected


# ---------------------------------------------------------------------------------------- main
def write(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(SEED)
    img = Images(out)
    en, charts = english_rows(img, rnd)
    ar = arabic_rows(img, rnd, charts)
    sg = sharegpt_rows(img)
    bad_data, bad = bad_rows(img)

    (out / "en_llava.json").write_text(json.dumps(en, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    write_parquet(out / "ar_native.parquet", ar)
    (out / "mixed_sharegpt.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sg), encoding="utf-8")
    (out / "bad_rows.jsonl").write_bytes(bad_data)

    # Stale images from an older version of this script would otherwise linger in the fixture.
    for p in sorted((out / "images").iterdir()):
        if f"images/{p.name}" not in img.files and p.suffix in (".png", ".jpg"):
            p.unlink()

    refs = [r["image"] for r in en if "image" in r] + [p for r in sg for p in r.get("images", [])]
    digests = {hashlib.sha256(img.files[p]).hexdigest() for p in refs}
    digests |= {hashlib.sha256(i["bytes"]).hexdigest() for r in ar for i in r["images"]}

    lang = lambda text: "ar" if any("\u0600" <= c <= "\u06ff" for c in text) else "en"  # noqa: E731
    sources = [{"path": "en_llava.json"}, {"path": "ar_native.parquet"}, {"path": "mixed_sharegpt.jsonl"},
               {"path": "bad_rows.jsonl"}]
    good = {"en_llava": len(en), "ar_native": len(ar), "mixed_sharegpt": len(sg)}
    ids = ([f"en_llava-{i}" for i in range(len(en))] + [f"ar_native-{i}" for i in range(len(ar))]
           + [f"mixed_sharegpt-{offset}" for offset in line_starts(sg)])
    languages = {"en": len(en) + sum(lang(json.dumps(r, ensure_ascii=False)) == "en" for r in sg),
                 "ar": len(ar) + sum(lang(json.dumps(r, ensure_ascii=False)) == "ar" for r in sg)}
    by_kind: dict[str, int] = {}
    for b in bad:
        by_kind[b["kind"]] = by_kind.get(b["kind"], 0) + 1
    expected = {
        "sources": sources, "good": good, "good_total": sum(good.values()), "good_ids": sorted(ids),
        "languages": languages, "unique_images": len(digests), "bad_total": len(bad),
        "bad_by_kind": dict(sorted(by_kind.items())), "bad": bad,
    }
    (out / "expected.json").write_text(json.dumps(expected, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (out / "README.md").write_text(readme(expected), encoding="utf-8")
    return expected


def readme(e: dict) -> str:
    kinds = "\n".join(f"| {k} | {n} |" for k, n in e["bad_by_kind"].items())
    rows = "\n".join(f"| {b['row']} | {b['kind']} | {b['reason_contains']} |" for b in e["bad"])
    return f"""# Smoke fixtures (generated; do not edit by hand)

Regenerate with `python scripts/make_fixtures.py tests/fixtures/smoke`. Rows are deterministic
(fixed tables and a seeded random.Random); image and parquet bytes depend only on the Pillow and
pyarrow versions.

| file | layout | rows |
|---|---|---|
| en_llava.json | LLaVA (top-level list, `conversations` from/value, `image`), English, 7 domains | {e['good']['en_llava']} good |
| ar_native.parquet | native (`turns`, `images` with embedded bytes), authentic Arabic | {e['good']['ar_native']} good |
| mixed_sharegpt.jsonl | ShareGPT (`messages`, OpenAI-style content parts), one Arabic row without a language | {e['good']['mixed_sharegpt']} good |
| bad_rows.jsonl | broken rows (plus one blank line, which is not a row) | {e['bad_total']} bad |
| images/ | PNG and JPEG, 32-64 px; garbage.png and truncated.png are broken on purpose | |
| expected.json | what ingest must produce, read by tests/unit/test_ingest.py | |

Ingest of all four sources must give **{e['good_total']} samples** ({e['languages']['en']} en,
{e['languages']['ar']} ar) referencing **{e['unique_images']} distinct images** (the Arabic rows
embed the same bytes as some English image files: each is stored once), and **{e['bad_total']}
quarantined rows**:

| kind | rows |
|---|---|
{kinds}

| bad_rows.jsonl row (byte offset of the line) | kind | reason contains |
|---|---|---|
{rows}

`ingest.sources` for recipe=smoke:

```yaml
ingest:
  sources:
    - {{path: tests/fixtures/smoke/en_llava.json}}
    - {{path: tests/fixtures/smoke/ar_native.parquet}}
    - {{path: tests/fixtures/smoke/mixed_sharegpt.jsonl}}
    - {{path: tests/fixtures/smoke/bad_rows.jsonl}}
```
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="directory to write (created if missing)")
    args = parser.parse_args(argv)
    e = write(args.out_dir)
    print(f"{args.out_dir}: {e['good_total']} good rows, {e['bad_total']} bad rows, "
          f"{e['unique_images']} distinct images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
