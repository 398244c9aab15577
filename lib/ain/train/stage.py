"""The `train` stage: one job of `train.resources.nodes` x `tasks_per_node` processes.

submitit starts this function once per Slurm task (rank). Each rank exports the torch
distributed environment from Slurm (DeepSpeed ignores Slurm's variables) and runs the same
training loop. Preemption and time limits (ain.preemption): submitit's USR2 handler would checkpoint on rank 0
only, inside the signal handler, but a ZeRO checkpoint needs every rank; so each rank's handler
only sets a flag, the loop saves on all ranks at the next step boundary, and rank 0 requeues
the job (at most `cluster.max_requeues` times). The requeued job resumes from `ckpt/latest`
with the exact data position. Only rank 0 returns the stats that become the stage's marker.
"""

from __future__ import annotations

import os
from typing import Any

import submitit

from ain.preemption import StopFlag, requeue_or_fail
from ain.stages import TaskContext


def run_train_task(ctx: TaskContext) -> dict[str, Any]:
    from ain.train.loop import train  # noqa: PLC0415 (torch/deepspeed only inside the job)

    if "TORCHELASTIC_RUN_ID" in os.environ:  # under torchrun (sbatch/ path): it has set the rank variables
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    else:  # under submitit: one Slurm task per rank
        env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        rank, world = env.rank, env.world_size
    # The sbatch path's batch shell receives USR2 and touches this file instead.
    stop_file = ctx.paths.state / f"stop-{os.environ.get('SLURM_JOB_ID', 'local')}"
    if rank == 0:  # left by the previous incarnation of this (requeued, same id) job
        stop_file.unlink(missing_ok=True)
    stop = StopFlag(stop_file)
    ctx.log.info("rank %d/%d (local %s), master %s:%s", rank, world, os.environ.get("LOCAL_RANK"),
                 os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"))
    result = train(ctx.cfg.train, ctx.upstream("pack").out, ctx.paths.out / "ckpt", seed=ctx.cfg.seed,
                   stop_flag=stop, log_dir=ctx.paths.out)
    if result["stopped_early"]:
        requeue_or_fail(result["steps"], ctx.paths.out / "ckpt", ctx.cfg.cluster.max_requeues, rank, ctx.log)
    return {"items": result["samples_seen"], "steps": result["steps"], "rows": result["rows"],
            "rank": rank, "world_size": world, "final_loss": result["losses"][-1] if result["losses"] else None,
            "first_loss": result["losses"][0] if result["losses"] else None,
            "resumed_from_step": result["resumed_from_step"], "skipped": result["skipped"],
            "attn_implementation": result.get("attn_implementation"), "attn_fallback": result.get("attn_fallback")}
