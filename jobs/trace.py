#!/usr/bin/env python
"""One sample's whole history in a run: source row, normalisation, every translation attempt with
its scores, the safety verdicts of its images and turns, the mix decision, its shard and member
names, and the training steps and ranks that consumed it. A translation ("<id>-ar") and its
English original trace together; so do dropped, rejected and quarantined rows ("<source>-<row>").

    python jobs/trace.py runs/ain en_llava-12                       # text
    python jobs/trace.py runs/ain en_llava-12-ar --json             # the same as JSON
    python jobs/trace.py runs/ain shard-003-00017.tar/en_llava-12   # by shard and member key
    python jobs/trace.py runs/ain en_llava-12 --raw                 # also re-read the source row
    python jobs/trace.py runs/ain --build-index                     # (re)index changed stages

A trace is a lookup in runs/<name>/lineage/ (built by the report stage, refreshed by
--build-index, e.g. after training); files written since are scanned and the trace says so.
--raw re-reads the row from the ingest source (ain.data.readers.read_row: JSON lines seek to the
row's byte offset and Parquet reads one row group; a JSON document is parsed whole).
"""

import argparse
import json
import sys
from typing import Any

from ain.lineage import LineageError, build_index, format_trace, trace
from ain.rundir import RunDir


def _plain(value: Any) -> Any:
    """A source row as JSON can show it (parquet rows may embed image bytes)."""
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def raw_reader(run: RunDir):
    """sample -> its row as the ingest source has it, read with ingest's own readers (the entry
    point composes the lineage layer with ain.data; lib/ain/lineage.py imports no component)."""
    from ain.data.readers import read_row, source_name

    sources = {source_name(s): s for s in run.load_config().ingest.sources}

    def read(sample: dict) -> Any:
        src = sources.get(sample.get("source"))
        if src is None:
            raise LookupError(f"source {sample.get('source')!r} is not in the run's ingest.sources")
        row = sample["origin"]["row"]
        raw = read_row(src, row)
        if raw is not None:
            return _plain(raw.load())
        raise LookupError(f"{src.path} has no row {row} now (the file changed since ingest?)")

    return read


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("sample", nargs="?", help="a sample id (en_llava-12, en_llava-12-ar, bad_rows-3) or <shard>/<key>")
    p.add_argument("--json", action="store_true", help="print the trace as JSON")
    p.add_argument("--raw", action="store_true", help="re-read the sample's row from its ingest source")
    p.add_argument("--build-index", action="store_true", help="index the stages whose outputs changed")
    p.add_argument("--force", action="store_true", help="with --build-index: rebuild every stage's index")
    p.add_argument("--no-index", action="store_true", help="scan every file instead of using the index")
    args = p.parse_args()
    run = RunDir(args.run_dir)
    if not run.config_path.exists():
        print(f"error: {run.root}: not a run directory (no config.yaml); give runs/<name>", file=sys.stderr)
        return 2
    if args.build_index:
        summary = build_index(run, force=args.force)
        for stage, s in summary.items():
            state = f"not indexed: {s['error']}" if "error" in s else \
                f"rebuilt in {s['seconds']:.1f}s" if s["rebuilt"] else "unchanged"
            print(f"{stage}: {s['files']} files, {s['entries']} entries, {state}")
        print(f"index: {run.root / 'lineage'}")
        if not args.sample:
            return 0
    if not args.sample:
        p.error("give a sample id (or --build-index)")
    try:
        t = trace(run, args.sample, use_index=not args.no_index, raw_reader=raw_reader(run) if args.raw else None)
    except LineageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(t, ensure_ascii=False, indent=1))
    else:
        sys.stdout.write(format_trace(t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
