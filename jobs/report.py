#!/usr/bin/env python
"""Write (or refresh) a run's curation report from its run directory, at any point of the run:

    python jobs/report.py runs/ain        # -> runs/ain/report/curation.md, curation.json, *.png
    python jobs/report.py runs/<sweep>    # a sweep -> runs/<sweep>/report/sweep.md, sweep_results.json
"""

import argparse
import sys

from ain.config_base import ConfigError
from ain.curate.report import write_report
from ain.rundir import RunDir
from ain.sweep import is_sweep, write_sweep_report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    run = RunDir(p.parse_args().run_dir)
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
    result = write_report(run, cfg)
    print(f"wrote {run.root / 'report' / 'curation.md'} and {len(result['plots'])} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
