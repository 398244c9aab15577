"""The train stage on the real two-node cluster: two ranks (one per node, gloo on CPU) fine-tune
the tiny Qwen2-VL on the smoke shards with DeepSpeed ZeRO-2, after the whole curation chain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(not (ROOT / ".cache/tiny/judge").exists(), reason="run `make models` first")]


def test_two_node_training_after_the_curation_chain(slurm_run):
    r = slurm_run("recipe=smoke", "stages=[ingest,translate,verify,safety,mix,pack,train]")
    run, report = r.launch()
    assert report[-1].stage == "train" and report[-1].dependency == [report[-2].job_id]
    r.wait(run, timeout_s=600)
    marker = run.stage("train").read_marker(0)
    assert marker is not None, sorted(p.name for p in run.stage("train").failed.glob("*"))
    assert marker["world_size"] == 2 and marker["steps"] >= 2
    ckpt = run.stage("train").out / "ckpt"
    tag = (ckpt / "latest").read_text().strip()
    assert (ckpt / tag).is_dir() and tag == f"step{marker['steps']}"
    # both ranks logged from their own node
    logs = "".join(p.read_text(errors="ignore") for p in run.stage("train").logs.glob("*_log.out"))
    assert "rank 0/2" in logs and "rank 1/2" in logs, logs[-2000:]
    assert json.dumps(marker)  # the marker is plain JSON
