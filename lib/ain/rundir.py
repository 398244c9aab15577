"""The run directory is the database: a re-run, `jobs/status.py` or a person with `ls` can
reconstruct the state of a run from it alone.

    runs/<name>/config.yaml                     resolved config, frozen at first launch
    runs/<name>/launch/<n>.json                 git SHA, dirty diff, command line of each launch
    runs/<name>/events.jsonl                    one line per submission (stage, job id, indices)
    runs/<name>/stages/<stage>/out/             outputs (atomic: temp name, then rename)
    runs/<name>/stages/<stage>/state/<i>.json   in-task progress (resume position)
    runs/<name>/stages/<stage>/done/<i>.json    completion marker: counts, checksums, seconds
    runs/<name>/stages/<stage>/failed/<i>.json  failure record: traceback, host, job id
    runs/<name>/stages/<stage>/logs/            Slurm stdout/stderr (%A_%a) and submitit pickles
    runs/<name>/stages/<stage>/fingerprint.json what its outputs were computed from (ain.fingerprint)
    runs/<name>/stale/<launch>/<stage>/         a stage moved aside when its fingerprint changed
    runs/<name>/lineage/<stage>/                per-sample index files for jobs/trace.py (ain.lineage)
    runs/<name>/report/                         curation and eval reports, review/ site

The whole tree is mode 0700: submitit pickles are code, and outputs may be licensed data.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ain import PROJECT_ROOT
from ain.atomic import atomic_write_json, atomic_write_text, iter_jsonl, read_json
from ain.config_base import ConfigError, config_from_yaml, flatten, to_yaml

if TYPE_CHECKING:
    from ain.config import RunConfig

# The class a frozen config.yaml holds. The run directory sits below the components (layers in
# docs/ARCHITECTURE.md) while RunConfig is composed above them, so it is named here by import
# path, as stage functions are, and resolved when a config is read.
CONFIG_CLASS = "ain.config:RunConfig"

# Keys that may change between launches of one run: where and how jobs run, not what they compute.
MUTABLE_PREFIXES = ("cluster.",)


def private_mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


@dataclass(frozen=True)
class StagePaths:
    root: Path

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def done(self) -> Path:
        return self.root / "done"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def marker(self, index: int) -> Path:
        return self.done / f"{index:05d}.json"

    def failure(self, index: int) -> Path:
        return self.failed / f"{index:05d}.json"

    def state_file(self, index: int) -> Path:
        return self.state / f"{index:05d}.json"

    def create(self) -> "StagePaths":
        for d in (self.root, self.out, self.state, self.done, self.failed, self.logs):
            private_mkdir(d)
        return self

    def done_indices(self) -> set[int]:
        if not self.done.is_dir():
            return set()
        return {int(p.stem) for p in self.done.glob("*.json") if p.stem.isdigit()}

    def require_complete(self, num_tasks: int, needed_by: str) -> None:
        """Raise unless all `num_tasks` tasks of this stage have their markers (a downstream task
        must never read a partial stage)."""
        done = len(self.done_indices())
        if done < num_tasks:
            raise RuntimeError(f"{needed_by} needs stage {self.root.name} complete: {done}/{num_tasks} tasks done "
                               f"in {self.done}")

    def rows(self, pattern: str) -> Iterator[dict[str, Any]]:
        """Every row of this stage's output files matching `pattern`: files in name order, lines in
        file order (how every downstream stage reads an upstream one)."""
        for path in sorted(self.out.glob(pattern)):
            yield from iter_jsonl(path)

    def read_marker(self, index: int) -> dict[str, Any] | None:
        path = self.marker(index)
        return read_json(path) if path.exists() else None

    def write_marker(self, index: int, record: dict[str, Any]) -> None:
        atomic_write_json(self.marker(index), record)
        self.failure(index).unlink(missing_ok=True)

    def write_failure(self, index: int, record: dict[str, Any]) -> None:
        atomic_write_json(self.failure(index), record)


class RunDir:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # layout -----------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def events_path(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def stages_root(self) -> Path:
        return self.root / "stages"

    def stage(self, name: str) -> StagePaths:
        return StagePaths(self.stages_root / name)

    def exists(self) -> bool:
        return self.config_path.exists()

    def load_config(self) -> "RunConfig":
        if not self.config_path.exists():
            raise ConfigError(f"{self.root}: not a run directory (no config.yaml)")
        module, name = CONFIG_CLASS.split(":")
        cls = getattr(importlib.import_module(module), name)
        return config_from_yaml(cls, self.config_path.read_text(encoding="utf-8"))

    # launching --------------------------------------------------------------------------------
    def freeze(self, cfg: "RunConfig", force: bool = False, argv: list[str] | None = None) -> list[str]:
        """Write config.yaml on first launch; on later launches refuse a changed config unless
        forced. Returns the changed keys (empty when nothing changed)."""
        private_mkdir(self.root)
        changed: list[str] = []
        if self.config_path.exists():
            old = flatten(self.load_config())
            new = flatten(cfg)
            changed = sorted(k for k in set(old) | set(new)
                             if old.get(k) != new.get(k) and not k.startswith(MUTABLE_PREFIXES))
            if changed and not force:
                lines = [f"  {k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed]
                raise ConfigError(
                    f"{self.config_path} was frozen at the first launch and this launch changes:\n"
                    + "\n".join(lines)
                    + "\nUse another name=..., or --force to accept the change (finished tasks are kept).")
        atomic_write_text(self.config_path, to_yaml(cfg))
        self._record_launch(argv or sys.argv, changed)
        return changed

    def _record_launch(self, argv: list[str], changed: list[str]) -> None:
        launches = private_mkdir(self.root / "launch")
        n = len(list(launches.glob("*.json")))
        atomic_write_json(launches / f"{n:04d}.json", {
            "time": time.time(), "argv": list(argv), "cwd": os.getcwd(), "host": socket.gethostname(),
            "user": os.environ.get("USER", ""), "forced_changes": changed, **_git_state()})

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive for one launch at a time: two concurrent launches must not both submit."""
        try:
            private_mkdir(self.root)
            f = open(self.root / ".launch.lock", "w")
        except OSError as exc:  # before anything is submitted: say which setting to change
            raise ConfigError(f"cannot write the run directory {self.root}: {exc.strerror or exc}; set "
                              "runs_root= to a writable directory on the shared filesystem") from None
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"{self.root}: another launch of this run is in progress "
                                  "(lock .launch.lock is held); wait for it to finish") from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # events -----------------------------------------------------------------------------------
    def append_event(self, event: dict[str, Any]) -> None:
        event = {"time": time.time(), **event}
        # One short write with O_APPEND: lines from concurrent writers do not interleave.
        line = (json.dumps(event, sort_keys=True) + "\n").encode("utf-8")
        fd = os.open(self.events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        with open(self.events_path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


def _git_state() -> dict[str, Any]:
    """Code version of a launch: SHA and a short dirty diff summary, if this is a git checkout."""
    root = PROJECT_ROOT
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}
    return {"git_sha": sha or None, "git_dirty": dirty}
