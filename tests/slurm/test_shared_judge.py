"""`shared` judge mode on the real cluster: one server job (transformers serve on the tiny
translator) beside CPU-only client arrays that find it through the run directory."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(not (ROOT / ".cache/tiny/translator").exists(), reason="run `make models` first")]


def test_client_arrays_use_one_shared_server_that_stops_when_they_are_done(slurm_run):
    r = slurm_run("recipe=smoke", "stages=[ingest,translate]", "translate.translator.server.mode=shared",
                  "translate.translator.server.host=0.0.0.0",
                  "translate.translator.server.shared_resources={cpus_per_task: 1, gpus_per_node: 0, mem_gb: 1, time_min: 30}")
    run, report = r.launch()
    stages = [s.stage for s in report]
    assert stages == ["ingest", "translate", "serve:translator"]
    server = report[2]
    assert server.dependency == [report[0].job_id]        # starts when the clients can start
    r.wait(run, timeout_s=400)
    translate = run.stage("translate")
    assert translate.done_indices() == {0, 1}
    assert sum(translate.read_marker(i)["translated"] for i in (0, 1)) == 43
    # The clients started no server of their own; the shared one logged, then left.
    assert not list(translate.logs.glob("translator.server.*"))
    assert list((run.root / "serve").glob("translator.shared-server.*.log"))
    assert not (run.root / "serve" / "translator.json").exists()
