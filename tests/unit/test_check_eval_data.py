"""jobs/check_eval_data.py: one row of every selected dataset through the eval stage's own code, on
a local mirror shaped like the hub (tests/fixtures/eval); a renamed column or a broken image fails
there, naming the dataset and the reason. The hub path (streaming) needs the network: not here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from ain.eval.check import check_dataset
from ain.eval.registry import load_registry

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests/fixtures/eval"


def test_every_fixture_dataset_passes_and_the_layouts_are_the_real_ones():
    registry = load_registry(ROOT / "configs/eval")
    for name in ("seed_en", "mathvista_en", "mmt_bench_en", "pope_en", "mmbench_en", "mme", "videomme"):
        result = check_dataset(registry.datasets[name], str(FIXTURES))
        assert result.ok, result.line()
    assert "row 0: 1 question(s), 1 image(s)" in check_dataset(registry.datasets["seed_en"], str(FIXTURES)).detail


def test_a_renamed_column_and_a_missing_dataset_fail_with_the_reason(tmp_path):
    registry = load_registry(ROOT / "configs/eval")
    table = pq.read_table(FIXTURES / "mathvista_en.parquet").rename_columns(
        ["pid", "question", "image", "picture", *pq.read_table(FIXTURES / "mathvista_en.parquet").column_names[4:]])
    pq.write_table(table, tmp_path / "mathvista_en.parquet")
    result = check_dataset(registry.datasets["mathvista_en"], str(tmp_path))
    assert not result.ok and "column 'decoded_image' (registry `columns.image`) missing" in result.detail
    missing = check_dataset(registry.datasets["pope_en"], str(tmp_path))
    assert not missing.ok and missing.detail == "not in the local mirror"
    (tmp_path / "pope_en.jsonl").write_text('{"question": "Is there a car?", "answer": "yes", "image": "nope.png"}\n')
    broken = check_dataset(registry.datasets["pope_en"], str(tmp_path))
    assert not broken.ok and "image 0 cannot be decoded" in broken.detail


def test_the_job_exits_1_and_names_each_failure(tmp_path):
    shutil.copy(FIXTURES / "mme.parquet", tmp_path / "mme.parquet")
    cmd = [sys.executable, str(ROOT / "jobs/check_eval_data.py"), "recipe=eval_smoke", f"eval.data_root={tmp_path}",
           "eval.datasets=[mme,khatt]"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 1, out.stderr
    assert "ok   mme" in out.stdout and "FAIL khatt" in out.stdout and "1/2 datasets ok; failed: khatt" in out.stdout
