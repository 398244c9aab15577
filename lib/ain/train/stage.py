"""The `train` stage: one job of `train.resources.nodes` x `tasks_per_node` processes.

submitit starts this function once per Slurm task (rank). Each rank exports the torch
distributed environment from Slurm (DeepSpeed ignores Slurm's variables) and runs the same
training loop. Preemption and time limits: submitit's USR2 handler would checkpoint on rank 0
only, inside the signal handler, but a ZeRO checkpoint needs every rank; so each rank's handler
only sets a flag, the loop saves on all ranks at the next step boundary, and rank 0 requeues
the job (at most `cluster.max_requeues` times). The requeued job resumes from `ckpt/latest`
with the exact data position. Only rank 0 returns the stats that become the stage's marker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from typing import Any

import submitit

from ain.stages import TaskContext


class Requeued(SystemExit):
    """Leave the task without a marker: the job has been requeued and will resume."""


def run_train_task(ctx: TaskContext) -> dict[str, Any]:
    from ain.train.loop import train  # noqa: PLC0415 (torch/deepspeed only inside the job)

    if "TORCHELASTIC_RUN_ID" in os.environ:  # under torchrun (sbatch/ path): it has set the rank variables
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    else:  # under submitit: one Slurm task per rank
        env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        rank, world = env.rank, env.world_size
    stop = threading.Event()
    signal.signal(signal.SIGUSR2, lambda signum, frame: stop.set())
    # The sbatch path's batch shell receives USR2 and touches this file instead.
    stop_file = ctx.paths.state / f"stop-{os.environ.get('SLURM_JOB_ID', 'local')}"
    if rank == 0:  # left by the previous incarnation of this (requeued, same id) job
        stop_file.unlink(missing_ok=True)
    ctx.log.info("rank %d/%d (local %s), master %s:%s", rank, world, os.environ.get("LOCAL_RANK"),
                 os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"))
    result = train(ctx.cfg.train, ctx.upstream("pack").out, ctx.paths.out / "ckpt", seed=ctx.cfg.seed,
                   stop_flag=lambda: stop.is_set() or stop_file.exists(), log_dir=ctx.paths.out)
    if result["stopped_early"]:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if restarts >= ctx.cfg.cluster.max_requeues:
            raise RuntimeError(f"training interrupted after {restarts} requeues (cluster.max_requeues); "
                               f"checkpoint at step {result['steps']} in {ctx.paths.out / 'ckpt'}")
        if rank == 0 and os.environ.get("SLURM_JOB_ID"):
            ctx.log.warning("checkpointed at step %d after USR2: requeueing job %s", result["steps"],
                            os.environ["SLURM_JOB_ID"])
            subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=True, timeout=60)
        raise Requeued(0)
    return {"items": result["samples_seen"], "steps": result["steps"], "rows": result["rows"],
            "rank": rank, "world_size": world, "final_loss": result["losses"][-1] if result["losses"] else None,
            "first_loss": result["losses"][0] if result["losses"] else None,
            "resumed_from_step": result["resumed_from_step"], "skipped": result["skipped"]}
