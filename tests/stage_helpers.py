"""Helpers for tests that run stage tasks in-process through `StageTask` (the object Slurm
runs), so run directories, markers, failure records and resume behave as on the cluster."""

from __future__ import annotations

from ain.config import RunConfig
from ain.rundir import RunDir
from ain.slurm.task import StageTask


def ingested_run(cfg: RunConfig) -> RunDir:
    """Freeze `cfg` into its run directory, create every stage's folders and run all ingest
    tasks: a run ready for the stages after ingest."""
    run = RunDir(cfg.run_dir)
    run.freeze(cfg, argv=["test"])
    for name in cfg.stages:
        run.stage(name).create()
    for i in range(cfg.ingest.num_tasks):
        StageTask(str(run.root), "ingest")(i)
    return run
