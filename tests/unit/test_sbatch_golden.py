"""The sbatch text a stage is submitted with, pinned by golden files.

An intended change: delete the golden file, run the test once (it writes the new text and
fails), review the diff, commit it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ain.config import load_config
from ain.slurm.sbatch import render_sbatch, slurm_parameters

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def rendered(argv, stage, dependency):
    cfg = load_config(argv, check_paths=False)
    sub = getattr(cfg, stage)
    return render_sbatch(cfg.cluster, f"ain-{cfg.name}-{stage}", sub.resources,
                         Path(f"/shared/runs/{cfg.name}/stages/{stage}/logs"), sub.num_tasks,
                         python="/opt/envs/ain/bin/python", dependency=dependency)


@pytest.mark.parametrize("name, argv, stage, dependency", [
    ("ain_ingest_slurm", ["recipe=ain", "cluster=slurm", "cluster.account=proj42",
                          "cluster.extra_sbatch={reservation: ain, exclusive: ''}"], "ingest", ["1234", "1200_7"]),
    ("canary_localslurm", ["recipe=canary", "cluster=localslurm"], "canary", None),
    # the multi-node training job as submitit submits it: 8 nodes x 8 ranks, one dead rank stops the step
    ("ain_train_slurm", ["recipe=ain", "cluster=slurm"], "train", ["5678"]),
])
def test_rendered_sbatch_matches_golden(chdir_root, name, argv, stage, dependency):
    text = rendered(argv, stage, dependency)
    golden = GOLDEN / f"{name}.sbatch"
    if not golden.exists():
        golden.write_text(text)
        pytest.fail(f"wrote {golden}: review and commit it")
    assert text == golden.read_text()


def test_parameters_carry_dependency_throttle_and_kill_on_invalid_dep(chdir_root):
    cfg = load_config(["recipe=canary", "cluster=localslurm", "cluster.array_parallelism=3"])
    p = slurm_parameters(cfg.cluster, "x", cfg.canary.resources, ["10", "9_2"])
    assert p["dependency"] == "afterok:10:9_2"
    assert p["additional_parameters"]["kill-on-invalid-dep"] == "yes"
    text = render_sbatch(cfg.cluster, "x", cfg.canary.resources, Path("/r/logs"), 8, dependency=["10"])
    assert "#SBATCH --array=0-7%3" in text and "#SBATCH --signal=USR2@30" in text


def test_committed_torchrun_script_is_the_rendering(chdir_root):
    """sbatch/ain_train.sbatch (the plain-sbatch path) is exactly what jobs/render_sbatch.py
    writes for recipe=ain cluster=slurm, so it cannot drift from the submitit path's config."""
    from ain.slurm.sbatch import render_torchrun_sbatch

    cfg = load_config(["recipe=ain", "cluster=slurm"], check_paths=False)
    text = render_torchrun_sbatch(cfg, Path("/shared/runs/ain"), python="python")
    committed = Path(__file__).resolve().parents[2] / "sbatch" / "ain_train.sbatch"
    if not committed.exists():
        committed.write_text(text)
        pytest.fail(f"wrote {committed}: review and commit it")
    assert text == committed.read_text()
    for line in ("#SBATCH --nodes=8", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --signal=B:USR2@300", "#SBATCH --requeue", "--nproc-per-node=8",
                 "export OMP_NUM_THREADS=8"):
        assert line in text, line
