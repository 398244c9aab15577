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

from ain.config import load_config
from ain.config_base import ConfigError
from ain.eval.check import check_dataset
from ain.eval.registry import eval_units


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="key=value config overrides (as for submit_eval.py)")
    args = p.parse_args()
    try:
        cfg = load_config(["stages=[eval]", *args.overrides], check_paths=False)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    specs = {s.name: s for unit in eval_units(cfg.eval) for s in unit.datasets}
    results = [check_dataset(spec, cfg.eval.data_root) for spec in specs.values()]
    for r in results:
        print(r.line(), flush=True)
    failed = [r.name for r in results if not r.ok]
    print(f"{len(results) - len(failed)}/{len(results)} datasets ok" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
