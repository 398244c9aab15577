"""Pack-stage throughput against a raw sequential copy of the same bytes, and shard reading.

    OMP_NUM_THREADS=1 .venv/bin/python bench/pack_throughput.py [--mb 300] [--repeat 5] [--dir /tmp]

Generates (seed 0) a run directory in a temp folder under --dir (put it on the disk the runs
live on): an ingest image store of random-bytes "images" of 50-500 KB (named <sha256>.<ext>
like the real store; pack never decodes them), 1-3 per sample (10% text-only), and a mix file
of samples with English or Arabic turns. Then, round by round (best of --repeat):

  - copy:          each sample's JSON and image files, in mix order, read and appended to one
                   file with shutil.copyfileobj, then fsync: "read these bytes, write them once,
                   durably". Single-threaded.
  - pack:          `ain.data.pack.run_pack_task` (one task, 64 MB shards: tar headers, sha256
                   while writing on a second thread, .partial + fsync + rename per shard,
                   manifest commits) on 2 cores, as the stage requests (cpus_per_task=2).
  - pack_1core:    the same pinned to one core (the hashing thread then shares it).
  - wds_tarwriter: webdataset's TarWriter writing through a file object that hashes what it
                   writes, with the same .partial/fsync/rename: the library alternative.
  - read:          `ain.data.shards.iter_samples` over the packed shards on one core, checksum
                   verification on and off (warm page cache): samples/s and MB/s.

Payload MB = JSON + image bytes, the same for every method; ratio = method MB/s / copy MB/s
(goal for pack: >= 0.7). Inputs are read from a warm page cache by every method (they were just
written); outputs are fsynced by every method; os.sync() runs before each measurement so one
round's deletions and dirty pages are not flushed inside the next. Prints one JSON object per
line, the last a summary. The temp folder is removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

EN = ["What is shown in this chart?", "Describe the image in detail.", "Which year had the highest sales?",
      "The figure shows a steady increase in monthly revenue from January to June.",
      "A man is holding a red umbrella near the river while it is raining."]
AR = ["ما الذي يظهر في هذا الرسم البياني؟", "صف الصورة بالتفصيل.", "أي سنة كانت فيها المبيعات الأعلى؟",
      "يُظهر الشكل زيادة مطردة في الإيرادات الشهرية من يناير إلى يونيو.",
      "رجل يحمل مظلة حمراء بالقرب من النهر بينما تمطر."]
DOMAINS = ["general", "charts", "ocr", "medical", "remote_sensing", "video", "cultural", "agriculture"]


def generate(root: Path, target_mb: float, seed: int = 0) -> tuple[list[dict], int]:
    """An ingest store and a mix of ~target_mb payload; returns (rows, payload bytes)."""
    from ain.rundir import RunDir

    rng = random.Random(seed)
    run = RunDir(root)
    store = run.stage("ingest").create().out / "images"
    rows, payload, i = [], 0, 0
    while payload < target_mb * 1e6:
        lang = "ar" if rng.random() < 0.4 else "en"
        n_images = 0 if rng.random() < 0.1 else rng.choice([1, 1, 1, 2, 3])
        names = []
        for _ in range(n_images):
            data = rng.randbytes(rng.randint(50_000, 500_000))
            name = f"{hashlib.sha256(data).hexdigest()}.{rng.choice(['png', 'jpg', 'jpg', 'webp'])}"
            path = store / name[:2] / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            names.append(name)
            payload += len(data)
        text = AR if lang == "ar" else EN
        user = "<image>\n" * n_images + " ".join(rng.choice(text) for _ in range(rng.randint(1, 3)))
        row = {"id": f"bench_{lang}-{i}", "images": names, "language": lang, "source": f"bench_{lang}",
               "domain": rng.choice(DOMAINS), "authentic": rng.random() < 0.5,
               "turns": [{"role": "user", "content": user},
                         {"role": "assistant", "content": " ".join(rng.choice(text) for _ in range(rng.randint(2, 8)))}],
               "origin": {"file": "bench.jsonl", "row": i}}
        if lang == "ar" and rng.random() < 0.6:
            row["translation_of"] = f"bench_en-{i}"
            row["verify"] = {"labse": round(rng.uniform(0.8, 1), 3), "bleu": round(rng.uniform(60, 90), 1)}
        payload += len(json.dumps(row, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        rows.append(row)
        i += 1
    mix = run.stage("mix").create()
    (mix.out / "mixed-00000.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    mix.write_marker(0, {"items": len(rows)})
    os.sync()  # the generator's dirty pages must not be flushed during a measurement
    return rows, payload


def store_path(root: Path, name: str) -> Path:
    return root / "stages" / "ingest" / "out" / "images" / name[:2] / name


def raw_copy(root: Path, rows: list[dict], dest: Path) -> float:
    t = time.perf_counter()
    with open(dest, "wb") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False, sort_keys=True).encode("utf-8"))
            for name in row["images"]:
                with open(store_path(root, name), "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())
    return time.perf_counter() - t


def project_pack(root: Path) -> tuple[float, dict]:
    import ain.data.pack as pack
    from ain.config import RunConfig
    from ain.data.config import PackConfig
    from ain.rundir import RunDir
    from ain.stages import TaskContext

    stage = RunDir(root).stage("pack")
    shutil.rmtree(stage.root, ignore_errors=True)
    stage.create()
    os.sync()
    cfg = RunConfig(stages=["ingest", "mix", "pack"], pack=PackConfig(target_shard_mb=64, num_tasks=1))
    ctx = TaskContext(cfg=cfg, run=RunDir(root), stage="pack", index=0, num_tasks=1,
                      log=logging.getLogger("bench"))
    t = time.perf_counter()
    stats = pack.run_pack_task(ctx)
    return time.perf_counter() - t, stats


class _HashingFile:
    """A file that hashes what is written to it (the manifest needs each shard's sha256)."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "wb")
        self.name = str(path)
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def wds_pack(root: Path, rows: list[dict], dest: Path, shard_bytes: int = 64_000_000) -> float:
    """webdataset's TarWriter (tarfile in stream mode underneath), hashing what it writes,
    with the .partial/fsync/rename the project needs around it: the library alternative."""
    import webdataset as wds

    t = time.perf_counter()
    k, writer, f, size = 0, None, None, 0

    def close():
        writer.close()
        f.flush()
        os.fsync(f.f.fileno())
        f.f.close()
        f.sha.hexdigest()
        os.replace(f.name, f.name[:-len(".partial")])

    for row in rows:
        if writer is None:
            f = _HashingFile(dest / f"wds-{k:05d}.tar.partial")
            writer, size = wds.TarWriter(f, encoder=False, mtime=0), 0
        sample = {"__key__": row["id"], "json": json.dumps(row, ensure_ascii=False, sort_keys=True).encode("utf-8")}
        for i, name in enumerate(row["images"]):
            sample[f"{i}.{name.rsplit('.', 1)[1]}"] = store_path(root, name).read_bytes()
        size += writer.write(sample)
        if size >= shard_bytes:
            close()
            writer, k = None, k + 1
    if writer is not None:
        close()
    return time.perf_counter() - t


def read_all(out: Path, verify: bool) -> tuple[float, int, int]:
    from ain.data.shards import iter_samples

    t = time.perf_counter()
    n = nbytes = 0
    for sample, members in iter_samples(out, verify=verify):  # noqa: B007
        n += 1
        nbytes += sum(len(b) for b in members.values())
    return time.perf_counter() - t, n, nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=300.0, help="payload to pack (MB)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="temp folder parent (same disk as runs)")
    ap.add_argument("--no-wds", action="store_true", help="skip the webdataset TarWriter comparison")
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    one, two = {cores[0]}, set(cores[:2])  # pack.resources.cpus_per_task is 2
    import ain.data.pack  # noqa: F401  (imports outside the timings)
    if not args.no_wds:
        import webdataset  # noqa: F401

    tmp = Path(tempfile.mkdtemp(prefix="pack_bench.", dir=args.dir))
    try:
        root = tmp / "run"
        t = time.perf_counter()
        rows, payload = generate(root, args.mb)
        n_images = sum(len(r["images"]) for r in rows)
        print(json.dumps({"what": "data", "samples": len(rows), "images": n_images, "payload_mb": round(payload / 1e6, 1),
                          "mean_sample_kb": round(payload / len(rows) / 1e3, 1),
                          "generate_s": round(time.perf_counter() - t, 2)}), flush=True)
        times: dict[str, list[float]] = {}
        stats: dict = {}

        def timed(name: str, affinity: set[int], fn) -> None:
            os.sched_setaffinity(0, affinity)  # this thread, and threads it starts
            # The previous round's deletions (ext4 here is mounted with `discard`) and dirty
            # pages go to disk now, not inside the next measurement's first fsync.
            os.sync()
            times.setdefault(name, []).append(fn())

        for rep in range(args.repeat):
            timed("copy", two, lambda: raw_copy(root, rows, tmp / "copy.bin"))
            (tmp / "copy.bin").unlink()
            for name, affinity in (("pack", two), ("pack_1core", one)):
                def run_pack():
                    dt, st = project_pack(root)
                    stats.update(st)
                    return dt
                timed(name, affinity, run_pack)
            if not args.no_wds:
                wdir = tmp / "wds"
                wdir.mkdir()
                timed("wds_tarwriter", two, lambda: wds_pack(root, rows, wdir))  # noqa: B023
                shutil.rmtree(wdir)
            print(json.dumps({"what": "round", "rep": rep, **{k: round(v[-1], 3) for k, v in times.items()}}),
                  flush=True)
        mbs = {k: payload / 1e6 / min(v) for k, v in times.items()}
        for k, v in times.items():
            print(json.dumps({"what": k, "cores": 1 if k == "pack_1core" else len(two), "best_s": round(min(v), 3),
                              "median_s": round(statistics.median(v), 3), "mb_per_s": round(mbs[k], 1),
                              "ratio_to_copy": round(mbs[k] / mbs["copy"], 3)}), flush=True)
        os.sched_setaffinity(0, one)
        out = root / "stages" / "pack" / "out"
        reads = {}
        for verify in (True, False):
            dt, n, nbytes = min(read_all(out, verify) for _ in range(max(1, args.repeat - 1)))
            assert n == len(rows), (n, len(rows))
            reads[verify] = {"samples_per_s": round(n / dt, 1), "mb_per_s": round(nbytes / 1e6 / dt, 1)}
            print(json.dumps({"what": "read", "cores": 1, "verify": verify, "s": round(dt, 3), **reads[verify]}),
                  flush=True)
        print(json.dumps({
            "what": "summary", "payload_mb": round(payload / 1e6, 1), "samples": len(rows), "shards": stats["shards"],
            "shard_mb": round(stats["bytes"] / 1e6, 1), "copy_mb_per_s": round(mbs["copy"], 1),
            "pack_mb_per_s": round(mbs["pack"], 1), "ratio": round(mbs["pack"] / mbs["copy"], 3), "goal": 0.7,
            "ratio_of_medians": round(statistics.median(times["copy"]) / statistics.median(times["pack"]), 3),
            "pack_1core_ratio": round(mbs["pack_1core"] / mbs["copy"], 3),
            "wds_tarwriter_ratio": round(mbs["wds_tarwriter"] / mbs["copy"], 3) if "wds_tarwriter" in mbs else None,
            "read_verified_samples_per_s": reads[True]["samples_per_s"],
            "read_unverified_samples_per_s": reads[False]["samples_per_s"],
            "python": platform.python_version(), "webdataset": version("webdataset"), "cpu": _cpu(),
            "cores": len(cores), "cpu_pressure_some_avg60": _pressure()}), flush=True)
    finally:
        os.sched_setaffinity(0, set(cores))
        shutil.rmtree(tmp, ignore_errors=True)


def _pressure() -> float | None:
    """Share of the last minute in which some runnable task waited for a CPU (Linux PSI): a
    busy shared machine makes every figure here noisier."""
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
