"""Readers: the raw rows of one ingest source, in a fixed order, with their row index.

`iter_rows(src)` yields `RawRow`s; `RawRow.load()` returns the row as a dict or raises
`RowError` (a BadRow) for a row that is broken at the file level: malformed JSON, bytes that
are not UTF-8, a JSON value that is not an object. JSON-lines rows are parsed only when loaded,
so the array tasks that skip a row (it belongs to another task) pay only for reading its line.

A problem with the whole source (missing file, unreadable parquet, a JSON file that is not a
list) is not a row problem: it raises `SourceError` naming the file, and the task fails loudly.

Row index: the 0-based line number for jsonl (blank lines are skipped but keep their number, so
`row` points at the line a person opens), the position in the list or table otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ain.data.config import IngestSource
from ain.data.schema import BadRow, safe_key

BATCH_ROWS = 256  # parquet / HF dataset rows decoded at a time: bounded memory on huge files
FORMATS = ("jsonl", "json", "parquet", "hf_disk", "hub")


class SourceError(ValueError):
    """The source as a whole cannot be read; the message names the file and the fix."""


class RowError(BadRow):
    """A row broken at the file level; `raw` is its text for the quarantine record."""

    def __init__(self, reason: str, kind: str, raw: str) -> None:
        super().__init__(reason, kind)
        self.raw = raw


@dataclass
class RawRow:
    index: int
    raw: Any  # the line's bytes (jsonl) or the already decoded row (other formats)
    offset: int = 0  # byte offset of the line in its file (jsonl), for error messages

    def load(self) -> dict[str, Any]:
        value = self.raw
        if isinstance(value, bytes):
            value = _parse_line(value, self.offset, self.index)
        if not isinstance(value, dict):
            raise RowError(f"row is {type(value).__name__}, expected a JSON object", "wrong_type",
                           self.text())
        return value

    def text(self, limit: int = 500) -> str:
        """The row as text, for a person reading the quarantine file."""
        if isinstance(self.raw, bytes):
            text = self.raw.decode("utf-8", "backslashreplace").rstrip("\r\n")
        else:
            text = json.dumps(self.raw, ensure_ascii=False, default=_describe)
        return utf8_safe(text[:limit])


def utf8_safe(text: str) -> str:
    """`text` as it can be written to a UTF-8 file: lone surrogates (which a JSON escape such as
    "\\ud800" decodes to) become visible backslash escapes instead of failing the write."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _describe(value: Any) -> str:
    """JSON stand-in for values that are not JSON (image bytes, PIL images)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    size = getattr(value, "size", None)
    return f"<{type(value).__name__} {size}>" if size is not None else f"<{type(value).__name__}>"


def _parse_line(line: bytes, offset: int, index: int) -> Any:
    if index == 0 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
        line, offset = line[3:], offset + 3
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RowError(f"not valid UTF-8 at byte {offset + exc.start} of the file "
                       f"(line {index + 1}, byte {exc.start} of the line)", "not_utf8",
                       line.decode("utf-8", "backslashreplace").rstrip("\r\n")[:500]) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowError(f"malformed JSON: {exc}", "malformed_json", text.rstrip("\r\n")[:500]) from None


# ----------------------------------------------------------------------------------------------
def detect_format(src: IngestSource) -> str:
    if src.format != "auto":
        if src.format not in FORMATS:
            raise SourceError(f"ingest source {src.path}: format {src.format!r} not one of {FORMATS}")
        return src.format
    path = Path(src.path)
    if path.is_dir():
        if any((path / marker).is_file() for marker in ("dataset_dict.json", "dataset_info.json", "state.json")):
            return "hf_disk"
        raise SourceError(f"ingest source {path}: a directory but not a Hugging Face dataset saved with "
                          "save_to_disk (no dataset_dict.json, dataset_info.json or state.json)")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    if suffix == ".parquet":
        return "parquet"
    if not path.exists():
        raise SourceError(f"ingest source {path}: not found (a hub dataset needs format=hub)")
    raise SourceError(f"ingest source {path}: cannot tell the format from the suffix {suffix!r}; "
                      f"set format to one of {FORMATS}")


def source_name(src: IngestSource) -> str:
    """The name recorded on samples and used in their ids: `name`, else the file or dataset name."""
    if src.name:
        return safe_key(src.name)
    path = Path(src.path.rstrip("/"))
    fmt = src.format if src.format != "auto" else ("hf_disk" if path.is_dir() else "file")
    return safe_key(src.path if fmt == "hub" else (path.name if fmt == "hf_disk" else path.stem))


def iter_rows(src: IngestSource) -> Iterator[RawRow]:
    fmt = detect_format(src)
    path = Path(src.path)
    if fmt != "hub" and not path.exists():
        raise SourceError(f"ingest source {path}: not found")
    if fmt in ("jsonl", "json", "parquet") and path.stat().st_size == 0:
        # A zero-length file is a failed download or copy far more often than an empty dataset.
        raise SourceError(f"ingest source {path}: empty file (0 bytes); re-copy it, or remove it from "
                          "ingest.sources if it is meant to be empty")
    try:
        if fmt == "jsonl":
            yield from _iter_jsonl(path)
        elif fmt == "json":
            yield from _iter_json(path)
        elif fmt == "parquet":
            yield from _iter_parquet(path)
        elif fmt == "hf_disk":
            yield from _iter_dataset(_load_from_disk(path, src.split))
        else:
            yield from _iter_dataset(_load_hub(src.path, src.split))
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"ingest source {path}: cannot read: {type(exc).__name__}: {exc}") from exc


def _iter_jsonl(path: Path) -> Iterator[RawRow]:
    # Binary, line by line: one bad line (not UTF-8, cut JSON) is one bad row, not a dead file.
    offset = 0
    with open(path, "rb") as f:
        for index, line in enumerate(f):
            if line.strip():
                yield RawRow(index, line, offset)
            offset += len(line)


def _iter_json(path: Path) -> Iterator[RawRow]:
    # A JSON document can only be parsed whole (LLaVA's llava_instruct_150k.json is ~230 MB).
    try:
        with open(path, encoding="utf-8-sig") as f:
            rows = json.load(f)
    except json.JSONDecodeError as exc:
        raise SourceError(f"ingest source {path}: not valid JSON ({exc}); for one object per line "
                          "use a .jsonl file or format=jsonl") from None
    if not isinstance(rows, list):
        raise SourceError(f"ingest source {path}: top-level JSON is {type(rows).__name__}, expected a list "
                          "of rows")
    for index, row in enumerate(rows):
        yield RawRow(index, row)


def _iter_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq  # noqa: PLC0415

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid (a ValueError) for non-parquet files
        raise SourceError(f"ingest source {path}: not a readable parquet file: {exc}") from None
    index = 0
    for batch in pf.iter_batches(batch_size=BATCH_ROWS):
        for row in batch.to_pylist():
            yield RawRow(index, row)
            index += 1


def _load_from_disk(path: Path, split: str) -> Any:
    import datasets  # noqa: PLC0415

    try:
        obj = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise SourceError(f"ingest source {path}: datasets.load_from_disk failed: {type(exc).__name__}: "
                          f"{exc}") from None
    if isinstance(obj, datasets.DatasetDict):
        if split not in obj:
            raise SourceError(f"ingest source {path}: no split {split!r}; it has {sorted(obj)} (set split=)")
        obj = obj[split]
    return obj


def _load_hub(name: str, split: str) -> Any:
    import datasets  # noqa: PLC0415

    try:
        return datasets.load_dataset(name, split=split)
    except Exception as exc:
        raise SourceError(f"hub dataset {name!r} (split {split!r}) cannot be loaded: {type(exc).__name__}: "
                          f"{exc}. Without network access here, download it where there is, "
                          "save_to_disk, and use format=hf_disk with that directory") from None


def _iter_dataset(ds: Any) -> Iterator[RawRow]:
    # Arrow format yields the stored values: images stay {"bytes", "path"} (the original file
    # bytes, so the content hash is the file's) instead of being decoded to PIL and re-encoded.
    index = 0
    for table in ds.with_format("arrow").iter(batch_size=BATCH_ROWS):
        for row in table.to_pylist():
            yield RawRow(index, row)
            index += 1
