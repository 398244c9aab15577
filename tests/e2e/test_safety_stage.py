"""The safety stage end to end: ingest of the smoke fixtures, then the safety stage's tasks
in-process through `StageTask` (markers, resume, failure records as on the cluster), against a
real `transformers serve` on the tiny judge (lib/ain_testkit/tiny_judge.py), which memorised
tests/fixtures/safety/verdicts.json.

The judge is reused from .cache/tiny/judge (or $AIN_TINY_JUDGE) when its build stamp matches,
else built once per session into a temporary directory (about 45 s).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from ain.config import load_config, validate
from ain.config_base import ServerConfig
from ain.curate.safety import JUDGED, UNJUDGED, UNSAFE, image_task, judge_text, load_verdicts, sample_safety
from ain.rundir import RunDir
from ain.slurm.task import StageTask
from tests.stage_helpers import ingested_run

ROOT = Path(__file__).resolve().parents[2]
TRANSLATOR = ROOT / ".cache/tiny/translator"
VERDICTS = json.loads((ROOT / "tests/fixtures/safety/verdicts.json").read_text(encoding="utf-8"))
SERVE = ["transformers", "serve", "{model}", "--host", "{host}", "--port", "{port}", "--device", "cpu"]
SERVE_ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def judge_dir(tmp_path_factory) -> Path:
    from ain_testkit.tiny_judge import build_tiny_judge, stamp_matches

    for candidate in (os.environ.get("AIN_TINY_JUDGE"), ROOT / ".cache/tiny/judge"):
        if candidate and stamp_matches(candidate):
            return Path(candidate)
    out = tmp_path_factory.mktemp("tiny") / "judge"
    stats = build_tiny_judge(out)
    assert stats["exact"] == stats["examples"]
    return out


def judge_cfg(judge, model: Path | str, max_tokens: int = 64) -> None:
    judge.model = str(model)
    judge.server = ServerConfig(command=list(SERVE), env=dict(SERVE_ENV), startup_timeout_s=180)
    judge.max_tokens = max_tokens
    judge.max_concurrency = 4
    judge.backoff_base_s = judge.backoff_max_s = 0.05


def prepared_run(tmp_path: Path, vision_model, text_model, num_tasks: int, *, text_max_tokens: int = 64,
                 text_retries: int = 6) -> RunDir:
    """A run whose ingest stage is done, ready for safety."""
    cfg = load_config(["recipe=smoke", f"runs_root={tmp_path}", "stages=[ingest,safety]",
                       f"safety.num_tasks={num_tasks}", "safety.commit_every=8"])
    judge_cfg(cfg.safety.vision_judge, vision_model)
    judge_cfg(cfg.safety.text_judge, text_model, text_max_tokens)
    cfg.safety.text_judge.max_retries = text_retries
    # these tests put the tiny JSON judge in both roles: the policy-JSON text path (the smoke recipe's
    # own text guard answers in Qwen3Guard's format: tests/e2e/test_real_vllm.py, test_smoke.py)
    cfg.safety.text_judge_format = "policy_json"
    validate(cfg)
    return ingested_run(cfg)


def rows(run: RunDir, pattern: str) -> dict[int, list[dict]]:
    out = {}
    for path in sorted(run.stage("safety").out.glob(pattern)):
        index = int(path.stem.split("-")[1])
        out[index] = [json.loads(line) for line in open(path, encoding="utf-8")]
    return out


def ingested(run: RunDir) -> list[dict]:
    samples = []
    for path in sorted(run.stage("ingest").out.glob("samples-*.jsonl")):
        samples += [json.loads(line) for line in open(path, encoding="utf-8")]
    return samples


def fixture_image_names() -> dict[str, str]:
    """fixture file name -> store name (sha256 of the bytes + extension)."""
    images = ROOT / "tests/fixtures/smoke/images"
    return {f: f"{hashlib.sha256((images / f).read_bytes()).hexdigest()}.{f.rsplit('.', 1)[1]}"
            for f in VERDICTS["images"]}


def totals(markers: list[dict]) -> Counter:
    total: Counter = Counter()
    for m in markers:
        total.update({k: v for k, v in m.items() if k.startswith(("images_", "texts_", "unsafe_"))})
    return total


def test_each_item_judged_once_with_the_memorised_verdicts(tmp_path, chdir_root, judge_dir):
    num_tasks = 3
    run = prepared_run(tmp_path, judge_dir, judge_dir, num_tasks)
    markers = [StageTask(str(run.root), "safety")(i) for i in range(num_tasks)]
    samples = ingested(run)

    # Images: every unique image exactly once across the tasks, in the task its hash names.
    image_rows = rows(run, "images-*.jsonl")
    assert sorted(image_rows) == list(range(num_tasks))
    for i, task_rows in image_rows.items():
        assert all(image_task(r["image"], num_tasks) == i for r in task_rows)
    judged_images = [r["image"] for task_rows in image_rows.values() for r in task_rows]
    assert Counter(judged_images).most_common(1)[0][1] == 1
    assert set(judged_images) == {name for s in samples for name in s["images"]}
    assert len(judged_images) == 37  # tests/fixtures/smoke/README.md

    unsafe_images = {name: VERDICTS["images"][f] for f, name in fixture_image_names().items()}
    for r in (r for task_rows in image_rows.values() for r in task_rows):
        assert r["status"] == JUDGED and r["judge"] == "vision", r
        expected = unsafe_images.get(r["image"], VERDICTS["default"])
        assert (r["rating"], r["category"]) == (expected["rating"], expected["category"]), r
        assert r["rationale"] == expected["rationale"]

    # Texts: every turn with letters exactly once, in its sample's task; verdicts as memorised.
    text_rows = rows(run, "texts-*.jsonl")
    by_key = {}
    for i, task_rows in text_rows.items():
        for r in task_rows:
            assert (r["sample_id"], r["turn"]) not in by_key
            by_key[(r["sample_id"], r["turn"])] = (i, r)
    expected_keys = {}
    for g, s in enumerate(samples):
        for t, turn in enumerate(s["turns"]):
            if (text := judge_text(turn["content"])) is not None:
                expected_keys[(s["id"], t)] = (g % num_tasks, text)
    assert set(by_key) == set(expected_keys)
    unsafe_text_rows = 0
    for key, (task, text) in expected_keys.items():
        i, r = by_key[key]
        assert i == task and r["status"] == JUDGED, r
        expected = VERDICTS["texts"].get(text, VERDICTS["default"])
        assert (r["rating"], r["category"]) == (expected["rating"], expected["category"]), (text, r)
        unsafe_text_rows += expected["rating"] == UNSAFE
    assert unsafe_text_rows >= 2  # the designated English turns are in the ingested samples

    # Counters match the files.
    total = totals(markers)
    all_images = [r for task_rows in image_rows.values() for r in task_rows]
    all_texts = [r for _, r in by_key.values()]
    assert total["images_judged"] == len(all_images) and total["images_unjudged"] == 0
    assert total["images_unsafe"] == 2 == sum(r["rating"] == UNSAFE for r in all_images)
    assert total["texts_judged"] == len(all_texts) and total["texts_unjudged"] == 0
    assert total["texts_unsafe"] == unsafe_text_rows
    assert total["unsafe_O2"] == 1 and total["unsafe_O9"] == 1 and total["unsafe_O6"] == unsafe_text_rows
    for m in markers:
        assert m["files"]["images"]["rows"] == m["images_judged"] + m["images_unjudged"]
        assert m["files"]["texts"]["rows"] == m["texts_judged"] + m["texts_unjudged"]

    # Same model and server for both judges: one server, under the vision judge's name (in-process
    # tasks share a pid, so their server logs share a file).
    logs = {p.name.split(".")[0] for p in run.stage("safety").logs.glob("*.server.*.log")}
    assert logs == {"vision_judge"}, logs

    # What the mix stage will do with it.
    images, texts = load_verdicts(run)
    decisions = {s["id"]: sample_safety(s, images, texts, "drop") for s in samples}
    dropped = {sid: d for sid, d in decisions.items() if not d[0]}
    expected_drops = {}
    for s in samples:
        hit_images = [unsafe_images[n] for n in s["images"] if n in unsafe_images]
        hit_texts = [VERDICTS["texts"][judge_text(t["content"]) or ""] for t in s["turns"]
                     if (judge_text(t["content"]) or "") in VERDICTS["texts"]]
        if hit_images:
            expected_drops[s["id"]] = (False, "unsafe_image", hit_images[0]["category"].split(":")[0])
        elif hit_texts:
            expected_drops[s["id"]] = (False, "unsafe_text", hit_texts[0]["category"].split(":")[0])
    assert dropped == expected_drops and len(dropped) >= 4

    # Done tasks are skipped on a re-run.
    assert StageTask(str(run.root), "safety")(0) == markers[0]


@pytest.mark.skipif(not (TRANSLATOR / "config.json").exists(), reason="run `make models` first (tiny translator)")
def test_invalid_answers_are_recorded_unjudged_never_safe(tmp_path, chdir_root, judge_dir):
    # The tiny translator answers with (Arabic or English) text, never JSON: every text turn
    # stays unjudged after the client's retries; the images are judged by the real judge on a
    # second endpoint.
    run = prepared_run(tmp_path, judge_dir, TRANSLATOR, 1, text_max_tokens=12, text_retries=1)
    marker = StageTask(str(run.root), "safety")(0)

    texts = rows(run, "texts-*.jsonl")[0]
    assert texts and all(r["status"] == UNJUDGED and r["rating"] is None for r in texts)
    assert all(len(r["raw"]) == 2 and all(isinstance(x, str) for x in r["raw"]) for r in texts)  # 1 + 1 retry
    assert all("not JSON" in r["error"] or "schema" in r["error"] for r in texts)
    assert marker["texts_unjudged"] == len(texts) and marker["texts_judged"] == 0 and marker["texts_unsafe"] == 0
    images = rows(run, "images-*.jsonl")[0]
    assert len(images) == 37 and all(r["status"] == JUDGED for r in images)
    assert marker["images_judged"] == 37 and marker["images_unsafe"] == 2
    logs = sorted(p.name.split(".")[0] for p in run.stage("safety").logs.glob("*.server.*.log"))
    assert logs == ["text_judge", "vision_judge"]

    # Nothing unjudged counts as safe: dropped under "drop", kept but flagged under "keep".
    image_verdicts, text_verdicts = load_verdicts(run)
    unsafe_images = set(fixture_image_names().values())
    for s in ingested(run):
        has_text = any(judge_text(t["content"]) for t in s["turns"])
        drop = sample_safety(s, image_verdicts, text_verdicts, "drop")
        keep = sample_safety(s, image_verdicts, text_verdicts, "keep")
        if unsafe_images & set(s["images"]):
            assert drop[:2] == keep[:2] == (False, "unsafe_image")
        elif has_text:
            assert drop == (False, "unjudged", None) and keep == (True, "unjudged", None)
        else:
            assert drop == keep == (True, None, None)



# Against a scripted fake endpoint (tests/serve_helpers.py): fast, no model ------------------------
SAFE_JSON = json.dumps({"rating": "Safe", "category": "NA: None applying", "rationale": "fine"})


def fake_run(tmp_path: Path, url: str, retries: int = 1) -> RunDir:
    cfg = load_config(["recipe=smoke", f"runs_root={tmp_path}", "stages=[ingest,safety]", "safety.num_tasks=1",
                       "safety.commit_every=8"])
    for judge in (cfg.safety.vision_judge, cfg.safety.text_judge):
        judge.model = "fake-judge"
        judge.server = ServerConfig(mode="external", url=url)
        judge.max_retries, judge.max_concurrency = retries, 4
        judge.backoff_base_s = judge.backoff_max_s = 0.01
    cfg.safety.text_judge_format = "policy_json"  # the fake answers LlavaGuard's JSON for both roles
    validate(cfg)
    return ingested_run(cfg)


def test_endpoint_failure_mid_task_resumes_without_loss_or_duplicates(tmp_path, chdir_root):
    from tests.serve_helpers import FakeChatServer

    ok = {"kind": "content", "text": SAFE_JSON}
    down = {"kind": "status", "status": 503}
    with FakeChatServer([ok] * 20 + [down] * 400, default_content=SAFE_JSON) as fake:
        run = fake_run(tmp_path, fake.base_url)
        with pytest.raises(Exception, match="EndpointUnavailable|failed"):
            StageTask(str(run.root), "safety")(0)
        state = json.loads(run.stage("safety").state_file(0).read_text())
        assert 0 < state["position"] < 150  # some windows committed, not all
        fake.script.clear()  # the endpoint is back
        marker = StageTask(str(run.root), "safety")(0)
    assert marker["resumed_from"] == state["position"]
    samples = ingested(run)
    images = [r["image"] for r in rows(run, "images-*.jsonl")[0]]
    texts = [(r["sample_id"], r["turn"]) for r in rows(run, "texts-*.jsonl")[0]]
    assert sorted(images) == sorted({n for s in samples for n in s["images"]})
    expected = [(s["id"], t) for s in samples for t, turn in enumerate(s["turns"]) if judge_text(turn["content"])]
    assert texts == expected  # each once, in input order
    assert marker["images_judged"] == 37 and marker["texts_judged"] == len(expected)
    assert marker["images_unsafe"] == marker["texts_unsafe"] == marker["images_unjudged"] == 0


@pytest.mark.parametrize("answer, status, rating", [
    ({"rating": "Unsafe", "category": "O5: Criminal Planning", "rationale": "x"}, JUDGED, "Safe"),
    ({"rating": "Unsafe", "category": "NA: None applying", "rationale": "x"}, UNJUDGED, None),
    ({"rating": "Unsafe", "category": "X1: Made up", "rationale": "x"}, UNJUDGED, None),
])
def test_answers_outside_the_screened_policy(tmp_path, chdir_root, answer, status, rating):
    from tests.serve_helpers import FakeChatServer

    with FakeChatServer([], default_content=json.dumps(answer)) as fake:
        run = fake_run(tmp_path, fake.base_url, retries=0)
        marker = StageTask(str(run.root), "safety")(0)
    every = rows(run, "images-*.jsonl")[0] + rows(run, "texts-*.jsonl")[0]
    assert every and all(r["status"] == status and r["rating"] == rating for r in every)
    if status == JUDGED:  # O5 is not screened by default: Safe, with what the judge said kept
        assert all(r["reported_rating"] == "Unsafe" and r["code"] == "O5" for r in every)
        assert marker["unscreened_unsafe"] == len(every) and marker["images_unsafe"] == 0
    else:
        assert all(r["raw"] and json.loads(r["raw"][-1]) == answer for r in every)
        assert marker["images_unjudged"] + marker["texts_unjudged"] == len(every)
        assert marker["images_judged"] == marker["texts_judged"] == 0


def test_tiny_judge_renders_requests_as_the_server_does():
    from transformers.cli.serving.utils import BaseHandler, Modality

    from ain.curate.safety import text_messages, vision_messages
    from ain_testkit.tiny_judge import _server_messages_fallback

    for messages in (vision_messages("POLICY", "data:image/png;base64,AAAA"), text_messages("Judge {text}", "x"),
                     [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "t"}]}]):
        assert _server_messages_fallback(messages) == BaseHandler.get_processor_inputs_from_messages(
            messages, Modality.VLM)
