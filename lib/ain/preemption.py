"""Preemption and time limits, the same way for every stage: a stop flag, then requeue or fail.

Slurm announces the end of a task with USR2 (`--signal=USR2@lead`, ahead of the time limit or at
preemption where the site sends the user signal) or with SIGTERM (preemption elsewhere, scancel,
then SIGKILL after the grace time). A handler only sets a flag: a ZeRO or DDP checkpoint needs
every rank, so the loop saves on all ranks at its next step boundary, then rank 0 asks Slurm to
requeue the job, at most `cluster.max_requeues` times. Array stages that commit as they go use
submitit's Checkpointable path instead (ain.slurm.task) with the same bound, `may_requeue`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class Requeued(SystemExit):
    """Leave the task without a marker: the job has been requeued and will resume."""


def restarts() -> int:
    """How many times Slurm has restarted this job (0 on the first run and outside Slurm)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0"))


def may_requeue(max_requeues: int) -> bool:
    return restarts() < max_requeues


# (signal number, time) of each stop signal this process received, for the requeue's log line.
# The handler only appends: writing to a stream there can raise "reentrant call" if the signal
# arrives while the main thread is writing to the same stream.
_received: list[tuple[int, float]] = []


class StopFlag:
    """Set by USR2 or SIGTERM to this process, or by a stop file (the plain-sbatch path's batch
    shell receives the signal and touches the file); polled by the loop at step boundaries."""

    def __init__(self, stop_file: Optional[Path] = None) -> None:
        self._event = threading.Event()
        self.stop_file = stop_file
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame) -> None:
        _received.append((signum, time.time()))
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set() or (self.stop_file is not None and self.stop_file.exists())


def _stop_reason() -> str:
    """What stopped this rank, for the log: the signals it received and how long ago."""
    if not _received:
        return "a stop on another rank or the stop file"
    now = time.time()
    return ", ".join(f"{signal.Signals(signum).name} {now - at:.1f}s ago" for signum, at in _received)


def requeue_or_fail(step: int, checkpoint: Path, max_requeues: int, rank: int, log: logging.Logger) -> None:
    """After the loop saved at `step` and stopped early: requeue the job (rank 0 asks Slurm) and
    leave without a marker, or fail for good once `max_requeues` restarts are spent."""
    if not may_requeue(max_requeues):
        raise RuntimeError(f"training interrupted after {restarts()} requeues (cluster.max_requeues); "
                           f"checkpoint at step {step} in {checkpoint}")
    job = os.environ.get("SLURM_JOB_ID")
    if rank == 0 and job:
        log.warning("checkpointed at step %d after %s: requeueing job %s", step, _stop_reason(), job)
        proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            # Preemption with PreemptMode=REQUEUE: once GraceTime is over Slurm requeues the job
            # itself (SIGTERM, SIGKILL after KillWait), and a save that outlasted the grace time
            # then finds it requeued already ("Job is pending execution"). That is the requeue
            # we wanted, not a failure; anything else is.
            if slurm_restarts(job) > restarts():
                log.warning("job %s was requeued by Slurm already (%s)", job, proc.stderr.strip())
            else:
                raise RuntimeError(f"scontrol requeue {job} failed: {proc.stderr.strip()}; "
                                   f"checkpoint at step {step} in {checkpoint}")
    raise Requeued(0)


def slurm_restarts(job: str) -> int:
    """The controller's restart count of a job (`scontrol show job`: Restarts=), -1 if unknown.
    Ahead of this incarnation's SLURM_RESTART_COUNT once Slurm has requeued the job."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=60)
    fields = dict(kv.split("=", 1) for kv in proc.stdout.split() if "=" in kv)
    try:
        return int(fields["Restarts"])
    except (KeyError, ValueError):
        return -1


def finish_distributed() -> None:
    """All ranks leave together, then the process group is torn down before the interpreter exits.
    A rank that exits first with a live gloo group can abort in C++ ("terminate called without an
    active exception"): the job then ends non-zero after its work is done, srun's
    --kill-on-bad-exit stops rank 0 (perhaps before it marks the task done), and the afterok
    dependents are cancelled."""
    import torch.distributed as tdist  # noqa: PLC0415 (torch only inside training jobs)

    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()
