"""Every registered benchmark dataset whose hub card could be read (configs/eval/hub_cards.yaml:
columns, types and rows from the card's `dataset_info`, with its url and commit) gets one row built
with exactly the card's columns and cell types, run through the eval stage's own code: column
roles, the prompt builder, the image columns, the gold. A registry entry reading a column the real
dataset does not have, or a cell type it cannot handle, fails here instead of in a GPU job.

The cell VALUES are synthetic (a small PNG, an Arabic question, option letters); only the columns
and their types come from the cards. Datasets without a readable card are listed in the file's
`missing`, to be checked on a node with hub access (`python jobs/check_eval_data.py recipe=ain`)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from PIL import Image

from ain.eval.data import row_images, with_roles
from ain.eval.prompts import PROMPTS
from ain.eval.registry import load_registry

ROOT = Path(__file__).resolve().parents[2]
CARDS = yaml.safe_load((ROOT / "configs" / "eval" / "hub_cards.yaml").read_text())
REGISTRY = load_registry(ROOT / "configs" / "eval")
OPTIONS = ["خيار 1", "خيار 2", "خيار 3", "خيار 4"]


def png() -> dict:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": "x.png"}


STRINGS = {"answer": "A", "question": "ما الذي في الصورة؟", "options": repr(OPTIONS), "number": "3", "hint": "تلميح",
           "index": "1000002", "question_type": "multi_choice", "answer_type": "text", "query": "What is shown?"}


def cell(column: str, kind: str):
    """A value of the card's type; for strings, one the prompt builders accept in that column."""
    if kind in ("image", "image_struct"):
        return png()
    if kind == "string":
        return STRINGS.get(column, f"خيار {column}" if len(column) == 1 else "x")
    if kind == "list<string>":
        return list(OPTIONS)
    if kind.startswith("int"):
        return 1000002 if column == "index" else 1
    return {"float64": 1.0, "bool": True, "null": None, "struct": {}, "list": []}[kind]


# Values a dataset's builder needs in a column whose type alone does not say it (the type is the card's).
VALUES = {"ai2d_en": {"answer": "1"}}   # ai2d: the answer is the option's index, as a string (lmms-eval ai2d/utils.py)


def card_row(name: str, features: dict[str, str]) -> dict:
    return {column: VALUES.get(name, {}).get(column, cell(column, kind)) for column, kind in features.items()}


def registered(name: str):
    return REGISTRY.datasets.get(name)


CHECKED = sorted(n for n, c in CARDS["cards"].items() if not c.get("partial") or "image" in c["features"])


def test_the_cards_name_registered_datasets_with_their_hub_ids():
    for name, card in CARDS["cards"].items():
        spec = registered(name)
        assert spec is not None, f"{name}: in hub_cards.yaml but not in the registry"
        assert card["hub"] == spec.hub, (name, card["hub"], spec.hub)
        assert card["split"] == spec.split, (name, card["split"], spec.split)
    assert not set(CARDS["cards"]) & set(CARDS["missing"])
    every = {n for n in REGISTRY.datasets}
    assert set(CARDS["cards"]) | set(CARDS["missing"]) == every, sorted(every ^ (set(CARDS["cards"]) | set(CARDS["missing"])))


@pytest.mark.parametrize("name", CHECKED)
def test_one_row_with_the_cards_columns_goes_through_the_eval_code(name):
    spec = registered(name)
    row = with_roles(card_row(name, CARDS["cards"][name]["features"]), spec.columns)
    questions = PROMPTS[spec.prompt](row, {})
    assert questions and all(q.prompt for q in questions)
    images = row_images(row, spec.images)
    assert images, f"{name}: no image found in the card's columns ({spec.images})"
    for raw in images:
        Image.open(io.BytesIO(raw["bytes"])).verify()
    assert any(q.gold is not None for q in questions), f"{name}: no gold read from the card's columns"


def test_cards_record_what_the_official_loaders_note():
    """Facts the registry relies on, as the cards show them."""
    cards = CARDS["cards"]
    assert "answer" not in cards["countbench"]["features"] and cards["countbench"]["features"]["number"] == "string"
    assert cards["mathvista_en"]["features"]["image"] == "string"            # a path; the picture is decoded_image
    assert cards["mathvista_en"]["features"]["decoded_image"] == "image"
    assert cards["mmbench_en"]["features"]["index"] == "string"              # en config: index is a string
    assert cards["mmt_bench_en"]["split"] == "val" and cards["mmt_bench_en"]["rows"] == 3127
    # vqav2 (CAMEL-Bench) has no `answer` column: the official runner's row["answer"] would drop every
    # row; the registry reads multiple_choice_answer (VQAv2's single answer), as countbench `number`
    assert "answer" not in cards["vqav2"]["features"] and "multiple_choice_answer" in cards["vqav2"]["features"]
    assert registered("vqav2").columns == {"answer": "multiple_choice_answer"}
