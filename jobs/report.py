#!/usr/bin/env python
"""Write (or refresh) a run's curation report from its run directory, at any point of the run:

    python jobs/report.py runs/ain        # -> runs/ain/report/curation.md, curation.json, *.png
"""

import argparse
import sys

from ain.curate.report import write_report
from ain.rundir import RunDir


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    run = RunDir(p.parse_args().run_dir)
    result = write_report(run, run.load_config())
    print(f"wrote {run.root / 'report' / 'curation.md'} and {len(result['plots'])} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
