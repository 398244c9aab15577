"""The dry run's work estimates (ain.data.survey, ain.curate.estimate, ain.eval.estimate) against
figures computed here by hand from the fixture files: rows, samples, languages, turns and images
of the smoke sources; tokens and GPU-hours of translation at the assumed characters-per-token rate
(a translator whose tokenizer is not on this machine); eval items of the smoke datasets; and the
estimated row counts of files too big to count."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

import ain.data.survey as survey
from ain.config import load_config
from ain.curate.estimate import ASSUMED_TOKENS_PER_CHAR, token_counter
from ain.data.config import IngestSource
from ain.slurm.cost import compute_estimates, describe_costs, stage_costs

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "tests" / "fixtures" / "smoke"
EVAL = ROOT / "tests" / "fixtures" / "eval"
GOOD = ["en_llava.json", "ar_native.parquet", "mixed_sharegpt.jsonl"]


def sources_override(paths: list[Path]) -> str:
    return "ingest.sources=[" + ",".join(f"{{path: {p}}}" for p in paths) + "]"


def smoke(tmp_path: Path, *extra: str):
    return load_config(["recipe=smoke", "cluster=local", f"runs_root={tmp_path}", *extra], check_paths=False)


def test_ingest_work_of_the_smoke_sources_by_hand(tmp_path):
    cfg = smoke(tmp_path, sources_override([SMOKE / n for n in GOOD]))
    ingest = compute_estimates(cfg, tmp_path / "smoke")["ingest"]
    # by hand, straight from the files
    llava = json.loads((SMOKE / "en_llava.json").read_text())
    native = pq.read_table(SMOKE / "ar_native.parquet").to_pylist()
    sharegpt = [json.loads(line) for line in (SMOKE / "mixed_sharegpt.jsonl").read_text().splitlines() if line.strip()]
    turns = (sum(len(r["conversations"]) for r in llava) + sum(len(r["turns"]) for r in native)
             + sum(len(r["messages"]) for r in sharegpt))
    images = (sum(1 for r in llava if r.get("image")) + sum(len(r["images"]) for r in native)
              + sum(len(r.get("images", [])) for r in sharegpt))
    expected = json.loads((SMOKE / "expected.json").read_text())
    assert ingest.unit("rows") == len(llava) + len(native) + len(sharegpt) == 64
    assert ingest.unit("samples") == expected["good_total"]          # every row of these three is good
    assert ingest.unit("English samples") == expected["languages"]["en"]
    assert ingest.unit("turns") == turns
    assert ingest.unit("image references") == images
    assert "en_llava: 40 rows exact" in ingest.sources and ingest.task_hours is None  # no GPU: its time limit


def test_translation_tokens_and_gpu_hours_by_hand(tmp_path):
    """Two English rows (turns of 40 + 60 characters; an image-only turn + 200 characters), the tokenizer not on this machine (0.3 tokens per
    character), prompts 'Translate: {text}' (11 characters + text) and 'Back: {text}' (6 + text)."""
    src = tmp_path / "two.jsonl"
    rows = [{"messages": [{"role": "user", "content": "a" * 40}, {"role": "assistant", "content": "b" * 60}]},
            {"messages": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "c" * 200}],
             "images": ["x.png"]}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = smoke(tmp_path, f"ingest.sources=[{{path: {src}, language: en}}]", "translate.translator.model=nobody/absent",
                "translate.to_ar_prompt='Translate: {text}'", "translate.to_en_prompt='Back: {text}'",
                "translate.arabic_tokens_per_english_token=1.5", "translate.output_tokens_per_gpu_s=0.025",
                "translate.num_tasks=2", "cluster.array_parallelism=1", "safety.images_per_gpu_s=0.001",
                "safety.turns_per_gpu_s=0.01", "stages=[ingest,translate,safety]")
    assert ASSUMED_TOKENS_PER_CHAR == 0.3
    est = compute_estimates(cfg, tmp_path / "smoke")
    t = est["translate"]
    # turns sent: "a"*40 (12 tokens), "b"*60 (18), "c"*200 (60); "<image>" alone is copied, not sent
    assert t.unit("turns to translate") == 3 and t.unit("requests") == 6
    en = [12, 18, 60]
    ar = [e * 1.5 for e in en]                                          # 18, 27, 90
    assert t.unit("output tokens") == pytest.approx(sum(en) + sum(ar))  # 90 + 135 = 225
    # input: round(0.3 x (11 + chars)) for EN->AR, round(0.3 x 6) = 2 for the AR->EN prompt + the Arabic
    to_ar = [round(0.3 * (11 + n)) for n in (40, 60, 200)]              # 15, 21, 63
    assert t.unit("input tokens") == pytest.approx(sum(to_ar) + 3 * 2 + sum(ar))  # 99 + 6 + 135 = 240
    # 225 output tokens / 0.025 per s = 9,000 device-seconds = 2.5 h over 2 tasks of 1 device (CPU)
    assert t.task_hours == pytest.approx(1.25) and t.devices_per_task == 1
    costs = {c.stage: c for c in stage_costs(cfg, tmp_path / "smoke", estimates=est)}
    assert costs["translate"].source == "estimate"
    assert costs["translate"].gpu_hours == pytest.approx(2.5)
    assert costs["translate"].wall_hours == pytest.approx(2.5)          # one task at a time
    # safety: 1 image at 0.001/s = 1,000 s; turns 4 (ingest) + 4 (translated copies) at 0.01/s =
    # 800 s; one device judges both: (1000 + 800) / 2 tasks = 900 s per task
    s = est["safety"]
    assert (s.unit("image references"), s.unit("text turns")) == (1, 8)
    assert s.task_hours == pytest.approx(900 / 3600)
    text = "\n".join(describe_costs(list(costs.values())))
    assert "work: 2 English samples, 3 turns to translate, 6 requests, 240 input tokens, 225 output tokens" in text


def test_the_translators_tokenizer_counts_when_it_is_here():
    from transformers import AutoTokenizer

    model = str(ROOT / ".cache" / "tiny" / "translator")
    count, request, how = token_counter(model)
    tok = AutoTokenizer.from_pretrained(model)
    assert how.startswith("counted with the tokenizer")
    assert count("The square is blue.") == len(tok("The square is blue.", add_special_tokens=False)["input_ids"])
    rendered = tok.apply_chat_template([{"role": "user", "content": "Translate: The square is blue."}],
                                       add_generation_prompt=True, tokenize=False)
    assert "Translate: The square is blue." in rendered
    assert request("Translate: {text}", "The square is blue.") == len(tok(rendered, add_special_tokens=False)["input_ids"]) > count(
        "Translate: The square is blue.")


def test_eval_items_of_the_smoke_datasets_by_hand(tmp_path):
    cfg = smoke(tmp_path, "eval.items_per_gpu_s=0.01", "cluster.array_parallelism=6")
    by_hand = {}
    for name in cfg.eval.datasets:
        path = next(EVAL.glob(f"{name}.*"))
        if path.suffix == ".parquet":
            by_hand[name] = pq.ParquetFile(path).metadata.num_rows
        else:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            by_hand[name] = sum(1 for r in rows if not r.get("is_few_shot"))
    e = compute_estimates(cfg, tmp_path / "smoke")["eval"]
    assert e.unit("eval units") == cfg.eval.num_tasks == 6
    assert e.unit("items") == sum(by_hand.values())
    assert e.task_hours == pytest.approx(sum(by_hand.values()) / 0.01 / 6 / 3600)
    capped = compute_estimates(smoke(tmp_path, "eval.max_items_per_dataset=1"), tmp_path / "smoke")["eval"]
    assert capped.unit("items") == 6
    # read from the hub: the rows its card records (CAMEL-Bench mme: 896, chartqa: 745); a dataset
    # without a recorded card is not counted, and no time estimate leaves it out
    hub = compute_estimates(smoke(tmp_path, "eval.data_root=''"), tmp_path / "smoke")["eval"]
    cards = yaml.safe_load((ROOT / "configs" / "eval" / "hub_cards.yaml").read_text())["cards"]
    assert (cards["mme"]["rows"], cards["chartqa"]["rows"]) == (896, 745)
    assert hub.unit("items in the 2 dataset(s) counted") == 896 + 745
    assert hub.task_hours is None and "NOT counted (read from the hub at run time): khatt" in hub.sources
    assert {c.stage: c.source for c in stage_costs(smoke(tmp_path, "eval.data_root=''"), tmp_path / "x")}["eval"] == "limit"


def test_big_files_are_estimated_from_their_first_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(survey, "EXACT_COUNT_BYTES", 10_000)
    monkeypatch.setattr(survey, "COUNT_JSON_BYTES", 10_000)
    monkeypatch.setattr(survey, "HEAD_BYTES", 60_000)
    row = {"conversations": [{"from": "human", "value": "What is shown?"}, {"from": "gpt", "value": "A cat."}]}
    lines = tmp_path / "big.jsonl"
    lines.write_text("".join(json.dumps(row) + "\n" for _ in range(2_000)))
    doc = tmp_path / "big.json"
    doc.write_text(json.dumps([row] * 2_000, indent=1))
    for path in (lines, doc):
        s = survey.survey_source(IngestSource(path=str(path)))
        assert s.rows_how == survey.ESTIMATED and s.surveyed == survey.SURVEY_ROWS
        assert math.isclose(s.rows, 2_000, rel_tol=0.01), (path.name, s.rows)
        assert s.samples == s.surveyed and s.english == s.surveyed
    missing = survey.survey_source(IngestSource(path=str(tmp_path / "nope.jsonl")))
    assert missing.rows is None and "unknown" in missing.rows_how


def test_a_source_that_cannot_be_surveyed_leaves_the_judged_stages_at_their_time_limit(tmp_path):
    cfg = smoke(tmp_path, sources_override([SMOKE / "en_llava.json", tmp_path / "gone.jsonl"]))
    est = compute_estimates(cfg, tmp_path / "smoke")
    assert "NOT counted: gone" in est["ingest"].sources
    for stage in ("translate", "verify", "safety"):
        assert est[stage].task_hours is None and "PARTIAL: sources not counted: gone" in est[stage].sources
    sources = {c.stage: c.source for c in stage_costs(cfg, tmp_path / "smoke", estimates=est)}
    assert sources["translate"] == sources["safety"] == "limit"
