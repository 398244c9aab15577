"""The dry run's cost table (ain.slurm.cost) against hand-computed figures: time-limit upper
bounds, the training estimate, and measured task-seconds of finished tasks with the same
fingerprint (found in another run under runs_root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ain.config import load_config
from ain.rundir import RunDir
from ain.slurm.cost import describe_costs, stage_costs
from ain.slurm.launcher import Launcher

ROOT = Path(__file__).resolve().parents[2]
CHAIN = ["recipe=smoke", "cluster=local", "cluster.executor=local", "stages=[ingest,mix,pack]"]


def test_limits_and_training_estimate_by_hand(tmp_path):
    cfg = load_config(["recipe=smoke", "cluster=local", f"runs_root={tmp_path}", "stages=[ingest,mix,pack,train]",
                       "cluster.array_parallelism=1", "ingest.resources.time_min=30", "ingest.num_tasks=2",
                       "train.expected_samples=1000", "train.tokens_per_sample=360", "train.tokens_per_gpu_s=100"],
                      check_paths=False)
    costs = {c.stage: c for c in stage_costs(cfg, tmp_path / "smoke")}
    ingest = costs["ingest"]
    assert (ingest.source, ingest.tasks, ingest.gpus_per_task) == ("limit", 2, 0)
    assert ingest.wall_hours == pytest.approx(2 * 0.5)   # two tasks of 30 min, one at a time
    assert ingest.gpu_hours == 0
    train = costs["train"]
    assert train.source == "estimate"
    # 1000 samples x 360 tokens / 100 tokens/s per device = 3600 device-seconds = 1 device-hour,
    # over the smoke recipe's 2 ranks (CPU: one device per rank) -> half an hour of wall-clock
    assert (cfg.train.resources.nodes, cfg.train.resources.tasks_per_node, train.gpus_per_task) == (2, 1, 2)
    assert train.gpu_hours == pytest.approx(1.0)
    assert train.wall_hours == pytest.approx(0.5)
    text = "\n".join(describe_costs(list(costs.values())))
    assert "includes upper bounds from time limits" in text


def test_the_profiles_gpu_share_bounds_the_tasks_at_once(tmp_path):
    """32 translate tasks of 4 GPUs, 64 at once by the array throttle; a share of 8 GPUs runs two
    at a time: 16 rounds of the task's hours (by hand), the GPU-hours unchanged."""
    base = ["recipe=ain", "cluster=slurm", f"runs_root={tmp_path}", "stages=[ingest,translate]",
            "translate.num_tasks=32", "translate.resources.time_min=60"]
    free = {c.stage: c for c in stage_costs(load_config([*base, "cluster.max_gpus=0"], check_paths=False), tmp_path)}
    shared = {c.stage: c for c in stage_costs(load_config([*base, "cluster.max_gpus=8"], check_paths=False), tmp_path)}
    for c in (free["translate"], shared["translate"]):
        assert (c.source, c.gpus_per_task, c.task_hours) == ("limit", 4, 1.0)   # the sources are not here
    assert free["translate"].parallel == 32 and free["translate"].wall_hours == pytest.approx(1.0)
    assert shared["translate"].parallel == 2 and shared["translate"].wall_hours == pytest.approx(16.0)
    assert shared["translate"].gpu_hours == free["translate"].gpu_hours == pytest.approx(128.0)
    assert shared["ingest"].parallel == free["ingest"].parallel  # no GPUs: not bounded by the share


@pytest.mark.slow
def test_measured_task_seconds_of_the_same_fingerprint_are_used(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    first = load_config([*CHAIN, f"runs_root={tmp_path}", "name=first"])
    Launcher(first, RunDir(first.run_dir)).launch(argv=["test"])
    markers = [RunDir(first.run_dir).stage("ingest").read_marker(i) for i in range(2)]
    mean_hours = sum(m["seconds"] for m in markers) / 2 / 3600

    same = load_config([*CHAIN, f"runs_root={tmp_path}", "name=second"])
    costs = {c.stage: c for c in stage_costs(same, tmp_path / "second")}
    assert all(c.source == "measured" for c in costs.values())
    assert costs["ingest"].task_hours == pytest.approx(mean_hours)
    assert str(first.run_dir) in costs["ingest"].detail
    other = load_config([*CHAIN, f"runs_root={tmp_path}", "name=third", "mix.authentic_arabic_share=0.5"])
    sources = {c.stage: c.source for c in stage_costs(other, tmp_path / "third")}
    assert sources == {"ingest": "measured", "mix": "limit", "pack": "limit"}   # a different computation
    dry = Launcher(other, RunDir(other.run_dir)).dry_run()
    assert "  ingest: 2 task(s) x 0 GPU" in dry and "[measured: 2 finished task(s)" in dry
