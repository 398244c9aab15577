"""Shared fixtures.

`slurm_cluster`: the Slurm tests run against a real two-node cluster on this machine
(tests/cluster/up.sh). When it cannot be started (not root, no packages) they skip with the
reason; with AIN_REQUIRE_SLURM=1 (set by CI) that skip becomes a failure.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ain.slurm import scheduler

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def chdir_root(monkeypatch):
    """Config paths in recipes are relative to the project root."""
    monkeypatch.chdir(ROOT)
    return ROOT


@pytest.fixture(scope="session")
def slurm_cluster():
    reason = ""
    if not scheduler.slurm_available():
        if os.geteuid() == 0:
            proc = subprocess.run(["bash", str(ROOT / "tests/cluster/up.sh")], capture_output=True, text=True)
            reason = proc.stdout[-2000:] + proc.stderr[-2000:]
        else:
            reason = "not root: cannot start tests/cluster/up.sh"
    if not scheduler.slurm_available():
        message = f"no Slurm cluster on this machine: {reason.strip() or 'scontrol ping failed'}"
        if os.environ.get("AIN_REQUIRE_SLURM") == "1":
            pytest.fail(message + " (AIN_REQUIRE_SLURM=1)")
        pytest.skip(message)
    return True


