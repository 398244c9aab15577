"""Crash-safe file writes: a reader never sees a half-written file.

Everything a stage publishes goes through a temp name in the same directory, fsync, then
os.replace (atomic on POSIX filesystems, including NFS and Lustre for a rename within one
directory). `ResumableJsonl` extends this to outputs written row by row over a long task that
may be preempted: progress is committed in steps, and a restart continues at the last commit
without repeating or losing a row.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

log = logging.getLogger(__name__)

def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, mode: int = 0o600) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_json(path: Path, obj: Any, mode: int = 0o600) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n", mode)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ResumableJsonl:
    """JSON-lines outputs of one task that survive preemption.

    Each named stream appends to `<file>.partial`; `commit(position)` fsyncs them and records
    (position, byte offset of every stream, counters) in one state file, atomically; `finish()`
    renames every partial file to its final name. A restart truncates each partial file to its
    committed offset and resumes reading the input at the committed position, so rows written
    after the last commit are written again exactly once and none is lost. `position` counts
    input items consumed (a task may write 0 or several rows per item, to any stream).
    """

    def __init__(self, files: dict[str, Path], state_path: Path) -> None:
        self.finals = {name: Path(p) for name, p in files.items()}
        self.state_path = Path(state_path)
        state = read_json(self.state_path) if self.state_path.exists() else {}
        self.position: int = state.get("position", 0)
        self.counters: dict[str, int] = dict(state.get("counters", {}))
        self.resumed_from: int = self.position
        offsets: dict[str, int] = state.get("offsets", {})
        self._files = {}
        for name, final in self.finals.items():
            final.parent.mkdir(parents=True, exist_ok=True)
            partial, offset = _partial(final), offsets.get(name, 0)
            if final.exists() and not partial.exists():
                # Killed after finish() but before the task's marker: take the published file
                # back so the re-run skips every row and publishes the same bytes again.
                os.replace(final, partial)
            if offset and (not partial.exists() or partial.stat().st_size < offset):
                raise RuntimeError(f"{partial}: shorter than the {offset} bytes committed in "
                                   f"{self.state_path}; the output was modified or lost. Delete both "
                                   "files to redo this task from the start.")
            # "a+b" creates the file if needed; truncation drops rows written after the last commit.
            f = open(partial, "a+b")
            f.truncate(offset)
            f.seek(offset)
            self._files[name] = f

    def write(self, stream: str, obj: Any) -> None:
        line = json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n"
        self._files[stream].write(line.encode("utf-8"))

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def commit(self, position: int) -> None:
        """Everything written so far belongs to input items [0, position)."""
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
        self.position = position
        atomic_write_json(self.state_path, {
            "position": position, "counters": self.counters,
            "offsets": {name: f.tell() for name, f in self._files.items()}})

    def finish(self) -> dict[str, dict[str, Any]]:
        """Publish every stream under its final name; rows, bytes and sha256 per stream."""
        out = {}
        for name, f in self._files.items():
            f.flush()
            os.fsync(f.fileno())
            f.close()
            final = self.finals[name]
            os.chmod(_partial(final), 0o600)
            os.replace(_partial(final), final)
            with open(final, "rb") as g:
                rows = sum(1 for _ in g)
            out[name] = {"file": final.name, "rows": rows, "bytes": final.stat().st_size,
                         "sha256": sha256_file(final)}
        return out

    def close(self) -> None:
        # Called from `finally` blocks: rows not yet committed are dropped by the next restart
        # anyway, so a failed flush (disk full) must not mask the error that is propagating.
        for f in self._files.values():
            if not f.closed:
                try:
                    f.close()
                except OSError:
                    pass  # the descriptor is closed even when the flush fails


class AppendOnlyCache:
    """A JSONL file of {"key", ...} entries that one task appends to (mode 0600), read back whole
    on open: what a requeued task, or a sibling run computing the same things, need not redo.

    A torn last line (the task was killed mid-write) is dropped on open. Each `put` is flushed,
    so a killed process loses nothing it had already paid for. `preload(paths)` adds other tasks'
    files read-only (e.g. a sweep variant's, ain.curate.verify); `reused` counts hits on them and
    `written` the entries this process added (work it did).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, dict] = {}
        self._preloaded: set[str] = set()
        self.reused = self.written = 0
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.chmod(self.path, 0o600)
        self._f = os.fdopen(fd, "r+b")
        good_end = 0
        for line in self._f:
            if not line.endswith(b"\n"):
                break  # torn write: cut it off below
            entry = self._parse(line, self.path)
            if entry is not None:
                self._entries[entry["key"]] = entry
            good_end += len(line)
        self._f.truncate(good_end)
        self._f.seek(good_end)

    @staticmethod
    def _parse(line: bytes, source: Path) -> Optional[dict]:
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if isinstance(entry, dict) and "key" in entry:
            return entry
        log.warning("%s: skipping an unreadable cache line", source)
        return None

    def preload(self, paths: Iterable[Path]) -> int:
        """Entries of other caches (complete lines only, never written to) that this one lacks:
        its own entries win. Returns how many were added."""
        n = 0
        for path in map(Path, paths):
            if path.resolve() == self.path.resolve() or not path.is_file():
                continue
            with open(path, "rb") as f:
                for line in f:
                    entry = self._parse(line, path) if line.endswith(b"\n") else None
                    if entry is not None and entry["key"] not in self._entries:
                        self._entries[entry["key"]] = entry
                        self._preloaded.add(entry["key"])
                        n += 1
        return n

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> Optional[dict]:
        entry = self._entries.get(key)
        if entry is not None and key in self._preloaded:
            self.reused += 1
        return entry

    def put_entry(self, entry: dict[str, Any]) -> None:
        self._f.write((json.dumps(entry, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n")
                      .encode("utf-8"))
        self._f.flush()
        self._entries[entry["key"]] = entry
        self._preloaded.discard(entry["key"])
        self.written += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> "AppendOnlyCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _partial(final: Path) -> Path:
    return final.with_name(final.name + ".partial")


def iter_jsonl(path: Path) -> Iterator[Any]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


@contextlib.contextmanager
def publish_dir(final: Path) -> Iterator[Path]:
    """Build a directory at the yielded path (beside `final`; it does not exist yet, the builder
    creates it), then put it in place of `final` by renames: readers find the previous complete
    directory or the new complete one, never a half-written one. On an exception, or a process
    killed mid-build, `final` is left as it was; leftovers of a killed attempt are removed first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for leftover in [*final.parent.glob(f".{final.name}.tmp-*"), *final.parent.glob(f".{final.name}.old-*")]:
        shutil.rmtree(leftover, ignore_errors=True)
    staging = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    previous = final.with_name(f".{final.name}.old-{os.getpid()}")
    try:
        yield staging
        if not staging.is_dir():
            raise FileNotFoundError(f"nothing was built at {staging} for {final}")
        if final.exists():
            os.replace(final, previous)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)
