#!/usr/bin/env python
"""Render the multi-node stage (training) as a plain sbatch script (srun + torchrun), for those who prefer
`sbatch` to `jobs/submit_train.py`. The script comes from the same config as the submitit path.

    python jobs/render_sbatch.py recipe=ain cluster=slurm            # writes runs/ain/train.sbatch
    sbatch runs/ain/train.sbatch                                     # after the pack stage is done

The run directory is created (config frozen) so the job finds its config; the earlier stages
still come from `python jobs/submit_train.py ... --only ingest,...,pack` or a previous run.
"""

import argparse
import sys

from ain.cli import config_main
from ain.config import RunConfig
from ain.config_base import ConfigError
from ain.slurm.launcher import resolve_run_dir
from ain.slurm.sbatch import multi_node_stage, render_torchrun_sbatch
from ain.slurm.snapshot import snapshot_code


def render(cfg: RunConfig, args: argparse.Namespace) -> int:
    stage = multi_node_stage(cfg)
    if stage is None:
        raise ConfigError(f"stages: none of {cfg.stages} is a multi-node stage (train) to render")
    run = resolve_run_dir(cfg)
    with run.lock():
        run.freeze(cfg, force=args.force, argv=sys.argv)
    run.stage(stage).create()
    code_dir = snapshot_code(run.root.resolve())  # the job runs this copy, not the checkout
    path = run.root / f"{stage}.sbatch"
    path.write_text(render_torchrun_sbatch(cfg, run.root, python=sys.executable, code_dir=code_dir, stage=stage))
    print(f"wrote {path}\nsubmit it with: sbatch {path}")
    return 0


if __name__ == "__main__":
    sys.exit(config_main(__doc__, render, flags=["--force"]))
