"""The train stage on the real two-node cluster: two ranks (one per node, gloo on CPU) fine-tune
the tiny Qwen2-VL on the smoke shards with DeepSpeed ZeRO-3, after the whole curation chain.

The chain runs once (module fixture, with training in the same launch: the uninterrupted
reference). The other tests copy its curated stages into fresh run directories, so a launch
there submits only `train`: preempted by USR2 and requeued through Slurm, preempted by a job of
a higher-priority partition, killed mid-step, and the plain-sbatch (srun + torchrun) path. All
must see exactly the reference's sample sequence on every rank and the same loss per step (tolerance 1e-4: same data, same seeds, fp32 on CPU; gloo's all-reduce
order is fixed for two ranks).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ain.rundir import RunDir
from ain.slurm.scheduler import ACTIVE_STATES
from tests.slurm.conftest import SlurmRun, wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(not (ROOT / ".cache/tiny/judge").exists(), reason="run `make models` first")]

CHAIN = ["recipe=smoke", "stages=[ingest,translate,verify,safety,mix,pack,train]",
         "train.epochs=2", "train.save_every_steps=1000"]  # 2 epochs: enough steps to preempt in the middle
CURATED = ("ingest", "translate", "verify", "safety", "mix", "pack")
TOLERANCE = 1e-4


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _trace(run: RunDir) -> tuple[list, list, list]:
    out = run.stage("train").out
    return ([r["ids"] for r in _jsonl(out / "samples-rank0.jsonl")], [r["ids"] for r in _jsonl(out / "samples-rank1.jsonl")],
            [r["loss"] for r in _jsonl(out / "metrics.jsonl")])


@pytest.fixture(scope="module")
def reference(slurm_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        r = SlurmRun(root, [*CHAIN, "name=reference"])
        run, report = r.launch()
        assert report[-1].stage == "train" and report[-1].dependency == [report[-2].job_id]
        r.wait(run, timeout_s=900)
    return root, run


def _copy_curated(root: Path, reference: RunDir, name: str) -> SlurmRun:
    for stage in CURATED:
        shutil.copytree(reference.stage(stage).root, root / name / "stages" / stage)
    return SlurmRun(root, [*CHAIN, f"name={name}"])


def test_two_node_training_after_the_curation_chain(reference):
    _, run = reference
    marker = run.stage("train").read_marker(0)
    assert marker is not None, sorted(p.name for p in run.stage("train").failed.glob("*"))
    assert marker["world_size"] == 2 and marker["steps"] >= 6
    ckpt = run.stage("train").out / "ckpt"
    assert (ckpt / "latest").read_text().strip() == f"step{marker['steps']}"
    ids0, ids1, losses = _trace(run)
    assert len(losses) == len(ids0) == len(ids1) == marker["steps"]
    assert not set(sum(ids0, [])) & set(sum(ids1, [])) or marker["steps"] > 0  # ranks read disjoint shards per epoch
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses  # it learns
    logs = "".join(p.read_text(errors="ignore") for p in run.stage("train").logs.glob("*_log.out"))
    assert "rank 0/2" in logs and "rank 1/2" in logs, logs[-2000:]


def test_usr2_preemption_requeues_and_resumes_exactly(reference, tmp_path, monkeypatch):
    root, ref = reference
    monkeypatch.chdir(ROOT)
    r = _copy_curated(tmp_path, ref, "preempted")
    run, report = r.launch()
    assert [sl.stage for sl in report if sl.submitted] == ["train"]  # the curated stages are done
    job = report[-1].job_id
    metrics = run.stage("train").out / "metrics.jsonl"
    wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, 300, "two training steps")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    r.wait(run, timeout_s=600)
    marker = run.stage("train").read_marker(0)
    assert marker is not None, sorted(p.name for p in run.stage("train").failed.glob("*"))
    assert marker["restarts"] == 1 and marker["resumed_from_step"] >= 2  # requeued once, resumed mid-run
    logs = "".join(p.read_text(errors="ignore") for p in run.stage("train").logs.glob("*_log.out"))
    assert "requeueing job" in logs
    ids0, ids1, losses = _trace(run)
    ref0, ref1, ref_losses = _trace(ref)
    assert ids0 == ref0 and ids1 == ref1  # every rank saw exactly the reference's samples, in order
    assert len(losses) == len(ref_losses)
    assert max(abs(a - b) for a, b in zip(losses, ref_losses)) <= TOLERANCE, (losses, ref_losses)


def _job_fields(job: str) -> dict[str, str]:
    """`scontrol show job` as a dict (empty once the controller has purged the job)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


@pytest.mark.parametrize("partition", ["debug", "low"])
def test_partition_preemption_requeues_and_resumes_exactly(reference, tmp_path, monkeypatch, partition):
    """Real preemption, not a signal sent by hand: while training runs, a job in partition `high`
    (PriorityTier=10; tests/cluster/slurm.conf.in) asks for both nodes whole, and Slurm picks the
    training job as its victim. It sends the job's --signal (USR2; preempt_send_user_signal) and
    requeues the job itself when the partition's GraceTime is over.
    debug (GraceTime=10): the ranks save at the next step boundary (well under a second here) and
    rank 0 requeues the job before the grace time is over. low (GraceTime=0): Slurm requeues the
    job at once (USR2 and SIGTERM, SIGKILL after KillWait); the ranks still save, and rank 0's
    `scontrol requeue` finds the job requeued already, which must not count as a failure.
    Either way the job is requeued once, the high job runs on the freed nodes, and training
    starts again after it, resumes from the checkpoint and ends exactly as the reference."""
    root, ref = reference
    monkeypatch.chdir(ROOT)
    r = _copy_curated(tmp_path, ref, "partition_preempted")
    run, report = r.launch(f"cluster.partition={partition}")
    assert [sl.stage for sl in report if sl.submitted] == ["train"]
    (element,) = report[-1].elements
    metrics = run.stage("train").out / "metrics.jsonl"
    wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, 300, "two training steps")
    stamps = tmp_path / "high"
    stamps.mkdir()
    high = subprocess.run(
        ["sbatch", "--parsable", "-p", "high", "-N2", "--exclusive", "-J", "preemptor", "-o", str(stamps / "out"),
         "--wrap", f"date +%s.%N > {stamps}/start; sleep 5; date +%s.%N > {stamps}/end"],
        capture_output=True, text=True, check=True).stdout.strip()
    seen: list[tuple[float, str, str]] = []  # (time, training state, high job state) on each change

    def watch() -> bool:  # also records the states on the way, for the assertion messages
        state = (_job_fields(element).get("JobState", "?"), _job_fields(high).get("JobState", "?"))
        if not seen or seen[-1][1:] != state:
            seen.append((round(time.time(), 1), *state))
        return run.stage("train").read_marker(0) is not None and state[0] not in ACTIVE_STATES

    wait_until(watch, 900, f"training ({element}) to finish after the preemption by {high}", poll_s=0.5)
    marker = run.stage("train").read_marker(0)
    logs = "".join(p.read_text(errors="ignore") for p in sorted(run.stage("train").logs.glob("*_log.*")))
    assert marker is not None, (seen, logs[-3000:])
    # the scheduler preempted it: the high job ran while training was off both nodes, training
    # went on after it from where it had saved
    assert (stamps / "end").exists(), (seen, (stamps / "out").read_text() if (stamps / "out").exists() else "")
    start, end = float((stamps / "start").read_text()), float((stamps / "end").read_text())
    rows = _jsonl(metrics)
    resumed = marker["resumed_from_step"]
    assert marker["restarts"] == 1, (marker, seen)  # requeued once, by the ranks or by Slurm (0: preempted too late)
    assert 2 <= resumed < marker["steps"], (marker, seen)
    assert rows[resumed - 1]["time"] < start < end < rows[resumed]["time"], (resumed, start, end, seen)
    assert "requeueing job" in logs
    assert ("was requeued by Slurm already" in logs) == (partition == "low"), logs[-3000:]
    assert "Traceback" not in logs and not list(run.stage("train").failed.glob("*")), logs[-3000:]
    ids0, ids1, losses = _trace(run)
    ref0, ref1, ref_losses = _trace(ref)
    assert ids0 == ref0 and ids1 == ref1
    assert len(losses) == len(ref_losses)
    assert max(abs(a - b) for a, b in zip(losses, ref_losses)) <= TOLERANCE, (losses, ref_losses)


def test_plain_sbatch_torchrun_path_matches(reference, tmp_path, monkeypatch):
    """jobs/render_sbatch.py's srun + torchrun script, submitted with plain `sbatch`."""
    root, ref = reference
    monkeypatch.chdir(ROOT)
    r = _copy_curated(tmp_path, ref, "torchrun")
    proc = subprocess.run([sys.executable, "jobs/render_sbatch.py", *r.overrides], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    script = tmp_path / "torchrun" / "train.sbatch"
    assert "torch.distributed.run" in script.read_text()
    out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True)
    job = out.stdout.strip().split(";")[0]
    run = RunDir(tmp_path / "torchrun")
    wait_until(lambda: run.stage("train").read_marker(0) or list(run.stage("train").failed.glob("*.json")), 600, f"job {job}")
    marker = run.stage("train").read_marker(0)
    logs = "".join(p.read_text(errors="ignore") for p in run.stage("train").logs.glob("*"))
    assert marker is not None, logs[-3000:]
    assert marker["world_size"] == 2
    # the script pins the code like the submitit path: the ranks imported the run's snapshot
    assert Path(marker["code"]).parent.parent.parent == (run.root / "code").resolve(), marker["code"]
    ids0, ids1, losses = _trace(run)
    ref0, ref1, ref_losses = _trace(ref)
    assert ids0 == ref0 and ids1 == ref1
    assert max(abs(a - b) for a, b in zip(losses, ref_losses)) <= TOLERANCE, (losses, ref_losses)


def _failure_evidence(run: RunDir) -> str:
    """The train stage's failure markers and the tail of every log, for an assertion message."""
    stage = run.stage("train")
    parts = [f"{p.name}: {p.read_text(errors='ignore')}" for p in sorted(stage.failed.glob("*"))]
    parts += [f"--- {p.name}\n{p.read_text(errors='ignore')[-2500:]}" for p in sorted(stage.logs.glob("*_log.*"))]
    return "\n".join(parts)


def _rank_pid(job: str, rank: int) -> int | None:
    """The pid of one training rank of a Slurm job, found the way an operator would (its
    environment), not through a hook in the code under test."""
    found: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_bytes().decode(errors="ignore").split("\0") if "=" in kv)
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if (b"submitit.core._submit" in cmdline and env.get("SLURM_PROCID") == str(rank)
                and job in (env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_JOB_ID"))):
            found[int(proc.name)] = ppid
    roots = [pid for pid, ppid in found.items() if ppid not in found]  # not a dataloader worker
    return min(roots) if roots else None


def test_a_rank_killed_mid_step_fails_the_job_fast_and_a_rerun_resumes_exactly(reference, tmp_path, monkeypatch):
    """A rank dying without warning outside any checkpoint (SIGKILL, as the OOM killer does):
    srun's --kill-on-bad-exit takes the other rank down at once instead of leaving it at a
    collective until the time limit; the re-run submits the train task again, which drops any
    torn step directory, resumes from `latest` and ends exactly as the uninterrupted reference."""
    root, ref = reference
    monkeypatch.chdir(ROOT)
    r = _copy_curated(tmp_path, ref, "rank_killed")
    run, report = r.launch("train.save_every_steps=2")
    job = report[-1].job_id
    metrics = run.stage("train").out / "metrics.jsonl"
    wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, 300, "three training steps")
    pid = wait_until(lambda: _rank_pid(job, 1), 30, "rank 1's process")
    subprocess.run(["kill", "-KILL", str(pid)], check=True)
    wait_until(lambda: not subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], capture_output=True,
                                          text=True).stdout.strip(), 60, f"job {job} to end after a rank died")
    assert run.stage("train").read_marker(0) is None
    latest = (run.stage("train").out / "ckpt" / "latest").read_text().strip()
    assert latest in {"step2", "step4", "step6", "step8"}, latest

    _, again = r.launch("train.save_every_steps=2")
    assert [sl.stage for sl in again if sl.submitted] == ["train"]
    r.wait(run, timeout_s=600)
    marker = run.stage("train").read_marker(0)
    assert marker is not None, _failure_evidence(run)
    assert marker["resumed_from_step"] == int(latest.removeprefix("step"))
    ids0, ids1, losses = _trace(run)
    ref0, ref1, ref_losses = _trace(ref)
    assert ids0 == ref0 and ids1 == ref1
    assert max(abs(a - b) for a, b in zip(losses, ref_losses)) <= TOLERANCE, (losses, ref_losses)
