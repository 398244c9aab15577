"""Hand-computed cases for the blog-fidelity choices of the embedding track: the positional retrieval
corpus (1 positive + 4 negatives per query, 5 x N documents), stratification by (category, country),
negative_3 from the whole corpus without crossing splits, the JSON layout PEARL-FULL is distributed
in, the fixture's PEARL columns, and the global batch over ranks. No model is loaded here."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from ain.vdr import evaluate, train
from ain.vdr import prepare as prep
from ain.vdr.config import VdrPrepareConfig, VdrTrainConfig


def _rows(spec: list[tuple[str, str, int]]) -> list[prep.MetaRow]:
    """One query per image: `n` images in stratum (category, country), captions distinct."""
    out = []
    for cat, country, n in spec:
        for j in range(n):
            out.append(prep.MetaRow(0, len(out), f"q {cat} {country} {j}", cat, country, f"{cat}/{country}/{j}"))
    return out


# ------------------------------------------------------------------------------------------------
# 1. the retrieval corpus

def test_positional_corpus_is_five_per_query_and_only_the_own_positive_is_relevant():
    from datasets import Dataset

    # 3 queries; image "B" is row 1's positive and also row 0's negative_0 (two documents, two positions)
    ds = Dataset.from_dict({
        "query": ["q0", "q1", "q2"], "image": ["A", "B", "C"],
        "negative_0": ["B", "A", "A"], "negative_1": ["D", "D", "E"],
        "negative_2": ["E", "F", "F"], "negative_3": ["G", "H", "B"],
        "metadata": [{"query_id": f"dev-{i}", "image_id": img, "negative_ids": negs}
                     for i, (img, negs) in enumerate([("A", ["B", "D", "E", "G"]), ("B", ["A", "D", "F", "H"]),
                                                      ("C", ["A", "E", "F", "B"])])]})
    queries, corpus, relevant = evaluate.retrieval_split(ds)          # default: positional
    assert queries == {0: "q0", 1: "q1", 2: "q2"}
    assert len(corpus) == 5 * 3 == 15
    # positives at 0..N-1, negative_k of row i at N * (k + 1) + i (Tom Aarsen's script)
    assert [corpus[i] for i in range(3)] == ["A", "B", "C"]
    assert [corpus[3 * 1 + i] for i in range(3)] == ["B", "A", "A"]   # negative_0
    assert [corpus[3 * 4 + i] for i in range(3)] == ["G", "H", "B"]   # negative_3
    assert relevant == {0: {0}, 1: {1}, 2: {2}}
    # "B" is at positions 1, 3 and 14; only position 1, for query 1, is relevant
    assert [d for d, img in corpus.items() if img == "B"] == [1, 3, 14]
    # the deduplicated corpus stays available: every distinct image once, relevance by image id
    q2, c2, r2 = evaluate.retrieval_split(ds, "dedup")
    assert sorted(c2) == ["A", "B", "C", "D", "E", "F", "G", "H"] and r2 == {"dev-0": {"A"}, "dev-1": {"B"},
                                                                            "dev-2": {"C"}}
    with pytest.raises(ValueError, match="positional or dedup"):
        evaluate.retrieval_split(ds, "unique")


def test_blog_dev_size_999_queries_4995_documents():
    from datasets import Dataset

    n = 999
    ds = Dataset.from_dict({"query": [f"q{i}" for i in range(n)], "image": [f"p{i}" for i in range(n)],
                            **{f"negative_{k}": [f"n{(i + k) % 50}" for i in range(n)] for k in range(4)}})
    queries, corpus, relevant = evaluate.positional_split(ds)
    assert (len(queries), len(corpus)) == (999, 4995)    # the blog's dev, although only 50 distinct negatives
    assert all(relevant[i] == {i} for i in range(n))


# ------------------------------------------------------------------------------------------------
# 2. stratification by category and country

def test_allocate_strata_by_category_then_country():
    # categories first: A 7*9/15 = 4.2, B 2.8 -> 4, 3; then A's 4 over x 5 / y 4 -> 2.22, 1.78 -> 2, 2;
    # B's 3 over x 3 / z 3 -> 1.5, 1.5 -> tie broken by key: x 2, z 1
    sizes = {("A", "x"): 5, ("A", "y"): 4, ("B", "x"): 3, ("B", "z"): 3}
    assert prep.allocate_strata(7, sizes) == {("A", "x"): 2, ("A", "y"): 2, ("B", "x"): 2, ("B", "z"): 1}
    assert prep.allocate_strata(15, sizes) == sizes
    assert prep.allocate_strata(0, sizes) == dict.fromkeys(sizes, 0)


def test_sample_and_splits_are_stratified_by_category_and_country():
    # 20 queries, one per image: A/x 8, A/y 4, B/x 4, B/y 4
    rows = _rows([("A", "x", 8), ("A", "y", 4), ("B", "x", 4), ("B", "y", 4)])
    sample = prep.stratified_sample(rows, 10, seed=0)
    # A 12/20*10 = 6 (x 4, y 2), B 4 (x 2, y 2)
    assert Counter(r.stratum for r in sample) == {("A", "x"): 4, ("A", "y"): 2, ("B", "x"): 2, ("B", "y"): 2}

    images = prep.dedup_images(rows)
    counts: Counter = Counter()
    splits = prep.split_queries(rows, images, dev_n=5, test_n=5, seed=0, counts=counts)
    # dev and test: A 3 (x 2, y 1), B 2 (x 1, y 1); train the other 10
    want = {("A", "x"): 2, ("A", "y"): 1, ("B", "x"): 1, ("B", "y"): 1}
    assert Counter(r.stratum for r in splits["dev"]) == want
    assert Counter(r.stratum for r in splits["test"]) == want
    assert Counter(r.stratum for r in splits["train"]) == {("A", "x"): 4, ("A", "y"): 2, ("B", "x"): 2, ("B", "y"): 2}
    assert counts["dropped_split_overflow"] == 0
    ids = {s: {r.image_id for r in v} for s, v in splits.items()}
    assert not (ids["dev"] & ids["test"] or ids["dev"] & ids["train"] or ids["test"] & ids["train"])


def test_a_short_stratum_is_made_up_within_its_category():
    # A/y has a single image with 3 queries: dev's 1 for A/y is taken whole-image-at-a-time (2 dropped);
    # test's A/y quota then finds no image left and is made up from A/x, so sizes stay exact
    rows = _rows([("A", "x", 6), ("B", "x", 4)])
    rows += [prep.MetaRow(0, 100 + k, f"q A y {k}", "A", "y", "A/y/only") for k in range(3)]
    images = prep.dedup_images(rows)
    counts: Counter = Counter()
    splits = prep.split_queries(rows, images, dev_n=4, test_n=4, seed=0, counts=counts)
    assert (len(splits["dev"]), len(splits["test"])) == (4, 4)
    for split in ("dev", "test"):
        assert Counter(r.category for r in splits[split]) == {"A": 3, "B": 1}   # 13 -> 9 A, 4 B: 2.77, 1.23
    assert Counter(r.stratum for r in splits["test"])[("A", "y")] == 0
    assert counts["dropped_split_overflow"] == 2


def test_take_prefers_an_image_that_fits():
    q = [prep.MetaRow(0, i, f"q{i}", "A", "x", f"c{i}") for i in range(5)]
    groups = [("big", [q[0], q[1]]), ("small", [q[2]])]
    dest: list = []
    counts: Counter = Counter()
    assert prep._take(groups, 1, dest, counts) == 1 and dest == [q[2]] and counts["dropped_split_overflow"] == 0
    groups = [("a", [q[0], q[1]]), ("b", [q[2], q[3]])]
    dest = []
    assert prep._take(groups, 3, dest, counts) == 3 and dest == [q[2], q[3], q[0]]
    assert counts["dropped_split_overflow"] == 1                 # no image of 1 query: q[1] dropped


# ------------------------------------------------------------------------------------------------
# 3. negatives: negative_3 from the whole corpus, never another split's image

def _images(spec: dict[str, tuple[str, str]]) -> dict[str, prep.ImageRef]:
    """Images named by their caption (an image's id is the hash of its caption)."""
    return {prep.image_id(name): prep.ImageRef(prep.image_id(name), 0, k, cat, country, name)
            for k, (name, (cat, country)) in enumerate(spec.items())}


def test_random_negative_comes_from_the_corpus_but_never_from_another_split():
    # dev: positive P (A, x) and pool {A1, A2 (A, x), B1 (B, x), C1 (C, y)}; train owns T1..T5 (its
    # positives). The only usable images for dev's 4 negatives are its pool's 4: negative_0/2 the A ones,
    # negative_1 B1 (same country, other category), negative_3 (random from the corpus) must be C1.
    i = prep.image_id
    train_names = ["T1", "T2", "T3", "T4", "T5"]
    images = _images({"P": ("A", "x"), "A1": ("A", "x"), "A2": ("A", "x"), "B1": ("B", "x"), "C1": ("C", "y"),
                      "T1": ("A", "x"), "T2": ("A", "x"), "T3": ("B", "y"), "T4": ("C", "x"), "T5": ("B", "y")})
    name = {iid: ref.caption for iid, ref in images.items()}

    def row(n: str, k: int) -> prep.MetaRow:
        ref = images[i(n)]
        return prep.MetaRow(0, k, f"q{n}", ref.category, ref.country, ref.caption)

    splits = {"train": [row(t, k) for k, t in enumerate(train_names)], "dev": [row("P", 9)], "test": []}
    pools = {"train": sorted(i(t) for t in train_names), "dev": sorted(i(n) for n in ["A1", "A2", "B1", "C1", "P"]),
             "test": []}
    for seed in range(5):
        negs = prep.assign_negatives(splits, pools, images, seed, Counter())
        dev = [(name[n], rule) for n, rule in negs["dev"][0]]
        assert {n for n, _ in dev[0:3:2]} == {"A1", "A2"} and dev[1] == ("B1", "same_country_other_category")
        assert dev[3] == ("C1", "random")
        train_used = {name[n] for q in negs["train"] for n, _ in q} | set(train_names)
        assert not train_used & {"P", "A1", "A2", "B1", "C1"}       # no image in two splits

    # with images nobody owns, the random rule reaches beyond the split's pool (the corpus), the
    # others stay in it
    images.update(_images({"Z1": ("Z", "z"), "Z2": ("Z", "z"), "Z3": ("Z", "z")}))
    outside = Counter()
    for seed in range(20):
        (dev,) = prep.assign_negatives(splits, pools, images, seed, Counter())["dev"]
        assert all(n in pools["dev"] for n, _ in dev[:3])
        outside[dev[3][0] not in pools["dev"]] += 1
    assert outside[True] > 0                                     # Z1..Z3 are drawn
    for seed in range(20):                                       # random_negative_from: pool
        (dev,) = prep.assign_negatives(splits, pools, images, seed, Counter(), random_from="pool")["dev"]
        assert dev[3][0] in pools["dev"]


# ------------------------------------------------------------------------------------------------
# 4. PEARL-FULL's JSON layout

@pytest.mark.parametrize("layout", ["array", "wrapped", "keyed", "lines"])
def test_json_part_files_in_every_common_shape(tmp_path, layout):
    recs = [{"question": "س", "n": 1}, {"question": "ص", "n": 2}]
    text = {"array": json.dumps(recs), "wrapped": json.dumps({"version": 1, "data": recs}),
            "keyed": json.dumps({"a": recs[0], "b": recs[1]}),
            "lines": "\n".join(json.dumps(r) for r in recs) + "\n"}[layout]
    (tmp_path / "p.json").write_text(text, encoding="utf-8")
    assert prep.load_json_records(str(tmp_path / "p.json")) == recs
    (tmp_path / "bad.json").write_text('[{"a": 1}, 3]')
    with pytest.raises(ValueError, match=r"bad\.json: record 1 is int, not a JSON object"):
        prep.load_json_records(str(tmp_path / "bad.json"))


def test_image_files_are_found_by_path_name_or_stem_and_a_missing_one_is_named(tmp_path):
    (tmp_path / "images_part_1").mkdir()
    (tmp_path / "images_part_2").mkdir()
    (tmp_path / "images_part_1" / "img_001.jpg").write_bytes(b"1")
    (tmp_path / "images_part_2" / "img_002.png").write_bytes(b"2")
    (tmp_path / "images_part_2" / "img_001.png").write_bytes(b"3")   # same stem, other extension
    index = prep.ImageFiles(tmp_path)
    assert len(index) == 3
    assert index.find("images_part_2/img_001.png", "x").read_bytes() == b"3"   # a relative path
    assert index.find("img_001.jpg", "x").read_bytes() == b"1"                  # a file name
    assert index.find("img_002", "x").read_bytes() == b"2"                      # an id without extension
    with pytest.raises(ValueError, match=r"pearl_part_00\.json: record 7: image 'img_001' is ambiguous"):
        index.find("img_001", "pearl_part_00.json: record 7")
    with pytest.raises(ValueError, match=r"record 3: image file 'img_404' not found under .*images_part_X"):
        index.find("img_404", "pearl_part_00.json: record 3")
    with pytest.raises(ValueError, match="not found"):
        index.find("../outside.png", "x")                                       # never outside the source


def test_json_source_errors_name_the_file(tmp_path):
    cfg = VdrPrepareConfig(source=str(tmp_path), source_format="json")
    with pytest.raises(ValueError, match=r"no JSON part files match vdr_prepare\.json_glob='\*\*/pearl_part_\*\.json\*'"):
        prep.source_files(cfg)
    (tmp_path / "pearl_part_00.json").write_text(json.dumps([{"question": "q", "category": "Food"}]))
    files, fs = prep.source_files(cfg)
    assert files == [str(tmp_path / "pearl_part_00.json")] and prep.source_format(
        VdrPrepareConfig(source=str(tmp_path))) == "json"                      # auto: no parquet -> json
    with pytest.raises(ValueError, match=r"pearl_part_00\.json: missing field\(s\) \['country', 'augmented_caption', "
                                         r"'image_id'\] in record 0; it has \['category', 'question'\]"):
        prep.read_metadata(cfg, files, fs, Counter())


# ------------------------------------------------------------------------------------------------
# 5. the fixture has UBC-NLP/PEARL's columns

def test_fixture_has_pearls_columns_and_types(tmp_path):
    import pyarrow.parquet as pq

    from ain_testkit.pearl_fixture import PEARL_COLUMNS, write_pearl_fixture, write_pearl_full_json_fixture

    assert PEARL_COLUMNS == ("original_index", "augmented_caption", "question", "answer", "answer_letter", "choices",
                             "category", "country", "image_id", "question_type", "annotation_id", "qa_index", "image")
    out = write_pearl_fixture(tmp_path / "pq", num_shards=1)
    schema = pq.read_schema(next(Path(out).glob("*.parquet")))
    assert tuple(schema.names) == PEARL_COLUMNS
    assert {n: str(schema.field(n).type) for n in ("original_index", "choices", "annotation_id", "qa_index")} == {
        "original_index": "int64", "choices": "list<element: string>", "annotation_id": "int64", "qa_index": "int64"}
    assert str(schema.field("image").type) == "struct<bytes: binary, path: string>"
    js = write_pearl_full_json_fixture(tmp_path / "js")
    part = json.loads((js / "pearl_part_00.json").read_text(encoding="utf-8"))
    assert tuple(part[0]) == PEARL_COLUMNS[:-1]                                 # no image bytes in the JSON
    assert (js / "images_part_1" / f"{part[0]['image_id']}.png").exists() or (
        js / "images_part_2" / f"{part[0]['image_id']}.png").exists()


# ------------------------------------------------------------------------------------------------
# 6. training: the global batch over ranks, the columns, the processor bounds

def test_training_arguments_hold_the_global_batch(tmp_path):
    cfg = VdrTrainConfig()
    one = train.training_arguments(cfg, tmp_path, world_size=1, cuda=True)
    two = train.training_arguments(cfg, tmp_path, world_size=2, cuda=True)
    assert (one["per_device_train_batch_size"], one["dataloader_drop_last"]) == (64, False)
    assert (two["per_device_train_batch_size"], two["dataloader_drop_last"]) == (32, True)   # 2 x 32 = 64
    with pytest.raises(ValueError, match="does not divide evenly over 3 ranks"):
        train.training_arguments(cfg, tmp_path, world_size=3, cuda=True)
    assert train.input_columns(cfg) == ["query", "image", "negative_0", "negative_1", "negative_2", "negative_3"]
    assert train.input_columns(VdrTrainConfig(train_negatives=1)) == ["query", "image", "negative_0"]  # Tom's
    assert cfg.processor_kwargs() == {"min_pixels": 784, "max_pixels": 360000}
    assert VdrTrainConfig(min_pixels=None, max_pixels=None).processor_kwargs() == {}
