"""The `vdr_prepare` stage: PEARL-FULL -> a VDR dataset of (query, image, 4 hard negatives).

The blog's recipe, in two passes over the parquet files so that the ~14 GB of image bytes are
touched only where needed:

1. metadata pass: read ONLY the query, category, country and caption columns (pyarrow column
   projection; the image column is never requested), validate every row;
2. deduplicate images by `augmented_caption` (rows with the same caption show the same image);
   sample `num_queries` queries stratified by category; split them train/dev/test stratified by
   category with no image in two splits (an image's queries all go to one split; the overflow of
   the last image placed in a split is dropped and counted); the images no query uses are dealt
   to the splits in proportion, as each split's pool of negatives;
3. four negatives per query from its split's pool, by the blog's metadata rules, never the positive:
   negative_0 same category other image, negative_1 same country other category, negative_2 another
   same-category image, negative_3 random. A rule the pool cannot satisfy falls back to a random
   image of the pool, recorded as `random_fallback` in the row's metadata and counted in the card;
4. image pass: read the image column only of the row groups that hold a used image, several
   files at once (`fetch_threads`);
5. write a Hugging Face DatasetDict to a temp directory next to the output, with a dataset card
   (README.md) of the counts, then rename it into place (a killed task leaves no half dataset; a
   re-run starts this single task again from the top, which is cheap next to training).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ain.stages import TaskContext
from ain.vdr.config import VdrPrepareConfig

SPLITS = ("train", "dev", "test")
NEGATIVE_RULES = ("same_category", "same_country_other_category", "same_category_2", "random")
DATASET_DIR = "dataset"


@dataclass(frozen=True)
class MetaRow:
    """One PEARL row without its image: where it lives and what the rules need."""

    file: int  # index into the source file list
    row: int  # row number within that file
    query: str
    category: str
    country: str
    caption: str

    @property
    def image_id(self) -> str:
        return image_id(self.caption)


@dataclass(frozen=True)
class ImageRef:
    """A unique image (by caption): its first row holds the bytes."""

    id: str
    file: int
    row: int
    category: str
    country: str
    caption: str


def image_id(caption: str) -> str:
    return hashlib.sha1(caption.strip().encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# sources

def source_files(cfg: VdrPrepareConfig) -> tuple[list[str], Any]:
    """(parquet paths in name order, the fsspec filesystem to open them with)."""
    fmt = cfg.source_format
    if fmt == "auto":
        fmt = "parquet" if os.path.exists(cfg.source) else "hub"
    if fmt == "parquet":
        import fsspec  # noqa: PLC0415

        path = Path(cfg.source)
        if path.is_dir():
            files = sorted(str(p) for p in path.rglob("*.parquet"))
        elif path.is_file():
            files = [str(path)]
        else:
            raise ValueError(f"vdr_prepare.source {cfg.source!r}: no such file or directory")
        if not files:
            raise ValueError(f"vdr_prepare.source {cfg.source!r}: no *.parquet files in it")
        return files, fsspec.filesystem("file")
    from huggingface_hub import HfFileSystem  # noqa: PLC0415

    fs = HfFileSystem()
    files = sorted(fs.glob(f"datasets/{cfg.source}/{cfg.hub_glob}"))
    if not files:
        raise ValueError(f"vdr_prepare.source {cfg.source!r}: no files match {cfg.hub_glob} on the hub")
    return files, fs


def _parquet(fs: Any, path: str):
    import pyarrow.parquet as pq  # noqa: PLC0415

    # Range reads through fsspec: on the hub only the requested column chunks are downloaded.
    return pq.ParquetFile(fs.open(path, "rb"))


def metadata_columns(cfg: VdrPrepareConfig) -> list[str]:
    return [cfg.query_column, cfg.category_column, cfg.country_column, cfg.caption_column]


def read_metadata(cfg: VdrPrepareConfig, files: list[str], fs: Any, counts: Counter) -> list[MetaRow]:
    """Pass 1: every row's metadata, never the image column."""
    cols = metadata_columns(cfg)
    rows: list[MetaRow] = []
    for fi, path in enumerate(files):
        pf = _parquet(fs, path)
        names = pf.schema_arrow.names
        missing = [c for c in cols + [cfg.image_column] if c not in names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; it has {names} "
                             "(set vdr_prepare.*_column to this dataset's names)")
        r = 0
        for batch in pf.iter_batches(columns=cols, batch_size=65536):
            data = batch.to_pydict()
            for q, cat, country, cap in zip(*(data[c] for c in cols)):
                bad = [c for c, v in zip(cols, (q, cat, country, cap)) if v is None or not str(v).strip()]
                if bad:
                    if cfg.bad_rows == "error":
                        raise ValueError(f"{path}: row {r}: empty {', '.join(bad)} (fix the row, or set "
                                         "vdr_prepare.bad_rows=skip to drop such rows and count them)")
                    counts["skipped_bad_rows"] += 1
                else:
                    rows.append(MetaRow(fi, r, str(q).strip(), str(cat).strip(), str(country).strip(),
                                        str(cap).strip()))
                r += 1
        counts["source_rows"] += r
    counts["source_files"] = len(files)
    return rows


# ---------------------------------------------------------------------------------------------
# pure logic (unit-tested)

def dedup_images(rows: Iterable[MetaRow]) -> dict[str, ImageRef]:
    """Unique images by caption; the first row (file order) is the one whose bytes are read."""
    images: dict[str, ImageRef] = {}
    for row in rows:
        if row.image_id not in images:
            images[row.image_id] = ImageRef(row.image_id, row.file, row.row, row.category, row.country, row.caption)
    return images


def allocate(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Split `total` over keys in proportion to `weights` (largest remainder; ties by key)."""
    whole = sum(weights.values())
    if whole == 0:
        return {k: 0 for k in weights}
    exact = {k: total * w / whole for k, w in weights.items()}
    out = {k: int(v) for k, v in exact.items()}
    rest = total - sum(out.values())
    for k in sorted(weights, key=lambda k: (-(exact[k] - out[k]), k))[:rest]:
        out[k] += 1
    return out


def stratified_sample(rows: list[MetaRow], n: int, seed: int) -> list[MetaRow]:
    """`n` rows with each category's share of the sample equal to its share of `rows` (within
    rounding)."""
    rng = random.Random(seed)
    by_cat: dict[str, list[MetaRow]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for row in rows:  # the same question about the same image twice is one query
        if (row.query, row.caption) not in seen:
            seen.add((row.query, row.caption))
            by_cat[row.category].append(row)
    available = sum(len(v) for v in by_cat.values())
    if n > available:
        raise ValueError(f"vdr_prepare.num_queries={n} but the source has only {available} usable rows")
    quota = allocate(n, {c: len(v) for c, v in by_cat.items()})
    sample: list[MetaRow] = []
    for cat in sorted(by_cat):
        sample.extend(rng.sample(by_cat[cat], quota[cat]))
    rng.shuffle(sample)
    return sample


def split_queries(sample: list[MetaRow], images: dict[str, ImageRef], dev_n: int, test_n: int, seed: int,
                  counts: Counter) -> dict[str, list[MetaRow]]:
    """Train/dev/test, stratified by category, no image in two splits."""
    rng = random.Random(seed + 1)
    by_cat_img: dict[str, dict[str, list[MetaRow]]] = defaultdict(lambda: defaultdict(list))
    for row in sample:
        by_cat_img[images[row.image_id].category][row.image_id].append(row)
    cat_sizes = {c: sum(len(v) for v in imgs.values()) for c, imgs in by_cat_img.items()}
    targets = {"dev": allocate(dev_n, cat_sizes), "test": allocate(test_n, cat_sizes)}
    out: dict[str, list[MetaRow]] = {s: [] for s in SPLITS}
    for cat in sorted(by_cat_img):
        groups = sorted(by_cat_img[cat].items())
        rng.shuffle(groups)
        for split in ("dev", "test"):
            need = targets[split][cat]
            while need > 0 and groups:
                _, qs = groups.pop()
                take = qs[:need]
                out[split].extend(take)
                counts["dropped_split_overflow"] += len(qs) - len(take)
                need -= len(take)
        for _, qs in groups:
            out["train"].extend(qs)
    for split in SPLITS:
        rng.shuffle(out[split])
    return out


def image_pools(splits: dict[str, list[MetaRow]], images: dict[str, ImageRef], seed: int) -> dict[str, list[str]]:
    """Each split's images: its positives plus a proportional, category-stratified share of the
    images no sampled query uses. Disjoint by construction."""
    rng = random.Random(seed + 2)
    pools: dict[str, set[str]] = {s: {r.image_id for r in rows} for s, rows in splits.items()}
    used = set().union(*pools.values())
    sizes = {s: len(rows) for s, rows in splits.items()}
    spare_by_cat: dict[str, list[str]] = defaultdict(list)
    for iid in sorted(images):
        if iid not in used:
            spare_by_cat[images[iid].category].append(iid)
    for cat in sorted(spare_by_cat):
        ids = spare_by_cat[cat]
        rng.shuffle(ids)
        share = allocate(len(ids), sizes)
        start = 0
        for split in SPLITS:
            pools[split].update(ids[start:start + share[split]])
            start += share[split]
    return {s: sorted(p) for s, p in pools.items()}


def files_hint(row: MetaRow) -> str:
    return f"source file #{row.file}, row {row.row}"


def metadata_negatives(row: MetaRow, pool: list[str], by_cat: dict[str, list[str]], by_country: dict[str, list[str]],
                       images: dict[str, ImageRef], rng: random.Random) -> list[tuple[str, str]]:
    """Four (image id, rule) pairs for one query, distinct, never the positive."""
    pos = images[row.image_id]
    taken = {pos.id}
    out: list[tuple[str, str]] = []

    def pick(candidates: list[str], rule: str) -> None:
        free = [c for c in candidates if c not in taken]
        if not free:  # the pool cannot satisfy the rule: any other image, recorded as such
            free, rule = [c for c in pool if c not in taken], "random_fallback"
        if not free:
            raise ValueError(f"query {row.query!r} ({files_hint(row)}): its split's pool has {len(pool)} images, too "
                             "few for 4 negatives besides the positive; sample more queries (vdr_prepare.num_queries) "
                             "or larger dev/test splits")
        choice = rng.choice(free)
        taken.add(choice)
        out.append((choice, rule))

    pick(by_cat[pos.category], "same_category")
    pick([i for i in by_country[pos.country] if images[i].category != pos.category], "same_country_other_category")
    pick(by_cat[pos.category], "same_category_2")
    pick(pool, "random")
    return out


def rule_holds(rule: str, positive: ImageRef, negative: ImageRef) -> bool:
    """Whether a negative obeys the rule recorded for it (tests and the card's audit use this)."""
    if negative.id == positive.id or negative.caption == positive.caption:
        return False
    if rule in ("same_category", "same_category_2"):
        return negative.category == positive.category
    if rule == "same_country_other_category":
        return negative.country == positive.country and negative.category != positive.category
    return rule in ("random", "random_fallback", "mined")


def assign_negatives(splits: dict[str, list[MetaRow]], pools: dict[str, list[str]], images: dict[str, ImageRef],
                     seed: int, counts: Counter) -> dict[str, list[list[tuple[str, str]]]]:
    rng = random.Random(seed + 3)
    out: dict[str, list[list[tuple[str, str]]]] = {}
    for split in SPLITS:
        pool = pools[split]
        by_cat: dict[str, list[str]] = defaultdict(list)
        by_country: dict[str, list[str]] = defaultdict(list)
        for iid in pool:
            by_cat[images[iid].category].append(iid)
            by_country[images[iid].country].append(iid)
        out[split] = []
        for row in splits[split]:
            negs = metadata_negatives(row, pool, by_cat, by_country, images, rng)
            for k, (_, rule) in enumerate(negs):
                if rule == "random_fallback":
                    counts[f"{split}_negative_{k}_fallbacks"] += 1
            out[split].append(negs)
    return out


# ---------------------------------------------------------------------------------------------
# image pass

def image_bytes(value: Any, where: str) -> bytes:
    """Bytes of one image cell (HF parquet struct {bytes, path}, or raw bytes), checked to decode."""
    from PIL import Image  # noqa: PLC0415

    data = value.get("bytes") if isinstance(value, dict) else value
    if not data:
        raise ValueError(f"{where}: image has no bytes (path-only images are not supported: re-export "
                         "the dataset with embedded images)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except Exception as exc:
        raise ValueError(f"{where}: image bytes do not decode ({exc})") from exc
    return bytes(data)


def _fetch_file(cfg: VdrPrepareConfig, path: str, fs: Any, wanted: dict[int, str]) -> tuple[dict[str, bytes], Counter]:
    """The needed images of one parquet file: only the row groups that hold one are read."""
    out: dict[str, bytes] = {}
    counts: Counter = Counter()
    pf = _parquet(fs, path)
    start = 0
    for rg in range(pf.num_row_groups):
        n = pf.metadata.row_group(rg).num_rows
        rows_here = [r for r in wanted if start <= r < start + n]
        if rows_here:
            column = pf.read_row_group(rg, columns=[cfg.image_column]).column(0)
            for r in rows_here:
                out[wanted[r]] = image_bytes(column[r - start].as_py(), f"{path}: row {r}")
            counts["image_row_groups_read"] += 1
        else:
            counts["image_row_groups_skipped"] += 1
        start += n
    return out, counts


def fetch_images(cfg: VdrPrepareConfig, files: list[str], fs: Any, needed: Iterable[ImageRef],
                 counts: Counter) -> dict[str, bytes]:
    """Pass 2: read the image column of only the row groups holding a needed image, up to
    `fetch_threads` files at once (range reads from the hub wait on the network, and pyarrow
    releases the GIL while it reads and decompresses). The result does not depend on the order
    in which files finish."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    by_file: dict[int, dict[int, str]] = defaultdict(dict)
    for ref in needed:
        by_file[ref.file][ref.row] = ref.id
    out: dict[str, bytes] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(cfg.fetch_threads, len(by_file) or 1))) as pool:
        # map keeps file order; the first bad image raises here, naming its file and row
        for blobs, file_counts in pool.map(lambda fi: _fetch_file(cfg, files[fi], fs, by_file[fi]), sorted(by_file)):
            out.update(blobs)
            counts.update(file_counts)
    return out


# ---------------------------------------------------------------------------------------------
# output

def features():
    from datasets import Features, Image, Sequence, Value  # noqa: PLC0415

    meta = {"query_id": Value("string"), "image_id": Value("string"), "category": Value("string"),
            "country": Value("string"), "caption": Value("string"), "source_file": Value("string"),
            "source_row": Value("int64"), "negative_ids": Sequence(Value("string")),
            "negative_captions": Sequence(Value("string")),
            "negative_rules": Sequence(Value("string"))}
    return Features({"query": Value("string"), "image": Image(),
                     **{f"negative_{k}": Image() for k in range(4)}, "metadata": meta})


def _records(items: list[tuple[int, MetaRow, list[tuple[str, str]]]], images: dict[str, ImageRef],
             blobs: dict[str, bytes], files: tuple[str, ...], split: str):
    for i, row, neg in items:
        yield {"query": row.query, "image": {"bytes": blobs[row.image_id], "path": None},
               **{f"negative_{k}": {"bytes": blobs[nid], "path": None} for k, (nid, _) in enumerate(neg)},
               "metadata": {"query_id": f"{split}-{i:06d}", "image_id": row.image_id, "category": row.category,
                            "country": row.country, "caption": row.caption,
                            "source_file": os.path.basename(files[row.file]), "source_row": row.row,
                            "negative_ids": [nid for nid, _ in neg],
                            "negative_captions": [images[nid].caption for nid, _ in neg],
                            "negative_rules": [rule for _, rule in neg]}}


def dataset_card(cfg: VdrPrepareConfig, stats: dict[str, Any]) -> str:
    lines = ["---", "task_categories: [visual-document-retrieval]", "language: [ar]", "---", "",
             "# Arabic VDR triplets from PEARL (ain `vdr_prepare`)", "",
             f"Source: `{cfg.source}`. Columns: query (Arabic question), image (positive), negative_0..3 "
             "(hard negatives by metadata rule), metadata (ids, category, country, caption, source row, "
             "negative ids and rules).", "",
             "Negative rules: negative_0 same category other image; negative_1 same country other category; "
             "negative_2 another same-category image; negative_3 random; never the positive; a rule the split's "
             "pool cannot satisfy falls back to a random image (`random_fallback`). No image is in two splits.", "",
             "| split | queries | images in pool |", "|---|---|---|"]
    for s in SPLITS:
        lines.append(f"| {s} | {stats['splits'][s]} | {stats['pool_images'][s]} |")
    lines += ["", "Category counts of the sample:", "", "| category | sampled | train | dev | test |",
              "|---|---|---|---|---|"]
    for cat, row in sorted(stats["categories"].items()):
        lines.append(f"| {cat} | {row['sampled']} | {row['train']} | {row['dev']} | {row['test']} |")
    lines += ["", "Counts:", "", "```json", json.dumps(stats["counts"], indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)


def prepare(cfg: VdrPrepareConfig, out_dir: Path, seed: int = 0, log=None) -> dict[str, Any]:
    """Run the whole preparation; publish `out_dir/dataset` atomically; return the stats."""
    from datasets import Dataset, DatasetDict  # noqa: PLC0415

    counts: Counter = Counter()
    files, fs = source_files(cfg)
    rows = read_metadata(cfg, files, fs, counts)
    images = dedup_images(rows)
    counts["usable_rows"], counts["unique_images"] = len(rows), len(images)
    sample = stratified_sample(rows, cfg.num_queries, seed)
    splits = split_queries(sample, images, cfg.dev_queries, cfg.test_queries, seed, counts)
    pools = image_pools(splits, images, seed)
    negatives = assign_negatives(splits, pools, images, seed, counts)
    needed = {iid for s in SPLITS for r, negs in zip(splits[s], negatives[s])
              for iid in [r.image_id, *(n for n, _ in negs)]}
    blobs = fetch_images(cfg, files, fs, (images[i] for i in sorted(needed)), counts)
    counts["images_fetched"] = len(blobs)
    if log:
        log.info("vdr_prepare: %d rows, %d unique images, %s queries per split, %d images fetched",
                 len(rows), len(images), {s: len(v) for s, v in splits.items()}, len(blobs))

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f".{DATASET_DIR}-*"):  # left by an attempt that was killed (one task: ours)
        shutil.rmtree(stale, ignore_errors=True)
    final = out_dir / DATASET_DIR
    tmp = Path(tempfile.mkdtemp(prefix=f".{DATASET_DIR}-", dir=out_dir))
    try:
        feats = features()
        # Streamed to Arrow files in batches: 50k rows x 5 images is tens of GB if built in memory
        # (each row holds its own copy of an image's bytes). The fingerprint skips hashing the
        # generator's arguments (the image bytes) for the datasets cache.
        stamp = hashlib.sha1(f"{cfg}|{seed}|{files}".encode()).hexdigest()
        dd = DatasetDict({s: Dataset.from_generator(
            _records, features=feats, cache_dir=str(tmp / "cache"), fingerprint=f"vdr-{stamp}-{s}",
            # one list (the rows): datasets shards generators over list arguments
            gen_kwargs={"items": [(i, r, n) for i, (r, n) in enumerate(zip(splits[s], negatives[s]))],
                        "images": images, "blobs": blobs, "files": tuple(files), "split": s},
            writer_batch_size=256) for s in SPLITS})
        dd.save_to_disk(str(tmp / "data"))
        stats = {"splits": {s: len(splits[s]) for s in SPLITS}, "pool_images": {s: len(pools[s]) for s in SPLITS},
                 "categories": {c: {"sampled": sum(r.category == c for r in sample),
                                    **{s: sum(r.category == c for r in splits[s]) for s in SPLITS}}
                                for c in sorted({r.category for r in sample})},
                 "counts": dict(counts)}
        (tmp / "data" / "README.md").write_text(dataset_card(cfg, stats), encoding="utf-8")
        (tmp / "data" / "vdr_stats.json").write_text(json.dumps(stats, indent=1, sort_keys=True) + "\n")
        if final.exists():  # a previous attempt published but died before its marker
            shutil.rmtree(final)
        os.replace(tmp / "data", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def run_prepare_task(ctx: TaskContext) -> dict[str, Any]:
    stats = prepare(ctx.stage_cfg, ctx.paths.out, seed=ctx.cfg.seed, log=ctx.log)
    return {"items": sum(stats["splits"].values()), **{f"{s}_queries": n for s, n in stats["splits"].items()},
            "counts": stats["counts"], "dataset": str(ctx.paths.out / DATASET_DIR)}
