"""WebDataset tar shards: the one format between curation and training.

Layout of a shard (a plain POSIX tar, PAX headers only when a name needs them):

    <key>.json          the sample dict (UTF-8), "images" still the list of store names
    <key>.0.png         image 0: original bytes, real extension
    <key>.1.jpg         image 1 ...

WebDataset groups members by the part of the basename before the FIRST dot, so the key is
`<key>` and the fields are "json", "0.png", "1.jpg": the image index rides in the field and the
last suffix stays the real extension (decoders that go by extension still work). This is why
a key must not contain "." (it would split the key), "/" (a directory) or ".." (a path
escaping the extraction folder): `check_key` refuses them instead of silently rewriting an id.

Writing (`ShardWriter`) goes to `<name>.partial`, hashes as it writes, fsyncs and renames to
the final name only when the shard is complete; a crash leaves only a `.partial`, never a
truncated `.tar` under a final name (webdataset's own ShardWriter writes straight to the final
name). The tar itself is written by the standard library's `tarfile` (PAX format: plain ustar
headers unless a name needs an extended one), on an unbuffered descriptor with sha256 computed
on a second thread; fixed mtime/owner/mode make a shard a pure function of its samples, so a
resumed task rewrites identical bytes. `tarfile` is slower than the hand-built headers it
replaced (about two thirds of their speed on the 2-core dev machine: 420-620 MB/s), but still
faster than a cluster's shared filesystem takes one task's writes (docs/PERFORMANCE.md, "Shard
writer: hand-built tar headers vs tarfile"); `webdataset.TarWriter` is not used because it
reorders a sample's members, writes owner names and is slower still (0.35-0.5).

Reading (`iter_samples`) verifies each shard's size and sha256 against the manifest before
yielding anything from it, then reads it with webdataset's own tar iterator and grouping, so
what training sees is exactly what webdataset sees. `safe_extract` is for people and tools
that unpack a shard onto disk: it refuses absolute paths, ".." and links.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import re
import tarfile
import threading
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from ain.atomic import sha256_file

_KEY_OK = re.compile(r"^[A-Za-z0-9_-]+$")
MANIFEST_GLOB = "manifest-*.jsonl"
MANIFEST_NAME = re.compile(r"manifest-\d+\.jsonl")


class ManifestError(ValueError):
    """The pack folder's manifests cannot be trusted (a stray copy, a line listed twice, a
    truncated line, a shard outside the folder, a manifest its stage's marker does not list);
    the message names the file and line."""


class CorruptShard(RuntimeError):
    """A shard that does not match its manifest entry (missing, wrong size, wrong sha256,
    unreadable tar, or members that are not what the packer writes)."""


# ------------------------------------------------------------------------------------ naming
def shard_name(task: int, k: int) -> str:
    return f"shard-{task:03d}-{k:05d}.tar"


def check_key(sample_id: Any) -> str:
    """The sample id as a WebDataset key, or ValueError naming the sample. Ingest only makes
    ids of [A-Za-z0-9_-], so anything else here is a bug or tampering: fail, never rewrite."""
    if not isinstance(sample_id, str) or not _KEY_OK.match(sample_id):
        raise ValueError(f"sample id {sample_id!r} is not a safe shard key: only [A-Za-z0-9_-] is allowed "
                         "(no '.', '/', '..', absolute or empty ids)")
    return sample_id


def image_field(index: int, image_name: str) -> str:
    """The WebDataset field of image `index`: "<index>.<ext>" (ext from the store name)."""
    ext = image_name.rsplit(".", 1)[-1].lower()
    return f"{index}.{ext}"


def image_members(sample: dict[str, Any]) -> list[str]:
    """Tar member names of a sample's images, in `sample["images"]` order."""
    key = sample["id"]
    return [f"{key}.{image_field(i, name)}" for i, name in enumerate(sample["images"])]


# ------------------------------------------------------------------------------------ writer
def member_info(name: str, size: int) -> tarfile.TarInfo:
    """The header of one member: a regular file, mode 0444, uid/gid 0, no owner names, mtime 0."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _Hasher:
    """sha256 on a second thread: hashlib releases the GIL on large buffers, so hashing
    (~1.2 GB/s on one core) overlaps reading images and writing and fsyncing the shard instead
    of adding to them. Buffers are immutable bytes, so queueing references copies nothing; the
    bounded queue caps what is pending."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=256)
        self._thread = threading.Thread(target=self._run, name="shard-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (part := self._queue.get()) is not None:
            self._sha.update(part)

    def update(self, part: bytes) -> None:
        self._queue.put(part)

    def hexdigest(self) -> str:
        self.stop()
        return self._sha.hexdigest()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class _HashedFile:
    """The file object `tarfile` writes to: unbuffered writes on a descriptor, each buffer also
    handed to the hashing thread, and the byte count (tarfile asks `tell()` once, at the start)."""

    def __init__(self, fd: int, hasher: _Hasher) -> None:
        self.fd = fd
        self.hasher = hasher
        self.size = 0

    def write(self, data: bytes) -> int:
        data = bytes(data)  # the hashing thread needs an immutable buffer (a no-op for bytes)
        view = memoryview(data)
        while view:  # short writes are rare on regular files
            view = view[os.write(self.fd, view):]
        self.hasher.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size


class ShardWriter:
    """One shard, written to `<path>.partial` and published by `close()`.

    `add()` appends one sample (its JSON and its images) and keeps the manifest numbers. The tar
    is written by `tarfile` straight to an unbuffered descriptor (each member's data in one write:
    the copy buffer is as large as `COPY_BUFFER`), and its sha256 is computed alongside on a
    second thread, so publishing never re-reads the shard. One writer per shard, used from one
    thread."""

    COPY_BUFFER = 64 << 20  # tarfile copies member data in pieces of this size (its default is 16 KiB)

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._file: _HashedFile | None = _HashedFile(fd, _Hasher())
        self._tar = tarfile.TarFile(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                                    errors="strict", copybufsize=self.COPY_BUFFER)
        self.samples = 0
        self.languages: dict[str, int] = {}
        self.domains: dict[str, int] = {}
        self.first_id: str | None = None
        self.last_id: str | None = None
        self._keys: set[str] = set()
        self._size = 0

    @property
    def size(self) -> int:
        """Bytes written so far (after `close()`: the whole shard)."""
        return self._file.size if self._file is not None else self._size

    def _member(self, name: str, data: bytes) -> None:
        assert self._file is not None, "shard already closed"
        self._tar.addfile(member_info(name, len(data)), io.BytesIO(data))  # BytesIO shares the bytes

    def add(self, sample: dict[str, Any], images: list[bytes]) -> None:
        """Append one sample; `images[i]` are the bytes of `sample["images"][i]`."""
        key = check_key(sample.get("id"))
        if key in self._keys:
            raise ValueError(f"sample {key!r} appears twice in shard {self.path.name}")
        if len(images) != len(sample["images"]):
            raise ValueError(f"sample {key!r}: {len(images)} image payloads for {len(sample['images'])} names")
        self._keys.add(key)
        self._member(f"{key}.json", json.dumps(sample, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        for member, data in zip(image_members(sample), images):
            self._member(member, data)
        self._tar.members.clear()  # tarfile keeps every TarInfo it wrote; a writer never reads them back
        self.samples += 1
        lang, domain = str(sample.get("language")), str(sample.get("domain"))
        self.languages[lang] = self.languages.get(lang, 0) + 1
        self.domains[domain] = self.domains.get(domain, 0) + 1
        self.first_id = self.first_id or key
        self.last_id = key

    def close(self) -> dict[str, Any]:
        """End the archive (tarfile pads it to a whole record), fsync, rename to the final name
        (then fsync the directory) and return the manifest entry. Only after this returns may
        the shard be listed."""
        assert self._file is not None, "shard already closed"
        self._tar.close()
        os.fsync(self._file.fd)
        os.close(self._file.fd)
        sha256 = self._file.hasher.hexdigest()
        self._size, self._file = self._file.size, None
        os.replace(self.partial, self.path)
        fsync_dir(self.path.parent)
        return {"shard": self.path.name, "samples": self.samples, "bytes": self.size,
                "sha256": sha256, "languages": dict(sorted(self.languages.items())),
                "domains": dict(sorted(self.domains.items())), "first_id": self.first_id,
                "last_id": self.last_id}

    def discard(self) -> None:
        """Drop an unfinished shard (its `.partial`) and stop the hashing thread."""
        if self._file is not None:
            os.close(self._file.fd)
            self._file.hasher.stop()
            self._size, self._file = self._file.size, None
        self.partial.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (POSIX needs the directory itself fsynced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ reader
def read_manifest(pack_out_dir: Path) -> list[dict[str, Any]]:
    """Every published shard of the pack stage, in training order: manifest-NNNNN.jsonl in name
    order (task order), lines in file order (shard order within a task).

    Nothing is read twice or from outside: any other manifest-like file in the folder (a backup
    "manifest-00000 (copy).jsonl", "manifest-00001.jsonl.bak") is refused, not skipped; where the
    pack stage's done markers exist (stages/pack/done/), each manifest must be the one a marker
    published (same sha256) and every marker's manifest must be there; a shard listed twice, a
    shard name that is not a plain file of this folder and an unparseable (truncated) line are
    ManifestErrors naming the file and line. (`.partial` files are a running task's.)"""
    out = Path(pack_out_dir)
    files = sorted(p for p in out.iterdir() if p.name.startswith("manifest")) if out.is_dir() else []
    stray = [p.name for p in files if not MANIFEST_NAME.fullmatch(p.name) and not p.name.endswith(".partial")]
    if stray:
        raise ManifestError(f"{out}: {stray} beside the pack stage's manifests (a copy or a backup?): only "
                            "manifest-<digits>.jsonl are read, so move them out rather than train on their shards twice")
    manifests = [p for p in files if MANIFEST_NAME.fullmatch(p.name)]
    _check_against_markers(out, manifests)
    entries: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for path in manifests:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    entry = json.loads(line)
                    shard, samples = entry["shard"], int(entry["samples"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise ManifestError(f"{where}: not a manifest entry (truncated?): {type(exc).__name__}: {exc}") from None
                if not (isinstance(shard, str) and shard and shard not in (".", "..") and "/" not in shard
                        and "\\" not in shard and "\0" not in shard) or samples < 0:
                    raise ManifestError(f"{where}: shard {shard!r} is not a plain file name of this folder "
                                        "(no directories: a manifest never points outside its pack folder)")
                if shard in seen:
                    raise ManifestError(f"{where}: shard {shard} is listed twice (first at {seen[shard]})")
                seen[shard] = where
                entries.append(entry)
    return entries


def _check_against_markers(out: Path, manifests: list[Path]) -> None:
    done = out.parent / "done"
    markers = sorted(done.glob("*.json")) if done.is_dir() else []
    if not markers:
        return  # no stage around these files (a copied pack folder, tests): nothing to compare with
    published: dict[str, str] = {}
    for marker in markers:
        try:
            info = json.loads(marker.read_text(encoding="utf-8"))["files"]["manifest"]
            published[info["file"]] = info["sha256"]
        except (ValueError, KeyError, TypeError):
            continue  # a marker of an older layout: the line checks below still apply
    if not published:
        return
    for path in manifests:
        if path.name not in published:
            raise ManifestError(f"{path}: no done marker of the pack stage ({done}) published this manifest")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != published[path.name]:
            raise ManifestError(f"{path}: does not match the pack stage's marker (sha256 {digest[:12]}, the marker "
                                f"says {published[path.name][:12]}): edited after the stage finished?")
    missing = sorted(set(published) - {p.name for p in manifests})
    if missing:
        raise ManifestError(f"{out}: manifests {missing} that the pack stage's markers published are missing")


def verify_shard(path: Path, entry: dict[str, Any], chunk: int = 4 << 20) -> None:
    """Size, then sha256, of one shard against its manifest entry; CorruptShard otherwise."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CorruptShard(f"shard {path}: missing (listed in the manifest)") from None
    if size != entry["bytes"]:
        raise CorruptShard(f"shard {path}: {size} bytes, the manifest says {entry['bytes']} (truncated or replaced)")
    digest = sha256_file(path, chunk)
    if digest != entry["sha256"]:
        raise CorruptShard(f"shard {path}: sha256 {digest} does not match the manifest's {entry['sha256']}")


def iter_shard(path: Path, entry: dict[str, Any] | None = None
               ) -> Iterator[tuple[dict[str, Any], dict[str, bytes]]]:
    """(sample, {member name: bytes}) for each sample of one shard, read by webdataset's tar
    iterator and key grouping. Images come in `sample["images"]` order (see image_members).
    With `entry`, the sample count must match it. Does not verify the checksum."""
    from webdataset.tariterators import group_by_keys, tar_file_expander  # noqa: PLC0415

    path = Path(path)
    n = 0
    try:
        with open(path, "rb") as stream:
            for group in group_by_keys(tar_file_expander([{"url": str(path), "stream": stream}])):
                yield _unpack(path, group)
                n += 1
    except (tarfile.TarError, ValueError, KeyError, TypeError, OSError) as exc:
        raise CorruptShard(f"shard {path}: unreadable after {n} samples: {type(exc).__name__}: {exc}") from None
    if entry is not None and n != entry["samples"]:
        raise CorruptShard(f"shard {path}: {n} samples, the manifest says {entry['samples']}")


def _unpack(path: Path, group: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
    key = group["__key__"]
    if "json" not in group:
        raise CorruptShard(f"shard {path}: sample {key!r} has no .json member")
    sample = json.loads(group["json"])
    if sample.get("id") != key:
        raise CorruptShard(f"shard {path}: member key {key!r} holds sample {sample.get('id')!r}")
    fields = [image_field(i, name) for i, name in enumerate(sample["images"])]
    extra = set(group) - set(fields) - {"json", "__key__", "__url__", "__local_path__"}
    missing = [f for f in fields if f not in group]
    if missing or extra:
        raise CorruptShard(f"shard {path}: sample {key!r} members differ from its images "
                           f"(missing {missing}, unexpected {sorted(extra)})")
    return sample, {f"{key}.{f}": group[f] for f in fields}


def iter_samples(pack_out_dir: Path, verify: bool = True) -> Iterator[tuple[dict[str, Any], dict[str, bytes]]]:
    """Every packed sample in training order. With `verify`, each shard's size and sha256 are
    checked before any of its samples is yielded, so a corrupt shard yields nothing."""
    out = Path(pack_out_dir)
    for entry in read_manifest(out):
        path = out / entry["shard"]
        if verify:
            verify_shard(path, entry)
        yield from iter_shard(path, entry)


# --------------------------------------------------------------------------------- extraction
def safe_extract(tar_path: Path, dest: Path) -> list[Path]:
    """Unpack a tar into `dest`, refusing (ValueError naming the member, before anything is
    written) absolute paths, ".." components, links, devices and other non-regular members.
    Returns the files written."""
    dest = Path(dest)
    with tarfile.open(tar_path, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            parts = PurePosixPath(m.name).parts
            if not m.name or m.name.startswith(("/", "\\")) or PurePosixPath(m.name).is_absolute():
                raise ValueError(f"{tar_path}: member {m.name!r} has an absolute path")
            if ".." in parts or "\\" in m.name:
                raise ValueError(f"{tar_path}: member {m.name!r} escapes the destination ('..' or '\\')")
            if m.issym() or m.islnk():
                raise ValueError(f"{tar_path}: member {m.name!r} is a link (to {m.linkname!r})")
            if not (m.isreg() or m.isdir()):
                raise ValueError(f"{tar_path}: member {m.name!r} is not a regular file or directory")
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        written = []
        for m in members:
            target = dest / m.name
            if not target.resolve().is_relative_to(root):  # e.g. a symlink already inside dest
                raise ValueError(f"{tar_path}: member {m.name!r} resolves outside {dest}")
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            assert src is not None
            with open(target, "wb") as f:
                while block := src.read(1 << 20):
                    f.write(block)
            written.append(target)
    return written
