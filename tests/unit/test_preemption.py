"""ain.preemption.requeue_or_fail against a stand-in `scontrol` on PATH: the requeue rank 0 asks
for, and the case where Slurm has requeued the job itself (partition preemption once GraceTime is
over: `scontrol requeue` then answers "Job is pending execution") which is not a failure."""

from __future__ import annotations

import logging
import os
import signal

import pytest

from ain.preemption import Requeued, StopFlag, requeue_or_fail

LOG = logging.getLogger("test")


@pytest.fixture
def scontrol(tmp_path, monkeypatch):
    """A fake scontrol: `requeue` exits with $REQUEUE_RC (and Slurm's message), `show job`
    reports Restarts=$RESTARTS; every call is appended to calls.txt."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    script = bin_dir / "scontrol"
    script.write_text(f"""#!/bin/sh
echo "$*" >> {calls}
case "$1" in
  requeue) [ "$REQUEUE_RC" = 0 ] || echo "Job is pending execution for job $2" >&2; exit "$REQUEUE_RC" ;;
  show) echo "JobId=$4 JobName=x JobState=COMPLETING Requeue=1 Restarts=$RESTARTS BatchFlag=1" ;;
esac
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    return calls


def test_rank0_requeues_the_job_and_leaves_without_a_marker(scontrol, tmp_path, monkeypatch):
    monkeypatch.setenv("REQUEUE_RC", "0")
    with pytest.raises(Requeued):
        requeue_or_fail(5, tmp_path, max_requeues=3, rank=0, log=LOG)
    assert scontrol.read_text().splitlines() == ["requeue 42"]


def test_a_job_slurm_requeued_already_is_not_a_failure(scontrol, tmp_path, monkeypatch):
    monkeypatch.setenv("REQUEUE_RC", "1")
    monkeypatch.setenv("RESTARTS", "1")  # the controller counts the requeue; this incarnation is restart 0
    with pytest.raises(Requeued):
        requeue_or_fail(5, tmp_path, max_requeues=3, rank=0, log=LOG)
    assert scontrol.read_text().splitlines() == ["requeue 42", "show job -o 42"]


def test_a_requeue_that_fails_otherwise_fails_the_task(scontrol, tmp_path, monkeypatch):
    monkeypatch.setenv("REQUEUE_RC", "1")
    monkeypatch.setenv("RESTARTS", "0")
    with pytest.raises(RuntimeError, match="scontrol requeue 42 failed"):
        requeue_or_fail(5, tmp_path, max_requeues=3, rank=0, log=LOG)


def test_other_ranks_and_spent_requeues(scontrol, tmp_path, monkeypatch):
    with pytest.raises(Requeued):
        requeue_or_fail(5, tmp_path, max_requeues=3, rank=1, log=LOG)
    assert not scontrol.exists()  # only rank 0 asks Slurm
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    with pytest.raises(RuntimeError, match="after 3 requeues"):
        requeue_or_fail(5, tmp_path, max_requeues=3, rank=0, log=LOG)


def test_stop_flag_names_the_signal_in_the_requeue_line(scontrol, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("REQUEUE_RC", "0")
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}
    try:
        flag = StopFlag()
        assert not flag()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert flag()
        with caplog.at_level(logging.WARNING), pytest.raises(Requeued):
            requeue_or_fail(5, tmp_path, max_requeues=3, rank=0, log=LOG)
        assert "after SIGUSR2" in caplog.text and "requeueing job 42" in caplog.text
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
