#!/usr/bin/env python
"""Write (or refresh) a run's curation report from its run directory, at any point of the run:

    python jobs/report.py runs/ain        # -> runs/ain/report/curation.md, curation.json, *.png,
                                          #    review/index.html (the review site), lineage index
    python jobs/report.py runs/<sweep>    # a sweep -> runs/<sweep>/report/sweep.md, sweep_results.json

Human audit of the safety judges:

    python jobs/report.py runs/ain --audit-sheet [--per-stratum 20] [--sheet PATH]
        # a stratified sample (images and text turns; flagged per category, and unflagged) as CSV
        # (default runs/ain/report/audit/sheet.csv) with an empty verdict column: write safe or unsafe
        # (and, for a missed unsafe item, reviewer_category O1..O9)
    python jobs/report.py runs/ain --audit-results sheet.csv
        # per-category false-positive and false-negative rates with Wilson 95% intervals, added to
        # curation.md/json (kept in report/audit.json)
"""

import argparse
import sys
from pathlib import Path

from ain.config_base import ConfigError
from ain.curate.report import AuditSheetError, record_audit, write_audit_sheet, write_report
from ain.rundir import RunDir
from ain.sweep import is_sweep, write_sweep_report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--audit-sheet", action="store_true", help="write a stratified audit sheet (CSV) of safety verdicts")
    p.add_argument("--per-stratum", type=int, default=20, help="items per stratum of the audit sheet (default 20)")
    p.add_argument("--sheet", type=Path, help="where --audit-sheet writes (default <run>/report/audit/sheet.csv)")
    p.add_argument("--audit-results", type=Path, metavar="SHEET", help="read a reviewed audit sheet into the report")
    args = p.parse_args()
    run = RunDir(args.run_dir)
    if is_sweep(run.root):
        result = write_sweep_report(run.root)
        print(f"wrote {run.root / 'report' / 'sweep.md'} ({len(result['variants'])} variants)")
        return 0
    if not run.root.is_dir():
        print(f"error: {run.root}: no such directory; give a run directory (runs/<name>)", file=sys.stderr)
        return 2
    try:
        cfg = run.load_config()  # ConfigError: not a run directory (no config.yaml), or an unreadable one
    except ConfigError as exc:
        print(f"error: {exc}; give a run directory (runs/<name>, the one with config.yaml)", file=sys.stderr)
        return 2
    except Exception as exc:  # a config.yaml that is not this project's
        print(f"error: {run.config_path}: cannot read it as a run's config: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 2
    if args.audit_sheet:
        try:
            sheet = write_audit_sheet(run, cfg, args.sheet, args.per_stratum)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        strata = ", ".join(f"{s} {n}/{total}" for s, (n, total) in sheet["strata"].items())
        print(f"wrote {sheet['path']}: {sheet['rows']} items ({strata}); fill the verdict column, then "
              f"python jobs/report.py {run.root} --audit-results {sheet['path']}")
        return 0
    if args.audit_results:
        try:
            audit = record_audit(run, cfg, args.audit_results)
        except AuditSheetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"read {audit['reviewed']} reviewed items; rates added to {run.root / 'report' / 'curation.md'}")
        return 0
    result = write_report(run, cfg)
    print(f"wrote {run.root / 'report' / 'curation.md'}, {len(result['plots'])} plots and the review site "
          f"{result['review']['dir']}/index.html ({result['review']['traces']} traces)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
