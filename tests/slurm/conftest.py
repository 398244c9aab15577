"""Helpers for the tests that run against the real two-node cluster (see tests/conftest.py)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from ain.config import load_config
from ain.rundir import RunDir
from ain.slurm.launcher import Launcher, wait_for

ROOT = Path(__file__).resolve().parents[2]


class SlurmRun:
    """Launch a run on the test cluster through the same API the CLI uses."""

    def __init__(self, tmp_path: Path, overrides: list[str]) -> None:
        self.overrides = ["cluster=localslurm", f"runs_root={tmp_path}", *overrides]

    def config(self, *extra: str):
        return load_config([*self.overrides, *extra])

    def launch(self, *extra: str, force: bool = False):
        cfg = self.config(*extra)
        run = RunDir(cfg.run_dir)
        report = Launcher(cfg, run).launch(force=force, argv=["test"])
        return run, report

    def wait(self, run: RunDir, timeout_s: float = 240) -> None:
        wait_for(run, [], timeout_s=timeout_s, poll_s=0.5)


@pytest.fixture
def slurm_run(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipe paths are relative to the project root
    return lambda *overrides: SlurmRun(tmp_path, list(overrides))


def squeue_running(job_id: str) -> int:
    out = subprocess.run(["squeue", "-h", "-r", "-j", job_id, "-t", "RUNNING", "-o", "%i"],
                         capture_output=True, text=True).stdout
    return len([line for line in out.splitlines() if line.strip()])


def wait_until(predicate, timeout_s: float, what: str, poll_s: float = 0.25):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
