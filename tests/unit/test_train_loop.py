"""ain.train.loop: streaming packer (exact resume of its window) and the DeepSpeed loop on a tiny
Qwen2-VL on CPU (loss falls; stop + resume continues exactly)."""

from __future__ import annotations

import io
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ain.data.shards import ShardWriter, read_manifest
from ain.train.checkpoint import discard_unadopted, prune_checkpoints, write_latest
from ain.train.collate import pack_stream
from ain.train.loop import Replayed, StreamPacker
from ain.train.stream import ShardDataset, StateTracker

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ packer (fast)
def _fake_shards(root: Path, sizes, seed=0):
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    entries, n, lengths = [], 0, {}
    for k, size in enumerate(sizes):
        w = ShardWriter(root / f"shard-000-{k:05d}.tar")
        for _ in range(size):
            sid = f"s{n:04d}"
            lengths[sid] = rng.choice([0, rng.randint(5, 60)]) if n % 7 == 3 else rng.randint(5, 60)
            w.add({"id": sid, "images": [], "language": "ar", "domain": "x", "len": lengths[sid]}, [])
            n += 1
        entries.append(w.close())
    with open(root / "manifest-000.jsonl", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in entries)
    return read_manifest(root), lengths


def _fake_transform(sample, images):
    length = sample["len"]
    if length == 0:  # a sample encode_sample would drop
        return sample["id"], None, None, "bad_image"
    return sample["id"], SimpleNamespace(length=length), None, None


def _packer(root, manifest, state=None, buffer=4, num_workers=0, epoch=0):
    tracker = StateTracker(num_workers, epoch=epoch, state=state.tracker if state else None)
    ds = ShardDataset(root, manifest, rank=0, world_size=1, num_workers=num_workers, seed=1, epoch=epoch,
                      transform=_fake_transform, resume=tracker.state_dict(),
                      replay_until=state.tracker_now if state and state.replay else None,
                      replay_keep=state.pending_ids if state else None, replay_transform=Replayed())
    items = iter(ds)
    if num_workers:
        from torch.utils.data import DataLoader

        from ain.train.stream import CollateWithState
        items = iter(DataLoader(ds, batch_size=1, num_workers=num_workers, collate_fn=CollateWithState(_first)))
    return StreamPacker(items, tracker, epoch=epoch, max_length=64, buffer=buffer,
                        replay=state.replay if state else 0, pending=state.pending if state else None,
                        pending_ids=state.pending_ids if state else None, queued=state.queued if state else None)


def _first(items):
    return items[0]


from tests.stage_helpers import packed_rows as _rows  # noqa: E402 (shared with the other packing tests)


@pytest.mark.parametrize("buffer", [1, 4, 16])
def test_stream_packer_matches_pack_stream_and_resumes_at_every_row(tmp_path, buffer):
    # The packer is buffered best-fit decreasing now: it must equal collate.pack_stream (the
    # offline form the schedule replays), given the dropped samples as None (they count as pulls).
    manifest, lengths = _fake_shards(tmp_path, [9, 4, 13, 6])
    full = _rows(_packer(tmp_path, manifest, buffer=buffer))
    order = [s["id"] for s in _stream_samples(tmp_path, manifest)]
    expected = [[order[i] for i in row] for row in pack_stream([lengths[s] or None for s in order], 64, buffer)]
    assert full == expected
    assert sum(1 for s in order if lengths[s]) < sum(e["samples"] for e in manifest)  # some samples dropped
    for cut in range(len(full) + 1):
        first = _packer(tmp_path, manifest, buffer=buffer)
        head = _rows(first, cut)
        state = first.state()
        state = type(state)(**json.loads(json.dumps(state.__dict__)))  # survives JSON
        tail = _rows(_packer(tmp_path, manifest, state=state, buffer=buffer))
        assert head + tail == full, cut


def _stream_samples(root, manifest):
    ds = ShardDataset(root, manifest, rank=0, world_size=1, num_workers=0, seed=1, epoch=0)
    return [sample for (sample, _), _ in ds]


def test_stream_packer_resume_with_dataloader_workers(tmp_path):
    pytest.importorskip("torch")
    manifest, _ = _fake_shards(tmp_path, [9, 4, 13, 6])
    full = _rows(_packer(tmp_path, manifest, buffer=4, num_workers=2))
    assert sum(len(r) for r in full) > 20
    for cut in (1, 3, 6):
        first = _packer(tmp_path, manifest, buffer=4, num_workers=2)
        head = _rows(first, cut)
        tail = _rows(_packer(tmp_path, manifest, state=first.state(), buffer=4, num_workers=2))
        assert head + tail == full, cut


def test_resume_detects_changed_data(tmp_path):
    manifest, _ = _fake_shards(tmp_path, [10, 10])
    first = _packer(tmp_path, manifest, buffer=8)
    _rows(first, 2)
    state = first.state()
    assert state.pending
    state.pending_ids = ["nope"] + state.pending_ids[1:]
    with pytest.raises(RuntimeError, match="checkpoint says"):
        _rows(_packer(tmp_path, manifest, state=state, buffer=8))


def test_unadopted_checkpoints_are_discarded_and_pruning_keeps_the_newest(tmp_path):
    for step in (2, 4, 6, 8, 10):
        (tmp_path / f"step{step}").mkdir()
        (tmp_path / f"step{step}" / "model.pt").write_bytes(b"x")
    (tmp_path / "stepx").mkdir()  # not a checkpoint tag: never touched
    write_latest(tmp_path, "step6")
    assert discard_unadopted(tmp_path) == ["step8", "step10"]  # saves that never moved `latest`
    prune_checkpoints(tmp_path, keep=2, current="step6")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step4", "step6", "stepx"]
    (tmp_path / "latest").unlink()
    assert discard_unadopted(tmp_path) == ["step4", "step6"]   # nothing adopted: nothing is loadable


# ------------------------------------------------------------------------------ DeepSpeed (slow)
TEXTS = ["What colour is the square?", "The square is red.", "ما لون المربع؟", "المربع أحمر.",
         "Describe the picture in detail.", "A blue rectangle on a plain background, nothing else.",
         "Is there a circle? No, there is only a green shape.", "صف الصورة بالتفصيل."] * 4
QUESTIONS = ["What colour is the square?", "ما لون المربع؟", "Describe the picture in detail."]
ANSWERS = ["The square is red.", "المربع أحمر.", "A blue rectangle on a plain background, nothing else.",
           "No, there is only a green shape."]
COLOURS = ["red", "green", "blue", "yellow"]


def _png(colour, w, h):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, "PNG")
    return buf.getvalue()


def _vl_shards(root: Path, n=24):
    root.mkdir(parents=True)
    entries, k = [], 0
    for shard, size in enumerate([10, 6, 8][: 3]):
        w = ShardWriter(root / f"shard-000-{shard:05d}.tar")
        for _ in range(size):
            sid = f"s{k:04d}"
            q, a = QUESTIONS[k % 3], ANSWERS[k % 4]
            if k % 3 == 2:  # text only
                w.add({"id": sid, "images": [], "language": "ar", "domain": "x",
                       "turns": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}, [])
            else:
                w.add({"id": sid, "images": ["img0.png"], "language": "ar", "domain": "x",
                       "turns": [{"role": "user", "content": "<image>\n" + q},
                                 {"role": "assistant", "content": a}]},
                      [_png(COLOURS[k % 4], 56 + 14 * (k % 3), 56)])
            k += 1
        entries.append(w.close())
    assert k == n
    with open(root / "manifest-000.jsonl", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in entries)


DRIVER = r"""
import json, sys, torch
torch.set_num_threads(1)
from pathlib import Path
from ain.train.config import TrainConfig
from ain.train.loop import train
a = json.loads(Path(sys.argv[1]).read_text())
calls = [0]
def stop_flag():
    calls[0] += 1
    return a.get("stop_after") is not None and calls[0] >= a["stop_after"]
res = train(TrainConfig(**a["cfg"]), Path(a["manifest"]), Path(a["out"]), seed=0,
            max_steps=a["max_steps"], stop_flag=stop_flag)
Path(a["result"]).write_text(json.dumps(res))
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vl_setup(tmp_path_factory):
    pytest.importorskip("deepspeed")
    from ain_testkit.tiny_judge import build_model_dir

    root = tmp_path_factory.mktemp("loop")
    build_model_dir(root / "model", TEXTS, [], seed=0)
    _vl_shards(root / "shards")
    (root / "driver.py").write_text(DRIVER)
    return root


def _run(root: Path, name: str, zero_stage: int, max_steps: int, out: str, stop_after=None, save_every=10_000,
         env_extra=None, expect_rc=0, shards="shards") -> dict:
    cfg = dict(model=str(root / "model"), bf16=False, gradient_checkpointing=False, zero_stage=zero_stage,
               micro_batch_size=1, grad_accum=1, lr=1e-3, warmup_ratio=0.0, num_workers=0,
               save_every_steps=save_every, max_length=96, packing=True, packing_buffer=6,
               min_pixels=56 * 56, max_pixels=112 * 112)
    # packing_buffer 6 (was 4 with the look-ahead packer): with buffered best-fit decreasing and
    # a window of 4 the third row happens to empty the window, so the step-3 checkpoint would hold
    # nothing to replay; with 6 it holds 2 samples, and the 24 samples still make 8 rows (8 steps).
    args = {"cfg": cfg, "manifest": str(root / shards), "out": str(root / out), "max_steps": max_steps,
            "stop_after": stop_after, "result": str(root / f"{name}.json")}
    (root / f"{name}.args.json").write_text(json.dumps(args))
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu",
               CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false", **(env_extra or {}))
    proc = subprocess.run([sys.executable, str(root / "driver.py"), str(root / f"{name}.args.json")],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == expect_rc, proc.stderr[-4000:]
    return json.loads((root / f"{name}.json").read_text()) if expect_rc == 0 else {"stderr": proc.stderr}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


N_STEPS, STOP_AT = 8, 3


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_loss_falls_and_resume_is_exact(vl_setup, zero_stage):
    root = vl_setup
    a = _run(root, f"a{zero_stage}", zero_stage, N_STEPS, f"ckpt_a{zero_stage}")
    assert a["steps"] == N_STEPS and len(a["losses"]) == N_STEPS and not a["stopped_early"]
    assert a["samples_seen"] > N_STEPS  # rows hold more than one sample
    assert sum(a["losses"][-3:]) / 3 < sum(a["losses"][:3]) / 3 - 0.2, a["losses"]  # ~6.0 -> ~5.5
    assert (root / f"ckpt_a{zero_stage}" / "latest").read_text() == f"step{N_STEPS}"

    b = _run(root, f"b{zero_stage}", zero_stage, N_STEPS, f"ckpt_b{zero_stage}", stop_after=STOP_AT)
    assert b["stopped_early"] and b["steps"] == STOP_AT and len(b["losses"]) == STOP_AT
    assert b["buffered_at_save"] > 0  # the packing window held samples at the checkpoint
    assert (root / f"ckpt_b{zero_stage}" / "latest").read_text() == f"step{STOP_AT}"

    c = _run(root, f"c{zero_stage}", zero_stage, N_STEPS, f"ckpt_b{zero_stage}")
    assert c["resumed_from_step"] == STOP_AT and c["steps"] == N_STEPS and not c["stopped_early"]
    joined = b["losses"] + c["losses"]
    assert max(abs(x - y) for x, y in zip(joined, a["losses"])) <= 1e-5, (joined, a["losses"])
    assert len(joined) == len(a["losses"])
    assert b["sample_ids"] + c["sample_ids"] == a["sample_ids"]
    assert c["samples_seen"] == a["samples_seen"]

    # the per-step records were cut back to the checkpoint and continued: identical to run a's
    ids_a = [r["ids"] for r in _jsonl(root / f"ckpt_a{zero_stage}" / "samples-rank0.jsonl")]
    ids_bc = [r["ids"] for r in _jsonl(root / f"ckpt_b{zero_stage}" / "samples-rank0.jsonl")]
    assert ids_bc == ids_a and sum(ids_a, []) == a["sample_ids"]
    metrics = _jsonl(root / f"ckpt_b{zero_stage}" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, N_STEPS + 1))
    assert all(m["tokens_per_s"] > 0 and m["mfu"] > 0 and m["grad_norm"] is not None for m in metrics)


@pytest.mark.slow
def test_crash_while_saving_keeps_the_previous_checkpoint_and_export_loads(vl_setup):
    """A process killed inside a save (after DeepSpeed wrote the step-4 files, before `latest`
    moved) leaves `latest` on step 2, which loads; the resumed run matches an uninterrupted one.
    Then the export stage's function turns the ZeRO-3 checkpoint into a model that
    `from_pretrained` loads and that generates."""
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from ain.train.config import TrainConfig
    from ain.train.export import export_checkpoint

    root = vl_setup
    full = _run(root, "full", 3, 6, "ckpt_full", save_every=2)
    _run(root, "crash", 3, 6, "ckpt_crash", save_every=2, env_extra={"AIN_FAIL_SAVE_AT_STEP": "4"}, expect_rc=17)
    ckpt = root / "ckpt_crash"
    assert (ckpt / "latest").read_text() == "step2" and (ckpt / "step4").is_dir()  # step4: written, not adopted
    resumed = _run(root, "resumed", 3, 6, "ckpt_crash", save_every=2)
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 6
    assert max(abs(x - y) for x, y in zip(resumed["losses"], full["losses"][2:])) <= 1e-5
    assert sorted(p.name for p in ckpt.glob("step*")) == ["step4", "step6"]  # keep_checkpoints=2

    out = root / "exported"
    info = export_checkpoint(TrainConfig(model=str(root / "model")), ckpt, out, dtype="float32")
    assert info["tag"] == "step6" and (out / "model.safetensors").exists() and not (root / ".exported.tmp").exists()
    model = Qwen2VLForConditionalGeneration.from_pretrained(out)
    base = Qwen2VLForConditionalGeneration.from_pretrained(root / "model")
    name, trained = next((n, p) for n, p in model.named_parameters() if "layers.0.mlp" in n)
    assert not torch.equal(trained, dict(base.named_parameters())[name])  # the trained weights, not the base
    processor = AutoProcessor.from_pretrained(out)
    messages = [{"role": "user", "content": [{"type": "text", "text": "What colour is the square?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


@pytest.mark.slow
def test_lr_schedule_spans_exactly_the_steps_taken(vl_setup):
    """With the token lengths the pack stage records (ain.data.pack.TokenLengths) in the manifest,
    the loop's total_steps (the LR schedule's length) is the number of optimizer steps it takes."""
    import shutil

    from ain.data.pack import TokenLengths
    from ain.data.shards import image_members, iter_shard

    root = vl_setup
    src, dst = root / "shards", root / "shards_lengths"
    dst.mkdir()
    counter = TokenLengths(str(root / "model"), 56 * 56, 112 * 112)
    entries = []
    for entry in read_manifest(src):
        shutil.copy(src / entry["shard"], dst / entry["shard"])
        lengths = [counter(s, [images[m] for m in image_members(s)]) for s, images in iter_shard(src / entry["shard"])]
        entries.append(dict(entry, lengths=lengths, length_spec=counter.spec))
    (dst / "manifest-000.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    res = _run(root, "sched", 2, None, "ckpt_sched", shards="shards_lengths")
    assert res["schedule_exact"] and res["grad_accum"] == 1
    assert res["steps"] == res["total_steps"] == res["planned_steps"] > 1
