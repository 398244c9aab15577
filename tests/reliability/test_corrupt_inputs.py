"""Corrupted inputs through the whole ingest task: each is quarantined (one bad row costs only
that row) or refused (the source cannot be read: SourceError naming the file), always with a
reason a person can act on; then a hypothesis fuzz test over the readers and normalisation.

The kinds already pinned elsewhere (malformed JSON, non-UTF-8 bytes, truncated PNG/JPEG, a
bit-flipped or truncated shard, ...) are listed in docs/RELIABILITY.md with their tests; this
module adds the rest."""

from __future__ import annotations

import base64
import io
import json
import logging
import random
import re
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import ain.data.ingest as ingest
from ain.atomic import iter_jsonl
from ain.config import RunConfig
from ain.data.config import IngestConfig, IngestSource
from ain.data.readers import SourceError, compression_of
from ain.rundir import RunDir
from ain.stages import TaskContext
from tests.stage_helpers import jsonl_row_starts

LOG = logging.getLogger("test_corrupt_inputs")
GOOD_ROW = {"conversations": [{"from": "human", "value": "<image>\nWhat is this?"},
                              {"from": "gpt", "value": "A shape."}], "image": "img.png"}


def png(size=(8, 8), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def run_ingest(root: Path, source: Path, max_image_bytes: int | None = None) -> tuple[list[dict], list[dict], dict]:
    kwargs = {"max_image_bytes": max_image_bytes} if max_image_bytes else {}
    cfg = RunConfig(stages=["ingest"], ingest=IngestConfig(sources=[IngestSource(path=str(source))], num_tasks=1,
                                                           **kwargs))
    run = RunDir(root)
    run.stage("ingest").create()
    stats = ingest.run_ingest_task(TaskContext(cfg=cfg, run=run, stage="ingest", index=0, num_tasks=1, log=LOG))
    out = run.stage("ingest").out
    return list(iter_jsonl(out / "samples-00000.jsonl")), list(iter_jsonl(out / "quarantine-00000.jsonl")), stats


def row_with_image(name: str) -> dict:
    return {**GOOD_ROW, "image": name}


# Each case: (id, files to write beside the source {name: bytes}, the row (dict) or the raw line
# (bytes), expected quarantine kind, a fragment of the reason).
BOMB = None


def noise_png() -> bytes:
    """About 12 KB: random pixels do not compress."""
    buf = io.BytesIO()
    Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3)).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png() -> bytes:
    """A 20000 x 20000 bilevel PNG: 400 Mpixel (over PIL's 2 x 89 Mpixel limit) in ~50 KB."""
    global BOMB
    if BOMB is None:
        BOMB = png((20000, 20000), "1")
    return BOMB


ROW_CASES = [
    ("zero_length_image", {"img.png": b""}, GOOD_ROW, "bad_image", "0 bytes"),
    ("text_named_png", {"img.png": b"hello, I am not an image\n"}, GOOD_ROW, "bad_image", "not a decodable image"),
    ("truncated_jpeg_at_ingest", {"img.png": jpeg()[:200]}, GOOD_ROW, "bad_image", "image does not decode"),
    ("decompression_bomb", {"img.png": "BOMB"}, GOOD_ROW, "bad_image", "DecompressionBomb"),
    ("image_over_byte_limit", {"img.png": "NOISE"}, GOOD_ROW, "image_too_large", "max_image_bytes"),
    ("image_path_is_directory", {"imgdir/x": b""}, row_with_image("imgdir"), "missing_image", "not a file"),
    ("data_url_not_base64", {}, row_with_image("data:image/png;base64,@@@notbase64@@@"), "bad_image", "base64"),
    ("nul_bytes_in_line", {}, b'{"conversations": [\x00]}\n', "malformed_json", "malformed JSON"),
    ("utf8_bom_mid_file", {}, b'\xef\xbb\xbf' + json.dumps(GOOD_ROW).encode() + b"\n", "malformed_json", "BOM"),
    ("utf16_line", {}, json.dumps({"conversations": []}).encode("utf-16") + b"\n", "not_utf8", "not valid UTF-8"),
    ("deeply_nested_json", {}, b"[" * 100_000 + b"]" * 100_000 + b"\n", None, ""),
    ("lone_surrogate_escape", {}, b'{"conversations": [{"from": "human", "value": "hi \\ud800"}, '
                                  b'{"from": "gpt", "value": "ok"}]}\n', "not_utf8", "surrogate"),
    ("nan_as_conversation", {}, b'{"conversations": NaN}\n', None, ""),
    ("conversation_is_null", {}, {"conversations": None}, None, ""),
    ("image_is_a_number", {}, {**GOOD_ROW, "image": 42}, "wrong_type", "expected a path"),
    ("absolute_image_outside_root_via_dotdot", {}, row_with_image("../../../../etc/passwd"), "image_escape",
     "escapes image_root"),
]


@pytest.mark.parametrize("case, files, row, kind, reason", ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_bad_row_is_quarantined_with_a_reason_and_the_good_rows_survive(tmp_path, case, files, row, kind, reason):
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    (src_dir / "good.png").write_bytes(png())
    for name, data in files.items():
        p = src_dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(bomb_png() if data == "BOMB" else noise_png() if data == "NOISE" else data)
    line = row if isinstance(row, bytes) else json.dumps(row).encode() + b"\n"
    good = json.dumps(row_with_image("good.png")).encode() + b"\n"
    (src_dir / "rows.jsonl").write_bytes(good + line + good.replace(b"A shape.", b"Another shape."))
    samples, quarantine, stats = run_ingest(tmp_path / "run", src_dir / "rows.jsonl",
                                            max_image_bytes=2000 if case == "image_over_byte_limit" else None)
    assert len(samples) == 2, samples                       # the good rows on either side survive
    assert [q["row"] for q in quarantine] == [len(good)], quarantine   # the bad one is quarantined, not dropped
    q = quarantine[0]
    assert q["kind"] and q["reason"], q
    if kind is not None:
        assert q["kind"] == kind, q
    assert reason in q["reason"], q
    assert stats["items"] == 3 and stats["quarantined"] == 1


def _parquet(path: Path, table: pa.Table) -> bytes:
    pq.write_table(table, path)
    return path.read_bytes()


def test_parquet_with_a_wrong_schema_quarantines_every_row_naming_the_layout(tmp_path):
    path = tmp_path / "wrong.parquet"
    _parquet(path, pa.table({"foo": [1, 2, 3], "bar": ["a", "b", "c"]}))
    samples, quarantine, _ = run_ingest(tmp_path / "run", path)
    assert samples == [] and len(quarantine) == 3
    assert {q["kind"] for q in quarantine} == {"unknown_style"}
    assert all("conversation layout" in q["reason"] for q in quarantine)


@pytest.mark.parametrize("name, make, match", [
    ("zero.parquet", lambda p: b"", "empty file"),
    ("cut.parquet", lambda p: _parquet(p, pa.table({"a": list(range(1000))}))[:300], "not a readable parquet file"),
    ("zero.json", lambda p: b"", "empty file"),
    ("cut.json", lambda p: json.dumps([GOOD_ROW, GOOD_ROW]).encode()[:40], "not valid JSON"),
    ("zero.jsonl", lambda p: b"", "empty file"),
    ("latin1.json", lambda p: json.dumps([{"x": "caf\u00e9"}], ensure_ascii=False).encode("latin-1"), "cannot read"),
], ids=["zero_length_parquet", "truncated_parquet", "zero_length_json", "truncated_json", "zero_length_jsonl",
        "non_utf8_json_document"])
def test_unreadable_source_is_refused_naming_the_file(tmp_path, name, make, match):
    path = tmp_path / name
    data = make(path)
    path.write_bytes(data)
    with pytest.raises(SourceError, match=match) as info:
        run_ingest(tmp_path / "run", path)
    assert name in str(info.value)
    # Nothing was published: no samples file, so nothing downstream can take a partial source as whole.
    assert not list(RunDir(tmp_path / "run").stage("ingest").out.glob("samples-*.jsonl"))


# ------------------------------------------------------------------------------------ fuzzing
def _valid_lines() -> list[bytes]:
    return [json.dumps(row_with_image("good.png")).encode(),
            json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}).encode(),
            json.dumps({"conversations": [{"from": "human", "value": "\u0645\u0631\u062d\u0628\u0627"},
                                          {"from": "gpt", "value": "\u0623\u0647\u0644\u0627"}]},
                       ensure_ascii=False).encode()]


def _mutate(data: st.DataObject, line: bytes) -> bytes:
    how = data.draw(st.sampled_from(["truncate", "flip", "insert", "keep"]))
    if how == "truncate" and line:
        return line[:data.draw(st.integers(0, len(line) - 1))]
    if how == "flip" and line:
        i = data.draw(st.integers(0, len(line) - 1))
        return line[:i] + bytes([line[i] ^ (1 << data.draw(st.integers(0, 7)))]) + line[i + 1:]
    if how == "insert":
        i = data.draw(st.integers(0, len(line)))
        return line[:i] + data.draw(st.binary(min_size=1, max_size=8)) + line[i:]
    return line


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.sampled_from(["\ud800", "a\udfffb", "\u0645\u0631\u062d\u0628\u0627 <image>", ""]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["conversations", "messages", "from", "value", "role", "content", "image", "images",
                         "id", "language", "domain", "x"]), inner, max_size=4),
    max_leaves=12)

FUZZ = {"inputs": 0, "rows": 0}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_jsonl_every_line_is_a_sample_or_a_quarantine_record(data):
    lines = []
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["valid", "mutated", "bytes", "json"]))
        if kind == "valid":
            lines.append(data.draw(st.sampled_from(_valid_lines())))
        elif kind == "mutated":
            lines.append(_mutate(data, data.draw(st.sampled_from(_valid_lines()))))
        elif kind == "bytes":
            lines.append(data.draw(st.binary(max_size=40)))
        else:
            lines.append(json.dumps(data.draw(json_values)).encode())
    blob = b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n"
    tmp = Path(tempfile.mkdtemp(prefix="ain-fuzz-"))
    try:
        (tmp / "good.png").write_bytes(png())
        (tmp / "rows.jsonl").write_bytes(blob)
        lines = re.split(rb"\r\n|\r|\n", blob)[:-1]        # JSON Lines may end a line with \n, \r\n or \r
        nonblank = [raw for raw in lines if raw.strip()]
        if not nonblank:
            return
        if compression_of(tmp / "rows.jsonl") is not None:  # random bytes that open like gzip/zip/...:
            with pytest.raises(SourceError, match="rows.jsonl"):  # read as such or refused, naming the file
                run_ingest(tmp / "run", tmp / "rows.jsonl")
            return
        samples, quarantine, stats = run_ingest(tmp / "run", tmp / "rows.jsonl")
        FUZZ["inputs"] += 1
        FUZZ["rows"] += len(nonblank)
        assert len(samples) + len(quarantine) == stats["items"] == len(nonblank)
        assert all(q["kind"] and q["reason"] for q in quarantine)
        assert len({s["id"] for s in samples}) == len(samples)
        rows_seen = sorted([q["row"] for q in quarantine] + [s["origin"]["row"] for s in samples])
        assert rows_seen == jsonl_row_starts(blob)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values, min_size=1, max_size=6))
def test_fuzz_json_list_every_element_is_a_sample_or_a_quarantine_record(rows):
    tmp = Path(tempfile.mkdtemp(prefix="ain-fuzz-"))
    try:
        (tmp / "rows.json").write_text(json.dumps(rows), encoding="utf-8")
        samples, quarantine, stats = run_ingest(tmp / "run", tmp / "rows.json")
        FUZZ["inputs"] += 1
        FUZZ["rows"] += len(rows)
        assert len(samples) + len(quarantine) == stats["items"] == len(rows)
        assert all(q["kind"] and q["reason"] for q in quarantine)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_data_url_image_round_trips(tmp_path):
    """Control for the data: URL case above: a valid one is accepted, so the refusal is specific."""
    url = "data:image/png;base64," + base64.b64encode(png()).decode()
    (tmp_path / "rows.jsonl").write_text(json.dumps(row_with_image(url)) + "\n")
    samples, quarantine, _ = run_ingest(tmp_path / "run", tmp_path / "rows.jsonl")
    assert len(samples) == 1 and quarantine == []
