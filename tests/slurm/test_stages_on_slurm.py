"""The stage launcher against the real two-node Slurm cluster: arrays and throttles, afterok
chains, failed-task resubmission, USR2 preemption with resume, and idempotent re-launches."""

from __future__ import annotations

import json
import subprocess

import pytest

from ain.atomic import iter_jsonl
from ain.slurm.status import collect
from tests.slurm.conftest import squeue_running, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def canary_items(run, stage="canary"):
    rows = []
    for path in sorted(run.stage(stage).out.glob("items-*.jsonl")):
        rows.extend(iter_jsonl(path))
    return rows


def markers(run, stage):
    paths = run.stage(stage)
    return [paths.read_marker(i) for i in sorted(paths.done_indices())]


def max_overlap(intervals):
    """Most intervals open at one instant."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    best = cur = 0
    for _, d in edges:
        cur += d
        best = max(best, cur)
    return best


def test_array_throttle_is_respected_and_relaunch_submits_nothing(slurm_run):
    r = slurm_run("recipe=canary", "canary.num_tasks=6", "canary.items_per_task=6",
                  "canary.seconds_per_item=0.4", "cluster.array_parallelism=2")
    run, report = r.launch()
    assert report[0].submitted == [0, 1, 2, 3, 4, 5]
    job_id = report[0].job_id

    # A second launch while the array is queued/running must not submit it again.
    _, again = r.launch()
    assert again[0].submitted == [] and len(again[0].active) + len(again[0].done) == 6

    seen = 0
    while True:  # poll the scheduler while the array runs: never more than the throttle
        seen = max(seen, squeue_running(job_id))
        if not subprocess.run(["squeue", "-h", "-j", job_id, "-t", "PD,R,CG", "-o", "%i"],
                              capture_output=True, text=True).stdout.strip():
            break
    r.wait(run)
    assert 1 <= seen <= 2
    ms = markers(run, "canary")
    assert len(ms) == 6
    assert max_overlap([(m["start"], m["end"]) for m in ms]) <= 2
    items = canary_items(run)
    assert sorted((x["task"], x["item"]) for x in items) == [(t, i) for t in range(6) for i in range(6)]
    # Pinned code: every task imported `ain` from the snapshot the launch made, not the checkout.
    (digest,) = {e["code"] for e in run.events() if e["kind"] == "submit"}
    snapshot = (run.root / "code" / digest).resolve()
    assert {m["code"] for m in ms} == {str(snapshot / "lib" / "ain")}
    assert (snapshot / "configs" / "eval" / "camel_bench.yaml").is_file()

    submits_before = [e for e in run.events() if e["kind"] == "submit"]
    _, final = r.launch()
    assert all(not s.submitted and not s.active for s in final)
    assert [e for e in run.events() if e["kind"] == "submit"] == submits_before
    status = collect(run)
    assert status[0].state == "done" and status[0].done == 6 and status[0].code == digest
    # Pickles are code and logs may quote data: nothing in the run directory is group/world-readable.
    pickles = list(run.stage("canary").logs.glob("*.pkl"))
    assert pickles and all(p.stat().st_mode & 0o077 == 0 for p in run.root.rglob("*"))


def test_dependency_chain_waits_for_every_upstream_task(slurm_run):
    r = slurm_run("recipe=smoke", "stages=[canary,ingest]", "canary.num_tasks=3",
                  "canary.items_per_task=4", "canary.seconds_per_item=0.5")
    run, report = r.launch()
    canary, ingest = report
    assert ingest.dependency == [canary.job_id]
    r.wait(run)
    upstream_end = max(m["end"] for m in markers(run, "canary"))
    downstream = markers(run, "ingest")
    assert len(downstream) == run.load_config().ingest.num_tasks
    assert min(m["start"] for m in downstream) >= upstream_end


def test_failed_task_is_shown_and_only_it_is_resubmitted(slurm_run, monkeypatch):
    r = slurm_run("recipe=canary", "canary.num_tasks=3", "canary.items_per_task=2", "canary.seconds_per_item=0.1")
    monkeypatch.setenv("AIN_FAIL_TASKS", "canary/1")  # jobs inherit the submitter's environment
    run, report = r.launch()
    r.wait(run)
    monkeypatch.delenv("AIN_FAIL_TASKS")

    status = collect(run)[0]
    assert status.done == 2 and status.failed == 1 and status.state == "failed"
    problem = status.problems[0]
    assert problem.index == 1 and "InjectedFault" in problem.record["error"]
    assert any("InjectedFault" in line for line in problem.log_tail), problem.log_tail

    _, again = r.launch()
    assert again[0].submitted == [1]
    r.wait(run)
    final = collect(run)[0]
    assert final.state == "done" and final.problems == []
    assert not run.stage("canary").failure(1).exists()


def test_usr2_mid_slice_requeues_and_resumes_without_repeating(slurm_run):
    r = slurm_run("recipe=canary", "canary.num_tasks=1", "canary.items_per_task=16",
                  "canary.seconds_per_item=0.5", "canary.commit_every=1")
    run, report = r.launch()
    state = run.stage("canary").state_file(0)
    wait_until(lambda: state.exists() and json.loads(state.read_text())["position"] >= 4, 120, "4 items committed")
    # Default scancel --signal reaches the job step (submitit's srun task), as Slurm's own
    # --signal=USR2@lead does ahead of the time limit.
    subprocess.run(["scancel", "--signal=USR2", report[0].elements[0]], check=True)
    r.wait(run, timeout_s=300)
    rows = canary_items(run)
    assert [x["item"] for x in rows] == list(range(16))          # each item exactly once, in order
    assert {x["attempt"] for x in rows} == {0, 1}                 # both runs contributed
    marker = run.stage("canary").read_marker(0)
    assert marker["restarts"] == 1 and 4 <= marker["resumed_from"] < 16
    assert len([e for e in run.events() if e["kind"] == "submit"]) == 1  # requeued, not resubmitted


def test_a_task_runs_on_the_cores_it_asked_for(slurm_run):
    """submitit's srun line carries --cpus-per-task (Slurm >= 22.05 does not pass the job's on to
    srun): a task of cpus_per_task=2 may run on 2 cores. The test cluster binds tasks to their
    step's CPUs (task/affinity, tests/cluster/slurm.conf.in), so without it the task would see 1;
    the cpus_per_task=1 run shows that the binding is on (unbound, a task sees the whole host)."""
    for cpus in (2, 1):
        r = slurm_run("recipe=canary", f"name=cores{cpus}", "canary.num_tasks=2", "canary.items_per_task=1",
                      f"canary.resources.cpus_per_task={cpus}")
        run, _ = r.launch()
        r.wait(run)
        assert [m["cores"] for m in markers(run, "canary")] == [cpus, cpus], markers(run, "canary")
