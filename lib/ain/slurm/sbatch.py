"""The one place where a stage's config becomes Slurm parameters and sbatch text.

`slurm_parameters` feeds submitit's SlurmExecutor for real submissions; `render_sbatch` turns the
same parameters into the script text submitit would submit (dry runs and the golden test show
it). Keeping both on one function means the dry run cannot drift from what is submitted.

What every job gets, on both launch paths (submitit's array script and the srun + torchrun
script of `render_torchrun_sbatch`):

- `srun --cpus-per-task=N`: from Slurm 22.05 srun no longer inherits the job's --cpus-per-task
  (sbatch(1): "It must be requested again with the call to srun or set with the
  SRUN_CPUS_PER_TASK environment variable"); without it each task is confined to one core.
  submitit 1.5.4's srun line passes only --unbuffered/--output/--error, so it goes in its
  `srun_args`. On the command line rather than SRUN_CPUS_PER_TASK: an option overrides every
  environment variable, so srun cannot meet two that disagree ("cpus-per-task set by two
  different environment variables" where --mem-per-cpu sets SLURM_TRES_PER_TASK).
- jobs with more than one rank on GPUs (training): `cluster.nccl_env` exported, and the JIT and
  kernel caches (TORCH_EXTENSIONS_DIR, TRITON_CACHE_DIR, PYTORCH_KERNEL_CACHE_PATH,
  CUDA_CACHE_PATH) on node-local disk, `${TMPDIR:-/tmp}/ain-<job id>`: every rank writes them at
  start-up, and on a shared home they serialise on file locks or are torn by concurrent writers.
- jobs with more than one rank on GPUs, submitit path: a TERM trap in the batch shell, so that
  a SIGTERM (preemption, scancel) does not end the job while the ranks save (the torchrun script
  traps TERM itself, `render_torchrun_sbatch`).
- multi-node jobs with `cluster.exclusive_multi_node`: `--exclusive`, and `--mem=0` when the
  stage's mem_gb is 0 (all of each node's memory).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from submitit.slurm.slurm import _make_sbatch_string  # the text submitit itself submits

from ain.config_base import ClusterConfig, ConfigError, Resources
from ain.rundir import RunDir

if TYPE_CHECKING:
    from ain.config import RunConfig

# (variable, subdirectory of the node-local job directory)
NODE_LOCAL_CACHES = (("TORCH_EXTENSIONS_DIR", "torch_extensions"), ("TRITON_CACHE_DIR", "triton"),
                     ("PYTORCH_KERNEL_CACHE_PATH", "torch_kernels"), ("CUDA_CACHE_PATH", "cuda"))


# The batch shell of a training job survives SIGTERM (preemption, scancel): with a trap set, bash
# runs it only once the foreground srun has ended, so it keeps waiting while the ranks save
# (ain.preemption.StopFlag); without one it would die at once and end the job under them.
SUBMITIT_TERM_TRAP = "trap 'echo \"batch shell: SIGTERM, waiting for srun (the ranks save)\" >&2' TERM"


def pin_code_line(code_dir: Path) -> str:
    """The setup line that makes a job import the code snapshot at `code_dir` (see snapshot.py)."""
    return f"export PYTHONPATH={shlex.quote(str(Path(code_dir) / 'lib'))}${{PYTHONPATH:+:$PYTHONPATH}}"


def distributed_gpu_job(res: Resources) -> bool:
    """More than one rank on GPUs: the jobs that talk NCCL and JIT-compile kernels per rank."""
    return res.gpus_per_node > 0 and res.nodes * res.tasks_per_node > 1


def job_env_lines(cluster: ClusterConfig, res: Resources) -> list[str]:
    """Setup lines this job's shape calls for (see the module docstring): for a distributed GPU
    job, `cluster.nccl_env` and the node-local caches; nothing otherwise."""
    if not distributed_gpu_job(res):
        return []
    for key in cluster.nccl_env:
        if not key.isidentifier():
            raise ConfigError(f"cluster.nccl_env: {key!r} is not an environment variable name")
    lines = [f"export {key}={shlex.quote(str(value))}" for key, value in cluster.nccl_env.items()]
    lines.append('export AIN_NODE_TMP="${TMPDIR:-/tmp}/ain-$SLURM_JOB_ID"  # node-local: JIT and kernel caches')
    lines.append("export " + " ".join(f'{var}="$AIN_NODE_TMP/{sub}"' for var, sub in NODE_LOCAL_CACHES))
    return lines


def slurm_parameters(cluster: ClusterConfig, job_name: str, res: Resources,
                     dependency: list[str] | None = None, code_dir: Path | None = None,
                     dependency_kind: str = "afterok") -> dict[str, Any]:
    """Keyword arguments for `submitit.SlurmExecutor.update_parameters`; `code_dir`, a code
    snapshot (`ain.slurm.snapshot`), goes first on the job's PYTHONPATH. The job starts once the
    `dependency` jobs have succeeded (afterok), or ended however they ended (afterany): sbatch(1),
    --dependency."""
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
        "setup": (list(cluster.setup) + job_env_lines(cluster, res)
                  + ([SUBMITIT_TERM_TRAP] if distributed_gpu_job(res) else [])
                  + ([pin_code_line(code_dir)] if code_dir else [])),
    }
    whole_nodes = cluster.exclusive_multi_node and res.nodes > 1
    if res.mem_gb:
        params["mem"] = f"{int(res.mem_gb * 1024)}M"
    elif whole_nodes:
        params["mem"] = "0"  # sbatch(1) --mem: "zero ... grants the job access to all of the memory on each node"
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
    if whole_nodes:
        additional["exclusive"] = True
    additional.update({k: (True if v in ("", None) else v) for k, v in cluster.extra_sbatch.items()})
    params["additional_parameters"] = additional
    # Slurm >= 22.05: srun does not inherit the job's --cpus-per-task (module docstring)
    params["srun_args"] = [f"--cpus-per-task={res.cpus_per_task}"]
    if res.nodes * res.tasks_per_node > 1:
        # One rank that dies (disk full, OOM) takes the others down instead of leaving them at a
        # collective until the time limit.
        params["srun_args"].append("--kill-on-bad-exit=1")
    if dependency:
        params["dependency"] = f"{dependency_kind}:" + ":".join(dependency)
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
    torchrun), from the same config and `slurm_parameters` as the submitit path: one srun task
    per node (`--cpus-per-task` = the node's share, given to srun again), torchrun starts
    `tasks_per_node` ranks there and rendezvouses on the first node.

    Preemption and time limits: Slurm sends USR2 to the batch shell (B:) ahead of the limit, and
    SIGTERM at preemption, `scancel` or the limit itself (then SIGKILL after the site's
    GraceTime / KillWait). The shell traps both: it touches the stop file that the training loop
    polls (ranks save at the next step, rank 0 requeues the job) and keeps waiting for srun, whose
    ranks get SIGTERM from Slurm too (ain.preemption.StopFlag: same as USR2). torchrun forwards a
    SIGTERM to its ranks and kills them TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds later (30 by
    default): the script sets it to cluster.signal_delay_s, the time a save is given anyway.
    The job runs `ain.slurm.torchrun_entry`, the same stage function and markers as the submitit
    path."""
    stage = stage or multi_node_stage(cfg)
    if stage is None:
        raise ConfigError(f"stages: none of {cfg.stages} is a multi-node stage to render")
    res = getattr(cfg, stage).resources
    paths = RunDir(run_root).stage(stage).root
    params = slurm_parameters(cfg.cluster, f"ain-{cfg.name}-{stage}", res, code_dir=code_dir)
    params.pop("array_parallelism")
    params.pop("signal_delay_s")
    params.pop("srun_args")  # submitit's srun line; this script writes its own
    params["ntasks_per_node"] = 1
    params["cpus_per_task"] = res.cpus_per_task * res.tasks_per_node
    params["additional_parameters"].update({"signal": f"B:USR2@{cfg.cluster.signal_delay_s}", "requeue": True})
    stop_file = paths / "state" / "stop-$SLURM_JOB_ID"
    params.pop("setup")  # rebuilt: the same lines, this script's own trap instead of submitit's
    setup = [*cfg.cluster.setup, *job_env_lines(cfg.cluster, res), *([pin_code_line(code_dir)] if code_dir else []),
             'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
             "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
             f"export OMP_NUM_THREADS={res.cpus_per_task}  # per rank (torchrun starts {res.tasks_per_node} per node)",
             f"export TORCH_ELASTIC_SHUTDOWN_TIMEOUT={cfg.cluster.signal_delay_s}  # torchrun: SIGTERM -> ranks save -> SIGKILL after this",
             f'trap \'touch "{stop_file}"\' USR2 TERM  # the loop saves, rank 0 requeues']
    torchrun = " ".join([
        "srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1", f"--cpus-per-task={params['cpus_per_task']}",
        python, "-m", "torch.distributed.run", '--nnodes="$SLURM_NNODES"',
        f"--nproc-per-node={res.tasks_per_node}", "--rdzv-backend=c10d",
        '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"', '--rdzv-id="$SLURM_JOB_ID"',
        "-m", "ain.slurm.torchrun_entry", shlex.quote(str(Path(run_root))), shlex.quote(stage)])
    text = _make_sbatch_string(command="", folder=paths / "logs", use_srun=False, setup=setup, **params)
    command = "\n".join([
        torchrun + " &",
        "SRUN_PID=$!",
        "# `wait` returns early (>128) when a trapped signal arrives; keep waiting while srun lives",
        'until wait "$SRUN_PID"; do status=$?; kill -0 "$SRUN_PID" 2>/dev/null || exit "$status"; done'])
    head = ["#!/bin/bash", "# Rendered by `python jobs/render_sbatch.py` from the run's config: re-render, do not edit."]
    body = [line for line in text.replace("export SUBMITIT_EXECUTOR=slurm\n", command + "\n").splitlines()[1:]
            if not line.startswith("#SBATCH --wckey")]
    return "\n".join(head + body) + "\n"
