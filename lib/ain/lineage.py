"""Per-sample lineage: one sample's whole history across the stages, found by lookup, not by scan.

`trace(run, "en_llava-12")` (or `jobs/trace.py runs/<name> en_llava-12`) gathers every row any
stage wrote about a sample and its translation ("<id>-ar"; either id traces both):

    ingest     the sample (source, file, row, the source's own id; the normalised turns) or the
               quarantine record of its row (kind, reason, raw text)
    translate  the first attempt (English, Arabic, back-translation, protected spans) or the skip
    verify     every attempt's scores (one scores row per attempt), the failing metrics, the
               rejected row (every attempt's text) or the passed Arabic sample
    safety     the verdict of each of its images (by content hash) and of each text turn of both
               ids, with the judge models from the frozen config
    mix        the decision (decisions-<i>.jsonl: kept, reason, category, duplicate_of, position)
    pack       the shard, the member names in it, the manifest entry (checked against the tar)
    train      the optimizer steps and ranks that consumed it (samples-rank<r>.jsonl)

It reads files only: it sits below the components (ain.curate's report writes trace pages for
the review site with it) and imports none of them. The row layouts it reads are the stages'
outputs as documented in their modules.

The index (`build_index`, by the report stage and `jobs/trace.py --build-index`) makes a trace a
lookup. Per stage, `runs/<name>/lineage/<stage>/` holds

    meta.json     the files it covers, each with size and mtime (its identity), the bucket bits
    buckets.u64   2^bits + 1 little-endian uint64: where each hash bucket starts in entries.u64
    entries.u64   (key hash, file number << 40 | byte offset of the line) pairs of uint64, sorted
                  by hash; a key is a sample id (or "image:<name>" for image verdicts), its hash
                  the first 8 bytes of blake2b

A lookup reads 16 bytes of buckets.u64 and one bucket of entries (about 64 entries, 1 KB) per
stage, then the lines it points at; each line is parsed and its key checked, so a hash
collision costs one read and never a wrong answer. A file that is new or changed since the index
was built (size or mtime differ: the train stage appends after the report stage indexed the
curation) is scanned instead, and the trace says so (`lookup.stale`); `--build-index` refreshes
only the stages whose files changed. Without an index every file is scanned (`use_index=False`):
a bytes search for the quoted id, then a parse of the matching lines only.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import multiprocessing
import os
import re
import shutil
import struct
import tarfile
import time
from array import array
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import yaml

from ain.atomic import atomic_write_json, publish_dir, read_json
from ain.rundir import RunDir, private_mkdir

INDEX_DIR = "lineage"
INDEX_VERSION = 1
OFFSET_BITS = 40                      # byte offsets up to 1 TB per file; file numbers above
OFFSET_MASK = (1 << OFFSET_BITS) - 1
TARGET_BUCKET = 64                    # entries per bucket on average (16 bytes each)
TRANSLATION_SUFFIX = "-ar"            # ain.curate.translator.arabic_sample
STAGES = ("ingest", "translate", "verify", "safety", "mix", "pack", "train")
_REASON = re.compile(r"^turn (\d+): (\S+)")
_RANK = re.compile(r"rank(\d+)")


class LineageError(ValueError):
    """A query that names no sample of the run, or an index that cannot be built (the message says why)."""


def _quoted(key: str) -> bytes:
    """How a key appears inside a JSON line: ids are [A-Za-z0-9_-], image names hex + extension."""
    return json.dumps(key.split(":", 1)[1] if key.startswith("image:") else key).encode()


def _source_of(key: str) -> bytes:
    """A quarantine record has no id: its key is "<source>-<row>"; a scan looks for the source."""
    return json.dumps(key.rsplit("-", 1)[0]).encode()


@dataclass(frozen=True)
class Kind:
    """One kind of per-sample output file of a stage and the keys each of its rows answers to."""

    stage: str
    name: str
    pattern: str
    keys: Callable[[dict[str, Any]], list[str]]
    needle: Callable[[str], bytes] = _quoted
    field: Optional[str] = None
    """The top-level string field that is the row's one key (read without parsing the line, see
    `iter_keys`); None: the row is parsed."""
    prefix: str = ""
    """Put before the field's value to make the key ("image:")."""


def _id(row: dict[str, Any]) -> list[str]:
    return [row["id"]]


def top_level_string(line: bytes, field: str) -> Optional[str]:
    """The value of top-level field `field` of a JSON object line when it is a plain string, without
    parsing the line (json.loads runs at 50 MB/s on these rows; this at several times that). The
    stages write `"field": "value"` (json.dumps separators). Inside a JSON string every quote is
    escaped, so `"field": "` can only be a key; it is the top-level one when no object opened
    before it but the line's own, or, failing that quick test, when the text before it, strings
    removed, opens exactly one bracket (a sample's origin "id" is nested: depth 2). None when not
    found, or when the value has escapes: the caller parses the line."""
    needle = b'"' + field.encode() + b'": "'
    start = line.find(needle)
    while start >= 0:
        first = start + len(needle)
        end = line.find(b'"', first)
        if end < 0:
            return None
        if (line[:1] == b"{" and line.count(b"{", 0, start) == 1) or _depth(line[:start]) == 1:
            value = line[first:end]
            return None if b"\\" in value else value.decode("utf-8")
        start = line.find(needle, end)
    return None


def _depth(head: bytes) -> int:
    """Brackets opened and not closed in `head`, the start of a JSON line up to a key: complete
    tokens only. Escapes are removed first (pairs left to right: "\\\\", then "\\\""), so every
    quote left delimits a string, and the text outside strings is every other piece between quotes."""
    if b"\\" in head:
        head = head.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(head.split(b'"')[0::2])
    return outside.count(b"{") + outside.count(b"[") - outside.count(b"}") - outside.count(b"]")


KINDS = (
    Kind("ingest", "samples", "samples-*.jsonl", _id, field="id"),
    Kind("ingest", "quarantine", "quarantine-*.jsonl", lambda r: [f"{r['source']}-{r['row']}"], _source_of),
    Kind("translate", "translations", "translations-*.jsonl", _id, field="id"),
    Kind("translate", "skipped", "skipped-*.jsonl", _id, field="id"),
    Kind("verify", "passed", "passed-*.jsonl", _id, field="id"),
    Kind("verify", "rejected", "rejected-*.jsonl", _id, field="id"),
    Kind("verify", "scores", "scores-*.jsonl", _id, field="id"),
    Kind("safety", "images", "images-*.jsonl", lambda r: [f"image:{r['image']}"], field="image", prefix="image:"),
    Kind("safety", "texts", "texts-*.jsonl", lambda r: [r["sample_id"]], field="sample_id"),
    Kind("mix", "decisions", "decisions-*.jsonl", _id, field="id"),
    Kind("mix", "mixed", "mixed-*.jsonl", _id, field="id"),
    # pack: the manifest line of the shard a sample is in (keys come from the mix order, _pack_keys)
    Kind("pack", "manifest", "manifest-*.jsonl", lambda r: []),
    Kind("train", "steps", "samples-rank*.jsonl", lambda r: list(r["ids"])),
)
KIND = {k.name: k for k in KINDS}


@dataclass
class Hit:
    """One row found for a key: where it is and what it says."""

    kind: str
    path: Path
    offset: int
    row: dict[str, Any]
    key: str


def _key_digest(key: str) -> bytes:
    """The 8 bytes an index stores per key (written and looked up the same way: one definition)."""
    return hashlib.blake2b(key.encode(), digest_size=8).digest()


def _hash(key: str) -> int:
    return int.from_bytes(_key_digest(key), "little")


def _as_run(run: RunDir | Path | str) -> RunDir:
    return run if isinstance(run, RunDir) else RunDir(run)


def run_config(run: RunDir) -> dict[str, Any]:
    """The frozen config.yaml as plain data (the names lineage shows: judge models, task counts)."""
    if not run.config_path.exists():
        raise LineageError(f"{run.root}: not a run directory (no config.yaml)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster on a 700-line config
    return yaml.load(run.config_path.read_text(encoding="utf-8"), Loader=loader) or {}


def stage_files(run: RunDir, stage: str) -> list[tuple[Kind, Path]]:
    """The per-sample output files of a stage, in a fixed order (kind, then name)."""
    out = run.stage(stage).out
    return [(k, p) for k in KINDS if k.stage == stage for p in sorted(out.glob(k.pattern))]


def _identity(run: RunDir, files: list[tuple[Kind, Path]]) -> list[dict[str, Any]]:
    ident = []
    for kind, path in files:
        st = path.stat()
        ident.append({"path": path.relative_to(run.root).as_posix(), "kind": kind.name, "size": st.st_size,
                      "mtime_ns": st.st_mtime_ns})
    return ident


def _dependencies(run: RunDir, stage: str) -> list[tuple[Kind, Path]]:
    """Files outside the stage an index of it is computed from: pack's keys come from the mix order."""
    if stage != "pack":
        return []
    return [(KIND["mixed"], p) for p in sorted(run.stage("mix").out.glob(KIND["mixed"].pattern))]


def iter_lines(path: Path, limit: Optional[int] = None) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line) of each non-blank line, up to `limit` bytes (a file still growing)."""
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            if limit is not None and offset + len(line) > limit:
                return
            if len(line) > 2 or line.strip():
                yield offset, line
            offset += len(line)


# ----------------------------------------------------------------------------------- index build
def index_dir(run: RunDir, stage: str) -> Path:
    return run.root / INDEX_DIR / stage


def _read_meta(run: RunDir, stage: str) -> Optional[dict[str, Any]]:
    path = index_dir(run, stage) / "meta.json"
    try:
        meta = read_json(path)
    except (OSError, ValueError):
        return None
    return meta if meta.get("version") == INDEX_VERSION else None


def build_index(run: RunDir | Path | str, stages: Optional[list[str]] = None, force: bool = False,
                log: Optional[Callable[[str], None]] = None, workers: Optional[int] = None) -> dict[str, dict[str, Any]]:
    """Index every stage that has outputs (or `stages`), skipping those whose files have not changed
    since their index was built (unless `force`); stages are built in parallel on `workers`
    processes (default: the CPUs this process may use). Returns per stage: rebuilt, files,
    entries, seconds."""
    run = _as_run(run)
    summary: dict[str, dict[str, Any]] = {}
    todo = []
    for stage in stages or STAGES:
        if not run.stage(stage).out.is_dir():
            continue
        meta = None if force else _read_meta(run, stage)
        files = stage_files(run, stage)
        if meta and meta["files"] == _identity(run, files) and \
                meta.get("deps", []) == _identity(run, _dependencies(run, stage)):
            summary[stage] = {"rebuilt": False, "files": len(files), "entries": meta["entries"], "seconds": 0.0}
        else:
            todo.append(stage)
    workers = max(1, min(workers or len(os.sched_getaffinity(0)), len(todo)))
    if workers > 1:  # spawned, not forked: the caller may have threads (a job's logging, a pool)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            built = list(pool.map(_build_stage, [str(run.root)] * len(todo), todo))
    else:
        built = [_build_stage(str(run.root), stage) for stage in todo]
    for stage, s in zip(todo, built):
        summary[stage] = s
        if log:
            log(f"lineage index {stage}: not built: {s['error']}" if "error" in s else
                f"lineage index {stage}: {s['files']} files, {s['entries']} entries in {s['seconds']:.1f}s")
    return {stage: summary[stage] for stage in STAGES if stage in summary}


def _build_stage(root: str, stage: str) -> dict[str, Any]:
    run = RunDir(root)
    files, deps = stage_files(run, stage), _dependencies(run, stage)
    ident, dep_ident = _identity(run, files), _identity(run, deps)
    start = time.perf_counter()
    hashes, locs = bytearray(), array("Q")
    if stage == "pack":
        try:
            _pack_entries(run, files, ident, deps, dep_ident, hashes, locs)
        except LineageError as exc:  # no pack index: a trace scans the mix for a shard, and says so
            shutil.rmtree(index_dir(run, stage), ignore_errors=True)
            return {"rebuilt": False, "files": len(files), "entries": 0, "seconds": 0.0, "error": str(exc)}
    else:
        for number, ((kind, path), fid) in enumerate(zip(files, ident)):
            _file_entries(kind, path, fid["size"], number << OFFSET_BITS, hashes, locs)
    entries = _write_table(run, stage, ident, dep_ident, hashes, locs)
    return {"rebuilt": True, "files": len(files), "entries": entries,
            "seconds": round(time.perf_counter() - start, 3)}


CHUNK = 1 << 25  # bytes of a file the index build reads at a time


def iter_keys(kind: Kind, path: Path, limit: int) -> Iterator[tuple[int, str]]:
    """(byte offset of the line, key) of every key of every line in the first `limit` bytes of a
    file (a file still growing: the rest is the next build's). The inner loop of the index build:
    a million-sample run has tens of millions of lines. Where the kind's key is a top-level string
    field, a bytes search over a chunk finds each line's first `"field": "value"`; the key is taken
    when the text before it on its line is at depth 1 (`top_level_string`'s test). Every other line
    (no such field, a nested one first, an escaped value, other separators) is parsed."""

    def parse(lines: bytes, offset: int) -> Iterator[tuple[int, str]]:  # lines the fast pass left
        for line in lines.split(b"\n"):
            if line.strip():
                try:
                    keys = kind.keys(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    keys = []  # not a row of this kind: a scan would not find it either
                for key in keys:
                    yield offset, key
            offset += len(line) + 1

    needle = b'"' + kind.field.encode() + b'": "' if kind.field else None
    prefix = kind.prefix
    done = 0
    with open(path, "rb") as f:
        while done < limit:
            chunk = f.read(min(CHUNK, limit - done))
            if not chunk:
                break
            cut = chunk.rfind(b"\n") + 1
            if cut == 0 and done + len(chunk) < limit:
                chunk += f.readline()  # one line longer than a chunk
                cut = chunk.rfind(b"\n") + 1
            if cut == 0 or done + cut > limit:
                break  # an unterminated last line: still being written
            f.seek(done + cut)
            chunk = chunk[:cut]
            if needle is None:
                yield from parse(chunk[:-1], done)
                done += cut
                continue
            expected = 0  # where the next line not yet handled starts
            pos = chunk.find(needle)
            while pos >= 0:
                start = chunk.rfind(b"\n", 0, pos) + 1
                end = chunk.find(b"\n", pos) + 1
                if start > expected:
                    yield from parse(chunk[expected:start - 1], done + expected)
                first = pos + len(needle)
                close = chunk.find(b'"', first)
                head = chunk[start:pos]
                value = chunk[first:close]
                if close < end and b"\\" not in value and \
                        ((head[:1] == b"{" and head.count(b"{") == 1) or _depth(head) == 1):
                    yield done + start, prefix + value.decode("utf-8")
                else:
                    yield from parse(chunk[start:end - 1], done + start)
                expected = end
                pos = chunk.find(needle, end)
            if expected < cut:
                yield from parse(chunk[expected:-1], done + expected)
            done += cut


def _file_entries(kind: Kind, path: Path, limit: int, base: int, hashes: bytearray, locs: array) -> None:
    """Append (key hash, base | line offset) of every key of one file."""
    for offset, key in iter_keys(kind, path, limit):
        hashes.extend(_key_digest(key))
        locs.append(base | offset)


def _write_table(run: RunDir, stage: str, ident: list, dep_ident: list, hashes: bytearray, locs: array) -> int:
    import numpy as np  # noqa: PLC0415 (only to build an index: a lookup reads it with struct)

    h = np.frombuffer(bytes(hashes), dtype="<u8")
    loc = np.frombuffer(locs.tobytes(), dtype=np.uint64).astype("<u8")
    n = len(h)
    bits = max(0, math.ceil(math.log2(max(n / TARGET_BUCKET, 1))))
    order = np.argsort(h, kind="stable")
    entries = np.empty(n, dtype=[("h", "<u8"), ("loc", "<u8")])
    entries["h"], entries["loc"] = h[order], loc[order]
    if bits:
        buckets = entries["h"] >> np.uint64(64 - bits)
        starts = np.searchsorted(buckets, np.arange((1 << bits) + 1, dtype=np.uint64), side="left")
    else:
        starts = np.array([0, n])
    private_mkdir(run.root / INDEX_DIR)
    with publish_dir(index_dir(run, stage)) as staging:
        private_mkdir(staging)
        entries.tofile(staging / "entries.u64")
        starts.astype("<u8").tofile(staging / "buckets.u64")
        atomic_write_json(staging / "meta.json", {"version": INDEX_VERSION, "stage": stage, "bits": bits,
                                                  "entries": n, "files": ident, "deps": dep_ident,
                                                  "built": time.time()})
    return n


# ------------------------------------------------------------------------------------------- pack
def _pack_tasks(run: RunDir, manifests: list[Path]) -> int:
    tasks = (run_config(run).get("pack") or {}).get("num_tasks")
    return int(tasks) if tasks else max(len(manifests), 1)


def _manifest_task(path: Path) -> int:
    return int(path.stem.rsplit("-", 1)[1])


def _pack_layout(run: RunDir, manifests: list[Path], mix_rows: int) -> Iterator[tuple[int, int, dict, int]]:
    """(manifest number, line offset, shard entry, mix position of its first sample) per shard.
    Pack task i packs the contiguous mix rows [i*n//N, (i+1)*n//N) in shard order (ain.data.pack)."""
    tasks = _pack_tasks(run, manifests)
    for number, path in enumerate(manifests):
        position = _manifest_task(path) * mix_rows // tasks
        for offset, line in iter_lines(path):
            entry = json.loads(line)
            yield number, offset, entry, position
            position += int(entry["samples"])


def _mix_ids(deps: list[tuple[Kind, Path]], dep_ident: list[dict]) -> list[str]:
    return [key for (kind, path), fid in zip(deps, dep_ident) for _, key in iter_keys(kind, path, fid["size"])]


def _pack_entries(run: RunDir, files, ident, deps, dep_ident, hashes: bytearray, locs: array) -> None:
    ids = _mix_ids(deps, dep_ident)
    for number, offset, entry, start in _pack_layout(run, [p for _, p in files], len(ids)):
        stop = start + int(entry["samples"])
        if stop > len(ids) or ids[start] != entry.get("first_id") or ids[stop - 1] != entry.get("last_id"):
            raise LineageError(f"{files[number][1]}: shard {entry.get('shard')} lists {entry.get('first_id')} .. "
                               f"{entry.get('last_id')}, but the mix has {ids[start] if start < len(ids) else 'nothing'} "
                               "at its position: the pack stage does not match the current mix (re-run pack)")
        base = number << OFFSET_BITS | offset
        for key in ids[start:stop]:
            hashes += _key_digest(key)
            locs.append(base)


def shard_members(shard: Path, key: str) -> tuple[list[str], Optional[int]]:
    """The member names of sample `key` in a shard and its ordinal among the shard's samples
    (tar headers only: data blocks are skipped)."""
    names: list[str] = []
    ordinal, found, last = -1, None, None
    with tarfile.open(shard, "r:") as tar:
        for member in tar:
            k = member.name.split(".", 1)[0]
            if k != last:
                ordinal, last = ordinal + 1, k
            if k == key:
                names.append(member.name)
                found = ordinal
            elif names:
                break
    return names, found


# ------------------------------------------------------------------------------------------ lookup
class Lineage:
    """Lookups in one run directory: through the index where it is fresh, else by scanning."""

    def __init__(self, run: RunDir | Path | str, use_index: bool = True) -> None:
        self.run = _as_run(run)
        self.use_index = use_index
        self.stale: dict[str, list[str]] = {}     # stage -> files scanned because the index lacks them
        self.indexed: dict[str, bool] = {}         # stage -> the index answered (for fresh files)
        self._config: Optional[dict[str, Any]] = None
        self._splits: dict[str, tuple] = {}        # stage -> _split(stage): files do not change under one lookup

    @property
    def config(self) -> dict[str, Any]:
        if self._config is None:
            self._config = run_config(self.run)
        return self._config

    def _split(self, stage: str) -> tuple[Optional[dict], dict[int, tuple[Kind, Path]], list[tuple[Kind, Path]]]:
        """(meta, file number -> file the index covers unchanged, files to scan)."""
        files = stage_files(self.run, stage)
        meta = _read_meta(self.run, stage) if self.use_index else None
        if meta is None:
            return None, {}, files
        if meta.get("deps", []) != _identity(self.run, _dependencies(self.run, stage)):
            return None, {}, files
        covered = {f["path"]: (number, f) for number, f in enumerate(meta["files"])}
        fresh, scan = {}, []
        for (kind, path), now in zip(files, _identity(self.run, files)):
            known = covered.get(now["path"])
            if known and known[1] == now:
                fresh[known[0]] = (kind, path)
            else:
                scan.append((kind, path))
        return meta, fresh, scan

    def _probe(self, stage: str, meta: dict[str, Any], key: str) -> list[int]:
        h, bits = _hash(key), meta["bits"]
        bucket = h >> (64 - bits) if bits else 0
        d = index_dir(self.run, stage)
        with open(d / "buckets.u64", "rb") as f:
            start, stop = struct.unpack("<QQ", os.pread(f.fileno(), 16, bucket * 8))
        if stop <= start:
            return []
        with open(d / "entries.u64", "rb") as f:
            data = os.pread(f.fileno(), (stop - start) * 16, start * 16)
        return [loc for eh, loc in struct.iter_unpack("<QQ", data) if eh == h]

    def find(self, stage: str, keys: list[str]) -> list[Hit]:
        """Every row of `stage` answering to one of `keys`, in file order."""
        if not keys or not self.run.stage(stage).out.is_dir():
            return []
        if stage not in self._splits:
            self._splits[stage] = self._split(stage)
        meta, fresh, scan = self._splits[stage]
        self.indexed[stage] = meta is not None
        if scan and meta is not None:
            self.stale[stage] = [p.relative_to(self.run.root).as_posix() for _, p in scan]
        order = {path: i for i, (_, path) in enumerate(stage_files(self.run, stage))}
        hits: list[Hit] = []
        if meta is not None:
            for key in dict.fromkeys(keys):
                for loc in self._probe(stage, meta, key):
                    target = fresh.get(loc >> OFFSET_BITS)
                    if target is None:
                        continue  # the file changed or is gone: it is scanned
                    kind, path = target
                    row = read_row(path, loc & OFFSET_MASK)
                    if stage == "pack" or key in kind.keys(row):
                        hits.append(Hit(kind.name, path, loc & OFFSET_MASK, row, key))
        if stage == "pack" and scan:
            hits += self._scan_pack(keys, [path for _, path in scan])
        elif scan:
            for kind, path in scan:
                hits += scan_file(kind, path, keys)
        hits.sort(key=lambda hit: (order.get(hit.path, -1), hit.offset, hit.key))
        return hits

    def _scan_pack(self, keys: list[str], wanted: list[Path]) -> list[Hit]:
        """The shard of each key from the mix order, without an index (scans the mix)."""
        mixed = sorted(self.run.stage("mix").out.glob("mixed-*.jsonl"))
        positions, before = {}, 0
        for path in mixed:
            for hit in scan_file(KIND["mixed"], path, keys):
                with open(path, "rb") as f:
                    positions[hit.key] = before + f.read(hit.offset).count(b"\n")
            before += _count_rows(path)
        manifests = [p for _, p in stage_files(self.run, "pack")]
        hits = []
        if not positions:
            return []
        for number, offset, entry, start in _pack_layout(self.run, manifests, before):
            if manifests[number] not in wanted:
                continue
            for key, position in positions.items():
                if start <= position < start + int(entry["samples"]):
                    hits.append(Hit("manifest", manifests[number], offset, entry, key))
        return hits

    # ------------------------------------------------------------------------------------ trace
    def trace(self, query: str, raw_reader: Optional[Callable[[dict[str, Any]], Any]] = None) -> dict[str, Any]:
        start = time.perf_counter()
        shard, key = parse_query(query)
        base, translation = pair_ids(key)
        ids = [base, translation]
        rows = {stage: self.find(stage, ids) for stage in ("ingest", "translate", "verify", "safety", "mix", "train")}
        rows["pack"] = self.find("pack", ids)
        if not any(rows.values()):
            raise LineageError(f"{key}: no stage of {self.run.root} has a row for it (sample ids are "
                               "<source>-<row>, e.g. en_llava-12, a translation <id>-ar; or give <shard>/<key>)")
        images = _images_of(rows)
        image_hits = self.find("safety", [f"image:{name}" for name in images])
        t = {"query": query, "run": str(self.run.root),
             "ids": {"sample": base, "translation": translation if _mentions(rows, translation) else None}}
        t["ingest"] = self._ingest(rows["ingest"], base, raw_reader)
        t["translate"] = _translate(rows["translate"], t["ingest"])
        t["verify"] = _verify(rows["verify"], rows["translate"], base, translation)
        t["safety"] = self._safety(images, image_hits, rows["safety"], ids)
        t["mix"] = _mix(rows["mix"], ids)
        t["pack"] = self._pack(rows["pack"])
        t["train"] = _train(rows["train"], ids)
        if shard is not None:
            where = (t["pack"].get(key) or {}).get("shard")
            if where != _shard_name(shard):
                raise LineageError(f"{key} is not in shard {_shard_name(shard)}: "
                                   + (f"it is in {where}" if where else "it was not packed"))
        located = [h for stage_rows in (*rows.values(), image_hits) for h in stage_rows]
        t["located"] = [{"kind": h.kind, "file": h.path.relative_to(self.run.root).as_posix(), "offset": h.offset,
                         "key": h.key} for h in located]
        t["lookup"] = {"indexed": dict(self.indexed), "stale": dict(self.stale),
                       "seconds": round(time.perf_counter() - start, 4)}
        return t

    def _ingest(self, hits: list[Hit], base: str, raw_reader) -> dict[str, Any]:
        if not self.run.stage("ingest").out.is_dir():
            return {"status": "stage not run"}
        for h in hits:
            if h.kind == "samples" and h.key == base:
                origin = h.row.get("origin", {})
                out = {"status": "ingested", "source": h.row.get("source"), "file": origin.get("file"),
                       "row": origin.get("row"), "source_id": origin.get("id"), "sample": h.row}
                if raw_reader is not None:
                    try:
                        out["raw"] = raw_reader(h.row)
                    except Exception as exc:  # the source moved or changed: say so, keep the rest
                        out["raw_error"] = f"{type(exc).__name__}: {exc}"
                return out
            if h.kind == "quarantine" and h.key == base:
                return {"status": "quarantined", "source": h.row.get("source"), "file": h.row.get("file"),
                        "row": h.row.get("row"), "kind": h.row.get("kind"), "reason": h.row.get("reason"),
                        "raw": h.row.get("raw"), "quarantine": h.row}
        return {"status": "not found"}

    def _safety(self, images: list[str], image_hits: list[Hit], text_hits: list[Hit], ids: list[str]) -> dict[str, Any]:
        if not self.run.stage("safety").out.is_dir():
            return {"status": "stage not run"}
        cfg = self.config.get("safety") or {}
        judges = {"vision": (cfg.get("vision_judge") or {}).get("model"),
                  "text": (cfg.get("text_judge") or {}).get("model"), "text_format": cfg.get("text_judge_format")}
        by_image = {h.row.get("image"): h.row for h in image_hits if h.kind == "images"}
        texts = {i: [h.row for h in text_hits if h.kind == "texts" and h.key == i] for i in ids}
        verdicts = [*by_image.values(), *(r for rs in texts.values() for r in rs)]
        status = ("unsafe" if any(v.get("rating") == "Unsafe" for v in verdicts)
                  else "unjudged" if any(v.get("status") != "judged" for v in verdicts)
                  else "safe" if verdicts else "no verdicts")
        return {"status": status, "judges": judges,
                "images": [{"image": name, "judge_model": judges["vision"], "verdict": by_image.get(name)}
                           for name in images],
                "texts": {i: sorted(rows, key=lambda r: r.get("turn", 0)) for i, rows in texts.items() if rows},
                "text_judge_model": judges["text"]}

    def _pack(self, hits: list[Hit]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for h in hits:
            entry = {k: v for k, v in h.row.items() if k not in ("lengths",)}
            shard = self.run.stage("pack").out / h.row["shard"]
            info: dict[str, Any] = {"shard": h.row["shard"], "manifest": entry,
                                    "manifest_file": h.path.relative_to(self.run.root).as_posix(), "members": [],
                                    "index_in_shard": None, "verified": None}
            try:
                names, ordinal = shard_members(shard, h.key)
            except (OSError, tarfile.TarError) as exc:
                info["verified_error"] = f"{type(exc).__name__}: {exc}"
            else:
                info.update(members=names, index_in_shard=ordinal, verified=bool(names))
                lengths = h.row.get("lengths")
                if ordinal is not None and isinstance(lengths, list) and ordinal < len(lengths):
                    info["tokens"] = lengths[ordinal]
            if info["verified"] is False:
                continue  # not in that shard after all (a hash collision): not this sample's
            out[h.key] = info
        return out


def read_row(path: Path, offset: int) -> dict[str, Any]:
    with open(path, "rb") as f:
        f.seek(offset)
        return json.loads(f.readline())


def _count_rows(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            n += chunk.count(b"\n")
    return n


def scan_file(kind: Kind, path: Path, keys: list[str]) -> list[Hit]:
    """The rows of one file answering to `keys`, by a bytes search for each key as it appears in
    JSON and a parse of the matching lines only."""
    if path.stat().st_size == 0:
        return []
    spans: set[tuple[int, int]] = set()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        size = len(mm)
        for needle in {kind.needle(k) for k in keys}:
            pos = mm.find(needle)
            while pos >= 0:
                start = mm.rfind(b"\n", 0, pos) + 1
                end = mm.find(b"\n", pos)
                end = size if end < 0 else end
                spans.add((start, end))
                pos = mm.find(needle, end)
        lines = [(start, mm[start:end]) for start, end in sorted(spans)]
    hits = []
    for start, line in lines:
        try:
            row = json.loads(line)
            row_keys = kind.keys(row)
        except (ValueError, KeyError, TypeError):
            continue
        hits += [Hit(kind.name, path, start, row, key) for key in dict.fromkeys(keys) if key in row_keys]
    return hits


def parse_query(query: str) -> tuple[Optional[str], str]:
    """"en_llava-3" -> (None, "en_llava-3"); "shard-000-00001.tar/en_llava-3.json" -> (shard, key)."""
    query = query.strip()
    if "/" in query:
        shard, member = query.rsplit("/", 1)
        return shard.rsplit("/", 1)[-1], member.split(".", 1)[0]
    return None, query


def _shard_name(shard: str) -> str:
    return shard if shard.endswith(".tar") else f"{shard}.tar"


def pair_ids(key: str) -> tuple[str, str]:
    """(ingested id, its translation's id) for either of them. Ingest ids end in the row number
    (<source>-<row>), so only a translation ends in "-ar"."""
    if key.endswith(TRANSLATION_SUFFIX):
        return key[: -len(TRANSLATION_SUFFIX)], key
    return key, key + TRANSLATION_SUFFIX


def _mentions(rows: dict[str, list[Hit]], key: str) -> bool:
    return any(h.key == key for hits in rows.values() for h in hits)


def _images_of(rows: dict[str, list[Hit]]) -> list[str]:
    """The sample's image names, from the first row that carries them (ingest, the passed
    translation, the mix)."""
    for stage, kind in (("ingest", "samples"), ("verify", "passed"), ("mix", "mixed"), ("translate", "translations")):
        for h in rows.get(stage, []):
            if h.kind == kind:
                sample = h.row.get("sample", h.row)
                return list(sample.get("images", []))
    return []


def failing(reasons: list[str]) -> list[dict[str, Any]]:
    """"turn 1: bleu4 59.46 < 60.00" -> {"turn": 1, "metric": "bleu4", "reason": ...}; an attempt's
    error (markers lost, an unusable answer) has no turn: metric "error"."""
    out = []
    for reason in reasons or []:
        m = _REASON.match(reason)
        out.append({"turn": int(m.group(1)), "metric": m.group(2), "reason": reason} if m
                   else {"turn": None, "metric": "error", "reason": reason})
    return out


def _translate(hits: list[Hit], ingest: dict[str, Any]) -> dict[str, Any]:
    for h in hits:
        if h.kind == "translations":
            return {"status": "translated", "first_attempt": h.row["attempts"][0], "row": h.row}
        if h.kind == "skipped":
            return {"status": "skipped", "reason": h.row.get("reason"), "row": h.row}
    language = (ingest.get("sample") or {}).get("language")
    if ingest.get("status") == "quarantined":
        return {"status": "not translated (quarantined at ingest)"}
    if language and language != "en":
        return {"status": f"not translated (language {language})"}
    return {"status": "not found"}


def _verify(hits: list[Hit], translate_hits: list[Hit], base: str, translation: str) -> dict[str, Any]:
    scores = sorted((h.row for h in hits if h.kind == "scores" and h.key == base), key=lambda r: r.get("attempt", 0))
    rejected = next((h.row for h in hits if h.kind == "rejected" and h.key == base), None)
    passed = next((h.row for h in hits if h.kind == "passed" and h.key == translation), None)
    if not (scores or rejected or passed):
        return {"status": "not verified"}
    attempts: dict[int, dict[str, Any]] = {}
    for s in scores:
        attempts[s["attempt"]] = {"attempt": s["attempt"], "temperature": s.get("temperature"), "passed": s.get("passed"),
                                  "reasons": s.get("reasons", []), "failing": failing(s.get("reasons", [])),
                                  "scores": s.get("turns", []), "min": s.get("min", {}), "turns": None, "error": None}
    first = next((h.row["attempts"][0] for h in translate_hits if h.kind == "translations"), None)
    texts = {a["attempt"]: a for a in (rejected or {}).get("attempts", [])}
    if first is not None:
        texts.setdefault(first["attempt"], first)
    for number, a in texts.items():
        entry = attempts.setdefault(number, {"attempt": number, "temperature": a.get("temperature"), "passed": None,
                                             "reasons": [], "failing": [], "scores": [], "min": {}})
        entry["turns"] = [{k: t.get(k) for k in ("turn", "en", "ar", "back", "spans")} for t in a.get("turns", [])]
        entry["error"] = a.get("error")
    ordered = [attempts[k] for k in sorted(attempts)]
    status = "passed" if passed else "rejected" if rejected else "in progress"
    return {"status": status, "attempts": ordered, "reasons": (rejected or {}).get("reasons", []),
            "passed": passed, "rejected": rejected, "scores": scores}


def _mix(hits: list[Hit], ids: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i in ids:
        decision = next((h.row for h in hits if h.kind == "decisions" and h.key == i), None)
        mixed = any(h.kind == "mixed" and h.key == i for h in hits)
        if decision is not None:
            out[i] = decision
        elif mixed:  # a mix from before decisions were recorded
            out[i] = {"id": i, "kept": True, "reason": None, "position": None, "note": "no decisions file"}
    return out


def _train(hits: list[Hit], ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for h in hits:
        m = _RANK.search(h.path.name)
        out.setdefault(h.key, []).append({"rank": int(m.group(1)) if m else None, "step": h.row.get("step"),
                                          "position": h.row["ids"].index(h.key)})
    return {i: sorted(v, key=lambda s: (s["step"], s["rank"] or 0)) for i, v in out.items() if i in ids}


def trace(run: RunDir | Path | str, query: str, *, use_index: bool = True,
          raw_reader: Optional[Callable[[dict[str, Any]], Any]] = None) -> dict[str, Any]:
    """One sample's history (see the module docstring); raises LineageError when nothing has it."""
    return Lineage(run, use_index).trace(query, raw_reader)


# --------------------------------------------------------------------------------------- printing
def _short(value: Any, width: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 3] + "..."


def format_trace(t: dict[str, Any]) -> str:
    """The trace as text for a terminal."""
    ids = t["ids"]
    lines = [f"sample {ids['sample']}" + (f" (translation {ids['translation']})" if ids.get("translation") else "")
             + f"  [{t['run']}]"]
    ing = t["ingest"]
    lines.append(f"ingest     {ing['status']}")
    if ing["status"] in ("ingested", "quarantined"):
        lines.append(f"  source {ing.get('source')}: {ing.get('file')} row {ing.get('row')}"
                     + (f" (source id {ing['source_id']})" if ing.get("source_id") else ""))
    if ing["status"] == "quarantined":
        lines += [f"  {ing.get('kind')}: {ing.get('reason')}", f"  raw: {_short(ing.get('raw'))}"]
    if ing.get("sample"):
        s = ing["sample"]
        lines.append(f"  normalised: language {s.get('language')}, domain {s.get('domain')}, "
                     f"{len(s.get('images', []))} image(s), {len(s.get('turns', []))} turn(s)")
        lines += [f"    {turn.get('role')}: {_short(turn.get('content'))}" for turn in s.get("turns", [])]
    if "raw" in ing and ing["status"] == "ingested":
        lines.append(f"  raw: {_short(ing['raw'], 300)}")
    if ing.get("raw_error"):
        lines.append(f"  raw: not read again: {ing['raw_error']}")
    tr = t["translate"]
    lines.append(f"translate  {tr['status']}" + (f": {tr['reason']}" if tr.get("reason") else ""))
    ver = t["verify"]
    lines.append(f"verify     {ver['status']}")
    for a in ver.get("attempts", []):
        verdict = "pass" if a.get("passed") else "FAIL" if a.get("passed") is False else "?"
        lines.append(f"  attempt {a['attempt']} (temperature {a.get('temperature')}): {verdict}"
                     + (f"; error: {a['error']}" if a.get("error") else ""))
        for sc in a.get("scores", []):
            bad = {f["metric"] for f in a.get("failing", []) if f["turn"] == sc.get("turn")}
            metrics = ", ".join(f"{k} {v:.2f}{' <- FAIL' if k in bad else ''}" for k, v in sc.items()
                                if k not in ("turn", "passed") and isinstance(v, (int, float)))
            lines.append(f"    turn {sc.get('turn')}: {metrics}")
        for turn in a.get("turns") or []:
            lines.append(f"    turn {turn.get('turn')} en:   {_short(turn.get('en'))}")
            lines.append(f"    turn {turn.get('turn')} ar:   {_short(turn.get('ar'))}")
            lines.append(f"    turn {turn.get('turn')} back: {_short(turn.get('back'))}")
    saf = t["safety"]
    lines.append(f"safety     {saf['status']}")
    if saf.get("judges"):
        lines.append(f"  judges: vision {saf['judges']['vision']}, text {saf['judges']['text']} "
                     f"({saf['judges']['text_format']})")
    for im in saf.get("images", []):
        v = im.get("verdict") or {}
        lines.append(f"  image {im['image'][:16]}...: {v.get('rating', 'no verdict')} {v.get('category') or ''}"
                     + (f" - {_short(v.get('rationale'), 80)}" if v.get("rationale") else ""))
    for sid, rows in saf.get("texts", {}).items():
        for r in rows:
            lines.append(f"  text {sid} turn {r.get('turn')} ({r.get('language')}): {r.get('rating') or r.get('status')} "
                         f"{r.get('category') or ''}")
    lines.append("mix")
    for sid, d in t["mix"].items():
        what = "kept" if d.get("kept") else "dropped"
        detail = [x for x in (d.get("reason"), d.get("category"),
                              f"duplicate of {d['duplicate_of']}" if d.get("duplicate_of") else None,
                              f"position {d['position']}" if d.get("position") is not None else None) if x]
        lines.append(f"  {sid}: {what}" + (f" ({', '.join(detail)})" if detail else ""))
    lines.append("pack")
    for sid, p in t["pack"].items():
        lines.append(f"  {sid}: {p['shard']} #{p.get('index_in_shard')} members {', '.join(p.get('members', []))}"
                     + ("" if p.get("verified") else " (shard not checked)"))
    lines.append("train")
    for sid, steps in t["train"].items():
        lines.append(f"  {sid}: " + ", ".join(f"step {s['step']} rank {s['rank']}" for s in steps))
    look = t["lookup"]
    lines.append(f"lookup {look['seconds']:.3f}s"
                 + (f"; not indexed: {', '.join(s for s, v in look['indexed'].items() if not v)}"
                    if not all(look["indexed"].values()) else "")
                 + (f"; stale index, scanned {sum(map(len, look['stale'].values()))} file(s): "
                    "refresh with jobs/trace.py --build-index" if look["stale"] else ""))
    return "\n".join(lines) + "\n"
