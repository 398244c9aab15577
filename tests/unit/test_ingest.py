"""The ingest stage on the smoke fixtures: completeness, quarantine reasons, the image store,
deterministic slicing, resume after a crash; plus the readers and the fixture script."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import ain.data.ingest as ingest
from ain.atomic import iter_jsonl
from ain.config import RunConfig
from ain.data.config import IngestConfig, IngestSource
from ain.data.readers import RowError, SourceError, iter_rows
from ain.rundir import RunDir
from ain.stages import TaskContext

PROJECT = Path(__file__).resolve().parents[2]
FIXTURES = PROJECT / "tests" / "fixtures" / "smoke"
SCRIPT = PROJECT / "scripts" / "make_fixtures.py"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
LOG = logging.getLogger("test_ingest")


def fixture_sources() -> list[IngestSource]:
    return [IngestSource(path=str(FIXTURES / s["path"])) for s in EXPECTED["sources"]]


def make_cfg(sources=None, num_tasks=3, commit_every=64) -> RunConfig:
    return RunConfig(stages=["ingest"], ingest=IngestConfig(
        sources=sources if sources is not None else fixture_sources(), num_tasks=num_tasks,
        commit_every=commit_every))


def context(root: Path, cfg: RunConfig, index: int) -> TaskContext:
    run = RunDir(root)
    run.stage("ingest").create()
    return TaskContext(cfg=cfg, run=run, stage="ingest", index=index, num_tasks=cfg.ingest.num_tasks, log=LOG)


def run_stage(root: Path, cfg: RunConfig) -> list[dict]:
    return [ingest.run_ingest_task(context(root, cfg, i)) for i in range(cfg.ingest.num_tasks)]


def out_dir(root: Path) -> Path:
    return RunDir(root).stage("ingest").out


def read(root: Path, stream: str, index: int | None = None) -> list[dict]:
    pattern = f"{stream}-*.jsonl" if index is None else f"{stream}-{index:05d}.jsonl"
    return [row for p in sorted(out_dir(root).glob(pattern)) for row in iter_jsonl(p)]


@pytest.fixture(scope="module")
def three_tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest3") / "run"
    return root, run_stage(root, make_cfg(num_tasks=3))


# ------------------------------------------------------------------------------ the fixture set
def test_good_rows_become_samples_exactly_once(three_tasks):
    root, _ = three_tasks
    samples = read(root, "samples")
    ids = [s["id"] for s in samples]
    assert len(ids) == len(set(ids)) == EXPECTED["good_total"]
    assert sorted(ids) == EXPECTED["good_ids"]
    langs = {lang: sum(s["language"] == lang for s in samples) for lang in ("en", "ar")}
    assert langs == EXPECTED["languages"]
    by_source = {}
    for s in samples:
        by_source[s["source"]] = by_source.get(s["source"], 0) + 1
    assert by_source == EXPECTED["good"]
    for s in samples:
        n = sum(t["content"].count("<image>") for t in s["turns"])
        assert n == len(s["images"]), s["id"]
        assert s["origin"]["file"].endswith(s["source"] + Path(s["origin"]["file"]).suffix)
    # A spot check of content: an Arabic parquet row keeps its text and gets its image.
    ar0 = next(s for s in samples if s["id"] == "ar_native-0")
    assert ar0["authentic"] is True and ar0["turns"][-1]["role"] == "assistant" and len(ar0["images"]) == 1


def test_bad_rows_quarantined_with_their_reason(three_tasks):
    root, _ = three_tasks
    records = read(root, "quarantine")
    assert len(records) == EXPECTED["bad_total"]
    got = {(Path(r["file"]).name, r["row"]): r for r in records}
    assert len(got) == len(records)
    for want in EXPECTED["bad"]:
        rec = got[(want["file"], want["row"])]
        assert rec["kind"] == want["kind"], rec
        assert want["reason_contains"] in rec["reason"], rec
        assert rec["source"] == "bad_rows" and len(rec["raw"]) <= 500
    not_utf8 = next(r for r in records if r["kind"] == "not_utf8")
    assert "\\xe9" in not_utf8["raw"]  # the offending byte is visible to a person


def test_counters_match_files(three_tasks):
    root, stats = three_tasks
    by_kind: dict[str, int] = {}
    for i, st in enumerate(stats):
        samples, quarantine = read(root, "samples", i), read(root, "quarantine", i)
        assert st["ingested"] == st["counters"]["ingested"] == len(samples) == st["files"]["samples"]["rows"]
        assert st["quarantined"] == st["counters"]["quarantined"] == len(quarantine) \
            == st["files"]["quarantine"]["rows"]
        assert st["items"] == len(samples) + len(quarantine)
        assert st["resumed_from"] == 0
        for lang in ("en", "ar"):
            assert st["counters"].get(f"lang_{lang}", 0) == sum(s["language"] == lang for s in samples)
        for key, n in st["counters"].items():
            if key.startswith("quarantined_"):
                by_kind[key[len("quarantined_"):]] = by_kind.get(key[len("quarantined_"):], 0) + n
        for name, meta in st["files"].items():  # noqa: B007
            path = out_dir(root) / meta["file"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"]
    assert by_kind == EXPECTED["bad_by_kind"]
    # Every task gets a contiguous share of every source; together exactly the rows there are.
    items = [st["items"] for st in stats]
    assert min(items) > 0 and sum(items) == EXPECTED["good_total"] + EXPECTED["bad_total"]
    assert all(entry["rows"] > 0 for st in stats for entry in st["sources"].values())


def test_images_stored_once_by_content(three_tasks):
    root, _ = three_tasks
    store = out_dir(root) / "images"
    files = sorted(p for p in store.rglob("*") if p.is_file())
    referenced = [name for s in read(root, "samples") for name in s["images"]]
    assert len(referenced) > len(set(referenced))  # the fixtures share images between rows
    assert {p.name for p in files} == set(referenced)  # no orphans, nothing missing
    assert len(files) == EXPECTED["unique_images"]
    for p in files:
        assert p.parent.name == p.name[:2]
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name.split(".")[0]
    assert not list(store.rglob("*.tmp"))


def test_slicing_is_deterministic_disjoint_and_complete(three_tasks, tmp_path):
    root3, _ = three_tasks
    root1 = tmp_path / "run1"
    run_stage(root1, make_cfg(num_tasks=1))
    slices = [{s["id"] for s in read(root3, "samples", i)} for i in range(3)]
    assert all(a.isdisjoint(b) for k, a in enumerate(slices) for b in slices[k + 1:])
    one = {s["id"]: s for s in read(root1, "samples")}
    three = {s["id"]: s for s in read(root3, "samples")}
    assert set(one) == set().union(*slices) == set(three)
    assert one == three  # the same sample whichever task made it
    q1 = {(r["file"], r["row"]) for r in read(root1, "quarantine")}
    assert q1 == {(r["file"], r["row"]) for r in read(root3, "quarantine")}


# ------------------------------------------------------------------------------------- resume
class Crash(KeyboardInterrupt):
    """Stands in for the process dying (KeyboardInterrupt is not caught as a bad row)."""


@pytest.mark.parametrize("crash_after", [1, 5, 12])
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, monkeypatch, crash_after):
    cfg = make_cfg(num_tasks=2, commit_every=2)
    clean = ingest.run_ingest_task(context(tmp_path / "clean", cfg, 1))

    real = ingest.normalize_row
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > crash_after:
            raise Crash()
        return real(*args, **kwargs)

    root = tmp_path / "crashed"
    monkeypatch.setattr(ingest, "normalize_row", dying)
    with pytest.raises(Crash):
        ingest.run_ingest_task(context(root, cfg, 1))
    state_file = RunDir(root).stage("ingest").state_file(1)
    position = json.loads(state_file.read_text())["position"] if state_file.exists() else 0
    # Rows refused by the reader never reach normalize_row, so the crash comes at row
    # crash_after + 1 or later; the last commit is at an even row count before it.
    assert position % 2 == 0 and position >= crash_after - crash_after % 2
    partial = out_dir(root) / "samples-00001.jsonl.partial"
    assert partial.stat().st_size > 0  # the crash left a partial file for the restart to trim
    assert not (out_dir(root) / "samples-00001.jsonl").exists()  # nothing published yet

    monkeypatch.setattr(ingest, "normalize_row", real)
    resumed = ingest.run_ingest_task(context(root, cfg, 1))
    assert resumed["resumed_from"] == position
    for stream in ("samples", "quarantine"):
        name = f"{stream}-00001.jsonl"
        assert (out_dir(root) / name).read_bytes() == (out_dir(tmp_path / "clean") / name).read_bytes()
    assert resumed["counters"] == clean["counters"] and resumed["items"] == clean["items"]
    ids = [s["id"] for s in read(root, "samples")]
    assert len(ids) == len(set(ids))


def test_rerun_after_publish_keeps_the_output(tmp_path):
    """A task that published its files but died before its marker runs again: same files."""
    cfg = make_cfg(num_tasks=2, commit_every=3)
    first = ingest.run_ingest_task(context(tmp_path / "run", cfg, 0))
    before = (out_dir(tmp_path / "run") / "samples-00000.jsonl").read_bytes()
    again = ingest.run_ingest_task(context(tmp_path / "run", cfg, 0))
    assert (out_dir(tmp_path / "run") / "samples-00000.jsonl").read_bytes() == before
    assert again["files"] == first["files"] and again["counters"] == first["counters"]


# ----------------------------------------------------------------------- errors and readers
def test_unexpected_exception_in_a_row_is_quarantined(tmp_path, monkeypatch):
    real = ingest.normalize_row

    def flaky(row, **kwargs):
        if kwargs["row_index"] == 3:
            raise RuntimeError("surprise")
        return real(row, **kwargs)

    monkeypatch.setattr(ingest, "normalize_row", flaky)
    cfg = make_cfg(sources=[IngestSource(path=str(FIXTURES / "en_llava.json"))], num_tasks=1)
    stats = ingest.run_ingest_task(context(tmp_path / "run", cfg, 0))
    [rec] = read(tmp_path / "run", "quarantine")
    assert (rec["row"], rec["kind"], rec["reason"]) == (3, "error", "RuntimeError: surprise")
    assert stats["counters"]["quarantined_error"] == 1 and stats["ingested"] == EXPECTED["good"]["en_llava"] - 1


def test_missing_source_file_fails_the_task(tmp_path):
    missing = tmp_path / "nope.jsonl"
    cfg = make_cfg(sources=[IngestSource(path=str(missing))], num_tasks=1)
    with pytest.raises(SourceError, match="nope.jsonl"):
        ingest.run_ingest_task(context(tmp_path / "run", cfg, 0))


def test_duplicate_source_names_refused(tmp_path):
    a, b = tmp_path / "a" / "train.jsonl", tmp_path / "b" / "train.jsonl"
    for p in (a, b):
        p.parent.mkdir()
        p.write_text("")
    with pytest.raises(SourceError, match="both named 'train'"):
        ingest.prepare_sources([IngestSource(path=str(a)), IngestSource(path=str(b))])
    assert [s.name for s in ingest.prepare_sources([IngestSource(path=str(a)),
                                                    IngestSource(path=str(b), name="train.b")])] == ["train", "train_b"]


def test_jsonl_reader_points_at_the_bad_byte(tmp_path):
    data = b'{"a": 1}\n\n{"b": "caf\xe9"}\n'
    path = tmp_path / "x.jsonl"
    path.write_bytes(data)
    rows = list(iter_rows(IngestSource(path=str(path))))
    assert [r.index for r in rows] == [0, 10]  # numbered by the byte their line starts at; blank lines skipped
    assert rows[0].load() == {"a": 1}
    with pytest.raises(RowError) as info:
        rows[1].load()
    err = info.value
    assert err.kind == "not_utf8"
    offset = int(err.reason.split("at byte ")[1].split()[0])
    assert data[offset] == 0xE9


@pytest.mark.parametrize("name, content, match", [
    ("rows.json", '{"not": "a list"}', "top-level JSON is dict"),
    ("rows.json", "[1, 2", "not valid JSON"),
    ("rows.txt", "hello", "cannot tell the format"),
    ("rows.parquet", "not parquet", "not a readable parquet file"),
])
def test_unreadable_sources(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(SourceError, match=match):
        list(iter_rows(IngestSource(path=str(tmp_path / name))))


def test_directory_that_is_not_a_dataset(tmp_path):
    with pytest.raises(SourceError, match="not a Hugging Face dataset"):
        list(iter_rows(IngestSource(path=str(tmp_path))))


def test_hf_disk_dataset_with_image_feature(tmp_path):
    datasets = pytest.importorskip("datasets")
    png = (FIXTURES / "images" / "red_square.png").read_bytes()
    feats = datasets.Features({
        "image": datasets.Image(),
        "conversations": datasets.List({"from": datasets.Value("string"), "value": datasets.Value("string")}),
    })
    rows = {"image": [{"bytes": png, "path": "red_square.png"}] * 2,
            "conversations": [[{"from": "human", "value": "What colour is the square?"},
                               {"from": "gpt", "value": "The square is red."}],
                              [{"from": "human", "value": "<image>\nما لون المربع؟"},
                               {"from": "gpt", "value": "المربع أحمر."}]]}
    ds = datasets.Dataset.from_dict(rows, features=feats)
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "ds"))

    cfg = make_cfg(sources=[IngestSource(path=str(tmp_path / "ds"), domain="general")], num_tasks=1)
    stats = ingest.run_ingest_task(context(tmp_path / "run", cfg, 0))
    samples = read(tmp_path / "run", "samples")
    assert stats["ingested"] == 2 and [s["language"] for s in samples] == ["en", "ar"]
    # The stored image is the original file, byte for byte (not a decoded and re-encoded copy).
    assert samples[0]["images"] == [hashlib.sha256(png).hexdigest() + ".png"] == samples[1]["images"]
    assert samples[0]["source"] == "ds"
    with pytest.raises(SourceError, match=r"no split 'valid'; it has \['test', 'train'\]"):
        list(iter_rows(IngestSource(path=str(tmp_path / "ds"), split="valid")))


def test_hub_failure_names_the_fix(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'liuhaotian/LLaVA-Instruct-150K' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SourceError, match="save_to_disk, and use format=hf_disk"):
        list(iter_rows(IngestSource(path="liuhaotian/LLaVA-Instruct-150K", format="hub")))


# ---------------------------------------------------------------------------- fixture script
def _load_script():
    spec = importlib.util.spec_from_file_location("make_fixtures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _contents(d: Path) -> dict:
    """Every row of every fixture file, plus the image file names."""
    parquet = pq.read_table(d / "ar_native.parquet").to_pylist()
    return {
        "en": json.loads((d / "en_llava.json").read_text(encoding="utf-8")),
        "ar": parquet,
        "sharegpt": list(iter_jsonl(d / "mixed_sharegpt.jsonl")),
        "bad": (d / "bad_rows.jsonl").read_bytes(),
        "expected": json.loads((d / "expected.json").read_text(encoding="utf-8")),
        "images": sorted(p.name for p in (d / "images").iterdir()),
    }


def test_fixture_script_is_deterministic(tmp_path):
    subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "a")], check=True, capture_output=True)
    _load_script().write(tmp_path / "b")
    a, b = _contents(tmp_path / "a"), _contents(tmp_path / "b")
    assert a == b
    for name in a["images"]:
        assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()


def test_checked_in_fixtures_are_current(tmp_path):
    """The fixtures in the repository are what the script writes now (nobody edited them by hand)."""
    _load_script().write(tmp_path / "fresh")
    fresh, stored = _contents(tmp_path / "fresh"), _contents(FIXTURES)
    # Image bytes may differ with another Pillow version; the rows and names must not.
    for rows in (fresh["ar"], stored["ar"]):
        for row in rows:
            for image in row["images"]:
                image["bytes"] = None
    assert fresh == stored
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert total < 300_000


def test_resume_refuses_inputs_that_shrank(tmp_path, monkeypatch):
    rows = [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
            for i in range(6)]
    src = tmp_path / "data.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg(sources=[IngestSource(path=str(src))], num_tasks=1, commit_every=2)
    real = ingest.normalize_row
    calls = []

    def dying(row, **kwargs):
        calls.append(kwargs["row_index"])
        if len(calls) == 6:
            raise Crash()
        return real(row, **kwargs)

    monkeypatch.setattr(ingest, "normalize_row", dying)
    with pytest.raises(Crash):
        ingest.run_ingest_task(context(tmp_path / "run", cfg, 0))
    monkeypatch.setattr(ingest, "normalize_row", real)
    src.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))  # the input changed
    with pytest.raises(SourceError, match="an input changed under a running stage"):
        ingest.run_ingest_task(context(tmp_path / "run", cfg, 0))
