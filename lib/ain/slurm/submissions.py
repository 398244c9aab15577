"""Which queue elements a run submitted (from its events.jsonl) and which of them are still in
the queue: what a re-launch, `jobs/status.py` and a shared server job each need to know."""

from __future__ import annotations

from ain.rundir import RunDir
from ain.slurm import scheduler


def submitted_elements(run: RunDir) -> dict[str, tuple[str, int]]:
    """Map queue element ('123_4', or '123' for a one-task submission, which submitit sends as
    a plain job) -> (stage, stage index), from events.jsonl."""
    out: dict[str, tuple[str, int]] = {}
    for ev in run.events():
        if ev.get("kind") == "submit" and ev.get("executor") == "slurm":
            for element, index in zip(ev["elements"], ev["indices"]):
                out[element] = (ev["stage"], index)
    return out


def active_elements(run: RunDir, stages: list[str]) -> list[str]:
    """Queue elements of these stages (or pseudo-stages such as 'serve:translator') still pending
    or running."""
    elements = {e: key for e, key in submitted_elements(run).items() if key[0] in stages}
    return sorted(e for e, entry in scheduler.queue(elements).items() if e in elements and entry.active)
