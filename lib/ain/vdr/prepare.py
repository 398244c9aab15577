"""The `vdr_prepare` stage: PEARL -> a VDR dataset of (query, image, 4 hard negatives).

The blog's recipe, in two passes so that the image bytes are touched only where needed:

1. metadata pass: read ONLY the query, category, country and caption fields, validate every row.
   Parquet (PEARL's hub export, or a hub dataset of parquet files): pyarrow column projection, the
   image column is never requested. JSON (PEARL-FULL as distributed: Google Drive zips of
   `pearl_part_XX` JSON files and `images_part_X` image folders, unzipped into one directory): the
   part files are read, the images are separate files and are not opened;
2. deduplicate images by `augmented_caption` (rows with the same caption show the same image);
   sample `num_queries` queries stratified by category and, within each category, by country;
   split them train/dev/test stratified the same way with no image in two splits (an image's
   queries all go to one split); the images no query uses are dealt to the splits in proportion,
   per (category, country), as each split's pool of negatives;
3. four negatives per query, never the positive: negative_0 same category other image, negative_1
   same country other category, negative_2 another same-category image (all three from the split's
   pool), negative_3 random from the full corpus (every unique image) except images another split
   uses (`random_negative_from: pool` draws it from the pool instead). A rule that cannot be
   satisfied falls back to a random image of the pool, recorded as `random_fallback` in the row's
   metadata and counted in the card;
4. image pass: parquet: read the image column only of the row groups that hold a used image, several
   files at once (`fetch_threads`); JSON: read only the used image files, found under the source
   directory by path, file name or file name without extension;
5. write a Hugging Face DatasetDict to a temp directory next to the output, with a dataset card
   (README.md) of the counts, then rename it into place (a killed task leaves no half dataset; a
   re-run starts this single task again from the top, which is cheap next to training).

PEARL-FULL has no published train/dev/test split (UBC-NLP's repositories give none; UBC-NLP/PEARL is
a single `test` split); the blog's 48,002 / 999 / 999 is its own split of its 50,000 sampled queries,
and so is ours (docs/VDR.md, "The splits").
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
from typing import Any, Callable, Iterable, Optional

from ain.atomic import publish_dir
from ain.stages import TaskContext
from ain.vdr.config import VdrPrepareConfig

SPLITS = ("train", "dev", "test")
NEGATIVE_RULES = ("same_category", "same_country_other_category", "same_category_2", "random")
DATASET_DIR = "dataset"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class MetaRow:
    """One PEARL row without its image: where it lives and what the rules need."""

    file: int  # index into the source file list
    row: int  # row number (parquet) or record number (JSON) within that file
    query: str
    category: str
    country: str
    caption: str
    image_ref: str = ""  # JSON sources: the record's image file reference (image_file_column)

    @property
    def image_id(self) -> str:
        return image_id(self.caption)

    @property
    def stratum(self) -> tuple[str, str]:
        return (self.category, self.country)


@dataclass(frozen=True)
class ImageRef:
    """A unique image (by caption): its first row holds the bytes (or names the file)."""

    id: str
    file: int
    row: int
    category: str
    country: str
    caption: str
    ref: str = ""  # JSON sources: the image file reference of that first row

    @property
    def stratum(self) -> tuple[str, str]:
        return (self.category, self.country)


def image_id(caption: str) -> str:
    return hashlib.sha1(caption.strip().encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# sources

def source_format(cfg: VdrPrepareConfig) -> str:
    """json, parquet or hub: `source_format`, or for auto what the source looks like."""
    if cfg.source_format != "auto":
        return cfg.source_format
    path = Path(cfg.source)
    if not path.exists():
        return "hub"
    if path.is_file():
        return "parquet" if path.suffix == ".parquet" else "json"
    if next(iter(path.rglob("*.parquet")), None) is not None:
        return "parquet"
    return "json"


def _json_root(cfg: VdrPrepareConfig) -> Path:
    """The directory JSON records' image references are resolved against."""
    path = Path(cfg.source)
    return path if path.is_dir() else path.parent


def source_files(cfg: VdrPrepareConfig) -> tuple[list[str], Any]:
    """(source files in name order: parquet, or JSON part files; the fsspec filesystem to open them with)."""
    fmt = source_format(cfg)
    if fmt in ("parquet", "json"):
        import fsspec  # noqa: PLC0415

        path = Path(cfg.source)
        if path.is_dir():
            pattern = "**/*.parquet" if fmt == "parquet" else cfg.json_glob
            files = sorted(str(p) for p in path.glob(pattern) if p.is_file())
        elif path.is_file():
            files = [str(path)]
        else:
            raise ValueError(f"vdr_prepare.source {cfg.source!r}: no such file or directory")
        if not files:
            what = ("no *.parquet files in it" if fmt == "parquet" else
                    f"no JSON part files match vdr_prepare.json_glob={cfg.json_glob!r} in it (PEARL-FULL: unzip "
                    "every pearl_part_XX.zip and images_part_X.zip into this directory, or set json_glob to the "
                    "part files' names)")
            raise ValueError(f"vdr_prepare.source {cfg.source!r}: {what}")
        return files, fsspec.filesystem("file")
    from huggingface_hub import HfFileSystem  # noqa: PLC0415

    fs = HfFileSystem()
    files = sorted(fs.glob(f"datasets/{cfg.source}/{cfg.hub_glob}"))
    if not files:
        raise ValueError(f"vdr_prepare.source {cfg.source!r}: no files match {cfg.hub_glob} on the hub (UBC-NLP/"
                         "PEARL-FULL is distributed as Google Drive zips of JSON parts and image folders, not "
                         "parquet: unzip them into a directory and set vdr_prepare.source=DIR "
                         "vdr_prepare.source_format=json)")
    return files, fs


def _parquet(fs: Any, path: str):
    import pyarrow.parquet as pq  # noqa: PLC0415

    # Range reads through fsspec: on the hub only the requested column chunks are downloaded.
    return pq.ParquetFile(fs.open(path, "rb"))


def metadata_columns(cfg: VdrPrepareConfig) -> list[str]:
    return [cfg.query_column, cfg.category_column, cfg.country_column, cfg.caption_column]


def load_json_records(path: str) -> list[dict]:
    """The records of one JSON part file: a JSON array of objects, an object holding one such array
    (e.g. {"data": [...]}), an object of records keyed by id, one record, or JSON lines."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}: line {n}: not JSON ({exc.msg}); expected a JSON array of records, "
                                     "an object of records, or one record per line") from exc
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(lists) == 1:
            data = lists[0]
        elif data and all(isinstance(v, dict) for v in data.values()):
            data = list(data.values())
        else:
            data = [data]
    if not isinstance(data, list):
        raise ValueError(f"{path}: top level is {type(data).__name__}; expected a JSON array of records")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: record {i} is {type(rec).__name__}, not a JSON object")
    return data


def _check_row(cfg: VdrPrepareConfig, names: list[str], values: tuple, where: str, counts: Counter) -> bool:
    bad = [c for c, v in zip(names, values) if v is None or not str(v).strip()]
    if not bad:
        return True
    if cfg.bad_rows == "error":
        raise ValueError(f"{where}: empty {', '.join(bad)} (fix the row, or set vdr_prepare.bad_rows=skip to drop "
                         "such rows and count them)")
    counts["skipped_bad_rows"] += 1
    return False


def read_metadata(cfg: VdrPrepareConfig, files: list[str], fs: Any, counts: Counter) -> list[MetaRow]:
    """Pass 1: every row's metadata, never the image bytes."""
    if source_format(cfg) == "json":
        return _read_json_metadata(cfg, files, counts)
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
            for values in zip(*(data[c] for c in cols)):
                if _check_row(cfg, cols, values, f"{path}: row {r}", counts):
                    q, cat, country, cap = (str(v).strip() for v in values)
                    rows.append(MetaRow(fi, r, q, cat, country, cap))
                r += 1
        counts["source_rows"] += r
    counts["source_files"] = len(files)
    return rows


def _read_json_metadata(cfg: VdrPrepareConfig, files: list[str], counts: Counter) -> list[MetaRow]:
    cols = metadata_columns(cfg) + [cfg.image_file_column]
    rows: list[MetaRow] = []
    for fi, path in enumerate(files):
        records = load_json_records(path)
        if records:
            missing = [c for c in cols if c not in records[0]]
            if missing:
                raise ValueError(f"{path}: missing field(s) {missing} in record 0; it has {sorted(records[0])} "
                                 "(set vdr_prepare.*_column / image_file_column to these files' field names)")
        for r, rec in enumerate(records):
            values = tuple(rec.get(c) for c in cols)
            if _check_row(cfg, cols, values, f"{path}: record {r}", counts):
                q, cat, country, cap, ref = (str(v).strip() for v in values)
                rows.append(MetaRow(fi, r, q, cat, country, cap, ref))
        counts["source_rows"] += len(records)
    counts["source_files"] = len(files)
    return rows


# ---------------------------------------------------------------------------------------------
# pure logic (unit-tested)

def dedup_images(rows: Iterable[MetaRow]) -> dict[str, ImageRef]:
    """Unique images by caption; the first row (file order) is the one whose bytes are read."""
    images: dict[str, ImageRef] = {}
    for row in rows:
        if row.image_id not in images:
            images[row.image_id] = ImageRef(row.image_id, row.file, row.row, row.category, row.country, row.caption,
                                            row.image_ref)
    return images


def allocate(total: int, weights: dict[Any, int]) -> dict[Any, int]:
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


def allocate_strata(total: int, sizes: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    """Split `total` over (category, country) strata: first over categories in proportion to their
    sizes (each category within one of its exact share, as the blog's "stratified by category"), then
    each category's quota over its countries in proportion (each within one of its exact share of the
    category's quota). Never more than a stratum's size when `total` <= the sum of sizes."""
    by_cat: dict[str, dict[str, int]] = defaultdict(dict)
    for (cat, country), n in sizes.items():
        by_cat[cat][country] = n
    cat_quota = allocate(total, {cat: sum(v.values()) for cat, v in by_cat.items()})
    return {(cat, country): q for cat, countries in by_cat.items()
            for country, q in allocate(cat_quota[cat], countries).items()}


def stratified_sample(rows: list[MetaRow], n: int, seed: int) -> list[MetaRow]:
    """`n` rows, stratified by category and within each category by country (allocate_strata)."""
    rng = random.Random(seed)
    by_stratum: dict[tuple[str, str], list[MetaRow]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for row in rows:  # the same question about the same image twice is one query
        if (row.query, row.caption) not in seen:
            seen.add((row.query, row.caption))
            by_stratum[row.stratum].append(row)
    available = sum(len(v) for v in by_stratum.values())
    if n > available:
        raise ValueError(f"vdr_prepare.num_queries={n} but the source has only {available} usable rows")
    quota = allocate_strata(n, {s: len(v) for s, v in by_stratum.items()})
    sample: list[MetaRow] = []
    for stratum in sorted(by_stratum):
        sample.extend(rng.sample(by_stratum[stratum], quota[stratum]))
    rng.shuffle(sample)
    return sample


def _take(groups: list[tuple[str, list[MetaRow]]], want: int, dest: list[MetaRow], counts: Counter) -> int:
    """Move whole images' queries from the end of `groups` into `dest` until `want` queries are taken.
    When the next image has more queries than still wanted, an image that fits is taken instead; only
    if none fits is the last image split, its surplus queries dropped (`dropped_split_overflow`)."""
    taken = 0
    while taken < want and groups:
        need = want - taken
        idx = len(groups) - 1
        if len(groups[idx][1]) > need:
            idx = next((i for i in range(len(groups) - 1, -1, -1) if len(groups[i][1]) <= need), idx)
        _, qs = groups.pop(idx)
        dest.extend(qs[:need])
        counts["dropped_split_overflow"] += max(0, len(qs) - need)
        taken += min(len(qs), need)
    return taken


def split_queries(sample: list[MetaRow], images: dict[str, ImageRef], dev_n: int, test_n: int, seed: int,
                  counts: Counter) -> dict[str, list[MetaRow]]:
    """Train/dev/test stratified by category and country (allocate_strata over the sample's strata),
    whole images at a time so no image is in two splits. A stratum that runs out of images before its
    quota is made up from the same category's other countries, then from any category, so dev and test
    always have exactly `dev_n` / `test_n` queries; train gets every other sampled query."""
    rng = random.Random(seed + 1)
    by_stratum_img: dict[tuple[str, str], dict[str, list[MetaRow]]] = defaultdict(lambda: defaultdict(list))
    for row in sample:
        by_stratum_img[images[row.image_id].stratum][row.image_id].append(row)
    sizes = {s: sum(len(v) for v in imgs.values()) for s, imgs in by_stratum_img.items()}
    groups: dict[tuple[str, str], list[tuple[str, list[MetaRow]]]] = {}
    for stratum in sorted(by_stratum_img):
        groups[stratum] = sorted(by_stratum_img[stratum].items())
        rng.shuffle(groups[stratum])
    out: dict[str, list[MetaRow]] = {s: [] for s in SPLITS}
    for split, n in (("dev", dev_n), ("test", test_n)):
        targets = allocate_strata(n, sizes)
        short: Counter = Counter()
        for stratum in sorted(groups):
            short[stratum[0]] += targets[stratum] - _take(groups[stratum], targets[stratum], out[split], counts)
        rest = 0
        for cat in sorted(short):
            for stratum in sorted(s for s in groups if s[0] == cat):
                short[cat] -= _take(groups[stratum], short[cat], out[split], counts)
            rest += short[cat]
        for stratum in sorted(groups):
            rest -= _take(groups[stratum], rest, out[split], counts)
        if rest:
            raise ValueError(f"vdr_prepare: the sample has too few images left for {n} {split} queries "
                             "(raise num_queries or lower dev_queries / test_queries)")
    for stratum in sorted(groups):
        for _, qs in groups[stratum]:
            out["train"].extend(qs)
    for split in SPLITS:
        rng.shuffle(out[split])
    return out


def image_pools(splits: dict[str, list[MetaRow]], images: dict[str, ImageRef], seed: int) -> dict[str, list[str]]:
    """Each split's images: its positives plus a proportional share, per (category, country), of the
    images no sampled query uses. Disjoint by construction; together they are the whole corpus."""
    rng = random.Random(seed + 2)
    pools: dict[str, set[str]] = {s: {r.image_id for r in rows} for s, rows in splits.items()}
    used = set().union(*pools.values())
    sizes = {s: len(rows) for s, rows in splits.items()}
    spare: dict[tuple[str, str], list[str]] = defaultdict(list)
    for iid in sorted(images):
        if iid not in used:
            spare[images[iid].stratum].append(iid)
    for stratum in sorted(spare):
        ids = spare[stratum]
        rng.shuffle(ids)
        share = allocate(len(ids), sizes)
        start = 0
        for split in SPLITS:
            pools[split].update(ids[start:start + share[split]])
            start += share[split]
    return {s: sorted(p) for s, p in pools.items()}


def files_hint(row: MetaRow) -> str:
    return f"source file #{row.file}, row {row.row}"


def _draw(candidates: list[str], ok: Callable[[str], bool], rng: random.Random, tries: int = 48) -> Optional[str]:
    """A uniformly random candidate that passes `ok`, or None. Rejection sampling first (candidate lists
    are large and mostly usable: 135k images for the random rule), then an exact scan."""
    if not candidates:
        return None
    for _ in range(tries):
        c = candidates[rng.randrange(len(candidates))]
        if ok(c):
            return c
    free = [c for c in candidates if ok(c)]
    return rng.choice(free) if free else None


def metadata_negatives(row: MetaRow, pool: list[str], by_cat: dict[str, list[str]], by_country: dict[str, list[str]],
                       images: dict[str, ImageRef], rng: random.Random, random_candidates: Optional[list[str]] = None,
                       usable: Callable[[str], bool] = lambda _: True) -> list[tuple[str, str]]:
    """Four (image id, rule) pairs for one query, distinct, never the positive, each `usable` (not an
    image of another split). Rules 0-2 draw from the split's pool; the random rule from
    `random_candidates` (default: the pool). A rule that cannot be satisfied takes a random image of the
    pool, or if the pool has none left, of `random_candidates` (`random_fallback`)."""
    pos = images[row.image_id]
    taken = {pos.id}
    out: list[tuple[str, str]] = []

    def pick(candidates: list[str], rule: str, also: Callable[[str], bool] = lambda _: True) -> None:
        choice = _draw(candidates, lambda c: c not in taken and usable(c) and also(c), rng)
        if choice is None:  # the rule cannot be satisfied: any other image of the pool (then of the
            rule = "random_fallback"  # random rule's candidates), recorded as such
            for fallback in (pool, random_candidates or []):
                choice = choice or _draw(fallback, lambda c: c not in taken and usable(c), rng)
        if choice is None:
            raise ValueError(f"query {row.query!r} ({files_hint(row)}): its split's pool has {len(pool)} images, too "
                             "few for 4 negatives besides the positive; sample more queries (vdr_prepare.num_queries) "
                             "or larger dev/test splits")
        taken.add(choice)
        out.append((choice, rule))

    pick(by_cat[pos.category], "same_category")
    pick(by_country[pos.country], "same_country_other_category", lambda c: images[c].category != pos.category)
    pick(by_cat[pos.category], "same_category_2")
    pick(pool if random_candidates is None else random_candidates, "random")
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
                     seed: int, counts: Counter, random_from: str = "corpus") -> dict[str, list[list[tuple[str, str]]]]:
    """Negatives for every query of every split. Every positive belongs to its split from the start;
    each negative drawn belongs to the split that drew it, and no split draws an image another split
    owns, so no image is in two splits even though the random rule draws from the whole corpus. The
    small splits draw first (dev, test, then train)."""
    rng = random.Random(seed + 3)
    owner: dict[str, str] = {r.image_id: s for s in SPLITS for r in splits[s]}
    corpus = sorted(images) if random_from == "corpus" else None
    out: dict[str, list[list[tuple[str, str]]]] = {}
    for split in ("dev", "test", "train"):
        pool = pools[split]
        by_cat: dict[str, list[str]] = defaultdict(list)
        by_country: dict[str, list[str]] = defaultdict(list)
        for iid in pool:
            by_cat[images[iid].category].append(iid)
            by_country[images[iid].country].append(iid)

        def usable(c: str, split: str = split) -> bool:
            return owner.get(c, split) == split

        out[split] = []
        for row in splits[split]:
            negs = metadata_negatives(row, pool, by_cat, by_country, images, rng, corpus, usable)
            for k, (nid, rule) in enumerate(negs):
                owner[nid] = split
                if rule == "random_fallback":
                    counts[f"{split}_negative_{k}_fallbacks"] += 1
            out[split].append(negs)
    return {s: out[s] for s in SPLITS}


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


class ImageFiles:
    """The image files under a JSON source directory (PEARL-FULL's unzipped images_part_X folders),
    indexed once by file name and by file name without extension."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.by_name: dict[str, list[Path]] = defaultdict(list)
        self.by_stem: dict[str, list[Path]] = defaultdict(list)
        for p in sorted(self.root.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                self.by_name[p.name].append(p)
                self.by_stem[p.stem].append(p)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_name.values())

    def find(self, ref: str, where: str) -> Path:
        """The file a record's reference names: a path relative to the root, else a unique file of that
        name, else a unique file with that name plus an image extension. ValueError naming the record
        and the file otherwise."""
        direct = (self.root / ref).resolve()
        if direct.is_file() and direct.is_relative_to(self.root):
            return direct
        name = Path(ref).name
        for table, key in ((self.by_name, name), (self.by_stem, name), (self.by_stem, Path(name).stem)):
            hits = table.get(key, [])
            if len(hits) > 1:
                raise ValueError(f"{where}: image {ref!r} is ambiguous: {[str(h) for h in hits[:4]]} (use paths "
                                 "relative to the source directory in the records)")
            if hits:
                return hits[0]
        raise ValueError(f"{where}: image file {ref!r} not found under {self.root} (looked for that path, a file "
                         f"named {name!r}, and {name!r} with an image extension; unzip every images_part_X.zip "
                         "there, or set vdr_prepare.image_file_column)")


def _fetch_json_images(cfg: VdrPrepareConfig, files: list[str], needed: list[ImageRef],
                       counts: Counter) -> dict[str, bytes]:
    """Pass 2 for JSON sources: read only the needed image files."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    index = ImageFiles(_json_root(cfg))
    counts["image_files_indexed"] = len(index)

    def one(ref: ImageRef) -> tuple[str, bytes]:
        path = index.find(ref.ref, f"{files[ref.file]}: record {ref.row}")
        return ref.id, image_bytes(path.read_bytes(), f"{path} (record {ref.row} of {files[ref.file]})")

    with ThreadPoolExecutor(max_workers=max(1, cfg.fetch_threads)) as pool:
        out = dict(pool.map(one, needed))  # in order: the first bad image raises here
    counts["image_files_read"] = len(out)
    return out


def fetch_images(cfg: VdrPrepareConfig, files: list[str], fs: Any, needed: Iterable[ImageRef],
                 counts: Counter) -> dict[str, bytes]:
    """Pass 2: read the image column of only the row groups holding a needed image, up to
    `fetch_threads` files at once (range reads from the hub wait on the network, and pyarrow
    releases the GIL while it reads and decompresses). The result does not depend on the order
    in which files finish. JSON sources: only the needed image files."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    if source_format(cfg) == "json":
        return _fetch_json_images(cfg, files, list(needed), counts)
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
    random_from = ("from every unique image of the source except those of other splits"
                   if cfg.random_negative_from == "corpus" else "from the split's pool")
    lines = ["---", "task_categories: [visual-document-retrieval]", "language: [ar]", "---", "",
             "# Arabic VDR triplets from PEARL (ain `vdr_prepare`)", "",
             f"Source: `{cfg.source}`. Columns: query (Arabic question), image (positive), negative_0..3 "
             "(hard negatives by metadata rule), metadata (ids, category, country, caption, source row, "
             "negative ids and rules).", "",
             "Negative rules: negative_0 same category other image; negative_1 same country other category; "
             "negative_2 another same-category image (these three from the split's pool); negative_3 random "
             f"({random_from}); "
             "never the positive; a rule that cannot be satisfied falls back to a random image of the pool "
             "(`random_fallback`). No image is in two splits.", "",
             "Splits: PEARL-FULL publishes none. Queries are sampled stratified by category, then by country "
             "within each category; dev and test are drawn from the sample with the same stratification, whole "
             "images at a time; train is every other sampled query.", "",
             "| split | queries | images in pool | images used |", "|---|---|---|---|"]
    for s in SPLITS:
        lines.append(f"| {s} | {stats['splits'][s]} | {stats['pool_images'][s]} | {stats['images_used'][s]} |")
    lines += ["", "Category counts of the sample:", "", "| category | sampled | train | dev | test |",
              "|---|---|---|---|---|"]
    for cat, row in sorted(stats["categories"].items()):
        lines.append(f"| {cat} | {row['sampled']} | {row['train']} | {row['dev']} | {row['test']} |")
    lines += ["", "Counts:", "", "```json", json.dumps(stats["counts"], indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)


def strata_counts(sample: list[MetaRow], splits: dict[str, list[MetaRow]]) -> dict[str, dict[str, int]]:
    """"category / country" -> queries sampled and per split."""
    tally = {"sampled": Counter(r.stratum for r in sample), **{s: Counter(r.stratum for r in splits[s]) for s in SPLITS}}
    return {f"{cat} / {country}": {k: c[(cat, country)] for k, c in tally.items()}
            for cat, country in sorted(tally["sampled"])}


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
    negatives = assign_negatives(splits, pools, images, seed, counts, cfg.random_negative_from)
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
        stats = {"splits": {s: len(splits[s]) for s in SPLITS}, "pool_images": {s: len(pools[s]) for s in SPLITS},
                 "images_used": {s: len({i for r, negs in zip(splits[s], negatives[s])
                                         for i in [r.image_id, *(n for n, _ in negs)]}) for s in SPLITS},
                 "strata": strata_counts(sample, splits),
                 "categories": {c: {"sampled": sum(r.category == c for r in sample),
                                    **{s: sum(r.category == c for r in splits[s]) for s in SPLITS}}
                                for c in sorted({r.category for r in sample})},
                 "counts": dict(counts)}
        with publish_dir(final) as staging:  # replaces what an attempt that died before its marker published
            dd.save_to_disk(str(staging))
            (staging / "README.md").write_text(dataset_card(cfg, stats), encoding="utf-8")
            (staging / "vdr_stats.json").write_text(json.dumps(stats, indent=1, sort_keys=True) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def run_prepare_task(ctx: TaskContext) -> dict[str, Any]:
    stats = prepare(ctx.stage_cfg, ctx.paths.out, seed=ctx.cfg.seed, log=ctx.log)
    return {"items": sum(stats["splits"].values()), **{f"{s}_queries": n for s, n in stats["splits"].items()},
            "counts": stats["counts"], "dataset": str(ctx.paths.out / DATASET_DIR)}
