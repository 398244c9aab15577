"""`python jobs/submit_train.py recipe=smoke` end to end, through the real entry point, on
submitit's local executor and on the local Slurm cluster; a second run must do no work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ain.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = json.loads((ROOT / "tests/fixtures/smoke/expected.json").read_text())


def submit(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "jobs/submit_train.py", "recipe=smoke", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def check_smoke_outputs(run: RunDir) -> None:
    paths = run.stage("ingest")
    markers = [paths.read_marker(i) for i in range(2)]
    assert all(markers), "both ingest tasks have markers"
    assert sum(m["ingested"] for m in markers) == EXPECTED["good_total"]
    assert sum(m["quarantined"] for m in markers) == EXPECTED["bad_total"]
    ids = [json.loads(line)["id"] for f in sorted(paths.out.glob("samples-*.jsonl")) for line in open(f)]
    assert len(ids) == len(set(ids)) == EXPECTED["good_total"]


def submits(run: RunDir) -> list[dict]:
    return [e for e in run.events() if e["kind"] == "submit"]


@pytest.mark.slow
def test_smoke_on_local_executor_then_rerun_does_nothing(tmp_path):
    first = submit(f"runs_root={tmp_path}", "cluster.executor=local")
    assert f"run directory: {tmp_path}/smoke" in first.stdout
    run = RunDir(tmp_path / "smoke")
    check_smoke_outputs(run)
    before = submits(run)
    second = submit(f"runs_root={tmp_path}", "cluster.executor=local")
    assert "ingest: 2/2 done; nothing to do" in second.stdout
    assert submits(run) == before


@pytest.mark.slow
@pytest.mark.slurm
def test_smoke_on_slurm_then_rerun_does_nothing(slurm_cluster, tmp_path):
    first = submit(f"runs_root={tmp_path}", "cluster=localslurm", "--wait")
    assert "submitted 2 task(s) as job" in first.stdout
    run = RunDir(tmp_path / "smoke")
    check_smoke_outputs(run)
    status = subprocess.run([sys.executable, "jobs/status.py", str(run.root)], cwd=ROOT, capture_output=True, text=True)
    assert status.returncode == 0 and "done" in status.stdout, status.stdout + status.stderr
    before = submits(run)
    second = submit(f"runs_root={tmp_path}", "cluster=localslurm")
    assert "nothing to do" in second.stdout and submits(run) == before
