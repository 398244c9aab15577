"""Ingest slices (ain.data.readers.Slice): task i of n reads only its contiguous part of each
source, and the n parts together are exactly the whole source, row for row, whatever n is."""

from __future__ import annotations

import gzip
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ain.data.readers as readers
from ain.data.config import IngestSource
from ain.data.readers import Slice, iter_rows


def _rows(src: IngestSource, part: Slice = readers.WHOLE) -> list[tuple[int, object]]:
    return [(r.index, r.raw) for r in iter_rows(src, part=part)]


def _union(src: IngestSource, n: int) -> list[tuple[int, object]]:
    return [row for i in range(n) for row in _rows(src, Slice(i, n))]


def _awkward_jsonl(seed: int) -> bytes:
    """JSON lines ending in \\n, \\r\\n and lone \\r, blank lines, a byte order mark and lines of
    very different lengths, so slice boundaries land everywhere, inside \\r\\n included."""
    rnd = random.Random(seed)
    out = [b"\xef\xbb\xbf"]
    for i in range(40):
        line = json.dumps({"i": i, "text": "x" * rnd.choice([0, 1, 5, 50, 300])}).encode()
        out.append(line + rnd.choice([b"\n", b"\r\n", b"\r", b"\n\n", b"\r\n\r\n"]))
    return b"".join(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jsonl_byte_slices_tile_the_file_for_every_boundary(tmp_path, seed):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(_awkward_jsonl(seed))
    src = IngestSource(path=str(path))
    whole = _rows(src)
    assert len(whole) == 40 and whole[0][0] == 0
    # every n up to 64 puts boundaries on many different bytes, one slice per byte at the end
    for n in [*range(2, 65), path.stat().st_size]:
        assert _union(src, n) == whole, n
    # the row index is the byte its line starts at, the same in a slice as in the whole read
    data = path.read_bytes()
    for index, raw in whole[1:]:
        assert data[index:index + len(raw)] == raw and data[index - 1:index] in (b"\n", b"\r")


def test_each_line_goes_to_the_slice_holding_its_first_byte(tmp_path):
    """One slice per byte: a line is read by exactly the slice its first byte is in, whichever
    terminator (\\r\\n, lone \\r, \\n) ends the line before it."""
    data = b'{"a":1}\r\n{"b":2}\r{"c":3}\n'
    starts = {0, 9, 17}
    path = tmp_path / "rows.jsonl"
    path.write_bytes(data)
    src = IngestSource(path=str(path))
    for position in range(len(data)):
        got = [index for index, _ in _rows(src, Slice(position, len(data)))]
        assert got == ([position] if position in starts else []), position


def test_compressed_jsonl_every_slice_reads_all_and_keeps_every_nth_row(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(gzip.compress(_awkward_jsonl(3)))
    src = IngestSource(path=str(path))
    whole = _rows(src)
    for n in (2, 3, 7):
        assert sorted(_union(src, n)) == sorted(whole)
        assert _rows(src, Slice(1, n)) == whole[1::n]


def test_a_jsonl_slice_reads_only_about_its_bytes(tmp_path, monkeypatch):
    """Bytes read per slice, counted at the file object: its range plus at most one read chunk
    and the rest of its last line; together about the file once (today's round-robin read every
    byte in every task)."""
    rows = [json.dumps({"i": i, "pad": "y" * 200}) for i in range(40_000)]
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(rows) + "\n")
    size = path.stat().st_size
    counted: list[int] = []
    real_open = readers.open_source

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            data = self.f.read(n)
            counted[-1] += len(data)
            return data

        def __getattr__(self, name):  # seek, tell, close
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def counting_open(p):
        counted.append(0)
        return Counting(real_open(p))

    monkeypatch.setattr(readers, "open_source", counting_open)
    n = 4
    assert [i for part in range(n) for i, _ in _rows(IngestSource(path=str(path)), Slice(part, n))] \
        == [i for i, _ in _rows(IngestSource(path=str(path)))]
    per_slice = counted[:n]
    assert all(c <= size / n + readers.CHUNK_BYTES + 64 * 1024 for c in per_slice), (per_slice, size)
    assert sum(per_slice) <= size + n * readers.CHUNK_BYTES + 64 * 1024


def test_parquet_slices_are_whole_row_groups(tmp_path):
    table = pa.table({"i": list(range(100)), "text": [f"t{i}" for i in range(100)]})
    path = tmp_path / "rows.parquet"
    pq.write_table(table, path, row_group_size=15)  # 7 groups: 15 x 6 + 10
    src = IngestSource(path=str(path), format="parquet")
    whole = _rows(src)
    assert [i for i, _ in whole] == list(range(100))
    for n in (2, 3, 7, 10):
        assert _union(src, n) == whole, n
        for part in range(n):
            got = [i for i, _ in _rows(src, Slice(part, n))]
            assert all(i % 15 == 0 or i - 1 in got for i in got)  # starts on a group boundary
    one_group = tmp_path / "one.parquet"
    pq.write_table(table, one_group)  # one group: the slice holding row 0 reads it all
    one = IngestSource(path=str(one_group), format="parquet")
    assert [len(_rows(one, Slice(k, 3))) for k in range(3)] == [100, 0, 0]


def test_dataset_slices_are_row_ranges(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"i": list(range(23)), "text": [f"t{i}" for i in range(23)]})
    ds.save_to_disk(str(tmp_path / "ds"))
    src = IngestSource(path=str(tmp_path / "ds"), format="hf_disk")
    whole = _rows(src)
    assert [i for i, _ in whole] == list(range(23)) and [r["i"] for _, r in whole] == list(range(23))
    for n in (2, 5, 23, 30):
        assert _union(src, n) == whole, n


def test_json_document_slices_are_row_ranges(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"i": i} for i in range(11)]))
    src = IngestSource(path=str(path))
    whole = _rows(src)
    for n in (2, 4, 11, 13):
        assert _union(src, n) == whole
    assert readers.whole_read_reason(src) == "one JSON document, which can only be parsed whole"


def test_read_row_finds_each_row_by_its_number_alone(tmp_path):
    """jobs/trace.py --raw: read_row(src, n) is the row iter_rows numbers n, for JSON lines (by
    seeking to byte n), Parquet (one row group), a dataset and a JSON document; any other number
    (a byte inside a line, a blank line, past the end) has no row."""
    datasets = pytest.importorskip("datasets")
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_bytes(_awkward_jsonl(3))
    table = pa.table({"i": list(range(40)), "text": [f"t{i}" for i in range(40)]})
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=7)
    datasets.Dataset.from_dict(table.to_pydict()).save_to_disk(str(tmp_path / "ds"))
    (tmp_path / "rows.json").write_text(json.dumps(table.to_pylist()))
    sources = [IngestSource(path=str(jsonl)), IngestSource(path=str(tmp_path / "rows.parquet")),
               IngestSource(path=str(tmp_path / "ds"), format="hf_disk"), IngestSource(path=str(tmp_path / "rows.json"))]
    for src in sources:
        whole = {r.index: r.raw for r in iter_rows(src)}
        assert len(whole) == 40
        for index, raw in whole.items():
            got = readers.read_row(src, index)
            assert got is not None and (got.index, got.raw) == (index, raw), (src.path, index)
        top = len(jsonl.read_bytes()) if src.path == str(jsonl) else 40
        assert all(readers.read_row(src, n) is None for n in set(range(-1, top + 2)) - set(whole)), src.path
