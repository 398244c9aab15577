"""Bytes each ingest task reads: contiguous slices beside the round-robin split, in the same run.

    .venv/bin/python bench/ingest_slices.py [--rows 400000] [--tasks 8] [--dir /tmp] [--keep]

Generates (seed 0) one source of --rows conversation rows (1-2 turns of 40-600 characters, no
images) twice: as JSON lines and as Parquet in row groups of 10,000 rows. For each format and each
of --tasks tasks it reads that task's rows two ways through ain.data.readers.iter_rows:

  slices       iter_rows(src, part=Slice(i, n)): what the ingest stage does now
  round-robin  iter_rows(src) keeping every n-th row: what it did before (every task reads the
               whole source and skips the rows of the others)

and counts the bytes the process read (`rchar` of /proc/self/io, which counts read() calls
whether the page cache answers them or the disk: pyarrow's reads included) and the seconds.
Rows are only iterated (JSON lines are not parsed, as a task skipping rows does not), so the
figures are the reading itself. Prints one JSON object per format, then a summary line.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

WORDS = ("the chart shows a steady increase in revenue over six months while costs stay flat and the "
         "margin improves every quarter with one small dip in April").split()


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def make_rows(n: int) -> list[dict]:
    rnd = random.Random(0)

    def text() -> str:
        return " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(8, 100)))

    rows = []
    for i in range(n):
        conv = []
        for _ in range(rnd.randint(1, 2)):
            conv += [{"from": "human", "value": text()}, {"from": "gpt", "value": text()}]
        rows.append({"id": f"r{i}", "conversations": conv})
    return rows


def measure(src, tasks: int) -> dict:
    from ain.data.readers import Slice, iter_rows  # noqa: PLC0415

    out: dict = {}
    for mode in ("slices", "round-robin"):
        per_task, seconds, rows = [], [], 0
        for i in range(tasks):
            before, t0 = rchar(), time.perf_counter()
            if mode == "slices":
                rows += sum(1 for _ in iter_rows(src, part=Slice(i, tasks)))
            else:
                rows += sum(1 for k, _ in enumerate(iter_rows(src)) if k % tasks == i)
            seconds.append(time.perf_counter() - t0)
            per_task.append(rchar() - before)
        out[mode] = {"rows": rows, "bytes_per_task_min": min(per_task), "bytes_per_task_max": max(per_task),
                     "bytes_total": sum(per_task), "seconds_per_task_max": round(max(seconds), 3),
                     "seconds_total": round(sum(seconds), 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    from ain.data.config import IngestSource  # noqa: PLC0415

    work = Path(tempfile.mkdtemp(prefix="ingest-slices-", dir=args.dir))
    try:
        rows = make_rows(args.rows)
        jsonl = work / "rows.jsonl"
        jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        parquet = work / "rows.parquet"
        pq.write_table(pa.Table.from_pylist(rows), parquet, row_group_size=10_000)
        summary = {"rows": args.rows, "tasks": args.tasks}
        for name, src, path in (("jsonl", IngestSource(path=str(jsonl)), jsonl),
                                ("parquet", IngestSource(path=str(parquet), format="parquet"), parquet)):
            size = path.stat().st_size
            result = {"format": name, "file_bytes": size, **measure(src, args.tasks)}
            assert result["slices"]["rows"] == result["round-robin"]["rows"] == args.rows, result
            for mode in ("slices", "round-robin"):
                result[mode]["read_per_file_byte"] = round(result[mode]["bytes_total"] / size, 3)
            result["bytes_ratio_slices_vs_round_robin"] = round(
                result["slices"]["bytes_total"] / result["round-robin"]["bytes_total"], 4)
            result["slowest_task_speedup"] = round(
                result["round-robin"]["seconds_per_task_max"] / result["slices"]["seconds_per_task_max"], 2)
            print(json.dumps(result), flush=True)
            summary[name] = {k: result[k] for k in ("bytes_ratio_slices_vs_round_robin", "slowest_task_speedup")}
            summary[name]["read_per_file_byte"] = {m: result[m]["read_per_file_byte"] for m in ("slices", "round-robin")}
        print(json.dumps({"summary": summary}), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
