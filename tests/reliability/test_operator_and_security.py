"""Operator mistakes (each a clear error before anything is submitted) and security properties
(no shell built from data, a private run directory, no API key written anywhere)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ain.cli import submit_main
from ain.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]
CANARY = ["recipe=canary", "cluster=local", "cluster.executor=local", "canary.num_tasks=1", "canary.items_per_task=20",
          "canary.seconds_per_item=0.2"]


def submit(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "jobs/submit_train.py", *args], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=120)


def test_two_launches_of_one_run_at_once_one_wins(tmp_path):
    args = [*CANARY, f"runs_root={tmp_path}", "name=twice"]
    first = subprocess.Popen([sys.executable, "jobs/submit_train.py", *args], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    run = RunDir(tmp_path / "twice")
    try:
        deadline = time.time() + 60
        while not run.events() and time.time() < deadline:  # the first launch holds the lock and runs
            time.sleep(0.1)
        assert run.events(), "first launch did not start"
        second = submit(*args)
        assert second.returncode == 2, second.stderr
        assert "another launch of this run is in progress" in second.stderr
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.kill()
    submits = [e for e in run.events() if e["kind"] == "submit"]
    assert len(submits) == 1 and run.stage("canary").done_indices() == {0}


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only tmpfs needs root")
def test_runs_root_without_write_permission_is_a_clear_error(tmp_path):
    # As root, file modes do not stop writes: a read-only mount does.
    ro = tmp_path / "ro"
    ro.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount: {proc.stderr}")
    try:
        result = submit(*CANARY, f"runs_root={ro}")
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        assert str(ro) in result.stderr and "runs_root" in result.stderr and "Read-only" in result.stderr
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_missing_model_path_is_refused_before_a_run_directory_exists(tmp_path, chdir_root, capsys):
    code = submit_main("test", ["recipe=smoke", f"runs_root={tmp_path}", "stages=[ingest,translate]",
                                f"translate.translator.model={tmp_path}/no-model"])
    assert code == 2
    err = capsys.readouterr().err
    assert "translate.translator.model" in err and "no-model" in err
    assert list(tmp_path.iterdir()) == [] or not any(p.name == "config.yaml" for p in tmp_path.rglob("*"))


def test_changed_config_rerun_is_refused_naming_the_keys(tmp_path):
    base = [*CANARY, "canary.items_per_task=2", "canary.seconds_per_item=0", f"runs_root={tmp_path}", "name=frozen"]
    assert submit(*base).returncode == 0
    changed = submit(*base, "canary.items_per_task=3")
    assert changed.returncode == 2 and "canary.items_per_task: 2 -> 3" in changed.stderr
    assert len([e for e in RunDir(tmp_path / "frozen").events() if e["kind"] == "submit"]) == 1


# ----------------------------------------------------------------------------------- security
SHELL_PATTERNS = [r"shell\s*=\s*True", r"os\.system\(", r"os\.popen\(", r"commands\.getoutput"]


def test_no_shell_command_is_built_from_data():
    hits = []
    for top in ("lib", "jobs"):
        for path in (ROOT / top).rglob("*.py"):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if any(re.search(p, line) for p in SHELL_PATTERNS):
                    hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert hits == []


def test_run_directory_files_and_pickles_are_private(tmp_path):
    assert submit(*CANARY, "canary.items_per_task=2", "canary.seconds_per_item=0", f"runs_root={tmp_path}",
                  "name=private").returncode == 0
    root = tmp_path / "private"
    assert root.stat().st_mode & 0o777 == 0o700
    pickles = list(root.rglob("*.pkl"))
    assert pickles
    loose = [str(p) for p in root.rglob("*") if p.stat().st_mode & 0o077]
    assert loose == []
