"""A three-variant authentic-share sweep of the whole smoke recipe on the real two-node cluster,
through the real entry point (`jobs/submit_sweep.py`): ingest, translate, verify and safety run
once (the baseline's jobs, with their judge servers), mix -> pack -> report -> train -> export ->
eval -> eval_report once per variant, each variant's mix waiting on the baseline's safety job;
the sweep's report job writes a comparison table with three rows of measured values (samples,
final training loss, CAMEL-Bench and ArabicMMLU scores); a second submission submits nothing.
About 5 minutes on the 2-core test machine."""

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
                           f"runs_root={tmp_path}", "name=share", "sweep=authentic_share", *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _table(markdown: str, heading: str) -> list[list[str]]:
    """The cells of the table under `## heading`, header and separator left out."""
    lines = markdown.split(f"## {heading}\n", 1)[1].splitlines()
    end = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
    rows = [line for line in lines[:end] if line.startswith("|")][2:]
    return [[c.strip() for c in line.strip("|").split("|")] for line in rows]


def _submits(run: RunDir) -> list[dict]:
    return [e for e in run.events() if e["kind"] == "submit"]


SHARED = ["ingest", "translate", "verify", "safety"]
OWN = ["mix", "pack", "report", "train", "export", "eval", "eval_report"]


def test_authentic_share_sweep_runs_curation_once_and_forks_at_mix(slurm_cluster, tmp_path):
    out = _submit(tmp_path)
    assert "stage computations: 25 (each variant alone: 33)" in out, out
    root = tmp_path / "share"
    record = json.loads((root / "sweep.json").read_text())
    names = [v["name"] for v in record["variants"]]
    assert names == ["share_35", "share_20", "share_50"]                     # baseline first
    runs = {n: RunDir(root / n) for n in names}
    for run in runs.values():
        wait_for(run, [], timeout_s=1200, poll_s=2)
    # The sweep's last job writes the comparison table after every variant's jobs (afterany).
    report_job = json.loads((root / "report_job.json").read_text())
    assert "sweep report: job " + report_job["job_id"] in out, out
    assert {e["job_id"] for run in runs.values() for e in _submits(run)} <= {a.split("_")[0] for a in report_job["after"]}
    wait_until(lambda: not subprocess.run(["squeue", "-h", "-j", report_job["job_id"], "-o", "%i"],
                                          capture_output=True, text=True).stdout.strip(), 120, "the sweep report job")
    by_job = (root / "report" / "sweep.md")
    assert by_job.exists(), sorted(p.name for p in (root / "report_job").iterdir())
    assert len(_table(by_job.read_text(), "Data and training")) == 3
    assert f"sweep report written: {by_job}" in (root / "report_job" / f"{report_job['job_id']}_0_log.out").read_text()
    shown = subprocess.run([sys.executable, "jobs/status.py", str(root)], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout
    assert f"sweep report job {report_job['job_id']}: " in shown and "sweep.md written" in shown, shown
    safety_job = next(e["job_id"] for e in _submits(runs["share_35"]) if e["stage"] == "safety")
    assert [e["stage"] for e in _submits(runs["share_35"])] == SHARED + OWN
    for n in ("share_20", "share_50"):
        submits = _submits(runs[n])
        assert [e["stage"] for e in submits] == OWN                          # curation once, shared
        assert any(d.startswith(safety_job) for d in submits[0]["dependency"]), submits[0]  # waited for it
        for stage in SHARED:                                                 # the baseline's outputs, linked
            assert (runs[n].root / "stages" / stage).resolve() == (runs["share_35"].root / "stages" / stage).resolve()
    for n, run in runs.items():
        for stage in OWN:
            failed = sorted(p.name for p in run.stage(stage).failed.glob("*"))
            assert run.stage(stage).done_indices() and not failed, (n, stage, failed)
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
    data, funnel, scores = (_table(table, h) for h in ("Data and training", "Data funnel", "Scores"))
    assert [r[0] for r in data] == [r[0] for r in funnel] == [r[0] for r in scores[:3]] == names, table
    assert all(r[2].isdigit() and float(r[5]) > 0 for r in data), table              # samples, final loss
    assert len({tuple(r[1:4]) for r in funnel}) == 1, table    # ingested, translated, verified: shared, the same
    assert all(r[5] == d[2] for r, d in zip(funnel, data)), table                    # mixed = the samples
    header = next(line for line in table.splitlines() if line.startswith("| Variant | CAMEL"))
    header = [c.strip() for c in header.strip("|").split("|")]
    for i in (header.index("CAMEL total"), header.index("ArabicMMLU")):
        assert all(float(r[i].split()[0]) >= 0 for r in scores[:3]), table           # measured, not "-"
    domains = _table(table, "Per domain (mixed samples)")
    assert {r[0] for r in domains} == set(names) and all(r[2].isdigit() for r in domains), table
    again = _submit(tmp_path)
    assert "submitted" not in again.split("stage computations")[1], again     # nothing left to do
    assert "sweep report: job" not in again and json.loads((root / "report_job.json").read_text()) == report_job
    assert all(len(_submits(run)) == (11 if n == "share_35" else 7) for n, run in runs.items())
