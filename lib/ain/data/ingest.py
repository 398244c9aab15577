"""The ingest stage: every source row becomes one sample or one quarantine record.

Slicing: the rows of all sources, in config order, get a global number g; task i of N takes
the rows with g % N == i. Each task therefore reads every source but parses, checks and stores
only its own rows: the split is deterministic, disjoint and complete for any N, and every task
gets a share of every source (a big image-heavy source does not land on one task).

Outputs of task i, in stages/ingest/out/:

    samples-<i>.jsonl       one Sample per line (schema.py)
    quarantine-<i>.jsonl    {"file", "row", "source", "kind", "reason", "raw"} per rejected row
    images/<aa>/<sha>.<ext> the content-addressed image store, shared by all tasks

Resume: `position` counts this task's rows consumed. A restart skips that many of its rows
(reading them, not parsing or storing them) and continues, and ResumableJsonl has truncated the
outputs to the last commit, so each row is written exactly once.

One bad row never fails the task: any exception while handling a row becomes a quarantine
record. A source that cannot be read at all raises SourceError naming the file.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ain.data.config import IngestSource
from ain.data.images import ImageStore
from ain.data.normalize import normalize_row
from ain.data.readers import RawRow, SourceError, detect_format, iter_rows, source_name, utf8_safe
from ain.data.schema import BadRow
from ain.stages import TaskContext

RAW_CHARS = 500  # of a rejected row kept in its quarantine record
LOG_EVERY_S = 30.0  # progress lines at most this often (commits can be far more frequent)


@dataclass(frozen=True)
class PreparedSource:
    cfg: IngestSource
    name: str
    base_dir: Path | None  # relative image paths resolve here


def prepare_sources(sources: list[IngestSource]) -> list[PreparedSource]:
    out, seen = [], {}
    for i, src in enumerate(sources):
        name = source_name(src)
        if name in seen:
            raise SourceError(f"ingest.sources[{seen[name]}] and ingest.sources[{i}] are both named {name!r}, "
                              "so their sample ids would collide; set a distinct name= on one")
        seen[name] = i
        fmt = detect_format(src)
        if src.image_root:
            base: Path | None = Path(src.image_root)
        elif fmt == "hub":
            base = None
        else:
            path = Path(src.path)
            base = path if path.is_dir() else path.parent
        out.append(PreparedSource(src, name, base))
    return out


def assigned_rows(sources: list[PreparedSource], index: int, num_tasks: int
                  ) -> Iterator[tuple[PreparedSource, RawRow]]:
    """This task's rows, in order: global row g goes to task g % num_tasks."""
    g = 0
    for src in sources:
        for raw in iter_rows(src.cfg):
            if g % num_tasks == index:
                yield src, raw
            g += 1


def process_row(src: PreparedSource, raw: RawRow, store: ImageStore) -> tuple[str, dict[str, Any], str]:
    """("samples", sample, language) or ("quarantine", record, kind) for one row."""
    try:
        row = raw.load()
        sample = normalize_row(row, src=src.cfg, source=src.name, file=src.cfg.path, row_index=raw.index,
                               add_images=lambda specs: store.add_all(specs, src.base_dir))
        obj = sample.to_json()
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:  # else the whole task would die writing this row
            raise BadRow(f"text is not valid Unicode: {exc.reason} ({exc.object[exc.start:exc.end]!a} at "
                         f"character {exc.start} of the sample); lone surrogate escapes such as \\ud800 "
                         "cannot be stored as UTF-8", "not_utf8") from None
        return "samples", obj, sample.language
    except BadRow as exc:
        kind, reason, text = exc.kind, exc.reason, getattr(exc, "raw", None)
    except OSError:
        # Not the row's fault: the store could not be written (disk full, quota, I/O error).
        # Image files are read inside ImageStore, which reports their errors as BadRow.
        raise
    except Exception as exc:  # a bug or a surprise in one row must not cost the other rows
        kind, reason, text = "error", f"{type(exc).__name__}: {exc}", None
    raw_text = text if text is not None else raw.text(RAW_CHARS)
    record = {"file": src.cfg.path, "row": raw.index, "source": src.name, "kind": kind,
              "reason": utf8_safe(reason), "raw": utf8_safe(raw_text[:RAW_CHARS])}
    return "quarantine", record, kind


def run_ingest_task(ctx: TaskContext) -> dict[str, Any]:
    cfg = ctx.cfg.ingest
    sources = prepare_sources(cfg.sources)
    store = ImageStore(ctx.paths.out / "images", cfg.max_image_bytes)
    streams = {"samples": f"samples-{ctx.index:05d}.jsonl", "quarantine": f"quarantine-{ctx.index:05d}.jsonl"}
    out = ctx.resumable_outputs(**streams)
    if out.resumed_from:
        ctx.log.info("ingest task %d resumes after %d rows", ctx.index, out.resumed_from)
    start = last_log = time.time()
    consumed = 0
    try:
        for src, raw in assigned_rows(sources, ctx.index, ctx.num_tasks):
            consumed += 1
            if consumed <= out.position:
                continue  # handled before the restart
            stream, obj, label = process_row(src, raw, store)
            out.write(stream, obj)
            if stream == "samples":
                out.count("ingested")
                out.count(f"lang_{label}")
                out.count(f"domain_{obj['domain']}")
                out.count("images", len(obj["images"]))
            else:
                out.count("quarantined")
                out.count(f"quarantined_{label}")
            if consumed % cfg.commit_every == 0:
                out.commit(consumed)
                now = time.time()
                rate = (consumed - out.resumed_from) / max(now - start, 1e-9)
                ctx.log.debug("ingest task %d: %d rows, %.1f rows/s", ctx.index, consumed, rate)
                if now - last_log >= LOG_EVERY_S:
                    ctx.log.info("ingest task %d: %d rows, %.1f rows/s", ctx.index, consumed, rate)
                    last_log = now
        if consumed < out.position:
            raise SourceError(f"ingest task {ctx.index}: the sources now give it {consumed} rows, but it had "
                              f"already consumed {out.position} before a restart: an input changed under a "
                              "running stage. Restore the inputs, or start a new run (name=...)")
        out.commit(consumed)
        files = out.finish()
    finally:
        out.close()
    counters = dict(sorted(out.counters.items()))
    elapsed = time.time() - start
    ctx.log.info("ingest task %d: %d rows (%d ingested, %d quarantined) in %.1fs", ctx.index, consumed,
                 counters.get("ingested", 0), counters.get("quarantined", 0), elapsed)
    return {"items": consumed, "ingested": counters.get("ingested", 0),
            "quarantined": counters.get("quarantined", 0), "counters": counters, "files": files,
            "resumed_from": out.resumed_from}
