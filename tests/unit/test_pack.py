"""The pack stage and the shard reader on the smoke fixtures: round trip through webdataset in
mix order, manifest numbers, crash and resume, corrupt shards, unsafe keys, safe extraction."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import shutil
import tarfile
from pathlib import Path

import pytest

import ain.data.ingest as ingest
import ain.data.pack as pack
from ain.config import RunConfig
from ain.data import shards
from ain.data.config import IngestConfig, IngestSource, PackConfig
from ain.data.shards import CorruptShard, iter_samples, read_manifest, safe_extract, verify_shard
from ain.rundir import RunDir
from ain.stages import TaskContext

PROJECT = Path(__file__).resolve().parents[2]
FIXTURES = PROJECT / "tests" / "fixtures" / "smoke"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
LOG = logging.getLogger("test_pack")


class Crash(KeyboardInterrupt):
    """Stands in for the process dying (not an Exception, so nothing cleans up after it)."""


def crash_after_samples(monkeypatch, n: int) -> None:
    """The packing process dies when it loads the images of sample n + 1."""
    real, calls = pack.load_images, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n:
            raise Crash()
        return real(*args, **kwargs)

    monkeypatch.setattr(pack, "load_images", dying)


def make_cfg(num_tasks=2, target_mb=0.006, max_samples=4) -> RunConfig:
    sources = [IngestSource(path=str(FIXTURES / s["path"])) for s in EXPECTED["sources"]]
    return RunConfig(stages=["ingest", "mix", "pack"],
                     ingest=IngestConfig(sources=sources, num_tasks=1),
                     pack=PackConfig(target_shard_mb=target_mb, max_samples_per_shard=max_samples,
                                     num_tasks=num_tasks))


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """The fixtures ingested once, and a mix made of them: shuffled, with the extra keys later
    stages add (translation_of, verify) on some rows."""
    root = tmp_path_factory.mktemp("ingested") / "run"
    run = RunDir(root)
    run.stage("ingest").create()
    cfg = make_cfg()
    ingest.run_ingest_task(TaskContext(cfg=cfg, run=run, stage="ingest", index=0, num_tasks=1, log=LOG))
    rows = [json.loads(line) for line in
            (run.stage("ingest").out / "samples-00000.jsonl").read_text(encoding="utf-8").splitlines()]
    random.Random(7).shuffle(rows)
    for i, row in enumerate(rows):
        if i % 5 == 0:
            row["translation_of"] = rows[(i + 1) % len(rows)]["id"]
            row["verify"] = {"labse": 0.91, "bleu": 61.5, "attempts": 1}
    assert len(rows) == EXPECTED["good_total"]
    return root, rows


def make_run(ingested, tmp_path: Path, rows=None) -> Path:
    """A run directory with the ingest stage (copied) and a finished mix stage holding `rows`."""
    src, default_rows = ingested
    root = tmp_path / "run"
    shutil.copytree(src / "stages" / "ingest", root / "stages" / "ingest")
    mix = RunDir(root).stage("mix").create()
    rows = default_rows if rows is None else rows
    (mix.out / "mixed-00000.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    mix.write_marker(0, {"items": len(rows)})
    RunDir(root).stage("pack").create()
    return root


def run_task(root: Path, cfg: RunConfig, index: int) -> dict:
    ctx = TaskContext(cfg=cfg, run=RunDir(root), stage="pack", index=index, num_tasks=cfg.pack.num_tasks, log=LOG)
    return pack.run_pack_task(ctx)


def run_all(root: Path, cfg: RunConfig) -> list[dict]:
    return [run_task(root, cfg, i) for i in range(cfg.pack.num_tasks)]


def pack_out(root: Path) -> Path:
    return RunDir(root).stage("pack").out


def store_bytes(root: Path, name: str) -> bytes:
    return (RunDir(root).stage("ingest").out / "images" / name[:2] / name).read_bytes()


def digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.iterdir()) if p.name.endswith((".tar", ".jsonl"))}


# ----------------------------------------------------------------------------- round trip
@pytest.fixture(scope="module")
def packed(ingested, tmp_path_factory):
    root = make_run(ingested, tmp_path_factory.mktemp("packed"))
    cfg = make_cfg()
    return root, cfg, run_all(root, cfg)


def test_round_trip_in_mix_order(ingested, packed):
    _, rows = ingested
    root, cfg, stats = packed
    got = list(iter_samples(pack_out(root)))
    assert [s for s, _ in got] == rows  # every sample once, mix order, JSON equal to the input row
    for sample, members in got:
        assert list(members) == [f"{sample['id']}.{i}.{name.split('.')[1]}" for i, name in enumerate(sample["images"])]
        assert list(members) == shards.image_members(sample)
        for name, data in zip(sample["images"], members.values()):
            assert data == store_bytes(root, name)
    assert sum(st["items"] for st in stats) == len(rows)
    assert [st["slice"] for st in stats] == [[0, 32], [32, 64]]
    assert {len(s["images"]) for s in rows} >= {0, 1, 2}  # text-only and multi-image samples too


def test_manifest_numbers(ingested, packed):
    _, rows = ingested
    root, cfg, stats = packed
    out = pack_out(root)
    entries = read_manifest(out)
    assert [e["shard"] for e in entries] == sorted(p.name for p in out.glob("*.tar"))
    assert not list(out.glob("*.partial"))
    per_task = {i: [e for e in entries if e["shard"].startswith(f"shard-{i:03d}-")] for i in range(2)}
    assert all(len(v) >= 3 for v in per_task.values())  # several shards per task
    for i, st in enumerate(stats):
        assert st["shards"] == len(per_task[i])
        assert st["bytes"] == sum(e["bytes"] for e in per_task[i])
        assert st["files"]["manifest"]["rows"] == len(per_task[i])
        assert per_task[i][0]["first_id"] == rows[i * 32]["id"] and per_task[i][-1]["last_id"] == rows[i * 32 + 31]["id"]
    max_bytes = cfg.pack.target_shard_mb * 1e6
    for e in entries:
        path = out / e["shard"]
        assert e["bytes"] == path.stat().st_size and e["bytes"] % tarfile.RECORDSIZE == 0
        assert e["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        inside = [s for s, _ in shards.iter_shard(path, e)]
        assert e["samples"] == len(inside) <= cfg.pack.max_samples_per_shard
        assert (e["first_id"], e["last_id"]) == (inside[0]["id"], inside[-1]["id"])
        langs, domains = {}, {}
        for s in inside:
            langs[s["language"]] = langs.get(s["language"], 0) + 1
            domains[s["domain"]] = domains.get(s["domain"], 0) + 1
        assert e["languages"] == langs and e["domains"] == domains
        last_of_task = e is per_task[int(e["shard"][6:9])][-1]
        assert last_of_task or e["samples"] == cfg.pack.max_samples_per_shard or e["bytes"] >= max_bytes
    totals = {}
    for st in stats:
        for lang, k in st["languages"].items():
            totals[lang] = totals.get(lang, 0) + k
    assert totals == EXPECTED["languages"]
    # Both closing rules fired on the fixtures.
    assert any(e["samples"] == cfg.pack.max_samples_per_shard for e in entries)
    assert any(e["samples"] < cfg.pack.max_samples_per_shard for e in entries[:-1])


def test_webdataset_reads_what_was_written(ingested, packed):
    """The public webdataset API sees key <id> and fields "json", "0.<ext>" with raw bytes."""
    wds = pytest.importorskip("webdataset")
    _, rows = ingested
    root, _, _ = packed
    urls = [str(pack_out(root) / e["shard"]) for e in read_manifest(pack_out(root))]
    got = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [g["__key__"] for g in got] == [r["id"] for r in rows]
    for g, row in zip(got, rows):
        fields = sorted(k for k in g if not k.startswith("__"))
        assert fields == sorted(["json"] + [f"{i}.{n.split('.')[1]}" for i, n in enumerate(row["images"])])
        assert json.loads(g["json"]) == row
        for i, name in enumerate(row["images"]):
            assert g[f"{i}.{name.split('.')[1]}"] == store_bytes(root, name)


def test_rerun_of_a_finished_task_changes_nothing(ingested, packed, tmp_path):
    root, cfg, stats = packed
    before = digests(pack_out(root))
    again = run_task(root, cfg, 1)
    assert digests(pack_out(root)) == before
    assert {k: again[k] for k in ("items", "shards", "bytes", "files")} == \
        {k: stats[1][k] for k in ("items", "shards", "bytes", "files")}


def test_one_task_gives_the_same_samples(ingested, tmp_path):
    _, rows = ingested
    root = make_run(ingested, tmp_path)
    [st] = run_all(root, make_cfg(num_tasks=1, target_mb=1.0, max_samples=20000))
    assert st["shards"] == 1 and st["items"] == len(rows)
    assert [s for s, _ in iter_samples(pack_out(root))] == rows


# ---------------------------------------------------------------------------- crash, resume
@pytest.mark.parametrize("where", ["mid_shard", "after_rename"])
def test_crash_then_resume_equals_uninterrupted_run(ingested, tmp_path, monkeypatch, where):
    cfg = make_cfg(num_tasks=2, target_mb=1.0, max_samples=4)  # shards of exactly 4 samples
    clean = make_run(ingested, tmp_path / "clean")
    run_task(clean, cfg, 0)

    root = make_run(ingested, tmp_path / "crashed")
    out = pack_out(root)
    if where == "mid_shard":  # dies while writing the 2nd shard, after its 2nd sample
        crash_after_samples(monkeypatch, 6)
    else:  # dies after the 2nd shard is renamed but before it is listed
        real_close = shards.ShardWriter.close

        def dying_close(self):
            entry = real_close(self)
            if self.path.name.endswith("-00001.tar"):
                raise Crash()
            return entry

        monkeypatch.setattr(shards.ShardWriter, "close", dying_close)
    with pytest.raises(Crash):
        run_task(root, cfg, 0)

    state = json.loads(RunDir(root).stage("pack").state_file(0).read_text())
    assert state["position"] == 4 and state["counters"]["shards"] == 1
    listed = [json.loads(line) for line in (out / "manifest-00000.jsonl.partial").read_text().splitlines()]
    assert [e["shard"] for e in listed] == ["shard-000-00000.tar"]
    assert not (out / "manifest-00000.jsonl").exists()
    for e in listed:  # what is listed is complete
        verify_shard(out / e["shard"], e)
    for path in out.glob("*.tar"):  # and no file under a final name is truncated
        assert path.stat().st_size % tarfile.RECORDSIZE == 0 and len(list(shards.iter_shard(path))) == 4
    if where == "mid_shard":
        assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000-00000.tar"]  # no truncated .tar
        # A kill (unlike this in-process exception) leaves the unfinished shard behind.
        (out / "shard-000-00001.tar.partial").write_bytes(b"half a shard")
    else:
        assert (out / "shard-000-00001.tar").exists()  # complete but unlisted: the restart redoes it

    monkeypatch.undo()
    resumed = run_task(root, cfg, 0)
    assert resumed["resumed_from"] == 4
    assert digests(out) == digests(pack_out(clean))
    assert not list(out.glob("*.partial"))
    assert [s["id"] for s, _ in iter_samples(out)] == [r["id"] for r in ingested[1][:32]]


def test_resume_refuses_a_changed_mix(ingested, tmp_path, monkeypatch):
    cfg = make_cfg(num_tasks=1, target_mb=1.0, max_samples=4)
    root = make_run(ingested, tmp_path)
    crash_after_samples(monkeypatch, 6)
    with pytest.raises(Crash):
        run_task(root, cfg, 0)
    monkeypatch.undo()
    mix = RunDir(root).stage("mix").out / "mixed-00000.jsonl"
    mix.write_text("".join(mix.read_text(encoding="utf-8").splitlines(keepends=True)[:-3]), encoding="utf-8")
    with pytest.raises(RuntimeError, match="the mix now has 61 rows but had 64"):
        run_task(root, cfg, 0)


def test_mix_must_be_complete(ingested, tmp_path):
    root = make_run(ingested, tmp_path)
    RunDir(root).stage("mix").marker(0).unlink()
    with pytest.raises(RuntimeError, match="needs mix to be complete"):
        run_task(root, make_cfg(), 0)


# ------------------------------------------------------------------------------ corruption
def test_bit_flip_is_caught(packed, tmp_path):
    root, _, _ = packed
    out = tmp_path / "out"
    shutil.copytree(pack_out(root), out)
    entries = read_manifest(out)
    victim = entries[2]
    path = out / victim["shard"]
    data = bytearray(path.read_bytes())
    data[700] ^= 0x01  # inside the first member's data
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptShard, match=victim["shard"]):
        verify_shard(path, victim)
    seen = []
    with pytest.raises(CorruptShard, match=victim["shard"]):
        for sample, _ in iter_samples(out):
            seen.append(sample["id"])
    assert len(seen) == entries[0]["samples"] + entries[1]["samples"]  # nothing from the bad shard


@pytest.mark.parametrize("cut", ["mid_member", "member_boundary"])
def test_truncated_shard_is_caught(packed, tmp_path, cut):
    root, _, _ = packed
    out = tmp_path / "out"
    shutil.copytree(pack_out(root), out)
    victim = read_manifest(out)[0]
    path = out / victim["shard"]
    data = path.read_bytes()
    if cut == "mid_member":
        keep = len(data) // 2 + 100
    else:  # the header of the last sample's .json member: a tar reader sees a clean end there
        with tarfile.open(path) as tar:
            last = [m for m in tar.getmembers() if m.name == f"{victim['last_id']}.json"][0]
        keep = last.offset
    path.write_bytes(data[:keep])
    with pytest.raises(CorruptShard, match=victim["shard"]):
        verify_shard(path, victim)
    with pytest.raises(CorruptShard, match=victim["shard"]):
        list(iter_samples(out))
    with pytest.raises(CorruptShard, match=victim["shard"]):  # caught without checksums too
        list(iter_samples(out, verify=False))


def test_missing_shard_is_caught(packed, tmp_path):
    root, _, _ = packed
    out = tmp_path / "out"
    shutil.copytree(pack_out(root), out)
    victim = read_manifest(out)[1]
    (out / victim["shard"]).unlink()
    with pytest.raises(CorruptShard, match=f"{victim['shard']}: missing"):
        list(iter_samples(out))


# ------------------------------------------------------------------------------ unsafe input
@pytest.mark.parametrize("bad_id", ["../x", "/abs", "a.b", "", "a/b", "..", None])
def test_unsafe_key_fails_the_task_and_publishes_nothing(ingested, tmp_path, bad_id):
    rows = [dict(r) for r in ingested[1]]
    rows[2]["id"] = bad_id  # inside the first shard
    root = make_run(ingested, tmp_path, rows)
    with pytest.raises(ValueError) as info:
        run_task(root, make_cfg(num_tasks=1, target_mb=1.0, max_samples=4), 0)
    assert repr(bad_id) in str(info.value)
    out = pack_out(root)
    assert not list(out.glob("*.tar*")) and not list(out.glob("manifest-*.jsonl"))
    assert RunDir(root).stage("pack").read_marker(0) is None


def test_unsafe_image_name_fails_the_task(ingested, tmp_path):
    rows = [dict(r) for r in ingested[1]]
    victim = next(i for i, r in enumerate(rows) if r["images"])
    rows[victim]["images"] = ["../../../../etc/passwd"]
    root = make_run(ingested, tmp_path, rows)
    with pytest.raises(ValueError, match=rf"sample '{rows[victim]['id']}': image name '../../../../etc/passwd'"):
        run_task(root, make_cfg(num_tasks=1, target_mb=1.0, max_samples=20000), 0)
    assert not list(pack_out(root).glob("*.tar*"))


def test_missing_image_fails_the_task(ingested, tmp_path):
    rows = [dict(r) for r in ingested[1]]
    victim = next(i for i, r in enumerate(rows) if r["images"])
    rows[victim]["images"] = ["0" * 64 + ".png"]
    root = make_run(ingested, tmp_path, rows)
    with pytest.raises(FileNotFoundError, match=rows[victim]["id"]):
        run_task(root, make_cfg(num_tasks=1), 0)


def test_writer_refuses_duplicate_keys(tmp_path):
    writer = shards.ShardWriter(tmp_path / "s.tar")
    sample = {"id": "a", "images": [], "language": "en", "domain": "general"}
    writer.add(sample, [])
    with pytest.raises(ValueError, match="'a' appears twice"):
        writer.add(sample, [])
    writer.discard()
    assert not list(tmp_path.iterdir())


# -------------------------------------------------------------------------------- extraction
def _tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info in members:
            data = b"x" * info.size if info.isreg() else None
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = 3 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize("bad", [
    _info("../evil"), _info("ok/../../evil"), _info("/etc/x"),
    _info("link", tarfile.SYMTYPE, "/etc/passwd"), _info("hard", tarfile.LNKTYPE, "good.json"),
    _info("fifo", tarfile.FIFOTYPE),
])
def test_safe_extract_refuses(tmp_path, bad):
    path = _tar(tmp_path / "bad.tar", [_info("good.json"), bad])
    dest = tmp_path / "dest"
    with pytest.raises(ValueError) as info:
        safe_extract(path, dest)
    assert repr(bad.name) in str(info.value)
    assert not dest.exists() or not any(dest.iterdir())  # checked before anything is written
    assert not (tmp_path / "evil").exists()


def test_safe_extract_unpacks_a_shard(packed, tmp_path):
    root, _, _ = packed
    entry = read_manifest(pack_out(root))[0]
    written = safe_extract(pack_out(root) / entry["shard"], tmp_path / "x")
    samples = list(shards.iter_shard(pack_out(root) / entry["shard"]))
    assert len(written) == sum(1 + len(s["images"]) for s, _ in samples)
    for sample, members in samples:
        assert json.loads((tmp_path / "x" / f"{sample['id']}.json").read_text(encoding="utf-8")) == sample
        for name, data in members.items():
            assert (tmp_path / "x" / name).read_bytes() == data


def test_shard_bytes_are_pinned(tmp_path):
    """The exact bytes of a small shard: plain ustar headers (mode 0444, uid/gid 0, no owner
    names, mtime 0), a PAX header for a name over 100 characters, members in sample order (JSON,
    then images in `images` order), end blocks padded to a 10 KiB record. The digest is what the
    hand-built writer (before the move to tarfile) wrote for the same samples: a resumed task, or
    a re-run of an older run's pack stage, rewrites identical shards."""
    writer = shards.ShardWriter(tmp_path / "s.tar")
    writer.add({"id": "en_llava-1", "images": [], "language": "en", "domain": "general",
                "turns": [{"role": "user", "content": "مرحبا"}]}, [])
    writer.add({"id": "ar_x-2", "images": ["a" * 64 + ".png", "b" * 64 + ".jpg"], "language": "ar",
                "domain": "charts"}, [bytes(range(256)) * 3, b"\xff" * 512])
    writer.add({"id": "k" * 100, "images": ["c" * 64 + ".webp"], "language": "en", "domain": "ocr"}, [b"x" * 1000])
    assert writer.size == 9216  # before the end blocks (the last member: PAX header, header, 2 data blocks)
    entry = writer.close()
    assert entry["bytes"] == 10240 == (tmp_path / "s.tar").stat().st_size
    assert entry["sha256"] == "670d1004a834dbe2854cfe87f3094fa7e96e7917d4716118551a4d8ddfd95cb5"
    assert entry["sha256"] == hashlib.sha256((tmp_path / "s.tar").read_bytes()).hexdigest()
    with tarfile.open(tmp_path / "s.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["en_llava-1.json", "ar_x-2.json", "ar_x-2.0.png", "ar_x-2.1.jpg",
                                         "k" * 100 + ".json", "k" * 100 + ".0.webp"]
    assert {(m.mode, m.uid, m.gid, m.uname, m.gname, m.mtime, m.type) for m in members} == \
        {(0o444, 0, 0, "", "", 0, tarfile.REGTYPE)}
    assert not list(tmp_path.glob("*.partial"))


def test_manifests_are_read_once_from_the_stage_that_published_them(packed, tmp_path):
    """Class 4 of the robustness issue: a backup copy of a manifest, a shard listed twice, a manifest
    that is not the one the pack stage's marker published, a shard outside the folder and a truncated
    line each fail, naming the file (and line), instead of doubling or corrupting the training data."""
    root = tmp_path / "run"
    shutil.copytree(packed[0], root)
    out = pack_out(root)
    first = sorted(out.glob("manifest-*.jsonl"))[0]
    original = first.read_text()
    n = len(read_manifest(out))

    (out / "manifest-00000 (copy).jsonl").write_text(original)            # a backup copy beside it
    with pytest.raises(shards.ManifestError, match=r"manifest-00000 \(copy\)\.jsonl.*beside the pack stage"):
        read_manifest(out)
    (out / "manifest-00000 (copy).jsonl").unlink()

    lines = original.splitlines(keepends=True)
    for bad, pattern in [(original + lines[0], r"listed twice"),                 # a line repeated
                         (original + lines[0][: len(lines[0]) // 2] + "\n", r":\d+: not a manifest entry"),
                         (original.replace(json.loads(lines[0])["shard"], "../elsewhere.tar", 1), "not a plain file")]:
        first.write_text(bad)
        with pytest.raises(shards.ManifestError, match=pattern) as info:
            read_manifest(out)
        assert first.name in str(info.value)
    first.write_text(original)
    assert len(read_manifest(out)) == n                                       # restored: read once again

    # with the stage's done markers (StageTask writes them from each task's result): a manifest edited
    # after the stage finished does not match what its marker published
    for i, stats in enumerate(packed[2]):
        RunDir(root).stage("pack").write_marker(i, stats)
    assert len(read_manifest(out)) == n
    entry = json.loads(lines[0])
    first.write_text(json.dumps({**entry, "samples": entry["samples"] + 1}) + "\n" + "".join(lines[1:]))
    with pytest.raises(shards.ManifestError, match="does not match the pack stage's marker"):
        read_manifest(out)
    first.unlink()                                                            # and a published one missing
    with pytest.raises(shards.ManifestError, match="are missing"):
        read_manifest(out)
