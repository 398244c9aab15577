"""The GPU canary (`jobs/check_cluster.py --gpu`, ain.train.gpu_check) on the real two-node CPU
cluster, through the entry point: two ranks on two nodes all-reduce over gloo, each reports the
cores it may run on and the free space for checkpoints; the GPU checks (flash-attn, DeepSpeed's
CUDA ops) are skipped, each with its reason; a local model is found and a hub model that is not
in the offline cache is reported missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ain.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm]


def test_gpu_canary_on_the_cpu_cluster(slurm_cluster, tmp_path):
    model = ROOT / ".cache/tiny/judge"
    proc = subprocess.run(
        [sys.executable, "jobs/check_cluster.py", "cluster=localslurm", "--gpu", "--wait", f"runs_root={tmp_path}",
         "gpu_check.resources={nodes: 2, tasks_per_node: 1, cpus_per_task: 1, gpus_per_node: 0, mem_gb: 1, "
         "time_min: 10}", "gpu_check.min_free_gb=0.001", f"gpu_check.models=[{model},Qwen/Not-Cached-7B]"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = RunDir(tmp_path / "canary")
    marker = run.stage("gpu_check").read_marker(0)
    assert marker is not None, sorted(p.name for p in run.stage("gpu_check").failed.glob("*"))
    report = json.loads((run.stage("gpu_check").out / "report.json").read_text())
    reduce = report["all_reduce"]
    assert reduce["ok"] and reduce["backend"] == "gloo" and reduce["sum"] == 3.0 and len(reduce["hosts"]) == 2
    for r in report["ranks"]:
        assert r["cuda_available"] is False and r["gpus_seen"] == 0
        assert r["flash_attn"]["ok"] is None and "no CUDA device" in r["flash_attn"]["skipped"]
        assert r["deepspeed"]["ok"] and "no CUDA device" in r["deepspeed"]["ops_compatible"]["skipped"]
        assert r["cores"] == r["cpus_per_task"] == 1
        assert r["free_gb"] > 0 and r["free_ok"]
    assert sorted(r["rank"] for r in report["ranks"]) == [0, 1]
    assert report["models"]["present"] == [str(model)] and report["models"]["missing"] == ["Qwen/Not-Cached-7B"]
    assert report["problems"] == ["models not in the offline cache: ['Qwen/Not-Cached-7B']"]
