"""What runs inside each array task: skip if done, run the stage function, write the marker.

`StageTask` is a `submitit.helpers.Checkpointable`: when Slurm sends USR2 (ahead of the time
limit, or on preemption) submitit calls `checkpoint`, requeues the job and exits. Progress is
not in the pickle: stage functions commit their position to `state/<i>.json` as they go
(`ResumableJsonl`), so the requeued task simply runs again and continues from there. The number
of requeues is bounded by `cluster.max_requeues`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import traceback
from typing import Any

import submitit

from ain.fingerprint import recorded_digest
from ain.preemption import may_requeue, restarts
from ain.rundir import RunDir
from ain.slurm.snapshot import package_dir
from ain.stages import TaskContext, stage_function

# Fault injection for tests and drills: AIN_FAIL_TASKS="ingest/1,canary/0" makes those tasks raise
# at start. Slurm jobs inherit the submitting environment, so a launch with the variable set
# fails those tasks, and a launch without it lets their resubmission succeed.
FAULT_ENV = "AIN_FAIL_TASKS"


class InjectedFault(RuntimeError):
    pass


def _job_id() -> str:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job:
        return f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID", f"local-{os.getpid()}")


def task_logger(stage: str, index: int) -> logging.Logger:
    log = logging.getLogger(f"ain.{stage}.{index}")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)  # Slurm's per-task log file
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


def offline_environment(cluster) -> None:
    """Jobs read models and datasets from the shared cache only (ain.hub): what the launch pinned."""
    if cluster.hf_home:
        os.environ["HF_HOME"] = os.path.expanduser(cluster.hf_home)
    if cluster.hub_offline:
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ[var] = "1"


class StageTask(submitit.helpers.Checkpointable):
    def __init__(self, run_root: str, stage: str) -> None:
        self.run_root = run_root
        self.stage = stage

    def __call__(self, index: int) -> dict[str, Any]:
        run = RunDir(self.run_root)
        cfg = run.load_config()
        paths = run.stage(self.stage)
        log = task_logger(self.stage, index)
        # Commands a stage starts (`vllm serve`, `transformers serve`) come from the environment
        # this task runs in, as after `conda activate`, even when its bin/ is not on PATH.
        bin_dir = os.path.dirname(sys.executable)
        if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
        offline_environment(cfg.cluster)
        existing = paths.read_marker(index)
        if existing is not None:
            log.info("task %d already done (marker %s): nothing to do", index, paths.marker(index))
            return existing
        num_tasks = getattr(cfg, self.stage).num_tasks
        ctx = TaskContext(cfg=cfg, run=run, stage=self.stage, index=index, num_tasks=num_tasks, log=log)
        log.info("task %d/%d of %s starts on %s (job %s, restart %d, code %s)", index, num_tasks, self.stage,
                 socket.gethostname(), _job_id(), restarts(), package_dir())
        start = time.time()
        try:
            if f"{self.stage}/{index}" in os.environ.get(FAULT_ENV, "").split(","):
                raise InjectedFault(f"{FAULT_ENV} asks {self.stage}/{index} to fail")
            stats = stage_function(cfg.spec(self.stage))(ctx)
        except Exception as exc:
            paths.write_failure(index, {
                "stage": self.stage, "index": index, "job_id": _job_id(), "host": socket.gethostname(),
                "time": time.time(), "restarts": restarts(), "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()})
            log.error("task %d failed: %s (failure record %s)", index, exc, paths.failure(index))
            raise
        if os.environ.get("RANK", "0") != "0":  # multi-process stage: rank 0 alone marks completion
            return stats
        end = time.time()
        marker = {"stage": self.stage, "index": index, "num_tasks": num_tasks, "job_id": _job_id(),
                  "host": socket.gethostname(), "start": start, "end": end, "seconds": end - start,
                  "restarts": restarts(), "code": package_dir(), "fingerprint": recorded_digest(run, self.stage),
                  **stats}
        paths.write_marker(index, marker)
        log.info("task %d done in %.1fs: %s", index, end - start,
                 {k: v for k, v in stats.items() if isinstance(v, (int, float))})
        return marker

    def checkpoint(self, index: int) -> submitit.helpers.DelayedSubmission | None:
        # Runs inside submitit's USR2 handler. The stage function has committed its position;
        # returning a submission requeues the task, returning None fails it for good.
        max_requeues = RunDir(self.run_root).load_config().cluster.max_requeues
        log = task_logger(self.stage, index)
        if not may_requeue(max_requeues):
            log.error("task %d interrupted after %d requeues (cluster.max_requeues=%d): not requeued",
                      index, restarts(), max_requeues)
            return None
        log.warning("task %d interrupted (USR2): requeue %d/%d, resuming from its last commit",
                    index, restarts() + 1, max_requeues)
        return submitit.helpers.DelayedSubmission(StageTask(self.run_root, self.stage), index)
