"""Training telemetry (MFU formula, records cut back on resume, checkpoint pruning), the dry run's
GPU-hours estimate, and stage selection (--only / --from)."""

from __future__ import annotations

import json

import pytest

from ain.config import load_config
from ain.config_base import ConfigError
from ain.stages import select_stages
from ain.train.estimate import estimate_train
from ain.train.telemetry import TrainLog, _cut_jsonl, read_metrics, row_flops


def test_row_flops_by_hand():
    # 2 samples of 3 and 5 tokens, 10 patches; N_text 100, N_vision 20, 2 layers, hidden 4
    # 6*100*8 + 6*20*10 + 6*2*4*(9+25) = 4800 + 1200 + 1632
    assert row_flops(100, 20, 2, 4, [3, 5], 10) == 7632.0
    # packing keeps attention within samples: one 8-token sample costs more attention than 3+5
    assert row_flops(100, 20, 2, 4, [8], 10) - row_flops(100, 20, 2, 4, [3, 5], 10) == 6 * 2 * 4 * (64 - 34)


def test_cut_jsonl_keeps_steps_up_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    _cut_jsonl(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_train_log_writes_rates_and_mfu(tmp_path):
    log = TrainLog(tmp_path, rank=0, resumed_step=0, world_size=2, peak_flops=1e6, tensorboard=False)
    row = log.step(1, loss=2.5, lr=1e-3, grad_norm=0.5, tokens=100, samples=4, flops=5e5, sample_ids=["a", "b"])
    log.close()
    assert row["tokens"] == 200 and row["tokens_per_s"] > 0 and 0 < row["mfu"]
    assert read_metrics(tmp_path)[0]["loss"] == 2.5
    assert json.loads((tmp_path / "samples-rank0.jsonl").read_text()) == {"step": 1, "ids": ["a", "b"]}


def test_prune_keeps_the_newest(tmp_path):
    from ain.train.checkpoint import prune_checkpoints

    for step in (2, 4, 6, 10):
        (tmp_path / f"step{step}").mkdir()
    prune_checkpoints(tmp_path, keep=2, current="step10")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step10", "step6"]


def test_gpu_hours_estimate_configured_then_measured(chdir_root, tmp_path):
    cfg = load_config(["recipe=ain", "cluster=slurm"], check_paths=False)
    est = estimate_train(cfg, tmp_path)
    # 3.6M x 700 tokens at 2500 tokens/s/GPU = 280 GPU-hours; 64 GPUs -> 4.375 h
    assert est.samples_source == "train.expected_samples" and est.gpus == 64
    assert est.gpu_hours == pytest.approx(280.0) and est.wall_hours == pytest.approx(4.375)
    pack = tmp_path / "stages" / "pack" / "out"
    pack.mkdir(parents=True)
    (pack / "manifest-000.jsonl").write_text(json.dumps({"shard": "a.tar", "samples": 1000}) + "\n")
    train = tmp_path / "stages" / "train" / "out"
    train.mkdir(parents=True)
    (train / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "tokens_per_s": 64 * r}) + "\n"
                                                 for s, r in enumerate([1000, 3000, 2000])))
    est = estimate_train(cfg, tmp_path)
    assert est.samples == 1000 and est.tokens_per_gpu_s == 2000 and "measured" in est.describe()


def test_estimate_prints_the_shape_and_keeps_the_global_batch_on_one_node_and_eight(chdir_root, tmp_path):
    """recipe=ain's global batch is 64 packed rows on 8 x 8 GPUs (accum 1) and on 1 x 8 (accum 8);
    the shape line says the unit (rows) and the schedule's steps."""
    shapes = {}
    for nodes, accum in ((8, 1), (1, 8)):
        cfg = load_config(["recipe=ain", "cluster=slurm", f"train.resources.nodes={nodes}"], check_paths=False)
        est = estimate_train(cfg, tmp_path)
        text = est.describe()
        assert est.schedule is not None and est.schedule.accum == accum and est.schedule.global_rows == 64
        assert f"train shape: {nodes} node{'s' if nodes > 1 else ''} x 8 GPUs, micro 1 row x accum {accum} per rank " \
               "-> global batch 64 packed rows of <= 2,048 tokens" in text
        assert "the batch unit is rows, not samples" in text and "280.0 GPU-hours" in text
        shapes[nodes] = est.schedule.total_steps
    # 3.6M samples at 2048 x 0.99 / 700 = 2.897 samples per row = 1,242,900 rows; 64 rows per step on both
    assert shapes[8] == shapes[1] == 19_420
    with pytest.raises(ConfigError, match="train.global_batch_size"):
        load_config(["recipe=ain", "cluster=slurm", "train.resources.nodes=3"], check_paths=False)


def test_estimate_replays_the_manifest_lengths(chdir_root, tmp_path):
    cfg = load_config(["recipe=ain", "cluster=slurm", "train.resources.nodes=1", "train.resources.tasks_per_node=2",
                       "train.resources.gpus_per_node=2", "train.global_batch_size=2", "train.num_workers=0"],
                      check_paths=False)
    from ain.train.loop import length_spec

    pack = tmp_path / "stages" / "pack" / "out"
    pack.mkdir(parents=True)
    # 400 samples of 1,000 tokens (2 per row) and 1 sample too long: 200 rows, 100 per rank, accum 1
    entry = {"shard": "a.tar", "samples": 401, "sha256": "0", "lengths": [1000] * 400 + [4000],
             "length_spec": length_spec(cfg.train)}
    (pack / "manifest-000.jsonl").write_text(json.dumps(entry) + "\n")
    est = estimate_train(cfg, tmp_path)
    assert est.tokens == 400_000 and "pack manifest token lengths" in est.describe()
    assert est.schedule.total_steps == 100 and est.schedule.samples_per_row == 2.0
    assert "replayed for rank(s) [0] of 2" in est.describe() and "warmup 10 " in est.describe()


def test_stage_selection(chdir_root):
    cfg = load_config(["recipe=ain", "cluster=slurm"], check_paths=False)
    assert select_stages(cfg) is None
    assert select_stages(cfg, start="train") == ["train", "export", "eval", "eval_report"]
    assert select_stages(cfg, only=["train,export"]) == ["train", "export"]
    with pytest.raises(ConfigError, match="not in this recipe"):
        select_stages(cfg, only=["frobnicate"])
    with pytest.raises(ConfigError, match="not both"):
        select_stages(cfg, only=["train"], start="pack")


def test_only_train_refuses_when_pack_is_incomplete(chdir_root, tmp_path):
    from ain.rundir import RunDir
    from ain.slurm.launcher import Launcher

    cfg = load_config(["recipe=smoke", "cluster=local", f"runs_root={tmp_path}",
                       "stages=[ingest,translate,verify,safety,mix,pack,train]"])
    launcher = Launcher(cfg, RunDir(cfg.run_dir), selected=["train"])
    with pytest.raises(ConfigError, match="stage ingest is incomplete .* --from ingest"):
        launcher.launch(argv=["test"])
    text = launcher.dry_run()
    assert "pack: not selected" in text and "train estimate:" in text


def test_only_train_needs_pack_complete_but_not_the_curation_report(chdir_root, tmp_path):
    from ain.rundir import RunDir
    from ain.slurm.launcher import Launcher
    from ain.stages import plan

    cfg = load_config(["recipe=smoke", "cluster=local", f"runs_root={tmp_path}"])
    run = RunDir(cfg.run_dir)
    for st in plan(cfg)[: cfg.stages.index("pack") + 1]:  # ingest .. pack done; report never ran
        paths = run.stage(st.name).create()
        for i in range(st.num_tasks):
            paths.write_marker(i, {"index": i})
    Launcher(cfg, run, selected=["train"])._check_upstream({})  # no error: train waits for pack only
    with pytest.raises(ConfigError, match="stage train is incomplete .* --from train"):
        Launcher(cfg, run, selected=["export"])._check_upstream({})  # export needs train (which needs pack)


def test_dry_run_prints_the_plan_even_before_the_data_is_staged(chdir_root, tmp_path, capsys):
    """recipe=ain names data that is not here: the plan still prints (training after pack, not after
    the curation report; the GPU-hours estimate), then what a launch would refuse, exit 2."""
    from ain.cli import submit_main

    rc = submit_main("test", ["recipe=ain", "cluster=slurm", f"runs_root={tmp_path}", "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "  train: 1 tasks (1 to run), after pack;" in out and "  report: 1 tasks (1 to run), after pack;" in out
    assert "280.0 GPU-hours" in out and "#SBATCH --dependency='afterok:<pack job>'" in out
    assert "serve:eval_judge: one Qwen/Qwen2.5-72B-Instruct server job beside eval; 16 cpu, 4 gpu" in out
    assert "a launch now would be refused" in err and "ingest.sources[0].path" in err
    assert not (tmp_path / "ain").exists()  # a dry run creates no run directory
    # a mistake that is not a missing path still stops the dry run before any plan
    assert submit_main("test", ["recipe=ain", "cluster=slurm", "train.zero_stage=three", "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert "DAG:" not in out and "train.zero_stage" in err


def test_status_training_progress_and_eta(tmp_path):
    from ain.train.telemetry import training_progress

    assert training_progress(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 3.0 / s, "lr": 1e-5, "tokens_per_s": 900.0, "mfu": 0.4, "seconds": sec,
                    "total_steps": 100}) + "\n" for s, sec in [(1, 9.0), (2, 2.0), (3, 2.0), (4, 2.0)]))
    t = training_progress(tmp_path)
    assert t["step"] == 4 and t["loss"] == 0.75 and t["eta_s"] == 96 * 2.0  # median step time, not the slow first


def test_frozen_vision_parameters_count_forward_only():
    # 10 patches through 20 frozen vision parameters: 2 FLOPs per parameter per patch, not 6
    trained = row_flops(100, 20, 2, 4, [8], 10)
    frozen = row_flops(100, 0, 2, 4, [8], 10, n_frozen_vision=20)
    assert trained - frozen == (6 - 2) * 20 * 10
