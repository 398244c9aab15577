"""Training checkpoints: DeepSpeed's `step<n>` directories under one `latest` pointer.

    out_dir/step<n>/    engine.save_checkpoint(tag="step<n>", save_latest=False) + client state
    out_dir/latest      "step<n>": the newest COMPLETE checkpoint, moved atomically after every
                        rank has written its part (a save that dies half-way is never adopted)

What `Checkpoints` adds to DeepSpeed's save and load, and why:

- `latest` is ours (save_latest=False): DeepSpeed writes its own before every rank has finished,
  so a killed save could leave it naming a partial directory.
- A failed save on any rank (disk full, quota) is spread to every rank, so none waits forever at
  the next collective for a rank that is gone, and raises `CheckpointWriteError` naming the
  directory, the reason, the free space and the checkpoint `latest` still names.
- At start, directories newer than `latest` (saves that never finished) are deleted; after each
  save, all but the newest `keep` are pruned.
- The client state is the per-rank data position (ain.train.loop: replay points), gathered to
  every rank so any rank's file restores any rank: resume checks the world size matches.
- Fault injection: AIN_FAIL_SAVE_AT_STEP=<n> kills the process after step n's files are written
  and before `latest` moves (tests/reliability).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

LATEST = "latest"
FAIL_SAVE_ENV = "AIN_FAIL_SAVE_AT_STEP"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, quota, I/O error) on some rank."""


def write_latest(out_dir: Path, tag: str) -> None:
    """`latest` <- tag, atomically (temp file, fsync, rename)."""
    tmp = out_dir / f".{LATEST}.tmp"
    with open(tmp, "w") as f:
        f.write(tag)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out_dir / LATEST)


def latest_tag(out_dir: Path) -> Optional[str]:
    pointer = Path(out_dir) / LATEST
    return pointer.read_text().strip() if pointer.exists() else None


def step_dirs(out_dir: Path) -> list[Path]:
    """The step<n> checkpoint directories under out_dir, oldest first."""
    return sorted((p for p in out_dir.glob("step*") if p.is_dir() and p.name[4:].isdigit()),
                  key=lambda p: int(p.name[4:]))


def discard_unadopted(out_dir: Path) -> list[str]:
    """Delete step<n> directories newer than the one `latest` names (all of them if there is no
    `latest`): a save that failed or was killed before `latest` moved. They are never loaded, but
    left alone they would count towards keep_checkpoints and hold disk space that a full disk
    needs back. Returns the deleted tags."""
    tag = latest_tag(out_dir)
    adopted = int(tag[4:]) if tag else -1
    removed = [p for p in step_dirs(out_dir) if int(p.name[4:]) > adopted]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in removed]


def prune_checkpoints(out_dir: Path, keep: int, current: str) -> None:
    """Delete all but the newest `keep` step<n> checkpoints (never `current`, which `latest` names)."""
    if keep <= 0:
        return
    tags = step_dirs(out_dir)
    for old in tags[:-keep]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


class Checkpoints:
    """Save and resume one training run's checkpoints across its ranks.

    `any_rank(flag) -> bool` is True on every rank when `flag` is True on any (an all-reduce MAX);
    `gather(obj) -> list` all-gathers a picklable object; `barrier()` synchronises the ranks."""

    def __init__(self, out_dir: Path, engine: Any, *, rank: int, world: int, keep: int,
                 any_rank: Callable[[bool], bool], gather: Callable[[Any], list], barrier: Callable[[], None]) -> None:
        self.out_dir = Path(out_dir)
        self.engine = engine
        self.rank, self.world, self.keep = rank, world, keep
        self.any_rank, self.gather, self.barrier = any_rank, gather, barrier

    def resume(self) -> Optional[tuple[int, dict[str, Any]]]:
        """(step, this rank's client state) of the checkpoint `latest` names, or None (a fresh
        start). Unfinished saves are removed first."""
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            removed = discard_unadopted(self.out_dir)
            if removed:
                log.warning("removed unadopted checkpoint(s) %s in %s (a save that did not finish)", removed,
                            self.out_dir)
        self.barrier()
        tag = latest_tag(self.out_dir)
        if tag is None:
            return None
        path, client = self.engine.load_checkpoint(str(self.out_dir), tag=tag)
        if path is None or client is None:
            raise RuntimeError(f"checkpoint {self.out_dir / tag} (from {LATEST}) could not be loaded")
        if len(client["data"]) != self.world:
            raise RuntimeError(f"checkpoint {tag} has {len(client['data'])} ranks, this run {self.world}")
        log.info("resumed from %s (step %d)", self.out_dir / tag, int(client["step"]))
        return int(client["step"]), client["data"][self.rank]

    def save(self, step: int, rank_state: dict[str, Any]) -> None:
        """Write step<step> with every rank's `rank_state`, then move `latest` to it (collective)."""
        gathered = self.gather(rank_state)
        tag = f"step{step}"
        try:
            self.engine.save_checkpoint(str(self.out_dir), tag=tag, client_state={"step": step, "data": gathered},
                                        save_latest=False)
            error: Optional[BaseException] = None
        except (OSError, RuntimeError) as exc:  # torch.save reports ENOSPC as a RuntimeError
            error = exc
        if self.any_rank(error is not None):
            previous = latest_tag(self.out_dir) or "nothing"
            reason = f"{type(error).__name__}: {error}" if error else "failed on another rank"
            # torch.save reports a full disk as "unexpected pos ..."; the free space says what happened
            free_mb = shutil.disk_usage(self.out_dir).free / 2**20
            raise CheckpointWriteError(f"checkpoint {self.out_dir / tag} could not be written ({reason}; "
                                       f"{free_mb:.1f} MB free on that filesystem); `latest` still names "
                                       f"{previous}; free space and re-run to resume from it") from error
        if os.environ.get(FAIL_SAVE_ENV) == str(step):  # fault injection: die mid-save
            log.error("%s=%d: exiting before `latest` moves", FAIL_SAVE_ENV, step)
            os._exit(17)
        self.barrier()
        if self.rank == 0:
            write_latest(self.out_dir, tag)
            prune_checkpoints(self.out_dir, keep=self.keep, current=tag)
        self.barrier()
        log.info("saved %s", self.out_dir / tag)
