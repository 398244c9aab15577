"""Stage fingerprints: what a stage's outputs were computed from, and which outputs a config
change makes stale.

A stage's fingerprint is a sha256 over

  - its effective config: its section's fields, minus those that change how it runs but not
    what it writes (resources, concurrency, commit points, server plumbing: each dataclass lists
    its own in an `OPERATIONAL` class variable), plus the values it takes from other sections
    (a section's optional `fingerprint_extra(cfg)`, e.g. pack counts tokens with train's
    processor) and the run's seed;
  - the fingerprints of the stages it reads (`StageSpec.reads`, those in the recipe), so a change
    upstream reaches everything downstream;
  - the identity (path, size, mtime) of the files it reads from outside the run directory (a
    section's optional `input_files(cfg)`: ingest's sources, an eval checkpoint).

The launch records each stage's fingerprint in `stages/<stage>/fingerprint.json` (with the values
it was computed from, so a difference can name its keys), and every done marker carries it.
A stage whose recorded fingerprint differs from the one the launch computes is stale: with
`--force` its directory is moved to `stale/<launch>/<stage>/` (never deleted, never mixed with the
new outputs) and it is recomputed; without, the launch refuses and names the keys.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ain.atomic import atomic_write_json, read_json
from ain.rundir import RunDir, StagePaths, private_mkdir

if TYPE_CHECKING:
    from ain.config import RunConfig

# Fields of any config dataclass that never change a stage's outputs (what a task asks Slurm for).
ALWAYS_OPERATIONAL = frozenset({"resources", "shared_resources"})
FINGERPRINT_FILE = "fingerprint.json"


def effective_fields(obj: Any, prefix: str = "", decisions: bool = True) -> dict[str, Any]:
    """{'translator.model': ..., ...}: the fields of a config dataclass that determine outputs,
    flattened; lists and dicts are kept whole (JSON values). Without `decisions`, also leave out
    the fields a section lists in `DECISION_ONLY`: thresholds applied to work that does not depend
    on them (verify's scores and re-translations), which a run differing only there can reuse."""
    out: dict[str, Any] = {}
    skip = ALWAYS_OPERATIONAL | frozenset(getattr(type(obj), "OPERATIONAL", ()))
    if not decisions:
        skip |= frozenset(getattr(type(obj), "DECISION_ONLY", ()))
    for f in fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if is_dataclass(value):
            out.update(effective_fields(value, f"{prefix}{f.name}.", decisions))
        elif isinstance(value, list) and value and all(is_dataclass(v) for v in value):
            out[f"{prefix}{f.name}"] = [effective_fields(v, "", decisions) for v in value]
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def file_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Path, size and modification time of a file, or of every file under a directory (a hub id
    or a missing path: just its name, the hub revision is pinned by the launch)."""
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if p.is_dir():
        files = sorted(q for q in p.rglob("*") if q.is_file())
        return {"path": str(p), "files": [file_identity(q) for q in files]}
    return {"path": str(p)}


@dataclass(frozen=True)
class Fingerprint:
    stage: str
    digest: str
    config: dict[str, Any]
    upstream: dict[str, str]
    inputs: list[dict[str, Any]] = field(default_factory=list)
    reuse_key: str = ""
    """The digest without the section's DECISION_ONLY fields: runs with the same reuse key differ
    at most in thresholds, so one may reuse the other's cached work (reusable_siblings)."""

    def record(self) -> dict[str, Any]:
        return {"stage": self.stage, "digest": self.digest, "reuse_key": self.reuse_key, "config": self.config,
                "upstream": self.upstream, "inputs": self.inputs}


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def stage_fingerprints(cfg: "RunConfig") -> dict[str, Fingerprint]:
    """The fingerprint of every stage of the recipe, in pipeline order."""
    out: dict[str, Fingerprint] = {}
    for name in cfg.stages:
        section = getattr(cfg, name)
        own = effective_fields(section)
        config = {"seed": cfg.seed, **own}
        extra = getattr(section, "fingerprint_extra", None)
        if extra is not None:
            config.update(extra(cfg))
        inputs_of = getattr(section, "input_files", None)
        inputs = [file_identity(p) for p in inputs_of(cfg)] if inputs_of is not None else []
        upstream = {u: out[u].digest for u in cfg.spec(name).reads if u in out}
        digest = _digest({"stage": name, "config": config, "upstream": upstream, "inputs": inputs})
        decision_only = set(own) - set(effective_fields(section, decisions=False))
        undecided = {k: v for k, v in config.items() if k not in decision_only}
        reuse_key = _digest({"stage": name, "config": undecided, "upstream": upstream, "inputs": inputs})
        out[name] = Fingerprint(name, digest, config, upstream, inputs, reuse_key)
    return out


def records_under(runs_root: Path, stage: str) -> Iterator[tuple[StagePaths, dict[str, Any]]]:
    """This stage in every run under runs_root (runs/<run>/ and a sweep's runs/<sweep>/<variant>/)
    that has a recorded fingerprint, with that record; each directory once (a sweep's linked
    stage directories are followed to the one they share)."""
    seen: set[Path] = set()
    for pattern in (f"*/stages/{stage}", f"*/*/stages/{stage}"):
        for d in sorted(Path(runs_root).glob(pattern)):
            real = d.resolve()
            if real in seen or not (real / FINGERPRINT_FILE).is_file():
                continue
            seen.add(real)
            yield StagePaths(real), read_json(real / FINGERPRINT_FILE)


def reusable_siblings(run: RunDir, stage: str) -> list[StagePaths]:
    """The same stage in the other runs beside this one (its runs_root, or its sweep) whose
    reuse key equals this one's and whose fingerprint does not: the same work under other
    thresholds, whose caches this stage may read (ain.curate.verify)."""
    own = recorded(run, stage)
    if not own or not own.get("reuse_key"):
        return []
    mine = run.stage(stage).root.resolve()
    return [paths for paths, other in records_under(run.root.parent, stage)
            if paths.root != mine and other.get("reuse_key") == own["reuse_key"] and other.get("digest") != own["digest"]]


@dataclass(frozen=True)
class Stale:
    """A stage whose outputs were computed from something else than the config asks for now."""

    stage: str
    keys: list[str]              # its own config keys that changed
    upstream: list[str]          # stages it reads whose fingerprint changed
    inputs: bool                 # its input files changed

    def reason(self) -> str:
        parts = []
        if self.keys:
            parts.append("changed " + ", ".join(self.keys))
        if self.upstream:
            parts.append("upstream " + ", ".join(self.upstream) + " changed")
        if self.inputs:
            parts.append("input files changed")
        return "; ".join(parts) or "fingerprint changed"


def recorded(run: RunDir, stage: str) -> dict[str, Any] | None:
    path = run.stage(stage).root / FINGERPRINT_FILE
    return read_json(path) if path.exists() else None


def recorded_digest(run: RunDir, stage: str) -> str | None:
    """The fingerprint the launch recorded for this stage (what a done marker carries)."""
    record = recorded(run, stage)
    return record.get("digest") if record else None


def _has_outputs(run: RunDir, stage: str) -> bool:
    paths = run.stage(stage)
    return bool(paths.done_indices()) or any(paths.out.glob("*")) or any(paths.state.glob("*"))


def stale_stages(cfg: "RunConfig", run: RunDir, prints: dict[str, Fingerprint] | None = None) -> list[Stale]:
    """Stages of the recipe whose recorded fingerprint differs from `cfg`'s. A stage with outputs
    but no record (made before fingerprints existed) is taken as matching: nothing says otherwise."""
    prints = prints if prints is not None else stage_fingerprints(cfg)
    out: list[Stale] = []
    for name, fp in prints.items():
        old = recorded(run, name)
        if old is None or old.get("digest") == fp.digest or not _has_outputs(run, name):
            continue
        before, now = old.get("config", {}), fp.config
        keys = sorted(f"{name}.{k}" if k != "seed" else "seed" for k in set(before) | set(now)
                      if before.get(k) != now.get(k))
        upstream = sorted(u for u in set(old.get("upstream", {})) | set(fp.upstream)
                          if old.get("upstream", {}).get(u) != fp.upstream.get(u))
        out.append(Stale(name, keys, upstream, old.get("inputs", []) != fp.inputs))
    return out


def move_aside(run: RunDir, stale: list[Stale], launch: int) -> list[Path]:
    """Move each stale stage's directory to `stale/<launch>/<stage>/` with a `stale.json` saying
    why; the launch then recreates it empty and recomputes it. Returns the new locations."""
    moved: list[Path] = []
    for s in stale:
        src = run.stage(s.stage).root
        if not src.exists():
            continue
        dest = private_mkdir(run.root / "stale" / f"{launch:04d}") / s.stage
        os.replace(src, dest)
        atomic_write_json(dest / "stale.json", {"stage": s.stage, "launch": launch, "reason": s.reason(),
                                                "keys": s.keys, "upstream": s.upstream, "inputs": s.inputs})
        moved.append(dest)
    return moved


def write_records(run: RunDir, prints: dict[str, Fingerprint]) -> None:
    for name, fp in prints.items():
        path = run.stage(name).root / FINGERPRINT_FILE
        current = read_json(path) if path.exists() else None
        if current != fp.record():
            private_mkdir(path.parent)
            atomic_write_json(path, fp.record())


def moved_aside(run: RunDir) -> list[dict[str, Any]]:
    """Every stale stage directory of the run (`stale/<launch>/<stage>/stale.json`), oldest first."""
    base = run.root / "stale"
    if not base.is_dir():
        return []
    return [{**read_json(p), "path": str(p.parent)} for p in sorted(base.glob("*/*/stale.json"))]
