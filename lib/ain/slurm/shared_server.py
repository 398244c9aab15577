"""The long-lived server job of `shared` mode: one judge server for all tasks of the stages that
call it, so CPU-only client arrays need no GPUs and no per-task model load.

The launcher submits it next to the client arrays (no dependency either way: clients wait for
its address file). It serves until every client stage of the run is complete, or until no
client task is left in the queue (e.g. a client array failed: the server must not hold GPUs
until its time limit). Preempted, it is requeued like any task and publishes its new address.
"""

from __future__ import annotations

import os
import sys
import time

import submitit

from ain.rundir import RunDir
from ain.serve.server import serve_shared
from ain.slurm.submissions import active_elements
from ain.slurm.task import offline_environment, task_logger

# A client array may take a while to be scheduled; until then an empty queue is not a reason to stop.
GRACE_S = 300.0


class SharedServerTask(submitit.helpers.Checkpointable):
    def __init__(self, run_root: str, judge_name: str) -> None:
        self.run_root = run_root
        self.judge_name = judge_name

    def __call__(self) -> str:
        run = RunDir(self.run_root)
        cfg = run.load_config()
        offline_environment(cfg.cluster)
        judge, stages = cfg.judges(run.root)[self.judge_name]
        log = task_logger("serve", 0)
        bin_dir = os.path.dirname(sys.executable)  # `vllm`/`transformers` of this environment
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
        started = time.time()

        def complete() -> bool:
            return all(len(run.stage(s).done_indices()) >= getattr(cfg, s).num_tasks for s in stages)

        def until() -> bool:
            if complete():
                log.info("all client stages %s complete: stopping the shared %s", stages, self.judge_name)
                return True
            if time.time() - started > GRACE_S and not active_elements(run, stages):
                log.warning("no client task of %s is queued or running: stopping the shared %s",
                            stages, self.judge_name)
                return True
            return False

        serve_shared(judge, run.root, self.judge_name, run.root / "serve", until=until,
                     poll_s=min(5.0, cfg.cluster.poll_s * 5))
        return "stopped"
