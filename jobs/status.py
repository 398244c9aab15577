#!/usr/bin/env python
"""Show what a run is doing: one row per stage, per-source counts of stages that read inputs
(with a warning for a source that gave no sample), then failed tasks with their log tails.

    python jobs/status.py runs/smoke
    python jobs/status.py runs/ain --watch          # refresh every 10 s
    python jobs/status.py runs/ain --json           # machine-readable
    python jobs/status.py runs/authentic_share      # a sweep: variants x stages
"""

import argparse
import dataclasses
import json
import sys
import time

from rich.console import Console
from rich.live import Live

from ain.config_base import ConfigError
from ain.rundir import RunDir
from ain.slurm.status import collect, render
from ain.sweep import is_sweep, render_sweep_status, sweep_status


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--watch", action="store_true", help="refresh until interrupted")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between refreshes with --watch")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("--lines", type=int, default=15, help="log lines shown per failed task")
    args = p.parse_args()
    if is_sweep(args.run_dir):
        grid = sweep_status(args.run_dir)
        if args.json:
            print(json.dumps(grid, indent=1))
        else:
            Console(width=None if sys.stdout.isatty() else 200).print(render_sweep_status(args.run_dir, grid))
        return 0
    run = RunDir(args.run_dir)
    try:
        statuses = collect(run, tail_lines=args.lines)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([dataclasses.asdict(s) | {"state": s.state, "throughput": s.throughput, "eta_s": s.eta_s,
                                                   "empty_sources": s.empty_sources}
                          for s in statuses], default=str, indent=1))
        return 0
    console = Console(width=None if sys.stdout.isatty() else 160)
    if not args.watch:
        console.print(render(run, statuses))
        return 1 if any(s.problems for s in statuses) else 0
    with Live(render(run, statuses), console=console, refresh_per_second=1) as live:
        try:
            while True:
                time.sleep(args.interval)
                live.update(render(run, collect(run, tail_lines=args.lines)))
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
