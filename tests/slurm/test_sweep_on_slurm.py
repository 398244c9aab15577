"""A three-variant authentic-share sweep on the real two-node cluster, through the real entry point
(`jobs/submit_sweep.py`): ingest runs once (the baseline's job), mix and pack once per variant,
each variant's mix waiting on the baseline's ingest job; the comparison table has three rows with
measured values; a second submission submits nothing.

Smoke scale and no judge stage (ingest -> mix -> pack), so the test measures the sharing and the
dependencies, not the models; tests/unit/test_sweep.py covers the plan of the full recipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ain.rundir import RunDir
from ain.slurm.launcher import wait_for
from tests.slurm.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm]


def _submit(tmp_path: Path, *extra: str) -> str:
    proc = subprocess.run([sys.executable, "jobs/submit_sweep.py", "recipe=smoke", "cluster=localslurm",
                           "stages=[ingest,mix,pack]", f"runs_root={tmp_path}", "name=share",
                           "sweep=authentic_share", *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _submits(run: RunDir) -> list[dict]:
    return [e for e in run.events() if e["kind"] == "submit"]


def test_authentic_share_sweep_shares_ingest_and_forks_at_mix(slurm_cluster, tmp_path):
    out = _submit(tmp_path)
    assert "stage computations: 7 (each variant alone: 9)" in out, out
    root = tmp_path / "share"
    record = json.loads((root / "sweep.json").read_text())
    names = [v["name"] for v in record["variants"]]
    assert names == ["share_35", "share_20", "share_50"]                     # baseline first
    runs = {n: RunDir(root / n) for n in names}
    for run in runs.values():
        wait_for(run, [], timeout_s=600, poll_s=1)
    # The sweep's last job writes the comparison table after every variant's jobs (afterany).
    report_job = json.loads((root / "report_job.json").read_text())
    assert "sweep report: job " + report_job["job_id"] in out, out
    assert {e["job_id"] for run in runs.values() for e in _submits(run)} <= {a.split("_")[0] for a in report_job["after"]}
    wait_until(lambda: not subprocess.run(["squeue", "-h", "-j", report_job["job_id"], "-o", "%i"],
                                          capture_output=True, text=True).stdout.strip(), 120, "the sweep report job")
    by_job = (root / "report" / "sweep.md")
    assert by_job.exists(), sorted(p.name for p in (root / "report_job").iterdir())
    assert len([line for line in by_job.read_text().splitlines() if line.startswith("| share_")]) == 3
    assert f"sweep report written: {by_job}" in (root / "report_job" / f"{report_job['job_id']}_0_log.out").read_text()
    shown = subprocess.run([sys.executable, "jobs/status.py", str(root)], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout
    assert f"sweep report job {report_job['job_id']}: " in shown and "sweep.md written" in shown, shown
    ingest_job = next(e["job_id"] for e in _submits(runs["share_35"]) if e["stage"] == "ingest")
    assert [e["stage"] for e in _submits(runs["share_35"])] == ["ingest", "mix", "pack"]
    for n in ("share_20", "share_50"):
        submits = _submits(runs[n])
        assert [e["stage"] for e in submits] == ["mix", "pack"]              # ingest once, shared
        assert any(d.startswith(ingest_job) for d in submits[0]["dependency"]), submits[0]  # waited for it
    for n, run in runs.items():
        assert run.stage("pack").done_indices() == {0, 1}, (n, sorted(p.name for p in run.stage("pack").failed.glob("*")))
    shares = {n: json.loads((runs[n].stage("mix").out / "mix_report.json").read_text())["targets"]["authentic_arabic_share"]
              for n in names}
    assert shares == {"share_35": 0.35, "share_20": 0.2, "share_50": 0.5}
    status = subprocess.run([sys.executable, "jobs/status.py", str(root), "--json"], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    grid = json.loads(status.stdout)
    assert {n: grid[n]["ingest"]["owner"] for n in names} == dict.fromkeys(names, "share_35")
    assert all(cell["state"] == "done" for row in grid.values() for cell in row.values())
    report = subprocess.run([sys.executable, "jobs/report.py", str(root)], cwd=ROOT, capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    table = (root / "report" / "sweep.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| share_")]
    assert len(rows) == 3 and all(row.split("|")[3].strip().isdigit() for row in rows), table  # measured samples
    again = _submit(tmp_path)
    assert "submitted" not in again.split("stage computations")[1], again     # nothing left to do
    assert "sweep report: job" not in again and json.loads((root / "report_job.json").read_text()) == report_job
    assert all(len(_submits(run)) == (3 if n == "share_35" else 2) for n, run in runs.items())
