"""An API key given through the environment never lands in a file: the translate stage runs on
the real cluster against an `external` endpoint (a real `transformers serve` on this host, which
both fake nodes reach) with `server.api_key_env` naming a variable that holds a random key. The
jobs inherit the variable from the launch (sbatch exports the environment), send the key on every
request, and afterwards no file under the run directory — config, events, submitit pickles and
sbatch scripts, Slurm's per-task stdout/stderr logs, caches, outputs — contains it."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from ain.serve.server import free_port
from tests.e2e.test_translate_faults import MODEL, ServerProcess

pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(not MODEL.exists(), reason="run `make models` first")]


def test_api_key_from_the_environment_is_in_no_file_of_a_slurm_run(slurm_run, monkeypatch):
    port = free_port()
    server = ServerProcess(port)
    server.start()
    key = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv("AIN_TEST_SLURM_KEY", key)
    try:
        r = slurm_run("recipe=smoke", "stages=[ingest,translate]", "translate.translator.server.mode=external",
                      f"translate.translator.server.url=http://127.0.0.1:{port}/v1",
                      "translate.translator.server.api_key_env=AIN_TEST_SLURM_KEY")
        run, report = r.launch()
        r.wait(run, timeout_s=400)
        translate = run.stage("translate")
        assert translate.done_indices() == {0, 1}, sorted(p.name for p in translate.failed.glob("*"))
        assert sum(translate.read_marker(i)["translated"] for i in (0, 1)) == 43  # requests were made
        files = [p for p in Path(run.root).rglob("*") if p.is_file()]
        assert any(p.name.endswith("_log.out") for p in files) and any(p.suffix == ".pkl" for p in files)
        leaked = [str(p) for p in files if key.encode() in p.read_bytes()]
        assert not leaked, leaked
    finally:
        server.kill()
