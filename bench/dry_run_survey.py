"""What the dry run's survey of the ingest sources costs on a login node, beside reading every row.

    .venv/bin/python bench/dry_run_survey.py [--rows 400000] [--dir /tmp] [--keep]

Generates (seed 0, bench/ingest_slices.py's rows: 1-2 turns of 40-600 characters) one source of
--rows rows three ways: JSON lines, a JSON document (a list, as LLaVA's llava_instruct_150k.json),
Parquet in row groups of 10,000 rows. For each it measures, in the same run:

  survey     ain.data.survey.survey_source: the row count (estimated from the first rows' size
             for JSON lines and JSON documents this big, Parquet's metadata) and the first 200
             rows normalised as ingest does (what the dry run calls)
  full read  every row read and parsed (iter_rows + load): what knowing the exact count and the
             averages over all rows would cost

seconds and bytes read (`rchar` of /proc/self/io), and the survey's row-count error. Prints one
JSON object per format, then a summary line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "bench"))

from ingest_slices import make_rows, rchar  # noqa: E402


def timed(fn) -> tuple[object, float, int]:
    before, t0 = rchar(), time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0, rchar() - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    from ain.data.config import IngestSource  # noqa: PLC0415
    from ain.data.readers import iter_rows  # noqa: PLC0415
    from ain.data.survey import survey_source  # noqa: PLC0415

    work = Path(tempfile.mkdtemp(prefix="dry-run-survey-", dir=args.dir))
    try:
        rows = make_rows(args.rows)
        files = {"jsonl": work / "rows.jsonl", "json": work / "rows.json", "parquet": work / "rows.parquet"}
        files["jsonl"].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        files["json"].write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        pq.write_table(pa.Table.from_pylist(rows), files["parquet"], row_group_size=10_000)
        del rows
        summary = {"rows": args.rows}
        for name, path in files.items():
            src = IngestSource(path=str(path))
            survey, s_seconds, s_bytes = timed(lambda src=src: survey_source(src))
            full, f_seconds, f_bytes = timed(lambda src=src: sum(1 for raw in iter_rows(src) if raw.load()))
            assert full == args.rows, (name, full)
            result = {"format": name, "file_bytes": path.stat().st_size, "rows_how": survey.rows_how,
                      "survey": {"seconds": round(s_seconds, 3), "bytes_read": s_bytes, "rows": survey.rows},
                      "full_read": {"seconds": round(f_seconds, 3), "bytes_read": f_bytes},
                      "rows_error": round(abs(survey.rows - args.rows) / args.rows, 4),
                      "seconds_ratio_survey_vs_full": round(s_seconds / f_seconds, 4)}
            print(json.dumps(result), flush=True)
            summary[name] = {k: result[k] for k in ("seconds_ratio_survey_vs_full", "rows_error")}
            summary[name]["survey_seconds"] = result["survey"]["seconds"]
        print(json.dumps({"summary": summary}), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
