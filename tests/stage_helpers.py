"""Helpers for tests that run stage tasks in-process through `StageTask` (the object Slurm
runs), so run directories, markers, failure records and resume behave as on the cluster."""

from __future__ import annotations

import re

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


def packed_rows(packer, limit=None, held=None) -> list[list]:
    """The sample ids of each row a StreamPacker hands out (at most `limit` rows); with `held`, the
    samples the packer held when each row left (its window plus the row)."""
    out = []
    while limit is None or len(out) < limit:
        row = packer.next_row()
        if row is None:
            break
        out.append([e.sid for e in row])
        if held is not None:
            held.append(packer.held + len(row))
    return out


def jsonl_row_starts(data: bytes) -> list[int]:
    """The byte offset of every non-blank line of a JSON-lines file (lines end at \\n, \\r\\n or
    \\r): the row numbers ingest gives its rows, worked out independently of its reader."""
    ends = list(re.finditer(rb"\r\n|\r|\n", data))
    starts = [0] + [m.end() for m in ends]
    lines = [data[a:(ends[k].start() if k < len(ends) else len(data))] for k, a in enumerate(starts)]
    return [a for a, line in zip(starts, lines) if line.strip()]
