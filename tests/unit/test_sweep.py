"""Sweeps (ain.sweep): variants share every (stage, fingerprint) once and fork at the first stage
whose config differs. The run test goes through the real launcher on submitit's local executor
(ingest -> mix -> pack on the smoke fixtures: no judge server); tests/slurm/test_sweep_on_slurm.py
runs the same on the local Slurm cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ain.config_base import ConfigError
from ain.rundir import RunDir
from ain.sweep import (
    launch_sweep,
    plan_sweep,
    read_sweep,
    submit_report_job,
    sweep_status,
    variant_overrides,
    write_sweep_report,
)

ROOT = Path(__file__).resolve().parents[2]
CHAIN = ["recipe=smoke", "cluster=local", "cluster.executor=local", "stages=[ingest,mix,pack]"]
FULL = ["recipe=smoke", "cluster=local"]


def submitted_stages(run: RunDir) -> list[str]:
    return [e["stage"] for e in run.events() if e["kind"] == "submit"]


def test_variants_from_file_grid_and_command_line(tmp_path):
    assert variant_overrides({"variants": {"a": {"mix.authentic_arabic_share": 0.2, "mix.domain_caps": {"ocr": 3}}}},
                             {}, "f") == {"a": ["mix.authentic_arabic_share=0.2", 'mix.domain_caps={"ocr": 3}']}
    grid = variant_overrides({}, {"mix.authentic_arabic_share": [0.2, 0.5], "verify.min_labse": [0.7]}, "cli")
    assert grid == {"authentic_arabic_share-0.2_min_labse-0.7": ["mix.authentic_arabic_share=0.2", "verify.min_labse=0.7"],
                    "authentic_arabic_share-0.5_min_labse-0.7": ["mix.authentic_arabic_share=0.5", "verify.min_labse=0.7"]}
    with pytest.raises(ConfigError, match="no variants"):
        variant_overrides({}, {}, "cli")
    bad = tmp_path / "bad.yaml"
    bad.write_text("baseline: nope\nvariants:\n  a: {mix.authentic_arabic_share: 0.2}\n")
    with pytest.raises(ConfigError, match="baseline 'nope' is not a variant"):
        plan_sweep([*FULL, f"sweep={bad}"], check_paths=False)
    with pytest.raises(ConfigError, match=r"variant a: (.|\n)*mix.authentic_arabic_share: a share"):
        bad.write_text("variants:\n  a: {mix.authentic_arabic_share: 1.5}\n")
        plan_sweep([*FULL, f"sweep={bad}"], check_paths=False)


@pytest.mark.parametrize("sweep, forks_at", [("authentic_share", "mix"), ("labse_threshold", "verify")])
def test_shipped_sweeps_share_everything_before_the_stage_they_change(tmp_path, sweep, forks_at):
    plan = plan_sweep([*FULL, f"runs_root={tmp_path}", f"sweep={sweep}"], check_paths=False)
    stages = plan.variants[0].cfg.stages
    fork = stages.index(forks_at)
    assert plan.variants[0].name == plan.baseline and len(plan.variants) == 3
    for v in plan.variants[1:]:
        assert list(v.shared) == stages[:fork]              # shared up to the fork ...
        assert v.own == stages[fork:]                       # ... its own from there
    distinct, alone = plan.jobs()
    assert (distinct, alone) == (fork + 3 * (len(stages) - fork), 3 * len(stages))


@pytest.mark.slow
def test_three_variant_sweep_runs_shared_stages_once(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    plan = plan_sweep([*CHAIN, f"runs_root={tmp_path}", "name=share", "sweep.mix.authentic_arabic_share=0.2,0.35,0.5"])
    launch_sweep(plan, argv=["test"])
    runs = {v.name: RunDir(tmp_path / "share" / v.name) for v in plan.variants}
    base, *others = plan.variants
    assert submitted_stages(runs[base.name]) == ["ingest", "mix", "pack"]
    for v in others:
        assert submitted_stages(runs[v.name]) == ["mix", "pack"]          # ingest ran once, for the baseline
        assert (runs[v.name].root / "stages" / "ingest").is_symlink()
        assert runs[v.name].stage("ingest").read_marker(0) == runs[base.name].stage("ingest").read_marker(0)
    targets = {v.name: json.loads((runs[v.name].stage("mix").out / "mix_report.json").read_text())["targets"]
               for v in plan.variants}
    assert sorted(t["authentic_arabic_share"] for t in targets.values()) == [0.2, 0.35, 0.5]
    grid = sweep_status(tmp_path / "share", use_queue=False)
    assert all(cell["state"] == "done" for row in grid.values() for cell in row.values())
    assert [grid[v.name]["ingest"]["owner"] for v in plan.variants] == [base.name] * 3
    result = write_sweep_report(tmp_path / "share")
    table = (tmp_path / "share" / "report" / "sweep.md").read_text()
    assert all(f"| {v.name} |" in table for v in plan.variants)
    assert all(result["variants"][v.name]["samples"] for v in plan.variants)
    # per domain: mix's realised shares of each domain, as mix_report.json has them
    by_domain = json.loads((runs[base.name].stage("mix").out / "mix_report.json").read_text())["realised"]["by_domain"]
    general = by_domain["general"]
    assert (f"| {base.name} | general | {general['samples']} | {general['arabic_share']:.3f} | "
            f"{general['authentic_arabic_share']:.3f} |") in table
    assert sum(d["samples"] for d in by_domain.values()) == result["variants"][base.name]["samples"]
    assert read_sweep(tmp_path / "share")["baseline"] == base.name
    # with eval reports (written here in eval_report's format): scores, deltas, the published row, a plot
    published = {"camel_bench": {"columns": ["VQA", "Total"], "rows": {"AIN-7B": [56.78, 63.77]}}}
    for score, v in zip((40.0, 30.0, 45.5), plan.variants):
        evaluation = {"camel_bench": {"domains": {"VQA": {"score": score}}, "total": score}, "arabic_mmlu": None,
                      "english": {}, "published": published}
        (runs[v.name].root / "report").mkdir(exist_ok=True)
        (runs[v.name].root / "report" / "eval.json").write_text(json.dumps(evaluation))
    write_sweep_report(tmp_path / "share")
    table = (tmp_path / "share" / "report" / "sweep.md").read_text()
    assert "| Variant | CAMEL VQA | CAMEL total |" in table
    assert f"| {others[0].name} | 30.00 (Δ -10.00) | 30.00 (Δ -10.00) |" in table
    assert "| AIN-7B (published) | 56.78 | 63.77 |" in table
    assert (tmp_path / "share" / "report" / "sweep_scores.png").stat().st_size > 1000
    # launching the sweep again submits nothing
    again = launch_sweep(plan_sweep([*CHAIN, f"runs_root={tmp_path}", "name=share",
                                     "sweep.mix.authentic_arabic_share=0.2,0.35,0.5"]), argv=["test"])
    assert not any(sl.submitted for report in again.values() for sl in report)
    # nothing queued or submitted: no report job (on Slurm one follows every job a launch left queued)
    assert submit_report_job(plan, again) is None and not (tmp_path / "share" / "report_job.json").exists()


def test_report_job_waits_for_every_job_however_it_ended(tmp_path):
    from ain.config import load_config
    from ain.slurm.sbatch import slurm_parameters

    cfg = load_config(["recipe=smoke", "cluster=localslurm"])
    params = slurm_parameters(cfg.cluster, "ain-x-sweep-report", cfg.report.resources, ["12", "13_4"],
                              dependency_kind="afterany")
    assert params["dependency"] == "afterany:12:13_4"
    assert slurm_parameters(cfg.cluster, "x", cfg.report.resources, ["12"])["dependency"] == "afterok:12"


def test_submit_sweep_dry_run_prints_the_plan_and_submits_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "jobs/submit_sweep.py", "recipe=smoke", f"runs_root={tmp_path}",
                           "sweep=authentic_share", "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "sweep authentic_share: 3 variants" in proc.stdout
    assert "# ==== variant share_20 ====" in proc.stdout and "  ingest: not selected (left as it is)" in proc.stdout
    assert "cost: shared stages" in proc.stdout
    assert not (tmp_path / "authentic_share").exists()
    bad = subprocess.run([sys.executable, "jobs/submit_sweep.py", "recipe=smoke", "sweep=nope"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "sweep=nope: no file" in bad.stderr
