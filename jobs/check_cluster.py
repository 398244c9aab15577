#!/usr/bin/env python
"""Vet a cluster profile before a big submission.

    python jobs/check_cluster.py cluster=slurm cluster.partition=debug --wait
        the cheap `canary` stage as an array job through exactly the path real stages take
        (sbatch, array throttle, markers, logs, status)
    python jobs/check_cluster.py cluster=slurm --gpu --wait
        the GPU canary (ain.train.gpu_check): one short job of gpu_check.resources nodes x ranks,
        started as training is, reporting torch/CUDA/driver, flash-attn (one varlen call),
        DeepSpeed's ops, the cores each rank sees, free space for checkpoints, an all-reduce across
        the nodes and the `ain` recipe's models in the offline cache; the report is
        runs/canary/stages/gpu_check/out/report.json (on CPU nodes the GPU checks say why they
        were skipped)
"""

import sys

from ain import hub
from ain.cli import submit_main
from ain.config import load_config


def gpu_overrides() -> list[str]:
    """stages=[gpu_check] and the models of the `ain` recipe for its offline-cache check."""
    ain = load_config(["recipe=ain", "cluster=slurm"], check_paths=False)  # only its model names are used
    models = sorted({a.repo_id for a in hub.recipe_assets(ain) if a.kind == "model"})
    return ["stages=[gpu_check]", "gpu_check.models=[" + ",".join(models) + "]"]


if __name__ == "__main__":
    argv = sys.argv[1:]
    gpu = "--gpu" in argv
    extra = ["recipe=canary", *(gpu_overrides() if gpu else [])]
    sys.exit(submit_main(__doc__, [a for a in argv if a != "--gpu"], extra=extra))
