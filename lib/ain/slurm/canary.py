"""The canary stage: cheap simulated work that takes the same path as every real stage.

Each task "processes" items 0..items_per_task-1 of its slice, sleeping seconds_per_item on each,
and writes one row per item with resumable outputs. Its output lists every item exactly once
whatever happened on the way (preemption, requeue, a crash between commits), which is what the
Slurm tests check, and what `jobs/check_cluster.py` shows a researcher before a big submission.
Its marker also records the cores the task could run on (`cores`), to compare with the
`cpus_per_task` it asked for.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ain.config_base import Need, Resources
from ain.stages import TaskContext

if TYPE_CHECKING:
    from ain.config import RunConfig


@dataclass
class CanaryConfig:
    """A cheap stage that exercises the scheduler path end to end: arrays, throttles,
    dependencies, requeue and resume. `jobs/check_cluster.py` runs it to vet a cluster profile."""

    OPERATIONAL: ClassVar[tuple[str, ...]] = ("commit_every",)
    """Fields that change how it runs, not what it computes: left out of fingerprints (ain.fingerprint)."""

    num_tasks: int = 2
    """Array size."""
    items_per_task: int = 5
    """Items each task writes; its output must list each exactly once, whatever happened."""
    seconds_per_item: float = 0.1
    """Sleep per item (simulated work)."""
    commit_every: int = 1
    """Items between progress commits (resume granularity)."""
    resources: Resources = field(default_factory=lambda: Resources(mem_gb=0.5, time_min=10))

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        need(self.items_per_task >= 1, "canary.items_per_task", "must be >= 1")
        need(self.commit_every >= 1, "canary.commit_every", "must be >= 1")


def run_canary_task(ctx: TaskContext) -> dict[str, Any]:
    cfg = ctx.cfg.canary
    out = ctx.resumable_outputs(items=f"items-{ctx.index:05d}.jsonl")
    if out.resumed_from:
        ctx.log.info("canary task %d resumes at item %d", ctx.index, out.resumed_from)
    start = time.time()
    attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    try:
        for item in range(out.position, cfg.items_per_task):
            time.sleep(cfg.seconds_per_item)
            out.write("items", {"task": ctx.index, "item": item, "attempt": attempt,
                                "host": os.environ.get("SLURMD_NODENAME", socket.gethostname())})
            out.count("items")
            if (item + 1) % cfg.commit_every == 0 or item + 1 == cfg.items_per_task:
                out.commit(item + 1)
        files = out.finish()
    finally:
        out.close()
    done = cfg.items_per_task - out.resumed_from
    # The cores this task may run on, as bound by Slurm: fewer than resources.cpus_per_task means
    # the srun line lost --cpus-per-task (Slurm >= 22.05 no longer passes the job's on to srun).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ctx.log.info("canary task %d: %d items in %.1fs on %s core(s) (cpus_per_task %d)", ctx.index, done,
                 time.time() - start, cores, cfg.resources.cpus_per_task)
    return {"items": cfg.items_per_task, "resumed_from": out.resumed_from, "files": files, "cores": cores}
