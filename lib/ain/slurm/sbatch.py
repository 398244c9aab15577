"""The one place where a stage's config becomes Slurm parameters and sbatch text.

`slurm_parameters` feeds submitit's SlurmExecutor for real submissions; `render_sbatch` turns the
same parameters into the script text submitit would submit (dry runs and the golden test show
it). Keeping both on one function means the dry run cannot drift from what is submitted.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from submitit.slurm.slurm import _make_sbatch_string  # the text submitit itself submits

from ain.config_base import ClusterConfig, ConfigError, Resources

if TYPE_CHECKING:
    from ain.config import RunConfig



def pin_code_line(code_dir: Path) -> str:
    """The setup line that makes a job import the code snapshot at `code_dir` (see snapshot.py)."""
    return f"export PYTHONPATH={shlex.quote(str(Path(code_dir) / 'lib'))}${{PYTHONPATH:+:$PYTHONPATH}}"


def slurm_parameters(cluster: ClusterConfig, job_name: str, res: Resources,
                     dependency: list[str] | None = None, code_dir: Path | None = None) -> dict[str, Any]:
    """Keyword arguments for `submitit.SlurmExecutor.update_parameters`; `code_dir`, a code
    snapshot (`ain.slurm.snapshot`), goes first on the job's PYTHONPATH."""
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": res.time_min,
        "nodes": res.nodes,
        "ntasks_per_node": res.tasks_per_node,
        "cpus_per_task": res.cpus_per_task,
        "signal_delay_s": cluster.signal_delay_s,
        "array_parallelism": cluster.array_parallelism,
        # the pin comes after the profile's setup lines, so a `module load` or an exported
        # PYTHONPATH there cannot put the checkout back in front of the snapshot
        "setup": list(cluster.setup) + ([pin_code_line(code_dir)] if code_dir else []),
    }
    if res.mem_gb:
        params["mem"] = f"{int(res.mem_gb * 1024)}M"
    if res.gpus_per_node:
        if cluster.gres:
            params["gres"] = cluster.gres
        else:
            params["gpus_per_node"] = res.gpus_per_node
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(cluster, key)
        if value:
            params[key] = value
    # A dependent job whose upstream task failed is cancelled instead of pending forever.
    additional: dict[str, Any] = {"kill-on-invalid-dep": "yes"}
    additional.update({k: (True if v in ("", None) else v) for k, v in cluster.extra_sbatch.items()})
    params["additional_parameters"] = additional
    if res.nodes * res.tasks_per_node > 1:
        # One rank that dies (disk full, OOM) takes the others down instead of leaving them at a
        # collective until the time limit.
        params["srun_args"] = ["--kill-on-bad-exit=1"]
    if dependency:
        params["dependency"] = "afterok:" + ":".join(dependency)
    return params


def render_sbatch(cluster: ClusterConfig, job_name: str, res: Resources, folder: Path, array_size: int,
                  python: str = "python", dependency: list[str] | None = None, code_dir: Path | None = None) -> str:
    """The sbatch script of one stage's array, exactly as submitit would write it."""
    params = slurm_parameters(cluster, job_name, res, dependency, code_dir)
    command = " ".join([python, "-u", "-m", "submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, map_count=array_size, **params)


def multi_node_stage(cfg: RunConfig) -> str | None:
    """The recipe's multi-node stage (training), the one jobs/render_sbatch.py renders."""
    return next((name for name in cfg.stages if cfg.spec(name).multi_node), None)


def render_torchrun_sbatch(cfg: RunConfig, run_root: Path, python: str = "python",
                           code_dir: Path | None = None, stage: str | None = None) -> str:
    """A multi-node stage (default: the recipe's, i.e. train) as a plain sbatch script (srun +
    torchrun), from the same config and
    `slurm_parameters` as the submitit path: one srun task per node, torchrun starts
    `tasks_per_node` ranks there and rendezvouses on the first node. Preemption: Slurm sends USR2
    to the batch shell (B:), whose trap touches the stop file that the training loop polls
    (ranks save, rank 0 requeues the job); the shell keeps waiting for srun meanwhile. The job
    runs `ain.slurm.torchrun_entry`, the same stage function and markers as the submitit path."""
    stage = stage or multi_node_stage(cfg)
    if stage is None:
        raise ConfigError(f"stages: none of {cfg.stages} is a multi-node stage to render")
    res = getattr(cfg, stage).resources
    paths = Path(run_root) / "stages" / stage
    params = slurm_parameters(cfg.cluster, f"ain-{cfg.name}-{stage}", res, code_dir=code_dir)
    params.pop("array_parallelism")
    params.pop("signal_delay_s")
    params["ntasks_per_node"] = 1
    params["cpus_per_task"] = res.cpus_per_task * res.tasks_per_node
    params["additional_parameters"].update({"signal": f"B:USR2@{cfg.cluster.signal_delay_s}", "requeue": True})
    stop_file = paths / "state" / "stop-$SLURM_JOB_ID"
    setup = [*params.pop("setup"),
             'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
             "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
             f"export OMP_NUM_THREADS={res.cpus_per_task}  # per rank (torchrun starts {res.tasks_per_node} per node)",
             f'trap \'touch "{stop_file}"\' USR2  # the loop saves, rank 0 requeues']
    torchrun = " ".join([
        "srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1",
        python, "-m", "torch.distributed.run", '--nnodes="$SLURM_NNODES"',
        f"--nproc-per-node={res.tasks_per_node}", "--rdzv-backend=c10d",
        '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"', '--rdzv-id="$SLURM_JOB_ID"',
        "-m", "ain.slurm.torchrun_entry", shlex.quote(str(Path(run_root))), shlex.quote(stage)])
    text = _make_sbatch_string(command="", folder=paths / "logs", use_srun=False, setup=setup, **params)
    command = "\n".join([
        torchrun + " &",
        "SRUN_PID=$!",
        "# `wait` returns early (>128) when the USR2 trap runs; keep waiting while srun lives",
        'until wait "$SRUN_PID"; do status=$?; kill -0 "$SRUN_PID" 2>/dev/null || exit "$status"; done'])
    head = ["#!/bin/bash", "# Rendered by `python jobs/render_sbatch.py` from the run's config: re-render, do not edit."]
    body = [line for line in text.replace("export SUBMITIT_EXECUTOR=slurm\n", command + "\n").splitlines()[1:]
            if not line.startswith("#SBATCH --wckey")]
    return "\n".join(head + body) + "\n"
