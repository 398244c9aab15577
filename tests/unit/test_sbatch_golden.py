"""The sbatch text a stage is submitted with, pinned by golden files.

An intended change: delete the golden file, run the test once (it writes the new text and
fails), review the diff, commit it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ain.config import load_config
from ain.config_base import ConfigError
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
                 "export OMP_NUM_THREADS=8", "#SBATCH --exclusive", "#SBATCH --mem=0", "--cpus-per-task=64",
                 "USR2 TERM", "export NCCL_DEBUG=WARN", "TRITON_CACHE_DIR="):
        assert line in text, line


# ------------------------------------------------------------------------------ training on a real cluster
def _srun_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("srun "))


def test_srun_is_given_cpus_per_task_on_both_paths(chdir_root):
    """Slurm >= 22.05: srun does not inherit the job's --cpus-per-task. The submitit script's srun
    and the torchrun script's srun both repeat it, equal to the #SBATCH value."""
    from ain.slurm.sbatch import render_torchrun_sbatch

    for argv, stage, cpus in ((["recipe=ain", "cluster=slurm"], "train", 8),
                              (["recipe=ain", "cluster=slurm"], "ingest", 4),
                              (["recipe=canary", "cluster=localslurm"], "canary", 1)):
        text = rendered(argv, stage, None)
        assert f"#SBATCH --cpus-per-task={cpus}\n" in text
        assert f" --cpus-per-task={cpus} " in _srun_line(text), stage
    cfg = load_config(["recipe=ain", "cluster=slurm"], check_paths=False)
    text = render_torchrun_sbatch(cfg, Path("/shared/runs/ain"))
    assert "#SBATCH --cpus-per-task=64\n" in text and " --cpus-per-task=64 " in _srun_line(text)


def test_multi_node_jobs_take_whole_nodes_where_the_profile_says_so(chdir_root):
    cfg = load_config(["recipe=ain", "cluster=slurm"], check_paths=False)
    train = slurm_parameters(cfg.cluster, "t", cfg.train.resources)
    assert train["additional_parameters"]["exclusive"] is True and train["mem"] == "0"  # mem_gb 0 -> all memory
    text = rendered(["recipe=ain", "cluster=slurm"], "train", None)
    assert "#SBATCH --exclusive\n" in text and "#SBATCH --mem=0\n" in text
    # a memory figure stays a figure; single-node jobs are not made exclusive
    sized = slurm_parameters(cfg.cluster, "t", replace(cfg.train.resources, mem_gb=512))
    assert sized["mem"] == "524288M" and sized["additional_parameters"]["exclusive"] is True
    ingest = slurm_parameters(cfg.cluster, "i", cfg.ingest.resources)
    assert "exclusive" not in ingest["additional_parameters"]
    # the profile switch off: nodes may be shared, mem_gb 0 leaves memory to the site default
    off = load_config(["recipe=ain", "cluster=slurm", "cluster.exclusive_multi_node=false"], check_paths=False)
    p = slurm_parameters(off.cluster, "t", off.train.resources)
    assert "exclusive" not in p["additional_parameters"] and "mem" not in p


def test_nccl_env_and_node_local_caches_only_in_distributed_gpu_jobs(chdir_root):
    from ain.slurm.sbatch import render_torchrun_sbatch

    cfg = load_config(["recipe=ain", "cluster=slurm", "cluster.nccl_env.NCCL_SOCKET_IFNAME=ib0"], check_paths=False)
    assert cfg.cluster.nccl_env["NCCL_DEBUG"] == "WARN"  # configs/cluster/slurm.yaml
    submitit_train = slurm_parameters(cfg.cluster, "t", cfg.train.resources)["setup"]
    torchrun = render_torchrun_sbatch(cfg, Path("/shared/runs/ain"))
    for setup in (submitit_train, torchrun.splitlines()):
        for line in ("export NCCL_DEBUG=WARN", "export TORCH_NCCL_ASYNC_ERROR_HANDLING=3",
                     "export DEEPSPEED_TIMEOUT=30", "export NCCL_SOCKET_IFNAME=ib0"):
            assert line in setup, line
        caches = next(line for line in setup if "TRITON_CACHE_DIR=" in line)
        for var in ("TORCH_EXTENSIONS_DIR", "TRITON_CACHE_DIR", "PYTORCH_KERNEL_CACHE_PATH", "CUDA_CACHE_PATH"):
            assert f'{var}="$AIN_NODE_TMP/' in caches
        assert any(line.startswith('export AIN_NODE_TMP="${TMPDIR:-/tmp}/ain-$SLURM_JOB_ID"') for line in setup)
    # the code pin stays the last word on PYTHONPATH: after the profile's and these lines
    pinned = slurm_parameters(cfg.cluster, "t", cfg.train.resources, code_dir=Path("/r/code/abc"))["setup"]
    assert pinned[-1].startswith("export PYTHONPATH=/r/code/abc/lib")
    # CPU stages and single-rank GPU stages: none of it
    for res in (cfg.ingest.resources, cfg.translate.resources):
        setup = slurm_parameters(cfg.cluster, "x", res)["setup"]
        assert not any("NCCL" in line or "AIN_NODE_TMP" in line for line in setup)
    with pytest.raises(ConfigError, match="cluster.nccl_env"):
        slurm_parameters(replace(cfg.cluster, nccl_env={"NCCL DEBUG": "x"}), "t", cfg.train.resources)


def _run_until_released(script: str, tmp_path: Path, signals: list[str]) -> tuple[int, float]:
    """Run `script` with bash; once it has written $READY, send it `signals` (to the shell only,
    as Slurm's B: signals and a SIGTERM to the batch step do), check it is still alive, then let
    its fake srun end (exit 7) and return the shell's exit status."""
    import os
    import signal
    import subprocess
    import time

    ready, release = tmp_path / "ready", tmp_path / "release"
    env = dict(os.environ, READY=str(ready), RELEASE=str(release), SLURM_JOB_ID="42")
    proc = subprocess.Popen(["bash", "-c", script], env=env, start_new_session=True)
    try:
        deadline = time.time() + 20
        while not ready.exists():
            assert proc.poll() is None and time.time() < deadline, "the script did not start"
            time.sleep(0.02)
        for name in signals:
            proc.send_signal(getattr(signal, f"SIG{name}"))
            time.sleep(0.3)
            assert proc.poll() is None, f"the batch shell died of SIG{name} while srun ran"
        release.touch()
        return proc.wait(timeout=20), time.time()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


FAKE_SRUN = 'bash -c \'touch "$READY"; while [ ! -e "$RELEASE" ]; do sleep 0.05; done; exit 7\''


def test_torchrun_script_traps_term_touches_the_stop_file_and_keeps_waiting(chdir_root, tmp_path):
    """The batch shell of sbatch/ain_train.sbatch, run by bash with srun replaced by a stand-in:
    SIGTERM (preemption, scancel) and USR2 both touch the stop file the ranks poll, and the shell
    keeps waiting for srun and leaves with srun's exit status."""
    from ain.slurm.sbatch import render_torchrun_sbatch

    cfg = load_config(["recipe=ain", "cluster=slurm"], check_paths=False)
    lines = render_torchrun_sbatch(cfg, tmp_path / "run").splitlines()
    trap = next(line for line in lines if line.startswith("trap "))
    assert trap.split("#")[0].rstrip().endswith("USR2 TERM")
    assert "export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=300  " in "\n".join(lines)  # signal_delay_s for the save
    k = lines.index(_srun_line("\n".join(lines)))
    assert lines[k].endswith(" &")
    stop = tmp_path / "run" / "stages" / "train" / "state" / "stop-42"
    stop.parent.mkdir(parents=True)
    script = "\n".join([trap, FAKE_SRUN + " &", *lines[k + 1:]])
    rc, _ = _run_until_released(script, tmp_path, ["TERM"])
    assert rc == 7 and stop.exists()
    stop.unlink()
    (tmp_path / "ready").unlink()
    (tmp_path / "release").unlink()
    rc, _ = _run_until_released(script, tmp_path, ["USR2", "TERM", "USR2"])
    assert rc == 7 and stop.exists()


def test_submitit_training_script_survives_sigterm_while_srun_runs(chdir_root, tmp_path):
    """The submitit path's training script: its batch shell has a TERM trap, so a SIGTERM to it
    does not end the job while the ranks save (bash runs the trap once the foreground srun ends)."""
    text = rendered(["recipe=ain", "cluster=slurm"], "train", None)
    trap = next(line for line in text.splitlines() if line.startswith("trap "))
    assert trap.endswith(" TERM")
    for argv, stage in ((["recipe=ain", "cluster=slurm"], "ingest"), (["recipe=canary", "cluster=localslurm"], "canary")):
        assert "\ntrap " not in rendered(argv, stage, None)  # array stages: submitit's own handling
    rc, _ = _run_until_released("\n".join([trap, FAKE_SRUN]), tmp_path, ["TERM"])
    assert rc == 7
