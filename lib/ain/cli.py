"""Shared command-line handling of the jobs/ entry points: key=value overrides plus a few flags.

Entry points stay thin: parse, load and validate the config, launch, print, exit.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ain.config import describe_fields, load_config
from ain.config_base import ConfigError
from ain.slurm.launcher import Launcher, StageFailed, describe, resolve_run_dir, wait_for
from ain.stages import select_stages

HELP_EPILOG = "Overrides are key=value (e.g. recipe=ain cluster=slurm ingest.num_tasks=8). Keys:\n"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=HELP_EPILOG + "\n".join(f"  {k} = {d}\n      {doc}"
                                                               for k, d, doc in describe_fields()))
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--dry-run", action="store_true", help="print the DAG, arrays, resources and sbatch text; submit nothing")
    p.add_argument("--force", action="store_true", help="accept config changes against the frozen config.yaml")
    p.add_argument("--wait", action="store_true", help="with Slurm: block until the submitted jobs have left the queue")
    p.add_argument("--only", action="append", metavar="STAGE[,STAGE]",
                   help="submit only these stages (the stages before them must be complete or queued)")
    p.add_argument("--from", dest="start", metavar="STAGE", help="submit this stage and every later one")
    return p


def submit_main(description: str, argv: Sequence[str] | None = None, extra: Sequence[str] = ()) -> int:
    args = parser(description).parse_args(argv)
    overrides = [*extra, *args.overrides]
    try:
        if args.dry_run:
            return _dry_run(overrides, args)
        cfg = load_config(overrides)
        run = resolve_run_dir(cfg)
        launcher = Launcher(cfg, run, select_stages(cfg, args.only, args.start))
        print(f"run directory: {run.root.resolve()}  (executor: {launcher.kind})", flush=True)
        report = launcher.launch(force=args.force, argv=sys.argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(describe(report))
    if launcher.kind == "slurm":
        if args.wait:
            wait_for(run, report, poll_s=cfg.cluster.poll_s)
            print("all jobs left the queue")
        print(f"follow it with: python jobs/status.py {run.root}")
    else:
        print(f"finished; outputs under {run.root.resolve()}/stages")
    return 0


def _dry_run(overrides: list[str], args: argparse.Namespace) -> int:
    """Print the plan. Missing inputs (data not staged yet, models not downloaded) do not hide it:
    the plan is printed from the config without the path checks, followed by what a real launch
    would refuse, and the exit status is 2."""
    try:
        cfg, refusal = load_config(overrides), None
    except ConfigError as exc:
        cfg, refusal = load_config(overrides, check_paths=False), exc  # a non-path mistake raises here
    launcher = Launcher(cfg, resolve_run_dir(cfg), select_stages(cfg, args.only, args.start))
    print(launcher.dry_run())
    if refusal is None:
        return 0
    print(f"\nerror: a launch now would be refused: {refusal}", file=sys.stderr)
    return 2
