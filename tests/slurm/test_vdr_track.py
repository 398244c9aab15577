"""The embedding track end to end on the real two-node cluster: PEARL-shaped fixture ->
vdr_prepare -> vdr_train (two gloo ranks on one node, tiny Qwen3-VL embedder, CachedMNRL in
MatryoshkaLoss) preempted once with USR2 and resumed from its checkpoint -> vdr_eval (one task per
model; the base model's task waits only for vdr_prepare and runs while training does, the
fine-tune's waits for vdr_train) -> vdr_report (table + plots). A second launch submits nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.slurm.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / ".cache/tiny/vdr_embedder"
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_model():
    from ain_testkit.tiny_vdr_embedder import ensure_tiny_vdr_embedder

    return ensure_tiny_vdr_embedder(MODEL)  # stamped: built once per machine


def test_vdr_track_preempted_once_resumes_and_reports(slurm_run, tiny_model, tmp_path):
    from ain_testkit.pearl_fixture import write_pearl_fixture

    pearl = write_pearl_fixture(tmp_path / "pearl")
    steps = 100  # the recipe's
    r = slurm_run("recipe=vdr_smoke", f"vdr_prepare.source={pearl}", "vdr_train.save_steps=4")
    run, report = r.launch()
    assert [s.stage for s in report] == ["vdr_prepare", "vdr_train", "vdr_eval", "vdr_report"]
    assert report[2].num_tasks == 2                           # one leaderboard task per model
    # the fine-tune's task waits for training, the base model's only for the prepared dataset
    waits = {tuple(e["indices"]): e["dependency"] for e in run.events()
             if e["kind"] == "submit" and e["stage"] == "vdr_eval"}
    assert waits == {(0,): [report[1].job_id], (1,): [report[0].job_id]} and len(report[2].job_ids) == 2
    assert report[3].dependency == report[2].job_ids          # the report waits for both arrays
    ckpt = run.stage("vdr_train").out / "ckpt"
    wait_until(lambda: ckpt.is_dir() and any(ckpt.glob("checkpoint-*/trainer_state.json")), 240,
               "a first training checkpoint")
    # USR2 to the job's steps (both ranks), as Slurm does ahead of the time limit.
    subprocess.run(["scancel", "--signal=USR2", report[1].elements[0]], check=True)
    r.wait(run, timeout_s=400)

    train = run.stage("vdr_train").read_marker(0)
    assert train is not None, [p.read_text()[-3000:] for p in run.stage("vdr_train").failed.glob("*")]
    assert train["restarts"] == 1 and train["world_size"] == 2
    assert 0 < train["resumed_from_step"] < steps and train["steps"] == steps
    logs = "".join(p.read_text(errors="ignore") for p in run.stage("vdr_train").logs.glob("*_log.out"))
    assert "requeueing job" in logs and "resuming from" in logs and "rank 1/2" in logs

    base_eval = run.stage("vdr_eval").read_marker(1)
    assert base_eval["end"] < train["end"]                    # evaluated while the fine-tune trained

    prep = run.stage("vdr_prepare").read_marker(0)
    assert (prep["train_queries"], prep["dev_queries"], prep["test_queries"]) == (120 - 48 - prep["counts"].get(
        "dropped_split_overflow", 0), 24, 24)

    results = [json.loads(p.read_text()) for p in sorted(run.stage("vdr_eval").out.glob("results-*.json"))]
    assert len(results) == 2
    for res in results:
        assert set(res["splits"]) == {"dev", "test"} and res["dims"] == [64, 32, 16]
        for split in res["splits"].values():
            assert all(0.0 <= m["ndcg@10"] <= 1.0 for m in split.values())
    by_name = {res["name"].split(" ")[0]: res["splits"]["dev"]["64"]["ndcg@10"] for res in results}
    assert by_name["Ours:"] > by_name["tiny"]                 # training on the fixture does help
    md = (run.root / "report" / "vdr_leaderboard.md").read_text()
    assert "fine-tuned tiny" in md and "0.1238" in md and "Qwen3-VL-Embedding-8B" in md
    assert (run.root / "report" / "vdr_leaderboard.png").stat().st_size > 1000
    print(md)  # the leaderboard of the smoke run (pytest -s shows it)

    _, again = r.launch()
    assert all(not s.submitted for s in again)
