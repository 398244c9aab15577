"""Faults of the machines under a running array, on the real two-node cluster (tests/cluster):

- a node lost: slurmd of n2 and every process of our tasks there are SIGKILLed, the controller
  is told the node is down; the affected tasks are requeued (or resubmitted by a re-run) and the
  run finishes with every item exactly once;
- SIGKILL of one task mid-write (no USR2, no warning): no output under a final name, no marker,
  and the re-run submits just that task.

The cluster is shared with the other Slurm tests: the node test always restarts slurmd n2 and
returns the node to service, even when it fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ain.atomic import iter_jsonl
from tests.slurm.conftest import wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NODE = "n2"


def canary_rows(run) -> list[dict]:
    return [row for p in sorted(run.stage("canary").out.glob("items-*.jsonl")) for row in iter_jsonl(p)]


def committed(run, index: int) -> int:
    path = run.stage("canary").state_file(index)
    try:
        return json.loads(path.read_text())["position"]
    except (OSError, ValueError, KeyError):
        return 0


def running(job_id: str) -> dict[str, tuple[str, str]]:
    """Running elements of an array: element ('12_1') -> (raw job id, node)."""
    out = subprocess.run(["squeue", "-h", "-r", "-j", job_id, "-t", "RUNNING", "-o", "%i %A %N"],
                         capture_output=True, text=True).stdout
    return {e: (raw, node) for e, raw, node in (line.split() for line in out.splitlines() if line.strip())}


def node_state(node: str) -> str:
    return subprocess.run(["sinfo", "-h", "-N", "-n", node, "-o", "%T"], capture_output=True,
                          text=True).stdout.strip()


def pids_of_jobs(raw_ids: set[str]) -> list[int]:
    """Every process that belongs to these jobs on this host: their slurmstepd daemons
    ('slurmstepd: [123.batch]') and the processes started in them (SLURM_JOB_ID in the env)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd.startswith("slurmstepd:") and any(f"[{raw}." in cmd for raw in raw_ids):
            pids.append(int(d.name))
        elif any(f"SLURM_JOB_ID={raw}".encode() in env for raw in raw_ids):
            pids.append(int(d.name))
    return pids


def kill_node(node: str, raw_ids: set[str]) -> None:
    """The node dies: its slurmd and everything our jobs run there, with no signal handlers run."""
    pid = int(Path(f"/run/slurmd-{node}.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    for p in pids_of_jobs(raw_ids):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def alive(pid: int) -> bool:
    """Running, not a zombie (a killed daemon whose parent does not reap it keeps its /proc entry)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def restore_node(node: str) -> None:
    """slurmd running again (tests/cluster/up.sh starts only what is missing) and the node back in
    service (ReturnToService=2 usually does it when slurmd registers; resume makes sure)."""
    pidfile = Path(f"/run/slurmd-{node}.pid")
    try:
        if not alive(int(pidfile.read_text().strip())):
            pidfile.unlink()  # up.sh checks the pid file's process by name: a zombie would pass
    except (OSError, ValueError):
        pass
    proc = subprocess.run(["bash", str(ROOT / "tests/cluster/up.sh")], capture_output=True, text=True, timeout=120)
    print("up.sh:", proc.returncode, proc.stdout[-500:], proc.stderr[-500:])
    deadline = time.time() + 60
    while time.time() < deadline:
        state = node_state(node)
        if any(s in state for s in ("down", "drain", "fail")):
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
        elif state and "not_responding" not in state and "*" not in state:
            return
        time.sleep(1)
    raise AssertionError(f"node {node} did not come back: {node_state(node)!r}")


def cancel(job_id: str | None) -> None:
    if job_id:
        subprocess.run(["scancel", job_id], capture_output=True)


def test_node_lost_mid_array_tasks_are_requeued_and_the_run_finishes(slurm_run):
    r = slurm_run("recipe=canary", "canary.num_tasks=3", "canary.items_per_task=10", "canary.seconds_per_item=0.4",
                  "canary.commit_every=1", f"cluster.extra_sbatch.nodelist={NODE}")
    run, report = r.launch()
    job_id = report[0].job_id
    try:
        def mid_slice():
            rn = running(job_id)
            return rn if rn and all(committed(run, int(e.split("_")[1])) >= 2 for e in rn) else None

        # Tasks run on n2 (two fit on its 2 CPUs); wait until they are mid-slice with commits.
        victims = wait_until(mid_slice, 120, "tasks running on n2 with committed items")
        assert {node for _, node in victims.values()} == {NODE}
        kill_node(NODE, {raw for raw, _ in victims.values()})
        subprocess.run(["scontrol", "update", f"nodename={NODE}", "state=down", "reason=ain-reliability-node-lost"],
                       check=True, capture_output=True)
        # The controller gives up on the lost tasks: requeued (JobRequeue=1), not left running.
        wait_until(lambda: not any(e in running(job_id) for e in victims), 60, "lost tasks leave RUNNING")
        assert not run.stage("canary").done_indices() & {int(e.split("_")[1]) for e in victims}
        restore_node(NODE)
        r.wait(run, timeout_s=180)
        # A re-run resubmits whatever the scheduler did not requeue, then the run is complete.
        _, again = r.launch()
        r.wait(run, timeout_s=180)
        rows = canary_rows(run)
        assert sorted((x["task"], x["item"]) for x in rows) == [(t, i) for t in range(3) for i in range(10)]
        assert run.stage("canary").done_indices() == {0, 1, 2}
        resumed = [run.stage("canary").read_marker(int(e.split("_")[1]))["resumed_from"] for e in victims]
        resubmitted = again[0].submitted
        # Each lost task continued from its last commit (requeued) or was resubmitted by the re-run.
        assert all(n >= 2 for n in resumed) or resubmitted, (resumed, resubmitted)
    finally:
        cancel(job_id)
        restore_node(NODE)


def test_sigkill_mid_write_leaves_no_output_or_marker_and_rerun_redoes_only_that_task(slurm_run):
    r = slurm_run("recipe=canary", "canary.num_tasks=3", "canary.items_per_task=8", "canary.seconds_per_item=0.3",
                  "canary.commit_every=2", "cluster.array_parallelism=3")
    run, report = r.launch()
    job_id = report[0].job_id
    victim = report[0].elements[1]
    paths = run.stage("canary")
    try:
        wait_until(lambda: committed(run, 1) >= 2, 120, "task 1 has committed items")
        # SIGKILL of the task's Python process, as the OOM killer does: no USR2, no SIGTERM grace
        # (`scancel --signal=KILL` is a cancel: SIGTERM first, SIGKILL only after KillWait).
        raw = running(job_id)[victim][0]
        workers = [p for p in pids_of_jobs({raw}) if Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0]
                   .rsplit(b"/", 1)[-1].startswith(b"python")]
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)
        r.wait(run, timeout_s=120)
        assert paths.done_indices() == {0, 2}
        assert not paths.marker(1).exists()
        assert not (paths.out / "items-00001.jsonl").exists()          # nothing under a final name
        assert (paths.out / "items-00001.jsonl.partial").exists()      # only the hidden work file
        assert 2 <= committed(run, 1) < 8

        _, again = r.launch()
        assert again[0].submitted == [1] and again[0].done == [0, 2]
        r.wait(run, timeout_s=120)
        rows = canary_rows(run)
        assert sorted((x["task"], x["item"]) for x in rows) == [(t, i) for t in range(3) for i in range(8)]
        assert paths.read_marker(1)["resumed_from"] >= 2
        assert not list(paths.out.glob("*.partial"))
    finally:
        cancel(job_id)
