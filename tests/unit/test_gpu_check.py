"""`jobs/check_cluster.py --gpu` plans the GPU canary with the `ain` recipe's models (dry run);
the checks themselves run on the cluster (tests/slurm/test_gpu_check.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_flag_plans_one_multi_node_job_checking_the_recipes_models(tmp_path):
    proc = subprocess.run([sys.executable, "jobs/check_cluster.py", "cluster=slurm", "--gpu", "--dry-run",
                           f"runs_root={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 2), proc.stderr   # 2: the hub cache is empty here, said after the plan
    assert "  gpu_check: 1 tasks (1 to run), after -; per task 2 node(s) x 8 proc, 8 cpu, 8 gpu/node" in proc.stdout
    assert "canary:" not in proc.stdout.split("DAG:")[1].split("cost")[0]
    sys.path.insert(0, str(ROOT / "jobs"))
    try:
        from check_cluster import gpu_overrides
    finally:
        sys.path.remove(str(ROOT / "jobs"))
    stages, models = gpu_overrides()
    assert stages == "stages=[gpu_check]"
    for model in ("Qwen/Qwen2-VL-7B-Instruct", "AIML-TUDA/LlavaGuard-v1.2-7B-OV-hf", "sentence-transformers/LaBSE"):
        assert model in models
