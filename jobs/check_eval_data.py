#!/usr/bin/env python
"""Check one row of every benchmark dataset the config selects, before submitting a GPU job:

    python jobs/check_eval_data.py recipe=ain                          # hub (streams one row each)
    python jobs/check_eval_data.py recipe=ain eval.data_root=/data/eval   # a local mirror
    python jobs/check_eval_data.py recipe=ain eval.datasets=[seed_en,mathvista_en]

Each dataset goes through the eval stage's own code (column roles, row filter, prompt builder,
image decoding); a failure names the dataset, the source and the reason. Exit status 1 if any fails.
"""

import argparse
import sys

from ain.cli import config_main
from ain.config import RunConfig
from ain.eval.check import check_dataset
from ain.eval.registry import eval_units


def check(cfg: RunConfig, args: argparse.Namespace) -> int:
    specs = {s.name: s for unit in eval_units(cfg.eval) for s in unit.datasets}
    results = [check_dataset(spec, cfg.eval.data_root) for spec in specs.values()]
    for r in results:
        print(r.line(), flush=True)
    failed = [r.name for r in results if not r.ok]
    print(f"{len(results) - len(failed)}/{len(results)} datasets ok" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    # Only the eval section is checked (a later stages=[...] overrides that); data need not be staged yet.
    sys.exit(config_main(__doc__, check, extra=["stages=[eval]"], check_paths=False))
