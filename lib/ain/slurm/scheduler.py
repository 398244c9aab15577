"""What the scheduler says about our jobs, from `squeue` alone.

We never depend on `sacct`: many clusters (and the local test cluster) run without accounting.
Completion is known from the run directory's markers; the queue tells only what is still pending
or running, which is exactly what a re-launch must not submit twice.
"""

from __future__ import annotations

import getpass
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterable

# squeue states in which a task will still run or is running: never submit it again.
ACTIVE_STATES = frozenset({
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
    "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD",
})


@dataclass(frozen=True)
class QueueEntry:
    element: str  # "<array job id>_<array index>" or "<job id>"
    state: str
    reason: str

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def stuck_on_dependency(self) -> bool:
        # An upstream task failed: with --kill-on-invalid-dep Slurm cancels this, but only once
        # the whole upstream array has ended. A re-launch cancels it at once and resubmits.
        return self.state == "PENDING" and self.reason == "DependencyNeverSatisfied"

    @property
    def waiting_on_dependency(self) -> bool:
        return self.state == "PENDING" and self.reason.startswith("Dependency")


def slurm_available() -> bool:
    """True when `sbatch` exists and the controller answers."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return False
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return ping.returncode == 0 and "is UP" in ping.stdout


def queue(elements: Iterable[str]) -> dict[str, QueueEntry]:
    """squeue's entries for the jobs of these elements ('123_4' or '123'), one per array element.

    Queries the user's whole queue rather than `-j <ids>`: squeue fails outright when one of
    several ids has been purged from the controller.
    """
    job_ids = {element.split("_", 1)[0] for element in elements}
    if not job_ids:
        return {}
    proc = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-t", "all", "-o", "%i|%T|%r"],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"squeue failed ({proc.returncode}): {proc.stderr.strip()}")
    out: dict[str, QueueEntry] = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) != 3:
            continue
        element, state, reason = parts
        if element.split("_", 1)[0] in job_ids:
            out[element] = QueueEntry(element, state, reason)
    return out


def cancel(elements: list[str]) -> None:
    if elements:
        subprocess.run(["scancel", *elements], capture_output=True, text=True, timeout=60, check=False)
