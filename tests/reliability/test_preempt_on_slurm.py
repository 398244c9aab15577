"""Preemption on the real cluster in the middle of a translation chunk and of an evaluation
domain: `scancel --signal=USR2` (what Slurm's `--signal=USR2@lead` sends ahead of a time limit
or a preemption) reaches the running array element; submitit's `checkpoint()` requeues it; the
requeued task resumes at its last commit. Afterwards every item is in the output exactly once,
in order, the task ran twice (`restarts == 1`) and nothing was resubmitted by hand.

The translate case talks to an `external` endpoint (a real `transformers serve` on this host)
so that the server's start-up does not dominate the task; the code path after the request is
the one every backend takes."""

from __future__ import annotations

import json
import subprocess

import pytest

from ain.serve.server import free_port
from tests.e2e.test_translate_faults import MODEL, ServerProcess, english_ids, translations
from tests.slurm.conftest import wait_until
from tests.slurm.test_eval_on_slurm import fixture_mirror, predictions

pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(not MODEL.exists(), reason="run `make models` first")]


def position(state_file) -> int:
    return json.loads(state_file.read_text())["position"] if state_file.exists() else 0


def preempt(element: str) -> None:
    subprocess.run(["scancel", "--signal=USR2", element], check=True)


def submissions(run) -> list[str]:
    return [e["stage"] for e in run.events() if e["kind"] == "submit"]


def test_usr2_mid_translation_chunk_requeues_and_each_sample_is_translated_once(slurm_run):
    port = free_port()
    server = ServerProcess(port)
    server.start()
    try:
        r = slurm_run("recipe=smoke", "stages=[ingest,translate]", "translate.num_tasks=1",
                      "translate.commit_every=2", "translate.translator.max_concurrency=1",
                      "translate.translator.server.mode=external",
                      f"translate.translator.server.url=http://127.0.0.1:{port}/v1")
        run, report = r.launch()
        translate = run.stage("translate")
        wait_until(lambda: position(translate.state_file(0)) >= 4, 300, "4 translated samples committed")
        preempt(report[1].elements[0])
        r.wait(run, timeout_s=400)
        assert translate.done_indices() == {0}, sorted(p.name for p in translate.failed.glob("*"))
        marker = translate.read_marker(0)
        assert marker["restarts"] == 1 and 4 <= marker["resumed_from"] < len(english_ids(run)), marker
        assert [row["id"] for row in translations(run)] == english_ids(run)  # each sample once, in order
        assert sorted(submissions(run)) == ["ingest", "translate"]           # requeued, not resubmitted
    finally:
        server.kill()


def test_usr2_mid_evaluation_domain_requeues_and_resumes_at_the_committed_prediction(slurm_run, tmp_path):
    data = fixture_mirror(tmp_path / "mirror", ["foodvqa"], 40)  # 120 items, one domain task
    r = slurm_run("recipe=eval_smoke", "eval.datasets=[foodvqa]", f"eval.data_root={data}", "eval.commit_every=1",
                  "eval.batch_size=1", "eval.max_new_tokens=32", "stages=[eval]")
    run, report = r.launch()
    state = run.stage("eval").state_file(0)
    wait_until(lambda: position(state) >= 10, 200, "10 predictions committed")
    preempt(report[0].elements[0])
    r.wait(run, timeout_s=300)
    marker = run.stage("eval").read_marker(0)
    assert marker["restarts"] == 1 and 10 <= marker["resumed_from"] < 120 and marker["items"] == 120, marker
    assert [p["id"] for p in predictions(run, 0)] == [f"foodvqa/{i}" for i in range(120)]  # no gap, no duplicate
    assert submissions(run) == ["eval"]
