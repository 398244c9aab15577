"""The evaluation track on the real two-node Slurm cluster, with the tiny Qwen2-VL
(.cache/tiny/judge) on fixture data shaped like the real datasets (tests/fixtures/eval):
one array task per CAMEL-Bench domain (large domains per dataset), ArabicMMLU and an English
benchmark, then the report; and a task killed mid-domain that resumes exactly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from ain.atomic import iter_jsonl
from ain.slurm.status import collect
from tests.slurm.conftest import ROOT, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

FIXTURES = ROOT / "tests/fixtures/eval"


def kill_task_processes(logs: Path) -> None:
    """SIGKILL the task's Python process (found by its unique submitit folder), as an OOM kill or a
    node crash would: no USR2, no checkpoint. (scancel --signal=KILL on this one-host cluster
    stops srun but can leave the task process running.)"""
    out = subprocess.run(["pgrep", "-f", f"submitit.core._submit {logs}"], capture_output=True, text=True).stdout
    pids = [int(p) for p in out.split()]
    assert pids, "task process not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def fixture_mirror(root: Path, datasets: list[str], repeat: int) -> Path:
    """A local mirror whose `datasets` each hold the foodvqa fixture rows `repeat` times (a domain
    long enough for a fault to land mid-way), with the fixture images."""
    (root / "images").mkdir(parents=True)
    for f in (FIXTURES / "images").iterdir():
        shutil.copy(f, root / "images" / f.name)
    rows = (FIXTURES / "foodvqa.jsonl").read_text().splitlines()
    for name in datasets:
        (root / f"{name}.jsonl").write_text("\n".join(rows * repeat) + "\n")
    return root


def predictions(run, index):
    return list(iter_jsonl(run.stage("eval").out / f"predictions-{index:05d}.jsonl"))


def test_eval_array_per_domain_and_report(slurm_run):
    r = slurm_run("recipe=eval_smoke", "eval.datasets=[mme,khatt,chartqa,foodvqa,geochat,arabic_mmlu,chartqa_en]")
    run, report = r.launch()
    units = ["camel_bench/mm_understanding/mme", "camel_bench/ocr/khatt", "camel_bench/charts", "camel_bench/cultural",
             "camel_bench/remote_sensing", "arabic_mmlu/arabic_mmlu", "english/chartqa_en"]
    assert report[0].stage == "eval" and report[0].submitted == list(range(len(units)))
    r.wait(run, timeout_s=300)
    status = {s.name: s for s in collect(run)}
    assert status["eval"].done == len(units) and status["eval_report"].done == 1, status
    paths = run.stage("eval")
    assert [paths.read_marker(i)["unit"] for i in range(len(units))] == units
    # every fixture item has exactly one prediction
    assert [p["id"] for p in predictions(run, 0)] == ["mme/0", "mme/1", "mme/2"]
    assert [p["id"] for p in predictions(run, 5)] == [f"arabic_mmlu/{i}" for i in range(6)]  # few-shot row skipped
    assert all(p["prediction"] in "ABCDE" and len(p["logits"]) == len(p["meta"]["letters"]) for p in predictions(run, 5))
    data = json.loads((run.root / "report/eval.json").read_text())
    md = (run.root / "report/eval.md").read_text()
    assert data["datasets"]["chartqa"]["status"] == "answers withheld: not scored"
    assert "| chartqa | CDT | 2 | 0 | 0 | — | answers withheld: not scored |" in md
    assert data["datasets"]["geochat"]["unscored"] == {"no LLM judge configured (eval.judge.model)": 2}
    assert data["datasets"]["khatt"]["scored"] == 3 and data["datasets"]["chartqa_en"]["scored"] == 3
    assert "| AIN-7B | 56.78 | 72.35 |" in md and "| **tiny Qwen2-VL** |" in md
    assert {p.name for p in (run.root / "report").glob("*.png")} == {
        "eval_camel_bench.png", "eval_arabic_mmlu.png", "eval_english.png"}


def test_task_killed_mid_domain_resumes_without_duplicates_or_gaps(slurm_run, tmp_path):
    # A bigger cultural domain (two datasets, 2 x 150 items, long generations) so the kill lands mid-domain.
    data = fixture_mirror(tmp_path / "mirror", ["foodvqa", "celebvqa"], 50)
    r = slurm_run("recipe=eval_smoke", "eval.datasets=[foodvqa,celebvqa]", f"eval.data_root={data}",
                  "eval.commit_every=1", "eval.batch_size=1", "eval.max_new_tokens=64", "stages=[eval]")
    run, report = r.launch()
    state = run.stage("eval").state_file(0)
    wait_until(lambda: state.exists() and json.loads(state.read_text())["position"] >= 20, 150, "20 predictions")
    kill_task_processes(run.stage("eval").logs)
    r.wait(run, timeout_s=120)
    killed_at = json.loads(state.read_text())["position"]
    assert not run.stage("eval").done_indices() and 20 <= killed_at < 300, killed_at

    _, again = r.launch()
    assert again[0].submitted == [0]
    r.wait(run, timeout_s=240)
    marker = run.stage("eval").read_marker(0)
    assert marker["resumed_from"] == killed_at and marker["items"] == 300
    ids = [p["id"] for p in predictions(run, 0)]
    assert ids == [f"celebvqa/{i}" for i in range(150)] + [f"foodvqa/{i}" for i in range(150)]  # registry order
    scored = list(iter_jsonl(run.stage("eval").out / "scored-00000.jsonl"))
    assert [s["id"] for s in scored] == ids


def test_endpoint_backend_asks_the_same_prompts_through_transformers_serve(slurm_run):
    """The endpoint backend: each task starts `transformers serve` on the tiny model (the code path
    that starts vLLM on a cluster) and sends the same prompts and resized images."""
    r = slurm_run("recipe=eval_smoke", "eval.backend=endpoint", "eval.datasets=[mme,foodvqa,arabic_mmlu]")
    run, report = r.launch()
    r.wait(run, timeout_s=300)
    assert len(run.stage("eval").done_indices()) == 3 and run.stage("eval_report").done_indices() == {0}
    preds = predictions(run, 0)
    assert [p["id"] for p in preds] == ["mme/0", "mme/1", "mme/2"] and {p["backend"] for p in preds} == {"endpoint"}
    assert all(isinstance(p["prediction"], str) for p in preds)
    assert list(run.stage("eval").logs.glob("eval_model.server.*.log"))          # the server really ran
    data = json.loads((run.root / "report/eval.json").read_text())
    assert data["arabic_mmlu"]["endpoint_logprobs"] is True
    assert "endpoint backend: the top-20 logprobs of /v1/completions" in (run.root / "report/eval.md").read_text()


def test_endpoint_backend_with_one_shared_server(slurm_run):
    """eval.endpoint.server.mode=shared: one server job serves the model under evaluation to the
    whole array (tasks find it through the run directory) and stops when the array is done."""
    r = slurm_run("recipe=eval_smoke", "eval.backend=endpoint", "eval.datasets=[mme,foodvqa]",
                  "eval.endpoint.server.mode=shared", "eval.endpoint.server.host=0.0.0.0",
                  "eval.endpoint.server.shared_resources={cpus_per_task: 1, gpus_per_node: 0, mem_gb: 1, time_min: 30}")
    run, report = r.launch()
    assert [s.stage for s in report] == ["eval", "serve:eval_model", "eval_report"]
    r.wait(run, timeout_s=300)
    assert len(run.stage("eval").done_indices()) == 2 and run.stage("eval_report").done_indices() == {0}
    assert {p["backend"] for p in predictions(run, 0)} == {"endpoint"}
    assert not list(run.stage("eval").logs.glob("eval_model.server.*.log"))       # no server per task
    assert list((run.root / "serve").glob("eval_model.shared-server.*.log"))
