"""vdr_prepare on a PEARL-shaped fixture: sampling keeps category proportions, dedup by caption,
every negative obeys its rule and is never the positive, splits share no image, the metadata pass
never reads the image column, bad rows are reported with file and row."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ain.vdr import prepare as prep
from ain.vdr.config import VdrPrepareConfig
from ain_testkit.pearl_fixture import CATEGORIES, fixture_rows, write_pearl_fixture


@pytest.fixture(scope="module")
def pearl(tmp_path_factory) -> Path:
    return write_pearl_fixture(tmp_path_factory.mktemp("pearl"))


@pytest.fixture(scope="module")
def prepared(pearl, tmp_path_factory):
    cfg = VdrPrepareConfig(source=str(pearl), num_queries=120, dev_queries=12, test_queries=12)
    out = tmp_path_factory.mktemp("out")
    stats = prep.prepare(cfg, out, seed=0)
    from datasets import load_from_disk

    return cfg, stats, load_from_disk(str(out / prep.DATASET_DIR)), out


def _meta(pearl, counts=None):
    cfg = VdrPrepareConfig(source=str(pearl))
    files, fs = prep.source_files(cfg)
    return prep.read_metadata(cfg, files, fs, counts if counts is not None else Counter())


def test_metadata_pass_never_reads_the_image_column(pearl, monkeypatch):
    requested: list = []
    real = prep._parquet

    class Spy:
        def __init__(self, pf):
            self.pf = pf

        def __getattr__(self, name):
            attr = getattr(self.pf, name)
            if name in ("iter_batches", "read", "read_row_group", "read_row_groups"):
                def wrapped(*args, columns=None, **kwargs):
                    requested.append(columns)
                    return attr(*args, columns=columns, **kwargs)
                return wrapped
            return attr

    monkeypatch.setattr(prep, "_parquet", lambda fs, path: Spy(real(fs, path)))
    rows = _meta(pearl)
    assert len(rows) == len(fixture_rows())
    assert requested and all(cols is not None and "image" not in cols for cols in requested), requested


def test_dedup_by_caption_and_stratified_sampling_keeps_proportions(pearl):
    rows = _meta(pearl)
    images = prep.dedup_images(rows)
    assert len(images) == len({r["augmented_caption"] for r in fixture_rows()})
    share = Counter(r.category for r in rows)
    for n in (36, 90, 150):
        sample = prep.stratified_sample(rows, n, seed=1)
        got = Counter(r.category for r in sample)
        assert len(sample) == n and len({(r.query, r.caption) for r in sample}) == n
        for cat in CATEGORIES:
            assert abs(got[cat] - n * share[cat] / len(rows)) < 1.0, (cat, got[cat], n * share[cat] / len(rows))
    with pytest.raises(ValueError, match="num_queries"):
        prep.stratified_sample(rows, len(rows) + 1, seed=0)


def test_allocate_is_exact_and_proportional():
    assert prep.allocate(10, {"a": 1, "b": 1, "c": 2}) == {"a": 3, "b": 2, "c": 5}  # tie on .5: by key
    assert prep.allocate(999, {"x": 5000, "y": 3000, "z": 2000}) == {"x": 499, "y": 300, "z": 200}
    assert prep.allocate(5, {"x": 0, "y": 0}) == {"x": 0, "y": 0}


def test_splits_have_exact_sizes_stratified_and_share_no_image(prepared):
    cfg, stats, dd, _ = prepared
    assert (len(dd["dev"]), len(dd["test"])) == (12, 12)
    assert len(dd["train"]) + 24 + stats["counts"].get("dropped_split_overflow", 0) == 120
    ids, blobs = {}, {}
    for split in prep.SPLITS:
        rows = dd[split]
        metas = rows["metadata"]
        ids[split] = {m["image_id"] for m in metas} | {n for m in metas for n in m["negative_ids"]}
        # the bytes too, not just the ids: no image content crosses splits
        blobs[split] = {hashlib.sha256(img.tobytes()).hexdigest() for col in ("image", "negative_0", "negative_3")
                        for img in rows[col]}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not ids[a] & ids[b] and not blobs[a] & blobs[b], (a, b)
    # dev/test keep the sample's category mix (within one query per category)
    sampled = {c: v["sampled"] for c, v in stats["categories"].items()}
    for split, n in (("dev", 12), ("test", 12)):
        got = Counter(m["category"] for m in dd[split]["metadata"])
        for cat, k in sampled.items():
            assert abs(got[cat] - n * k / 120) <= 1.0, (split, cat)


def test_every_negative_obeys_its_rule_and_is_never_the_positive(prepared, pearl):
    _, stats, dd, _ = prepared
    images = prep.dedup_images(_meta(pearl))
    fallbacks = 0
    for split in prep.SPLITS:
        for row in dd[split]:
            m = row["metadata"]
            pos = images[m["image_id"]]
            assert pos.caption == m["caption"] and pos.category == m["category"]
            assert len(set(m["negative_ids"])) == 4 and m["image_id"] not in m["negative_ids"]
            for k, (nid, rule) in enumerate(zip(m["negative_ids"], m["negative_rules"])):
                assert rule in (prep.NEGATIVE_RULES[k], "random_fallback"), (k, rule)
                assert prep.rule_holds(rule, pos, images[nid]), (split, k, rule)
                fallbacks += rule == "random_fallback"
    # the train pool is large enough for every rule; fallbacks are counted in the card
    assert not any(k.startswith("train_") and k.endswith("_fallbacks") for k in stats["counts"])
    assert fallbacks == sum(v for k, v in stats["counts"].items() if k.endswith("_fallbacks"))


def test_rule_holds_rejects_violations():
    a = prep.ImageRef("a", 0, 0, "Food", "Egypt", "x")
    same_cat = prep.ImageRef("b", 0, 1, "Food", "Jordan", "y")
    same_country = prep.ImageRef("c", 0, 2, "Music", "Egypt", "z")
    assert prep.rule_holds("same_category", a, same_cat) and not prep.rule_holds("same_category", a, same_country)
    assert prep.rule_holds("same_country_other_category", a, same_country)
    assert not prep.rule_holds("same_country_other_category", a, same_cat)
    assert not prep.rule_holds("random", a, a)
    assert not prep.rule_holds("random", a, prep.ImageRef("d", 1, 0, "Food", "Egypt", "x"))  # caption twin


def test_image_pass_reads_only_needed_row_groups_and_card_records_counts(pearl, tmp_path):
    cfg = VdrPrepareConfig(source=str(pearl), num_queries=12, dev_queries=2, test_queries=2)
    stats = prep.prepare(cfg, tmp_path, seed=0)
    assert stats["counts"]["image_row_groups_skipped"] > 0
    card = (tmp_path / prep.DATASET_DIR / "README.md").read_text()
    assert "| train | 8 |" in card and "| dev | 2 |" in card and "unique_images" in card
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind


def test_image_pass_with_threads_fetches_the_same_bytes_as_one_thread(pearl):
    """Files read concurrently (fetch_threads) give exactly the single-threaded result."""
    cfg = VdrPrepareConfig(source=str(pearl))
    files, fs = prep.source_files(cfg)
    assert len(files) > 1
    images = prep.dedup_images(_meta(pearl))
    needed = [images[i] for i in sorted(images)[::3]]
    runs = []
    for threads in (1, 4):
        cfg.fetch_threads = threads
        counts: Counter = Counter()
        blobs = prep.fetch_images(cfg, files, fs, needed, counts)
        runs.append(({k: hashlib.sha1(v).hexdigest() for k, v in blobs.items()}, counts))
    assert runs[0] == runs[1]
    assert set(runs[0][0]) == {ref.id for ref in needed}
    assert {ref.file for ref in needed} == set(range(len(files)))  # every file was read concurrently


def _write(path: Path, rows: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_bad_rows_name_file_row_and_reason(tmp_path):
    rows = fixture_rows()[:120]
    rows[5] = {**rows[5], "category": "  "}
    _write(tmp_path / "bad.parquet", rows)
    cfg = VdrPrepareConfig(source=str(tmp_path / "bad.parquet"), num_queries=10, dev_queries=1, test_queries=1)
    with pytest.raises(ValueError, match=r"bad\.parquet: row 5: empty category"):
        prep.prepare(cfg, tmp_path / "out")
    cfg.bad_rows = "skip"
    stats = prep.prepare(cfg, tmp_path / "out")
    assert stats["counts"]["skipped_bad_rows"] == 1

    _write(tmp_path / "nocol.parquet", [{k: v for k, v in r.items() if k != "country"} for r in rows])
    with pytest.raises(ValueError, match=r"nocol\.parquet: missing column\(s\) \['country'\]"):
        prep.prepare(VdrPrepareConfig(source=str(tmp_path / "nocol.parquet"), num_queries=10, dev_queries=1,
                                      test_queries=1), tmp_path / "out2")

    broken = [dict(r) for r in fixture_rows()[:120]]
    for r in broken:
        r["image"] = {"bytes": b"not a png", "path": None}
    _write(tmp_path / "img.parquet", broken)
    with pytest.raises(ValueError, match=r"img\.parquet: row \d+: image bytes do not decode"):
        prep.prepare(VdrPrepareConfig(source=str(tmp_path / "img.parquet"), num_queries=10, dev_queries=1,
                                      test_queries=1), tmp_path / "out3")
    assert not (tmp_path / "out3" / prep.DATASET_DIR).exists()  # nothing half-written


def test_hub_source_reads_through_a_remote_filesystem(pearl, tmp_path, monkeypatch):
    """A hub id goes through HfFileSystem (range reads); here an in-memory fsspec filesystem
    stands in for it, so the glob, open and column projection are the hub code path."""
    import fsspec
    import huggingface_hub

    mem = fsspec.filesystem("memory")
    for p in sorted(pearl.glob("*.parquet")):
        mem.pipe(f"/datasets/UBC-NLP/PEARL-FULL/data/{p.name}", p.read_bytes())
    mem.pipe("/datasets/UBC-NLP/PEARL-FULL/README.md", b"card")

    class FakeHub:
        def glob(self, pattern):
            return [p.lstrip("/") for p in mem.glob("/" + pattern)]

        def open(self, path, mode="rb"):
            return mem.open("/" + path, mode)

    monkeypatch.setattr(huggingface_hub, "HfFileSystem", FakeHub)
    cfg = VdrPrepareConfig(source="UBC-NLP/PEARL-FULL", num_queries=30, dev_queries=3, test_queries=3)
    files, _ = prep.source_files(cfg)
    assert files == [f"datasets/UBC-NLP/PEARL-FULL/data/{p.name}" for p in sorted(pearl.glob("*.parquet"))]
    stats = prep.prepare(cfg, tmp_path, seed=0)
    assert stats["splits"]["dev"] == 3 and stats["counts"]["source_rows"] == len(fixture_rows())


def test_sample_is_stratified_by_category_and_country(prepared, pearl):
    """The sample's count in every (category, country) is allocate_strata's hand-checkable quota:
    categories within one of their share, countries within one of their share of the category."""
    _, stats, _, _ = prepared
    rows = _meta(pearl)
    usable = Counter({(r.query, r.caption): (r.category, r.country) for r in rows}.values())  # distinct queries
    want = prep.allocate_strata(120, dict(usable))
    got = {tuple(k.split(" / ")): v["sampled"] for k, v in stats["strata"].items()}
    assert got == {k: v for k, v in want.items() if v}
    for v in stats["strata"].values():                       # a split's queries come from the sample's stratum
        assert v["train"] + v["dev"] + v["test"] <= v["sampled"]
    assert sum(v["dev"] for v in stats["strata"].values()) == sum(v["test"] for v in stats["strata"].values()) == 12
    # negative_3 comes from the whole corpus: dev uses more images than its own pool, and still shares
    # none with the other splits (test_splits_have_exact_sizes_stratified_and_share_no_image)
    assert stats["images_used"]["dev"] > stats["pool_images"]["dev"]


def test_json_layout_gives_the_same_dataset_as_parquet(prepared, tmp_path):
    """PEARL-FULL as distributed (JSON part files + image folders) prepares to exactly the dataset the
    parquet export gives: same queries, splits, negatives and image pixels."""
    from datasets import load_from_disk

    from ain_testkit.pearl_fixture import write_pearl_full_json_fixture

    cfg, stats, dd, _ = prepared
    src = write_pearl_full_json_fixture(tmp_path / "pearl_full")
    jcfg = VdrPrepareConfig(source=str(src), num_queries=cfg.num_queries, dev_queries=cfg.dev_queries,
                            test_queries=cfg.test_queries)
    assert prep.source_format(jcfg) == "json"
    jstats = prep.prepare(jcfg, tmp_path / "out", seed=0)
    assert jstats["splits"] == stats["splits"] and jstats["counts"]["image_files_read"] == stats["counts"][
        "images_fetched"]
    jd = load_from_disk(str(tmp_path / "out" / prep.DATASET_DIR))
    for split in prep.SPLITS:
        assert jd[split]["query"] == dd[split]["query"]
        assert [m["negative_ids"] for m in jd[split]["metadata"]] == [m["negative_ids"] for m in dd[split]["metadata"]]
        for col in ("image", "negative_3"):
            assert [hashlib.sha256(i.tobytes()).hexdigest() for i in jd[split][col]] == [
                hashlib.sha256(i.tobytes()).hexdigest() for i in dd[split][col]]


def test_json_layout_missing_image_file_is_named(tmp_path):
    from ain_testkit.pearl_fixture import write_pearl_full_json_fixture

    src = write_pearl_full_json_fixture(tmp_path / "pearl_full")
    victim = sorted(src.glob("images_part_*/*.png"))[0]
    victim.unlink()
    cfg = VdrPrepareConfig(source=str(src), num_queries=120, dev_queries=12, test_queries=12)
    with pytest.raises(ValueError, match=rf"pearl_part_0\d\.json: record \d+: image file '{victim.stem}' not found "
                                         rf"under {src}"):
        prep.prepare(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / prep.DATASET_DIR).exists()
