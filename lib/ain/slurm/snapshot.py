"""Pinned code: queued Slurm jobs run the package as it was when they were submitted.

A training job can wait in the queue for hours while the researcher keeps editing the checkout;
without pinning it would import whatever `lib/ain` holds when it starts. At submission the
launcher copies the package (`lib/ain`) and the registry YAML it reads at run time (`configs/`)
into `<run>/code/<digest>/`, named by a digest of their contents, and the job's sbatch script
puts `<run>/code/<digest>/lib` first on PYTHONPATH. Identical code is copied once per run; a
re-launch after an edit gets a new snapshot for what it submits, while jobs already queued keep
theirs. Each done marker records the package directory the task imported (`code`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import ain
from ain import PROJECT_ROOT
from ain.config_base import ConfigError

# What a job reads from the checkout at run time, relative to the project root.
PINNED = ("lib/ain", "configs")
_SKIPPED_DIRS = {"__pycache__"}
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


def source_root() -> Path:
    """The project root the running `ain` package was imported from (lib/ain -> root); inside a
    pinned job this is the snapshot itself, so a launch from a job re-pins identical code."""
    return PROJECT_ROOT


def package_dir() -> str:
    """Where the running `ain` package was imported from (recorded in done markers)."""
    return str(Path(ain.__file__).resolve().parent)


def _pinned_files(root: Path) -> list[Path]:
    if not (root / PINNED[0]).is_dir():
        raise ConfigError(f"cannot pin the code for Slurm jobs: `ain` is imported from {package_dir()}, not from a "
                           f"checkout's {PINNED[0]} (looked under {root}); install the suite editable from its "
                           "checkout (`pip install -e .`, as environment.yml and the Makefile do)")
    files: list[Path] = []
    for part in PINNED:
        base = root / part
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
            files += [Path(dirpath, f).relative_to(root) for f in sorted(filenames)
                      if not f.endswith(_SKIPPED_SUFFIXES)]
    return files


def code_digest(root: Path | None = None) -> str:
    """A digest of the pinned files' paths and bytes: equal code, equal digest."""
    root = Path(root) if root else source_root()
    h = hashlib.sha256()
    for rel in _pinned_files(root):
        h.update(str(rel).encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def snapshot_dir(run_root: Path | str, digest: str) -> Path:
    return Path(run_root) / "code" / digest


def snapshot_code(run_root: Path | str, root: Path | None = None) -> Path:
    """Copy the pinned code into the run directory (once per digest) and return the snapshot's
    root; its `lib/` is what the jobs put on PYTHONPATH. Written under a temporary name and
    renamed, so a crash mid-copy never leaves a partial snapshot that a later launch would reuse."""
    root = Path(root) if root else source_root()
    digest = code_digest(root)
    target = snapshot_dir(run_root, digest)
    if target.is_dir():
        return target
    tmp = target.with_name(f".{digest}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(target.parent, 0o700)
    for rel in _pinned_files(root):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, tmp / rel)  # contents only: the run directory stays private
        os.chmod(tmp / rel, 0o600)
    for dirpath, _, _ in os.walk(tmp):  # mkdir(parents=True) gives the parents default modes
        os.chmod(dirpath, 0o700)
    if digest != code_digest(tmp):  # the checkout changed while we copied: refuse a mixed snapshot
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"the code under {root} changed while it was being pinned; launch again")
    try:
        tmp.rename(target)
    except OSError:  # a concurrent launch pinned the same code first
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():
            raise
    return target
