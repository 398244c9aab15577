"""Translation stage faults, against a real `transformers serve` on the tiny smoke translator:
a server that never becomes healthy, a server killed mid-stage, the empty/over-long policy, and
an API key that must not leak into logs or the run directory.

Tasks run in-process through `StageTask` (the object Slurm runs), so the run directory,
markers, failure records and resume behave exactly as on the cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ain.config import load_config
from ain.curate.config import TranslateConfig
from ain.curate.translator import Translator, UntranslatableSample
from ain.rundir import RunDir
from ain.serve.server import check_health, free_port
from ain.slurm.task import StageTask
from tests.stage_helpers import ingested_run

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / ".cache/tiny/translator"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not MODEL.exists(), reason="run `make models` first")]


def prepared_run(tmp_path, *overrides) -> RunDir:
    """A run whose ingest stage is done, ready for translate."""
    return ingested_run(load_config(["recipe=smoke", f"runs_root={tmp_path}", "stages=[ingest,translate]",
                                     "translate.num_tasks=1", *overrides]))


def translations(run: RunDir) -> list[dict]:
    path = run.stage("translate").out / "translations-00000.jsonl"
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def english_ids(run: RunDir) -> list[str]:
    ids = []
    for f in sorted(run.stage("ingest").out.glob("samples-*.jsonl")):
        ids += [json.loads(line)["id"] for line in open(f) if json.loads(line)["language"] == "en"]
    return ids


class ServerProcess:
    """`transformers serve` on a fixed port, killable and restartable from the test."""

    def __init__(self, port: int) -> None:
        self.port, self.proc = port, None
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"serve-{port}.log", "ab")

    def start(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        exe = str(Path(sys.executable).parent / "transformers")
        self.proc = subprocess.Popen([exe, "serve", str(MODEL), "--host", "127.0.0.1", "--port", str(self.port),
                                      "--device", "cpu"], stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.time() + 120
        while not check_health(f"http://127.0.0.1:{self.port}/health", timeout_s=1):
            assert time.time() < deadline and self.proc.poll() is None, "transformers serve did not start"
            time.sleep(0.3)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def test_server_that_never_becomes_healthy_fails_the_task_with_its_log_then_rerun_succeeds(tmp_path, chdir_root):
    never = [sys.executable, "-c", "import time; print('loading weights... stuck', flush=True); time.sleep(600)"]
    run = prepared_run(tmp_path, f"translate.translator.server.command={json.dumps(never)}",
                       "translate.translator.server.startup_timeout_s=3")
    start = time.time()
    with pytest.raises(Exception) as err:
        StageTask(str(run.root), "translate")(0)
    assert time.time() - start < 60
    assert "loading weights... stuck" in str(err.value)
    record = json.loads(run.stage("translate").failure(0).read_text())
    assert "ServerStartError" in record["error"] and "stuck" in record["traceback"]
    # Fixed config, same run: the re-run retries and completes.
    cfg = load_config(["recipe=smoke", f"runs_root={tmp_path}", "stages=[ingest,translate]", "translate.num_tasks=1"])
    run.freeze(cfg, force=True, argv=["test"])
    marker = StageTask(str(run.root), "translate")(0)
    assert marker["translated"] == len(english_ids(run)) and not run.stage("translate").failure(0).exists()


def test_server_killed_mid_stage_loses_and_duplicates_nothing(tmp_path, chdir_root):
    port = free_port()
    server = ServerProcess(port)
    server.start()
    key = secrets.token_hex(16)
    os.environ["AIN_TEST_TRANSLATOR_KEY"] = key
    try:
        run = prepared_run(tmp_path, "translate.translator.server.mode=external",
                           f"translate.translator.server.url=http://127.0.0.1:{port}/v1",
                           "translate.translator.server.api_key_env=AIN_TEST_TRANSLATOR_KEY",
                           "translate.commit_every=4", "translate.translator.max_retries=12",
                           "translate.translator.backoff_max_s=2", "translate.translator.max_concurrency=2")
        cache = run.stage("translate").state / "responses-00000.jsonl"

        killed_after: list[int] = []

        def chaos():  # kill the server once some answers are in, restart it on the same port
            while not cache.exists() or len(cache.read_text().splitlines()) < 10:
                time.sleep(0.05)
            server.kill()
            killed_after.append(len(cache.read_text().splitlines()))
            time.sleep(1.0)
            server.start()

        killer = threading.Thread(target=chaos)
        killer.start()
        marker = StageTask(str(run.root), "translate")(0)
        killer.join()
        assert killed_after and killed_after[0] < len(cache.read_text().splitlines())  # truly mid-stage
        rows = translations(run)
        assert [r["id"] for r in rows] == english_ids(run)          # each sample once, in order
        assert marker["translated"] == len(rows)
        assert all(r["attempts"][0]["error"] is None or "markers" in r["attempts"][0]["error"] for r in rows)
        # The key was sent on every request but never written anywhere.
        for path in run.root.rglob("*"):
            if path.is_file():
                assert key not in path.read_text(errors="ignore"), path
    finally:
        os.environ.pop("AIN_TEST_TRANSLATOR_KEY", None)
        server.kill()


def test_empty_and_over_long_turns_follow_the_policy():
    translator = Translator(client=None, cfg=TranslateConfig(max_chars=20, over_long="skip"))
    with pytest.raises(UntranslatableSample, match="over_long"):
        translator.prepare({"turns": [{"role": "user", "content": "x" * 21}]})
    with pytest.raises(UntranslatableSample, match="empty"):
        translator.prepare({"turns": [{"role": "user", "content": "<image>\n"}, {"role": "assistant", "content": "42"}]})
    truncating = Translator(client=None, cfg=TranslateConfig(max_chars=5, over_long="truncate"))
    turns = truncating.prepare({"turns": [{"role": "user", "content": "Hello world"}]})
    assert turns[0]["en"] == "Hello" and turns[0]["truncated"]
