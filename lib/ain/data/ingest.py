"""The ingest stage: every source row becomes one sample or one quarantine record.

Slicing: task i of N takes the i-th of N contiguous slices of every source and reads only that
slice (readers.Slice: byte ranges of JSON lines, Parquet row groups, row ranges of a dataset), so
across the array each byte is read about once. The split is deterministic, disjoint and complete
for any N, and every task gets a share of every source (a big image-heavy source does not land on
one task). Sample ids do not depend on N (readers: row index). A compressed JSON-lines file cannot
be entered in the middle: each task decompresses all of it and keeps every N-th row; a JSON
document is parsed whole by each task (both logged).

Outputs of task i, in stages/ingest/out/:

    samples-<i>.jsonl       one Sample per line (schema.py)
    quarantine-<i>.jsonl    {"file", "row", "source", "kind", "reason", "raw"} per rejected row
    images/<aa>/<sha>.<ext> the content-addressed image store, shared by all tasks

Resume: `position` counts this task's rows consumed. A restart skips that many of its rows
(reading them, not parsing or storing them) and continues, and ResumableJsonl has truncated the
outputs to the last commit, so each row is written exactly once.

One bad row never fails the task: any exception while handling a row becomes a quarantine
record. A source that cannot be read at all raises SourceError naming the file, and so does a
source whose rows this task found mostly unreadable (RowError: not UTF-8, not JSON, not an
object, ...; over ingest.max_bad_row_share once the task has MIN_ROWS_FOR_SHARE rows of it):
a file read the wrong way must not pass as a source of a few bad rows.

Per source, the marker's "sources" gives rows, samples, quarantined, unreadable and the
quarantine kinds (jobs/status.py adds them up over the tasks and warns about a source that
yields nothing).

What training needs of a sample is checked here, so that training never meets a sample it cannot
encode: images within Qwen2-VL's processor limits (images.trainable_size), and a sample whose
image tokens and chat framing alone exceed the token budget is quarantined (too_long).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ain.data.config import IngestLimits, IngestSource
from ain.data.images import ImageRules, ImageStore, PreparedImage
from ain.data.normalize import normalize_row
from ain.data.readers import (
    RawRow,
    RowError,
    Slice,
    SourceError,
    detect_format,
    iter_rows,
    source_name,
    utf8_safe,
    whole_read_reason,
)
from ain.data.schema import BadRow, Sample
from ain.stages import TaskContext

RAW_CHARS = 500  # of a rejected row kept in its quarantine record
LOG_EVERY_S = 30.0  # progress lines at most this often (commits can be far more frequent)
MIN_ROWS_FOR_SHARE = 20  # fewer rows of a source are too few to tell a broken file from a few bad rows
# Tokens the chat template adds that ingest can count without the tokenizer: per turn
# "<|im_start|>", the role, "\n", "<|im_end|>", "\n"; per image "<|vision_start|>", "<|vision_end|>".
TOKENS_PER_TURN = 5
TOKENS_PER_IMAGE = 2


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


def image_rules(limits: IngestLimits) -> ImageRules:
    return ImageRules(max_bytes=limits.max_image_bytes, max_pixels_decoded=limits.max_image_pixels,
                      min_pixels=limits.min_pixels, max_pixels=limits.max_pixels)


def check_length(sample: Sample, images: list[PreparedImage], max_length: int) -> None:
    """Quarantine a sample that cannot fit `max_length` tokens whatever its text: its image tokens
    and the chat template's framing, a lower bound of its length, are already over."""
    if max_length <= 0:
        return
    known = sum(p.tokens + TOKENS_PER_IMAGE for p in images) + TOKENS_PER_TURN * len(sample.turns)
    if known > max_length:
        per_image = ", ".join(f"{p.width}x{p.height}: {p.tokens}" for p in images[:6])
        raise BadRow(f"at least {known} tokens (image tokens {per_image}{', ...' if len(images) > 6 else ''}; "
                     f"plus {TOKENS_PER_TURN} per turn), over the token budget {max_length} (ingest.max_length, "
                     "from train.max_length) before any text is counted", "too_long")


@dataclass
class RowResult:
    stream: str                 # samples | quarantine
    obj: dict[str, Any]
    label: str                  # the sample's language, or the quarantine kind
    unreadable: bool = False    # the reader could not make a JSON object of the row
    images: list[PreparedImage] = field(default_factory=list)  # verified, not yet stored


def handle_row(src: PreparedSource, raw: RawRow, store: ImageStore,
               limits: IngestLimits | None = None) -> RowResult:
    """One row checked completely, nothing written yet: a sample with its verified images (the
    caller stores them with `store.put`), or a quarantine record."""
    limits = limits or IngestLimits()
    prepared: list[PreparedImage] = []

    def add_images(specs: list[Any]) -> list[str]:
        prepared[:] = store.prepare_all(specs, src.base_dir)
        return [p.name for p in prepared]

    unreadable = False
    try:
        try:
            row = raw.load()
        except RowError:
            unreadable = True
            raise
        sample = normalize_row(row, src=src.cfg, source=src.name, file=src.cfg.path, row_index=raw.index,
                               add_images=add_images, max_turn_chars=limits.max_turn_chars)
        check_length(sample, prepared, limits.max_length)
        obj = sample.to_json()
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:  # else the whole task would die writing this row
            raise BadRow(f"text is not valid Unicode: {exc.reason} ({exc.object[exc.start:exc.end]!a} at "
                         f"character {exc.start} of the sample); lone surrogate escapes such as \\ud800 "
                         "cannot be stored as UTF-8", "not_utf8") from None
        return RowResult("samples", obj, sample.language, images=list(prepared))
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
    return RowResult("quarantine", record, kind, unreadable)


def process_row(src: PreparedSource, raw: RawRow, store: ImageStore,
                limits: IngestLimits | None = None) -> tuple[str, dict[str, Any], str]:
    """("samples", sample, language) or ("quarantine", record, kind) for one row; a sample's
    images are in the store when it returns."""
    result = handle_row(src, raw, store, limits)
    for image in result.images:
        store.put(image)
    return result.stream, result.obj, result.label


def _source_key(name: str, what: str) -> str:
    return f"source:{name}:{what}"


def source_counts(counters: dict[str, int], sources: list[PreparedSource]) -> dict[str, dict[str, Any]]:
    """Per source: file, rows, samples, quarantined, unreadable and quarantine kinds (this task's):
    the marker's "sources", which jobs/status.py adds up over the tasks."""
    out: dict[str, dict[str, Any]] = {}
    for src in sources:
        entry: dict[str, Any] = {"file": src.cfg.path}
        for what in ("rows", "samples", "quarantined", "unreadable"):
            entry[what] = counters.get(_source_key(src.name, what), 0)
        prefix = _source_key(src.name, "kind:")
        entry["kinds"] = {k[len(prefix):]: n for k, n in sorted(counters.items()) if k.startswith(prefix)}
        out[src.name] = entry
    return out


def check_bad_share(src: PreparedSource, counters: dict[str, int], max_share: float, index: int) -> None:
    """Refuse the source when most of this task's rows of it could not even be read as JSON objects."""
    rows = counters.get(_source_key(src.name, "rows"), 0)
    bad = counters.get(_source_key(src.name, "unreadable"), 0)
    if max_share >= 1.0 or rows < MIN_ROWS_FOR_SHARE or bad <= max_share * rows:
        return
    prefix = _source_key(src.name, "kind:")
    kinds = ", ".join(f"{k[len(prefix):]} {n}" for k, n in sorted(counters.items(), key=lambda kv: -kv[1])
                      if k.startswith(prefix))
    raise SourceError(f"ingest source {src.cfg.path}: {bad} of the {rows} rows ingest task {index} read are "
                      f"unreadable ({kinds}), over ingest.max_bad_row_share={max_share}: the file is not read the "
                      "way it was written (another compression or encoding, not JSON Lines, a truncated copy?). "
                      "Fix or re-copy it; raise ingest.max_bad_row_share only if most rows are meant to be dropped")


def run_ingest_task(ctx: TaskContext) -> dict[str, Any]:
    cfg = ctx.cfg.ingest
    limits = cfg.limits(ctx.cfg)
    sources = prepare_sources(cfg.sources)
    store = ImageStore(ctx.paths.out / "images", rules=image_rules(limits), image_roots=cfg.image_roots)
    streams = {"samples": f"samples-{ctx.index:05d}.jsonl", "quarantine": f"quarantine-{ctx.index:05d}.jsonl"}
    out = ctx.resumable_outputs(**streams)
    if out.resumed_from:
        ctx.log.info("ingest task %d resumes after %d rows", ctx.index, out.resumed_from)
    start = last_log = time.time()
    consumed = 0
    part = Slice(ctx.index, ctx.num_tasks)
    try:
        for src in sources:
            for what in ("rows", "samples", "quarantined", "unreadable"):
                out.counters.setdefault(_source_key(src.name, what), 0)
            whole = None if part.whole else whole_read_reason(src.cfg)
            if whole:
                ctx.log.warning("ingest source %s is %s: each of the %d ingest tasks reads all of it. For a large "
                                "source, convert it to uncompressed JSON lines or Parquet", src.cfg.path, whole,
                                ctx.num_tasks)
            for raw in iter_rows(src.cfg, limits.max_row_bytes, part):
                consumed += 1
                if consumed <= out.position:
                    continue  # handled before the restart
                result = handle_row(src, raw, store, limits)
                for image in result.images:
                    store.put(image)
                out.write(result.stream, result.obj)
                out.count(_source_key(src.name, "rows"))
                if result.stream == "samples":
                    out.count("ingested")
                    out.count(f"lang_{result.label}")
                    out.count(f"domain_{result.obj['domain']}")
                    out.count("images", len(result.obj["images"]))
                    out.count(_source_key(src.name, "samples"))
                else:
                    out.count("quarantined")
                    out.count(f"quarantined_{result.label}")
                    out.count(_source_key(src.name, "quarantined"))
                    out.count(_source_key(src.name, f"kind:{result.label}"))
                    if result.unreadable:
                        out.count(_source_key(src.name, "unreadable"))
                if consumed % cfg.commit_every == 0:
                    out.commit(consumed)
                    now = time.time()
                    rate = (consumed - out.resumed_from) / max(now - start, 1e-9)
                    ctx.log.debug("ingest task %d: %d rows, %.1f rows/s", ctx.index, consumed, rate)
                    if now - last_log >= LOG_EVERY_S:
                        ctx.log.info("ingest task %d: %d rows, %.1f rows/s", ctx.index, consumed, rate)
                        last_log = now
            check_bad_share(src, out.counters, cfg.max_bad_row_share, ctx.index)
        if consumed < out.position:
            raise SourceError(f"ingest task {ctx.index}: the sources now give it {consumed} rows, but it had "
                              f"already consumed {out.position} before a restart: an input changed under a "
                              "running stage. Restore the inputs, or start a new run (name=...)")
        out.commit(consumed)
        files = out.finish()
    finally:
        out.close()
    per_source = source_counts(out.counters, sources)
    counters = {k: n for k, n in sorted(out.counters.items()) if not k.startswith("source:")}
    elapsed = time.time() - start
    ctx.log.info("ingest task %d: %d rows (%d ingested, %d quarantined) in %.1fs", ctx.index, consumed,
                 counters.get("ingested", 0), counters.get("quarantined", 0), elapsed)
    for name, entry in per_source.items():
        if entry["rows"] and not entry["samples"]:
            ctx.log.warning("ingest task %d: source %s (%s) gave no sample from its %d rows: %s", ctx.index, name,
                            entry["file"], entry["rows"], entry["kinds"])
    return {"items": consumed, "ingested": counters.get("ingested", 0),
            "quarantined": counters.get("quarantined", 0), "counters": counters, "files": files,
            "resumed_from": out.resumed_from, "sources": per_source}
