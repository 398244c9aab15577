"""`python jobs/submit_train.py recipe=smoke` end to end, through the real entry point, on
submitit's local executor and on the local Slurm cluster; a second run must do no work.

The smoke recipe runs ingest -> translate -> verify with a tiny translator (memorised fixture
table, three entries deliberately wrong) behind a real `transformers serve` server, so the gate
must pass the correct translations and reject exactly the corrupted samples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ain.rundir import RunDir
from tests.stage_helpers import jsonl_row_starts

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = json.loads((ROOT / "tests/fixtures/smoke/expected.json").read_text())
TABLE = json.loads((ROOT / "tests/fixtures/translator/translations.json").read_text())


def rows(paths, pattern):
    return [json.loads(line) for f in sorted(paths.out.glob(pattern)) for line in open(f, encoding="utf-8")]


def submit(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "jobs/submit_train.py", "recipe=smoke", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def check_smoke_outputs(run: RunDir) -> None:
    paths = run.stage("ingest")
    markers = [paths.read_marker(i) for i in range(2)]
    assert all(markers), "both ingest tasks have markers"
    assert sum(m["ingested"] for m in markers) == EXPECTED["good_total"]
    assert sum(m["quarantined"] for m in markers) == EXPECTED["bad_total"]
    samples = rows(paths, "samples-*.jsonl")
    ids = [s["id"] for s in samples]
    assert len(ids) == len(set(ids)) == EXPECTED["good_total"]
    check_translation(run, [s for s in samples if s["language"] == "en"])
    check_mix_pack_report(run)
    check_train_export(run)
    check_eval(run)


def check_eval(run: RunDir) -> None:
    """The exported model went through the evaluation array (one task per selected unit) and the
    report sets it beside the published rows."""
    cfg = run.load_config()
    assert len(run.stage("eval").done_indices()) == cfg.eval.num_tasks >= 4
    report = (run.root / "report" / "eval.md").read_text()
    assert "| **smoke fine-tune** |" in report and "| AIN-7B | 56.78 |" in report
    assert "answers withheld: not scored" in report  # chartqa's fixture answers are blank, as on the hub


def check_train_export(run: RunDir) -> None:
    """Two ranks trained on the packed shards (loss fell), and the export loads and generates."""
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    marker = run.stage("train").read_marker(0)
    assert marker["world_size"] == 2 and marker["steps"] >= 3 and marker["final_loss"] < marker["first_loss"]
    metrics = [json.loads(line) for line in open(run.stage("train").out / "metrics.jsonl")]
    assert [m["step"] for m in metrics] == list(range(1, marker["steps"] + 1))
    ids = [[i for line in open(run.stage("train").out / f"samples-rank{r}.jsonl") for i in json.loads(line)["ids"]]
           for r in (0, 1)]
    assert len(ids[0]) == marker["items"] and ids[1] and not set(ids[0]) & set(ids[1])  # disjoint shards per rank
    model_dir = run.stage("export").out / "model"
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    inputs = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
                                           add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def check_mix_pack_report(run: RunDir) -> None:
    from ain.data.shards import iter_samples, read_manifest

    mixed = rows(run.stage("mix"), "mixed-*.jsonl")
    # tests/fixtures/safety/verdicts.json makes the tiny judge flag two images and two texts:
    # (a JSON-lines row's id carries the byte offset of its line: the fourth line of mixed_sharegpt)
    fourth = jsonl_row_starts((ROOT / "tests/fixtures/smoke/mixed_sharegpt.jsonl").read_bytes())[3]
    unsafe = {"en_llava-9", "ar_native-1", "ar_native-12", "en_llava-35", "en_llava-11", f"mixed_sharegpt-{fourth}"}
    mixed_ids = {s["id"] for s in mixed}
    assert not mixed_ids & (unsafe | {f"{i}-ar" for i in unsafe})
    safety = [run.stage("safety").read_marker(i) for i in range(2)]
    assert sum(m["images_unsafe"] for m in safety) == 2 and sum(m["texts_unjudged"] for m in safety) == 0
    judged = [json.loads(line)["image"] for f in sorted(run.stage("safety").out.glob("images-*.jsonl")) for line in open(f)]
    assert len(judged) == len(set(judged)) == EXPECTED["unique_images"]   # each unique image judged once
    packed = list(iter_samples(run.stage("pack").out))              # checksums verified
    assert [s["id"] for s, _ in packed] == [s["id"] for s in mixed]  # every sample once, mix order
    assert sum(e["samples"] for e in read_manifest(run.stage("pack").out)) == len(mixed)
    assert len(read_manifest(run.stage("pack").out)) >= 3
    report = (run.root / "report" / "curation.md").read_text()
    assert f"| pack | {len(mixed)} | {len(mixed)} |" in report
    assert all((run.root / "report" / name).exists()
               for name in ("funnel.png", "verify_scores.png", "safety_categories.png", "mix.png"))


def check_translation(run: RunDir, english: list[dict]) -> None:
    from ain.curate.protect import mask

    corrupted = {s["id"] for s in english if any(mask(t["content"]).text in TABLE["corrupt"] for t in s["turns"])}
    assert len(corrupted) == 3
    translate = [run.stage("translate").read_marker(i) for i in range(2)]
    assert sum(m["translated"] for m in translate) == len(english)
    verify = [run.stage("verify").read_marker(i) for i in range(2)]
    total = lambda key: sum(m.get(key, 0) for m in verify)  # noqa: E731
    assert total("passed") == total("passed_first_try") == len(english) - 3
    assert total("rejected") == 3 and total("retranslations") == 3 * run.load_config().verify.max_retranslations
    rejected = rows(run.stage("verify"), "rejected-*.jsonl")
    assert {r["id"] for r in rejected} == corrupted
    reasons = " ".join(" ".join(r["reasons"]) for r in rejected)
    assert "markers" in reasons and "bleu4" in reasons
    passed = {s["translation_of"]: s for s in rows(run.stage("verify"), "passed-*.jsonl")}
    assert set(passed) == {s["id"] for s in english} - corrupted
    for original in english:
        if original["id"] in passed:
            arabic = passed[original["id"]]
            assert arabic["images"] == original["images"] and arabic["language"] == "ar"
            for en_turn, ar_turn in zip(original["turns"], arabic["turns"]):
                assert en_turn["content"].count("<image>") == ar_turn["content"].count("<image>")
                masked = mask(en_turn["content"]).text
                if masked in TABLE["pairs"]:  # the memorised translation, spans restored
                    assert mask(ar_turn["content"]).text == TABLE["pairs"][masked]


def submits(run: RunDir) -> list[dict]:
    return [e for e in run.events() if e["kind"] == "submit"]


@pytest.mark.slow
def test_smoke_on_local_executor_then_rerun_does_nothing(tmp_path):
    first = submit(f"runs_root={tmp_path}", "cluster.executor=local")
    assert f"run directory: {tmp_path}/smoke" in first.stdout
    run = RunDir(tmp_path / "smoke")
    check_smoke_outputs(run)
    before = submits(run)
    second = submit(f"runs_root={tmp_path}", "cluster.executor=local")
    assert "ingest: 2/2 done; nothing to do" in second.stdout and "export: 1/1 done; nothing to do" in second.stdout
    assert submits(run) == before


@pytest.mark.slow
@pytest.mark.slurm
def test_smoke_on_slurm_then_rerun_does_nothing(slurm_cluster, tmp_path):
    first = submit(f"runs_root={tmp_path}", "cluster=localslurm", "--wait")
    for stage, n in (("ingest", 2), ("translate", 2), ("verify", 2), ("safety", 2), ("mix", 1), ("pack", 2),
                     ("report", 1), ("train", 1), ("export", 1), ("eval", 6), ("eval_report", 1)):
        assert f"{stage}: 0/{n} done; submitted {n} task(s) as job" in first.stdout, first.stdout
    run = RunDir(tmp_path / "smoke")
    check_smoke_outputs(run)
    status = subprocess.run([sys.executable, "jobs/status.py", str(run.root)], cwd=ROOT, capture_output=True, text=True)
    assert status.returncode == 0 and "done" in status.stdout, status.stdout + status.stderr
    before = submits(run)
    second = submit(f"runs_root={tmp_path}", "cluster=localslurm")
    assert "nothing to do" in second.stdout and submits(run) == before
