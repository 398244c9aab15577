"""The dry run's look at the ingest sources: how many rows each has, and what the first rows hold
(samples, languages, turns, images, English text), scaled up to the whole source. This is the
ingest stage's work estimate (ain.slurm.cost.WorkEstimate), and what translate, verify and safety
estimate theirs from, before anything has run.

Per source:
  rows      exact where that is cheap: Parquet metadata, a `save_to_disk` folder or a cached hub
            dataset (memory-mapped), a JSON-lines file up to EXACT_COUNT_BYTES (lines counted),
            a JSON document up to its reader's COUNT_JSON_BYTES (parsed). Bigger files are
            estimated: the rows in their first HEAD_BYTES x file size / those bytes (about 1%
            off on bench/dry_run_survey.py's rows of random length). A compressed
            JSON-lines file over the limit, or a hub dataset not in the cache, has no row count.
  first rows the first SURVEY_ROWS rows, normalised exactly as ingest does (the same
            normalize_row; images are counted, not opened). Rows it would quarantine count as
            quarantined. The first rows stand for the rest: a source sorted by length or
            language would be misjudged, which the dry run's "surveyed" note says.
"""

from __future__ import annotations

import io
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ain.data.config import IngestSource
from ain.data.readers import (
    COUNT_JSON_BYTES,
    RawRow,
    SourceError,
    _iter_dataset,
    _load_from_disk,
    _load_hub,
    compression_of,
    count_rows_upto,
    detect_format,
    iter_rows,
    source_name,
)
from ain.data.schema import BadRow
from ain.slurm.cost import WorkEstimate

if TYPE_CHECKING:
    from ain.config import RunConfig

SURVEY_ROWS = 200
EXACT_COUNT_BYTES = 64 * 1024 * 1024  # JSON lines up to this size have their lines counted
HEAD_BYTES = 8 * 1024 * 1024  # of a big JSON-lines file or document, read to estimate its rows
ESTIMATED = f"estimated from the rows in the first {HEAD_BYTES >> 20} MiB"


@dataclass
class SourceSurvey:
    name: str
    rows: int | None            # the source's rows (None: not known without reading it all)
    rows_how: str               # "exact", ESTIMATED or why it is unknown
    surveyed: int = 0           # first rows looked at
    samples: int = 0            # of them, valid samples
    english: int = 0            # English samples (what translate takes)
    turns: int = 0              # turns of the valid samples
    english_turns: int = 0
    images: int = 0             # image references of the valid samples
    english_texts: list[str] = field(default_factory=list)  # turn texts of the English samples

    @property
    def scale(self) -> float:
        """Rows per surveyed row (0 when the row count is unknown)."""
        return (self.rows or 0) / self.surveyed if self.surveyed else 0.0


def _json_head(path: Path) -> tuple[list[RawRow], int]:
    """The rows of a JSON document (a list) that its first HEAD_BYTES hold whole, and the bytes
    they take: without parsing the whole (LLaVA's 230 MB file) on a login node."""
    with open(path, "rb") as f:
        text = io.TextIOWrapper(io.BytesIO(f.read(HEAD_BYTES)), encoding="utf-8-sig", errors="replace").read()
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    rows: list[RawRow] = []
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            break
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:  # a row cut at HEAD_BYTES: the rows before it are enough
            break
        rows.append(RawRow(len(rows), value))
    return rows, len(text[:pos].encode("utf-8"))


def _rows_and_head(src: IngestSource) -> tuple[int | None, str, list[RawRow]]:
    fmt = detect_format(src)
    path = Path(src.path)
    if fmt in ("hf_disk", "hub"):
        try:
            ds = _load_from_disk(path, src.split) if fmt == "hf_disk" else _load_hub(src.path, src.split)
        except SourceError as exc:  # a hub dataset not in this machine's cache
            return None, f"unknown ({exc})", []
        return len(ds), "exact", list(itertools.islice(_iter_dataset(ds), SURVEY_ROWS))
    size = path.stat().st_size
    if fmt == "json" and (size > COUNT_JSON_BYTES or compression_of(path)):
        if compression_of(path):
            return None, "unknown (a compressed JSON document: parse it whole to count)", []
        head, used = _json_head(path)
        rows = round(len(head) * size / used) if used else None
        return rows, ESTIMATED, head[:SURVEY_ROWS]
    head = list(itertools.islice(iter_rows(src), SURVEY_ROWS))
    if fmt == "jsonl" and size > EXACT_COUNT_BYTES:
        if compression_of(path):
            return None, f"unknown (compressed JSON lines over {EXACT_COUNT_BYTES >> 20} MiB)", head
        # the rows starting in the first HEAD_BYTES, over the bytes up to the next row's start
        n, end = 0, size
        for raw in iter_rows(src):
            if raw.index >= HEAD_BYTES:
                end = raw.index
                break
            n += 1
        return (n, "exact", head) if end == size else (round(n * size / end), ESTIMATED, head)
    rows = count_rows_upto(src, 1 << 62)
    return rows, "exact" if rows is not None else "unknown", head


def _placeholder_names(specs: list[Any]) -> list[str]:
    """Store names for a row's images without opening them (the survey counts, ingest checks)."""
    return [f"{i:064x}.png" for i in range(len(specs))]


def survey_source(src: IngestSource) -> SourceSurvey:
    try:
        rows, how, head = _rows_and_head(src)
    except (SourceError, OSError, ValueError) as exc:  # missing, unreadable: the launch refuses it, naming it
        return SourceSurvey(source_name(src), None, f"unknown ({type(exc).__name__}: {exc})")
    out = SourceSurvey(source_name(src), rows, how, surveyed=len(head))
    from ain.data.normalize import normalize_row  # noqa: PLC0415

    for raw in head:
        try:
            sample = normalize_row(raw.load(), src=src, source=out.name, file=src.path, row_index=raw.index,
                                   add_images=_placeholder_names)
        except (BadRow, ValueError):  # what ingest would quarantine
            continue
        out.samples += 1
        out.turns += len(sample.turns)
        out.images += len(sample.images)
        if sample.language == "en":
            out.english += 1
            out.english_turns += len(sample.turns)
            out.english_texts += [t["content"] for t in sample.turns]
    return out


def _scaled(surveys: list[SourceSurvey], attr: str) -> float:
    return sum(getattr(s, attr) * s.scale for s in surveys)


def estimate_ingest(cfg: "RunConfig", run_root: Path, upstream: Mapping[str, Any]) -> WorkEstimate:
    """Rows, samples, English samples, turns and images of all sources (ingest reads every row;
    it has no GPU, so its time stays the time limit). `carry` has the English texts with their
    weights (rows each surveyed text stands for), for translate's token count."""
    surveys = [survey_source(src) for src in cfg.ingest.sources]
    unknown = [s.name for s in surveys if s.rows is None]
    notes = "; ".join(f"{s.name}: {s.rows:,} rows {s.rows_how}" if s.rows is not None else f"{s.name}: {s.rows_how}"
                      for s in surveys)
    units = (("rows", float(sum(s.rows or 0 for s in surveys))), ("samples", _scaled(surveys, "samples")),
             ("English samples", _scaled(surveys, "english")), ("turns", _scaled(surveys, "turns")),
             ("image references", _scaled(surveys, "images")))
    weighted = [(text, s.scale) for s in surveys for text in s.english_texts]
    carry = {"english_texts": weighted, "english_turns": _scaled(surveys, "english_turns"),
             "unknown_sources": unknown}
    sources = (f"surveyed the first {SURVEY_ROWS} rows of each source, scaled to its rows: {notes}"
               + (f"; NOT counted: {', '.join(unknown)}" if unknown else ""))
    return WorkEstimate("ingest", units, sources, carry=carry)

