"""Readers: the raw rows of one ingest source, in a fixed order, with their row index.

`iter_rows(src)` yields `RawRow`s; `RawRow.load()` returns the row as a dict or raises
`RowError` (a BadRow) for a row that is broken at the file level: malformed JSON, bytes that
are not UTF-8, a JSON value that is not an object, a key given twice in one object, a number or
a nesting depth Python's parser refuses, a line over `max_row_bytes`. JSON-lines rows are parsed
only when loaded, so the array tasks that skip a row (it belongs to another task) pay only for
reading its line. A RowError row is *unreadable*: ingest refuses a source whose rows are mostly
unreadable (ingest.max_bad_row_share), because that is a file read the wrong way (an unknown
compression, another encoding, not JSON Lines at all), not a few bad rows.

A problem with the whole source (missing file, unreadable parquet, a JSON file that is not a
list, a compression that cannot be read here, any error while reading it) is not a row problem:
it raises `SourceError` naming the file, and the task fails loudly.

Compressed files (gzip, bzip2, xz) are read transparently whatever their name; the format comes
from the name without the compression suffix (rows.jsonl.gz is jsonl). zstd and zip are refused
naming the file (no reader here).

JSON-lines lines end at "\\n", "\\r\\n" or a lone "\\r" (old Mac and some Windows exports): a raw
CR can never be inside a JSON string (it must be escaped as \\r), so splitting there never cuts a
row that a JSON parser would accept on one line.

Row index: for JSON lines, the byte offset at which the line starts in the (decompressed) file,
as Hadoop's TextInputFormat keys its lines: a task that reads only its byte range knows it
without counting the lines before, it is the same for any number of tasks, and
`tail -c +<row+1> FILE | head -1` opens the line. Otherwise the position in the list or table.

Slices: `iter_rows(src, part=Slice(i, n))` yields the rows of the i-th of n contiguous slices,
reading only that slice where the format allows:
    jsonl        bytes [size*i/n, size*(i+1)/n): a line belongs to the slice holding its first byte
                 (the reader seeks one byte before its start, skips the line it landed in,
                 and reads past its end only to finish its last line)
    parquet      the row groups whose first row falls in rows [rows*i/n, rows*(i+1)/n)
    hf_disk/hub  rows [rows*i/n, rows*(i+1)/n) of the memory-mapped Arrow table (Dataset.select)
    json         rows [rows*i/n, rows*(i+1)/n); a JSON document can only be parsed whole
Compressed JSON lines cannot be entered in the middle: every slice decompresses the whole file and
keeps every n-th row (whole_read_reason says which sources do not split).
"""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import json
import lzma
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator, Optional

from ain.data.config import IngestSource
from ain.data.schema import BadRow, safe_key

BATCH_ROWS = 256  # parquet / HF dataset rows decoded at a time: bounded memory on huge files
FORMATS = ("jsonl", "json", "parquet", "hf_disk", "hub")
CHUNK_BYTES = 1 << 20  # JSON-lines files are read this much at a time
RAW_KEEP = 500  # bytes of an over-long line kept for its quarantine record
DEFAULT_MAX_ROW_BYTES = 16 * 1024 * 1024
COUNT_JSON_BYTES = 32 * 1024 * 1024  # JSON documents up to this size are parsed to count rows at launch
COMPRESSION_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd",
                        ".zstd": "zstd", ".zip": "zip"}
_EOL = re.compile(rb"[\r\n]")


class SourceError(ValueError):
    """The source as a whole cannot be read; the message names the file and the fix."""


class RowError(BadRow):
    """A row broken at the file level; `raw` is its text for the quarantine record."""

    def __init__(self, reason: str, kind: str, raw: str) -> None:
        super().__init__(reason, kind)
        self.raw = raw


@dataclass(frozen=True)
class Slice:
    """The index-th of count contiguous slices of a source (ingest task index of num_tasks)."""
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"slice {self.index} of {self.count}")

    def bounds(self, total: int) -> tuple[int, int]:
        """[start, end) of this slice of `total` units (rows or bytes); the slices tile [0, total)."""
        return total * self.index // self.count, total * (self.index + 1) // self.count

    @property
    def whole(self) -> bool:
        return self.count == 1


WHOLE = Slice()


@dataclass
class RawRow:
    index: int  # the row's number in its source (jsonl: the line's byte offset; see the module docstring)
    raw: Any  # the line's bytes (jsonl) or the already decoded row (other formats)
    offset: int = 0  # byte offset of the line in its (decompressed) file (jsonl), for error messages
    error: Optional[RowError] = None  # known to be unreadable before parsing (over-long line, ...)

    def load(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        value = self.raw
        if isinstance(value, bytes):
            value = _parse_line(value, self.offset)
        if not isinstance(value, dict):
            raise RowError(f"row is {type(value).__name__}, expected a JSON object", "wrong_type",
                           self.text())
        return value

    def text(self, limit: int = 500) -> str:
        """The row as text, for a person reading the quarantine file."""
        if isinstance(self.raw, bytes):
            text = self.raw[:limit * 4].decode("utf-8", "backslashreplace").rstrip("\r\n")
        else:
            try:
                text = json.dumps(self.raw, ensure_ascii=False, default=_describe)
            except (ValueError, RecursionError) as exc:  # a 5,000-digit int, a very deep row
                text = f"<row not printable: {type(exc).__name__}>"
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


# ------------------------------------------------------------------------------- JSON parsing
class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _first_duplicate(pairs: list[tuple[str, Any]]) -> str:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    return ""


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: a key given twice is an error (json keeps the last one silently)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey(_first_duplicate(pairs))
    return obj


class _MarkedObject(dict):
    """An object of a JSON document that had a key twice (the row holding it is refused)."""

    duplicate_key = ""


def duplicate_key_reason(key: str) -> str:
    return (f"key {key!r} appears twice in one object; JSON readers disagree on which value wins "
            "(Python keeps the last), so the row is refused rather than read one way silently")


def json_error_reason(exc: BaseException) -> tuple[str, str] | None:
    """(kind, reason) for a JSON value Python's parser refuses although it may be valid JSON."""
    if isinstance(exc, RecursionError):
        return "unparseable_json", "JSON nested too deeply to parse (over Python's recursion limit)"
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return "unparseable_json", f"a JSON number too long to read ({exc})"
    return None


def _parse_line(line: bytes, offset: int) -> Any:
    start = offset
    if offset == 0 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
        line, offset = line[3:], offset + 3
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RowError(f"not valid UTF-8 at byte {offset + exc.start} of the file "
                       f"(byte {offset + exc.start - start} of the line starting at byte {start})", "not_utf8",
                       line[:RAW_KEEP * 4].decode("utf-8", "backslashreplace").rstrip("\r\n")[:RAW_KEEP]) from None
    try:
        return json.loads(text, object_pairs_hook=_strict_object)
    except _DuplicateKey as exc:
        raise RowError(duplicate_key_reason(exc.key), "duplicate_key", text[:RAW_KEEP]) from None
    except json.JSONDecodeError as exc:
        raise RowError(f"malformed JSON: {exc}", "malformed_json", text.rstrip("\r\n")[:RAW_KEEP]) from None
    except (ValueError, RecursionError) as exc:
        known = json_error_reason(exc)
        if known is None:
            raise
        raise RowError(known[1], known[0], text[:RAW_KEEP]) from None


# ---------------------------------------------------------------------------------- formats
def _strip_compression(path: Path) -> Path:
    return path.with_suffix("") if path.suffix.lower() in COMPRESSION_SUFFIXES else path


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
    suffix = _strip_compression(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    if suffix == ".parquet":
        return "parquet"
    if not path.exists():
        raise SourceError(f"ingest source {path}: not found (a hub dataset needs format=hub)")
    raise SourceError(f"ingest source {path}: cannot tell the format from the suffix {path.suffix!r}; "
                      f"set format to one of {FORMATS}")


def source_name(src: IngestSource) -> str:
    """The name recorded on samples and used in their ids: `name`, else the file or dataset name."""
    if src.name:
        return safe_key(src.name)
    path = Path(src.path.rstrip("/"))
    fmt = src.format if src.format != "auto" else ("hf_disk" if path.is_dir() else "file")
    return safe_key(src.path if fmt == "hub" else (path.name if fmt == "hf_disk" else _strip_compression(path).stem))


def compression_of(path: Path) -> str | None:
    """gzip, bzip2, xz, zstd or zip from the file's first bytes (never from its name)."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"BZh" and head[3:4].isdigit():
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    return None


def open_source(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when it is gzip, bzip2 or xz; SourceError for others."""
    kind = compression_of(path)
    if kind == "gzip":
        return gzip.open(path, "rb")
    if kind == "bzip2":
        return bz2.open(path, "rb")
    if kind == "xz":
        return lzma.open(path, "rb")
    if kind == "zstd":
        raise SourceError(f"ingest source {path}: zstd-compressed data, which this reader cannot decompress; "
                          f"run `zstd -d {path}` and list the decompressed file (gzip, bzip2 and xz are read as they are)")
    if kind == "zip":
        raise SourceError(f"ingest source {path}: a zip archive, not a data file; unzip it and list the file(s) "
                          "inside in ingest.sources")
    return open(path, "rb")


def whole_read_reason(src: IngestSource) -> str | None:
    """Why every slice of this source must read all of it (None: a slice reads only its part)."""
    fmt = detect_format(src)
    kind = compression_of(Path(src.path)) if fmt in ("jsonl", "json") else None
    if fmt == "jsonl" and kind:
        return f"{kind}-compressed JSON lines, which cannot be entered in the middle"
    if fmt == "json":
        return "one JSON document, which can only be parsed whole"
    return None


def iter_rows(src: IngestSource, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
              part: Slice = WHOLE) -> Iterator[RawRow]:
    """The rows of one slice of the source (all of it by default). Any error while reading (not a
    row's) is a SourceError naming the file."""
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
            yield from _iter_jsonl(path, max_row_bytes, part)
        elif fmt == "json":
            rows = list(_iter_json(path))
            start, end = part.bounds(len(rows))
            yield from rows[start:end]
        elif fmt == "parquet":
            yield from _iter_parquet(path, part)
        elif fmt == "hf_disk":
            yield from _iter_dataset(_load_from_disk(path, src.split), part)
        else:
            yield from _iter_dataset(_load_hub(src.path, src.split), part)
    except SourceError:
        raise
    except Exception as exc:  # EOFError of a cut gzip, ArrowInvalid mid-file, MemoryError, ...
        raise SourceError(f"ingest source {path}: cannot read: {type(exc).__name__}: {exc}") from exc


def iter_lines(f: IO[bytes], max_row_bytes: int = DEFAULT_MAX_ROW_BYTES) -> Iterator[tuple[int, int, bytes, int]]:
    """(index, offset, content, length) of every line of a binary stream; lines end at \\n, \\r\\n
    or \\r. Memory stays bounded by CHUNK_BYTES + max_row_bytes: of a line longer than
    max_row_bytes only the first max_row_bytes + 1 bytes are kept (`length` is the real one)."""
    index = offset = 0          # this line's number and start
    cur = bytearray()
    length = 0                  # bytes of the current line seen (kept or not)
    pos = 0                     # offset of the chunk's first byte
    after_cr = False            # the previous chunk ended with a CR: a leading LF belongs to it
    keep = max_row_bytes + 1
    while chunk := f.read(CHUNK_BYTES):
        i = 0
        if after_cr:
            after_cr = False
            if chunk[:1] == b"\n":
                i = 1
                offset = pos + 1
        n = len(chunk)
        while i < n:
            m = _EOL.search(chunk, i)
            j = m.start() if m else -1
            end = n if j < 0 else j
            if len(cur) < keep:
                cur += chunk[i:min(end, i + keep - len(cur))]
            length += end - i
            if j < 0:
                break
            yield index, offset, bytes(cur), length
            index += 1
            cur.clear()
            length = 0
            if chunk[j:j + 1] == b"\r":
                if j + 1 < n:
                    i = j + 2 if chunk[j + 1:j + 2] == b"\n" else j + 1
                else:
                    i, after_cr = j + 1, True
            else:
                i = j + 1
            offset = pos + i
        pos += n
    if length:
        yield index, offset, bytes(cur), length


def _iter_jsonl(path: Path, max_row_bytes: int, part: Slice = WHOLE) -> Iterator[RawRow]:
    # Binary, line by line: one bad line (not UTF-8, cut JSON) is one bad row, not a dead file.
    compressed = compression_of(path) is not None
    rows = 0
    start, end = 0, None
    with open_source(path) as f:
        lines = iter_lines(f, max_row_bytes)
        if not (compressed or part.whole):
            lo, end = part.bounds(path.stat().st_size)
            if lo > 0:
                # Start one byte early: the first line iter_lines yields from there is the one
                # holding byte lo-1 (or the empty rest of a terminator ending there), which starts
                # before lo and so is the slice before's; the lines after it start at or after lo.
                start = lo - 1
                f.seek(start)
                next(lines, None)
        for _, relative, line, length in lines:
            offset = start + relative
            if end is not None and offset >= end:
                break  # the next slice's first line
            if not (length > max_row_bytes or line.strip()):
                continue
            rows += 1
            if compressed and (rows - 1) % part.count != part.index:
                continue  # no seeking into a compressed stream: every n-th row is this slice's
            if length > max_row_bytes:
                text = line[:RAW_KEEP].decode("utf-8", "backslashreplace")
                error = RowError(f"the line at byte {offset} is {length} bytes, over ingest.max_row_bytes="
                                 f"{max_row_bytes}; not read into memory", "row_too_large", text)
                yield RawRow(offset, line[:RAW_KEEP], offset, error)
            else:
                yield RawRow(offset, line, offset)
    if not rows and part.whole:  # a slice of a small file may hold no line at all
        raise SourceError(f"ingest source {path}: no rows (only blank lines after reading "
                          f"{'the decompressed data' if compressed else 'the file'}); re-copy it, or "
                          "remove it from ingest.sources if it is meant to be empty")


def _iter_json(path: Path) -> Iterator[RawRow]:
    # A JSON document can only be parsed whole (LLaVA's llava_instruct_150k.json is ~230 MB).
    marked: list[str] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        out = _MarkedObject(obj)
        out.duplicate_key = _first_duplicate(pairs)
        marked.append(out.duplicate_key)
        return out

    try:
        with open_source(path) as f:
            text = io.TextIOWrapper(f, encoding="utf-8-sig").read()
        rows = json.loads(text, object_pairs_hook=hook)
    except json.JSONDecodeError as exc:
        raise SourceError(f"ingest source {path}: not valid JSON ({exc}); for one object per line "
                          "use a .jsonl file or format=jsonl") from None
    except (ValueError, RecursionError) as exc:
        known = json_error_reason(exc)
        if known is None:
            raise
        raise SourceError(f"ingest source {path}: cannot read the JSON document: {known[1]}") from None
    if not isinstance(rows, list):
        raise SourceError(f"ingest source {path}: top-level JSON is {type(rows).__name__}, expected a list "
                          "of rows")
    for index, row in enumerate(rows):
        key = _duplicate_in(row) if marked else None
        if key is not None:
            yield RawRow(index, row, error=RowError(duplicate_key_reason(key), "duplicate_key",
                                                    RawRow(index, row).text()))
        else:
            yield RawRow(index, row)


def _duplicate_in(value: Any) -> str | None:
    """The first key given twice anywhere inside `value` (a row of a JSON document)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, _MarkedObject):
            return v.duplicate_key
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


def _group_starts(pf: Any) -> list[int]:
    """The first row of each row group of a ParquetFile, and the row count at the end."""
    return list(itertools.accumulate((pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)),
                                     initial=0))


def _iter_parquet(path: Path, part: Slice = WHOLE) -> Iterator[RawRow]:
    import pyarrow.parquet as pq  # noqa: PLC0415

    kind = compression_of(path)
    if kind is not None:
        raise SourceError(f"ingest source {path}: {kind}-compressed, not a parquet file (parquet compresses "
                          "inside the file); decompress it and list the .parquet file")
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid (a ValueError) for non-parquet files
        raise SourceError(f"ingest source {path}: not a readable parquet file: {exc}") from None
    # Row groups are the unit a reader can fetch alone: a group is this slice's when its first
    # row is (a file written as one group goes to one slice whole).
    lo, hi = part.bounds(pf.metadata.num_rows)
    starts = _group_starts(pf)
    groups = [g for g in range(len(starts) - 1) if lo <= starts[g] < hi]
    if not groups:
        return
    index = starts[groups[0]]
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=groups):
        for row in batch.to_pylist():
            yield RawRow(index, row)
            index += 1


def read_row(src: IngestSource, row: int, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES) -> RawRow | None:
    """The row numbered `row` (its index as iter_rows numbers it), reading as little as the format
    allows: JSON lines seek straight to the byte offset that is the row's number, Parquet reads
    the one row group holding it, datasets take that row of the memory-mapped table; a JSON
    document or a compressed file is read up to it. None: no row has that number."""
    fmt = detect_format(src)
    path = Path(src.path)
    if fmt == "jsonl" and compression_of(path) is None:
        if not 0 <= row < path.stat().st_size:
            return None
        with open_source(path) as f:
            if row > 0:
                f.seek(row - 1)
                if f.read(1) not in (b"\n", b"\r"):
                    return None  # not where a line starts
            found = next(iter_lines(f, max_row_bytes), None)
        if found is None or not (found[3] > max_row_bytes or found[2].strip()):
            return None  # a blank line is no row
        if found[3] > max_row_bytes:
            return next((r for r in _iter_jsonl(path, max_row_bytes) if r.index == row), None)
        return RawRow(row, found[2], row)
    if fmt == "parquet" and compression_of(path) is None:
        import pyarrow.parquet as pq  # noqa: PLC0415

        pf = pq.ParquetFile(path)
        starts = _group_starts(pf)
        group = next((g for g in range(len(starts) - 1) if starts[g] <= row < starts[g + 1]), None)
        if group is None:
            return None
        return RawRow(row, pf.read_row_group(group).slice(row - starts[group], 1).to_pylist()[0])
    if fmt in ("hf_disk", "hub"):
        ds = _load_from_disk(path, src.split) if fmt == "hf_disk" else _load_hub(src.path, src.split)
        if not 0 <= row < len(ds):
            return None
        return RawRow(row, ds.select([row]).with_format("arrow")[:1].to_pylist()[0])
    for raw in iter_rows(src, max_row_bytes):
        if raw.index >= row:
            return raw if raw.index == row else None
    return None


def count_rows_upto(src: IngestSource, limit: int) -> int | None:
    """The source's rows when that is cheap to know, counting at most `limit` (JSON lines: lines
    read, not parsed; parquet: its metadata; a JSON document up to COUNT_JSON_BYTES, parsed); None
    when it is not (a bigger JSON document, datasets, which need their library)."""
    try:
        fmt = detect_format(src)
        path = Path(src.path)
        if fmt == "parquet":
            import pyarrow.parquet as pq  # noqa: PLC0415

            return min(pq.ParquetFile(path).metadata.num_rows, limit)
        if fmt == "jsonl":
            n = 0
            with open_source(path) as f:
                for _, _, line, length in iter_lines(f, DEFAULT_MAX_ROW_BYTES):
                    n += bool(length > DEFAULT_MAX_ROW_BYTES or line.strip())
                    if n >= limit:
                        break
            return n
        if fmt == "json" and path.stat().st_size <= COUNT_JSON_BYTES and compression_of(path) is None:
            rows = json.loads(path.read_bytes().decode("utf-8-sig"))
            return min(len(rows), limit) if isinstance(rows, list) else None
    except Exception:  # unreadable: the stage says why, naming the file
        return None
    return None


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


def _iter_dataset(ds: Any, part: Slice = WHOLE) -> Iterator[RawRow]:
    # Arrow format yields the stored values: images stay {"bytes", "path"} (the original file
    # bytes, so the content hash is the file's) instead of being decoded to PIL and re-encoded.
    start, end = part.bounds(len(ds))
    if not part.whole:
        ds = ds.select(range(start, end))  # a view of the memory-mapped table: only these rows are read
    index = start
    for table in ds.with_format("arrow").iter(batch_size=BATCH_ROWS):
        for row in table.to_pylist():
            yield RawRow(index, row)
            index += 1
