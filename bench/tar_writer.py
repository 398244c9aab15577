"""The shard writer alone: hand-built tar headers vs the `tarfile` module vs webdataset's TarWriter.

    OMP_NUM_THREADS=1 .venv/bin/python bench/tar_writer.py [--samples 3000] [--repeat 3] [--dir /tmp]

Builds (seed 0) --samples samples in memory shaped like the pack stage's input: a JSON dict of
0.5-2 KB (English or Arabic turns, the keys later stages add) and one JPEG-sized payload of
100-300 KB of random bytes (incompressible, like JPEG; 10% of the samples carry a second one,
5% none). Then, round by round (best of --repeat, methods interleaved), each method writes all
of them as WebDataset shards of --shard-mb into a temp folder under --dir (local disk), with
the durability the pack stage needs: write `<shard>.partial`, sha256 of every byte written,
fsync, rename, fsync the directory:

  - hand_built:   the hand-built writer: each member one writev(header, data, padding) on an
                  unbuffered descriptor, headers built byte by byte, sha256 on a second thread
                  (`ShardWriter` until it moved to tarfile; taken from `ain.data.shards` while it
                  has `_header`, else from the git history);
  - project:      `ain.data.shards.ShardWriter` as it is now;
  - tarfile:      `tarfile.TarFile` (mode "w", PAX format, copybufsize as large as a member, so
                  one write per member's data) on an unbuffered file object whose write() hands
                  the buffer to the same sha256 thread;
  - tarfile_16k:  the same with tarfile's default copy buffer (16 KiB per write);
  - wds:          `webdataset.TarWriter` (tarfile in stream mode "w|", members sorted by field
                  name, so images before the JSON) on a file object that hashes as it writes;
  - raw:          the same bytes with no tar at all: one os.write per payload, sha256 on the
                  second thread, the same fsync/rename: what the disk and the hash allow.

MB/s = payload MB (JSON + image bytes) / seconds; ratio = method MB/s / hand_built MB/s. The
methods that promise the project's output contract are checked to produce byte-identical shards
(same sha256 per shard). os.sync() runs before each measurement. Prints one JSON object per
line, the last a summary, then a markdown table. The temp folder is removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from ain.data import shards  # noqa: E402

SHARDS_PATH = "lib/ain/data/shards.py"
EN = ["What is shown in this chart?", "Describe the image in detail.", "Which year had the highest sales?",
      "The figure shows a steady increase in monthly revenue from January to June.",
      "A man is holding a red umbrella near the river while it is raining."]
AR = ["ما الذي يظهر في هذا الرسم البياني؟", "صف الصورة بالتفصيل.", "أي سنة كانت فيها المبيعات الأعلى؟",
      "يُظهر الشكل زيادة مطردة في الإيرادات الشهرية من يناير إلى يونيو.",
      "رجل يحمل مظلة حمراء بالقرب من النهر بينما تمطر."]
DOMAINS = ["general", "charts", "ocr", "medical", "remote_sensing", "video", "cultural", "agriculture"]


def generate(n: int, seed: int = 0) -> tuple[list[tuple[dict, list[bytes]]], int]:
    """(sample, image payloads) pairs and the payload bytes (JSON as the writer encodes it + images).
    Payloads are slices of 64 random 300 KB blocks at random offsets: distinct bytes per sample
    without generating the whole data set."""
    rng = random.Random(seed)
    blocks = [rng.randbytes(300_000) for _ in range(64)]
    out, payload = [], 0
    for i in range(n):
        lang = "ar" if rng.random() < 0.4 else "en"
        n_images = rng.choices([0, 1, 2], weights=[5, 85, 10])[0]
        images, names = [], []
        for _ in range(n_images):
            size, block = rng.randint(100_000, 300_000), rng.choice(blocks)
            start = rng.randint(0, len(block) - size)
            data = block[start:start + size]
            images.append(data)
            names.append(f"{hashlib.sha256(data).hexdigest()}.{rng.choice(['jpg', 'jpg', 'png', 'webp'])}")
        text = AR if lang == "ar" else EN
        sample = {"id": f"bench_{lang}-{i}", "images": names, "language": lang, "source": f"bench_{lang}",
                  "domain": rng.choice(DOMAINS), "authentic": rng.random() < 0.5,
                  "turns": [{"role": "user", "content": "<image>\n" * n_images
                             + " ".join(rng.choice(text) for _ in range(rng.randint(1, 3)))},
                            {"role": "assistant", "content": " ".join(rng.choice(text) for _ in range(rng.randint(4, 16)))}],
                  "origin": {"file": "bench.jsonl", "row": i}}
        if lang == "ar":
            sample["translation_of"] = f"bench_en-{i}"
            sample["verify"] = {"labse": round(rng.uniform(0.8, 1), 3), "bleu": round(rng.uniform(60, 90), 1)}
        payload += len(json.dumps(sample, ensure_ascii=False, sort_keys=True).encode("utf-8")) + sum(map(len, images))
        out.append((sample, images))
    return out, payload


# ------------------------------------------------------------------------------------ writers
def load_hand_built() -> tuple[type, str]:
    """The hand-built ShardWriter: `ain.data.shards` while it builds headers itself (`_header`),
    else the last version of shards.py in the git history that did."""
    if hasattr(shards, "_header"):
        return shards.ShardWriter, f"{SHARDS_PATH} (working tree)"
    git = ["git", "-C", str(ROOT)]
    for commit in subprocess.run(git + ["rev-list", "HEAD", "--", SHARDS_PATH], capture_output=True, text=True,
                                 check=True).stdout.split():
        source = subprocess.run(git + ["show", f"{commit}:{SHARDS_PATH}"], capture_output=True, text=True,
                                check=True).stdout
        if "def _header(" in source:
            module = types.ModuleType("bench_hand_built_shards")
            exec(compile(source, f"{commit[:10]}:{SHARDS_PATH}", "exec"), module.__dict__)
            return module.ShardWriter, f"{SHARDS_PATH} at {commit[:10]} (git history)"
    raise SystemExit(f"no version of {SHARDS_PATH} with hand-built headers in the git history")


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _Sink:
    """Unbuffered file object on a descriptor; write() hands each buffer to the sha256 thread."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.sha = shards._Hasher() if hasattr(shards, "_Hasher") else _InlineSha()
        self.size = 0

    def write(self, data) -> int:
        data = bytes(data)  # the hashing thread must own an immutable buffer
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size


class _InlineSha:
    def __init__(self) -> None:
        self._sha = hashlib.sha256()

    def update(self, *parts: bytes) -> None:
        for p in parts:
            self._sha.update(p)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


class _HashingFile:
    """A buffered file that hashes in the writing thread (what wds.TarWriter can be given)."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "wb")
        self.sha = hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()

    def tell(self) -> int:
        return self.f.tell()


def _publish(partial: Path, fd: int) -> None:
    os.fsync(fd)
    os.close(fd)
    os.replace(partial, partial.with_name(partial.name[:-len(".partial")]))
    shards.fsync_dir(partial.parent)


class TarfileWriter:
    """tarfile.TarFile on a _Sink: the library writer with the project's durability."""

    def __init__(self, path: Path, copybufsize: int | None) -> None:
        self.partial = path.with_name(path.name + ".partial")
        self.sink = _Sink(self.partial)
        self.tar = tarfile.TarFile(fileobj=self.sink, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                                   errors="strict", copybufsize=copybufsize)

    def add(self, sample: dict, images: list[bytes]) -> None:
        key = shards.check_key(sample["id"])
        data = json.dumps(sample, ensure_ascii=False, sort_keys=True).encode("utf-8")
        self.tar.addfile(_member_info(f"{key}.json", len(data)), io.BytesIO(data))
        for name, blob in zip(shards.image_members(sample), images):
            self.tar.addfile(_member_info(name, len(blob)), io.BytesIO(blob))

    def close(self) -> dict:
        self.tar.close()
        _publish(self.partial, self.sink.fd)
        return {"bytes": self.sink.size, "sha256": self.sink.sha.hexdigest()}


class WdsWriter:
    def __init__(self, path: Path) -> None:
        import webdataset as wds

        self.partial = path.with_name(path.name + ".partial")
        self.f = _HashingFile(self.partial)
        self.tar = wds.TarWriter(self.f, encoder=False, mtime=0, user="", group="")

    def add(self, sample: dict, images: list[bytes]) -> None:
        obj = {"__key__": shards.check_key(sample["id"]),
               "json": json.dumps(sample, ensure_ascii=False, sort_keys=True).encode("utf-8")}
        for name, blob in zip(shards.image_members(sample), images):
            obj[name.split(".", 1)[1]] = blob
        self.tar.write(obj)

    def close(self) -> dict:
        self.tar.close()
        self.f.flush()
        _publish(self.partial, os.dup(self.f.f.fileno()))
        size = self.f.tell()
        self.f.f.close()
        return {"bytes": size, "sha256": self.f.sha.hexdigest()}


class RawWriter:
    """No tar: the payload bytes, written and hashed like the project writes a member's data."""

    def __init__(self, path: Path) -> None:
        self.partial = path.with_name(path.name + ".partial")
        self.sink = _Sink(self.partial)

    def add(self, sample: dict, images: list[bytes]) -> None:
        self.sink.write(json.dumps(sample, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        for blob in images:
            self.sink.write(blob)

    def close(self) -> dict:
        _publish(self.partial, self.sink.fd)
        return {"bytes": self.sink.size, "sha256": self.sink.sha.hexdigest()}


def write_all(make, data: list, out: Path, shard_bytes: int) -> tuple[float, list[str]]:
    """Write every sample into shards of about shard_bytes (closed like pack closes them)."""
    t = time.perf_counter()
    digests, writer, k, size = [], None, 0, 0
    for sample, images in data:
        if writer is None:
            writer, size = make(out / shards.shard_name(0, k)), 0
        writer.add(sample, images)
        size += 1024 + sum(map(len, images))
        if size >= shard_bytes:
            digests.append(writer.close()["sha256"])
            writer, k = None, k + 1
    if writer is not None:
        digests.append(writer.close()["sha256"])
    return time.perf_counter() - t, digests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=3000)
    ap.add_argument("--shard-mb", type=float, default=128.0, help="shard size (the stage's default is 512)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="temp folder parent (local disk)")
    ap.add_argument("--methods", nargs="*", default=["hand_built", "project", "tarfile", "tarfile_16k", "wds", "raw"])
    args = ap.parse_args()
    hand_built, hand_built_from = load_hand_built()
    makers = {
        "hand_built": hand_built,
        "project": shards.ShardWriter,
        "tarfile": lambda p: TarfileWriter(p, copybufsize=1 << 22),
        "tarfile_16k": lambda p: TarfileWriter(p, copybufsize=None),
        "wds": WdsWriter,
        "raw": RawWriter,
    }
    contract = {"hand_built", "project", "tarfile", "tarfile_16k"}  # must write identical bytes
    t = time.perf_counter()
    data, payload = generate(args.samples)
    print(json.dumps({"what": "data", "samples": len(data), "images": sum(len(i) for _, i in data),
                      "payload_mb": round(payload / 1e6, 1), "mean_sample_kb": round(payload / len(data) / 1e3, 1),
                      "generate_s": round(time.perf_counter() - t, 2), "hand_built_from": hand_built_from}), flush=True)
    import webdataset  # noqa: F401  (import outside the timings)

    tmp = Path(tempfile.mkdtemp(prefix="tar_writer_bench.", dir=args.dir))
    times: dict[str, list[float]] = {m: [] for m in args.methods}
    digests: dict[str, list[str]] = {}
    try:
        for rep in range(args.repeat):
            for m in args.methods:
                out = tmp / m
                out.mkdir()
                os.sync()
                dt, digests[m] = write_all(makers[m], data, out, int(args.shard_mb * 1e6))
                times[m].append(dt)
                shutil.rmtree(out)
            print(json.dumps({"what": "round", "rep": rep, **{m: round(v[-1], 3) for m, v in times.items()}}),
                  flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ref = "hand_built" if "hand_built" in times else args.methods[0]
    mbs = {m: payload / 1e6 / min(v) for m, v in times.items()}
    rows = []
    for m, v in times.items():
        row = {"what": m, "best_s": round(min(v), 3), "median_s": round(statistics.median(v), 3),
               "mb_per_s": round(mbs[m], 1), "mb_per_s_median": round(payload / 1e6 / statistics.median(v), 1),
               "ratio_to_hand_built": round(mbs[m] / mbs[ref], 3),
               "same_bytes_as_hand_built": digests[m] == digests.get(ref), "shards": len(digests[m])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    mismatched = [m for m in contract & set(times) if digests[m] != digests.get(ref)]
    print(json.dumps({"what": "summary", "samples": len(data), "payload_mb": round(payload / 1e6, 1),
                      "shard_mb": args.shard_mb, "contract_mismatch": sorted(mismatched),
                      "python": platform.python_version(), "webdataset": version("webdataset"),
                      "cores": len(os.sched_getaffinity(0)), "cpu": _cpu(), "cpu_pressure_some_avg60": _pressure()}),
          flush=True)
    print(f"\n| method | MB/s (best of {args.repeat}) | MB/s (median) | ratio to hand_built | identical bytes |"
          "\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['mb_per_s']:,.0f} | {r['mb_per_s_median']:,.0f} | {r['ratio_to_hand_built']:.2f} "
              f"| {'yes' if r['same_bytes_as_hand_built'] else 'no'} |")
    if mismatched:
        raise SystemExit(f"methods that must write the project's bytes did not: {sorted(mismatched)}")


def _pressure() -> float | None:
    try:
        first = open("/proc/pressure/cpu").readline().split()
        return float(dict(kv.split("=") for kv in first[1:])["avg60"])
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
