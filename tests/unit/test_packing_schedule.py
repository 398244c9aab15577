"""Buffered best-fit-decreasing packing (ain.train.collate.pack_stream and the loop's StreamPacker)
and the schedule replayed from the pack manifest's token lengths (ain.train.loop.plan_schedule):
hand-computed rows, fill at bench size on two distributions, determinism, exact resume with rows
waiting in the queue, every sample once, no row over max_length; the pack stage's token counts
against training's encoder; the steps the schedule plans against the rows the packer produces."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from ain.data.shards import ShardWriter, read_manifest
from ain.train.collate import (
    best_fit_decreasing,
    fill_ratio,
    max_age,
    min_free,
    pack_rows,
    pack_stream,
    row_slack,
    window_rows,
)
from ain.train.config import TrainConfig
from ain.train.loop import (
    Replayed,
    StreamPacker,
    estimated_schedule,
    length_spec,
    manifest_lengths,
    plan_schedule,
)
from ain.train.stream import CollateWithState, ShardDataset, StateTracker, rank_order

LOG = logging.getLogger("test_packing_schedule")


# ------------------------------------------------------------------------------ by hand
def test_best_fit_decreasing_by_hand():
    # longest first: 6 -> new row A (room 4); 5 -> no fit, row B (5); 4 -> A, the least room that
    # fits (0); 3 -> B (2); 2 -> B (0)
    assert best_fit_decreasing([6, 5, 4, 3, 2], 10) == [[0, 2], [1, 3, 4]]
    # ties: the earlier sample first, the row opened first
    assert best_fit_decreasing([5, 5, 5], 10) == [[0, 1], [2]]
    with pytest.raises(ValueError):
        best_fit_decreasing([11], 10)


def test_window_rows_by_hand():
    assert (row_slack(10), max_age(4), min_free(4), min_free(64), row_slack(2048)) == (0, 16, 1, 16, 4)
    # [6,5,4,3,1] -> A = 6+4 (full), B = 5+3+1 (room 1): only the full row leaves, B waits
    assert window_rows([6, 5, 4, 3, 1], [1] * 5, 10, buffer=5, final=False) == [[0, 2]]
    assert window_rows([6, 5, 4, 3, 1], [1] * 5, 10, buffer=5, final=True) == [[0, 2], [1, 3, 4]]
    # [6,5,3,1] -> A = 6+3+1 (full), B = 5: B leaves too once its sample has waited max_age pulls
    assert window_rows([6, 5, 3, 1], [4, 3, 2, 1], 10, buffer=4, final=False) == [[0, 2, 3]]
    assert window_rows([6, 5, 3, 1], [4, 16, 2, 1], 10, buffer=4, final=False) == [[0, 2, 3], [1]]
    # nothing full and nothing old: the fullest row leaves to make room (min_free 1)
    assert window_rows([6, 5], [1, 1], 10, buffer=2, final=False) == [[0]]


def test_pack_stream_by_hand():
    # buffer 3, rows of 10. Window [7,6,3]: A = 7+3 full -> out; 6 stays. Window [6,4,2] (6 carried
    # over): 6+4 full -> out; 2 stays. The stream ends: [2] alone.
    assert pack_stream([7, 6, 3, 4, 2], 10, 3) == [[0, 2], [1, 3], [4]]
    # buffer 2: None and 12 (over max_length) are dropped samples: pulled, never placed
    assert pack_stream([6, 4, 5, 5, None, 12, 3], 10, 2) == [[0, 1], [2, 3], [6]]
    assert pack_stream([6, 4, None, 3], 10, 8, packing=False) == [[0], [1], [3]]
    assert pack_stream([], 10, 4) == []


# ------------------------------------------------------------------------------ bench size
def uniform(n: int, seed: int) -> list[int]:  # as bench/packing_efficiency.py
    rng = random.Random(seed)
    return [rng.randint(200, 1500) for _ in range(n)]


def lognormal(n: int, seed: int) -> list[int]:  # as bench/packing_efficiency.py
    rng = random.Random(seed)
    return [min(2048, max(16, round(rng.lognormvariate(math.log(500), 0.8)))) for _ in range(n)]


@pytest.mark.parametrize("dist", [uniform, lognormal])
@pytest.mark.parametrize("seed", [0, 1])
def test_fill_at_least_99_percent_at_bench_size(dist, seed):
    lengths = dist(20000, seed)
    rows = pack_stream(lengths, 2048, 1024)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))  # every sample once
    assert all(sum(lengths[i] for i in row) <= 2048 for row in rows)  # no row over max_length
    assert all(row == sorted(row) for row in rows)
    assert pack_stream(lengths, 2048, 1024) == rows  # deterministic
    fill = fill_ratio(lengths, rows, 2048)
    ceiling = fill_ratio(lengths, best_fit_decreasing(lengths, 2048), 2048)
    before = fill_ratio(lengths, pack_rows(lengths, 2048, 64), 2048)
    assert fill >= 0.99 and fill >= ceiling - 0.002 and fill > before, (fill, ceiling, before)
    four_k = pack_stream(lengths, 2048, 4096)
    assert fill_ratio(lengths, four_k, 2048) >= 0.99


# ------------------------------------------------------------------------------ fake shards
def _fake_shards(root: Path, sizes, seed=0, spec=None, max_length=64):
    """Shards of text samples whose length rides in the sample ("len"); 0 = a sample the encoder
    drops, > max_length = one it drops as too long. The manifest carries those lengths as the pack
    stage would (null for the dropped, the length as is for the too long)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    entries, n = [], 0
    for k, size in enumerate(sizes):
        w = ShardWriter(root / f"shard-000-{k:05d}.tar")
        lengths = []
        for _ in range(size):
            length = 0 if n % 11 == 5 else (max_length + 7 if n % 13 == 7 else rng.randint(3, max_length))
            w.add({"id": f"s{n:05d}", "images": [], "language": "ar", "domain": "x", "len": length}, [])
            lengths.append(length or None)
            n += 1
        entry = w.close()
        if spec is not None:
            entry["lengths"], entry["length_spec"] = lengths, spec
        entries.append(entry)
    with open(root / "manifest-00000.jsonl", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in entries)
    return read_manifest(root)


class FakeEncoder:
    """Transform of the fake samples (picklable for DataLoader workers); counts what it encodes."""

    def __init__(self, max_length=64):
        self.max_length = max_length
        self.encoded: list[str] = []

    def __call__(self, sample, images):
        self.encoded.append(sample["id"])
        length = sample["len"]
        if length == 0:
            return sample["id"], None, None, "bad_image"
        if length > self.max_length:
            return sample["id"], None, None, "too_long"
        return sample["id"], SimpleNamespace(length=length), None, None


def _first(items):
    return items[0]


def _packer(root, manifest, *, buffer, state=None, rank=0, world=1, num_workers=0, epoch=0, seed=3,
            encoder=None, max_length=64):
    tracker = StateTracker(num_workers, epoch=epoch, state=state.tracker if state else None)
    if state is None:
        tracker.new_epoch(epoch)
    ds = ShardDataset(root, manifest, rank=rank, world_size=world, num_workers=num_workers, seed=seed, epoch=epoch,
                      transform=encoder or FakeEncoder(max_length), resume=tracker.state_dict(),
                      replay_until=state.tracker_now if state and state.replay else None,
                      replay_keep=state.pending_ids if state else None, replay_transform=Replayed())
    if num_workers:
        from torch.utils.data import DataLoader

        items = iter(DataLoader(ds, batch_size=1, num_workers=num_workers, collate_fn=CollateWithState(_first)))
    else:
        items = iter(ds)
    return StreamPacker(items, tracker, epoch=epoch, max_length=max_length, buffer=buffer,
                        replay=state.replay if state else 0, pending=state.pending if state else None,
                        pending_ids=state.pending_ids if state else None, queued=state.queued if state else None)


from tests.stage_helpers import packed_rows as _rows  # noqa: E402 (shared with the other packing tests)


def _roundtrip(state):
    return type(state)(**json.loads(json.dumps(state.__dict__)))  # what a checkpoint keeps


def test_stream_packer_resumes_exactly_with_rows_waiting(tmp_path):
    manifest = _fake_shards(tmp_path, [120, 37, 200, 90])
    held: list[int] = []
    full = _rows(_packer(tmp_path, manifest, buffer=32), held=held)
    order = [s["id"] for (s, _), _ in ShardDataset(tmp_path, manifest, rank=0, world_size=1, num_workers=0, seed=3)]
    by_id = {s["id"]: s["len"] for (s, _), _ in ShardDataset(tmp_path, manifest, rank=0, world_size=1,
                                                              num_workers=0, seed=3)}
    lengths = [by_id[s] if 0 < by_id[s] <= 64 else None for s in order]
    assert full == [[order[i] for i in row] for row in pack_stream(lengths, 64, 32)]  # the offline replay
    assert max(held) <= 32  # window + rows waiting never hold more than the buffer
    assert sorted(sum(full, [])) == sorted(order[i] for i, n in enumerate(lengths) if n is not None)
    assert all(sum(by_id[s] for s in row) <= 64 for row in full)
    queued_seen = 0
    for cut in range(1, len(full), 5):
        first = _packer(tmp_path, manifest, buffer=32)
        head = _rows(first, cut)
        state = _roundtrip(first.state())
        queued_seen += bool(state.queued)
        encoder = FakeEncoder()
        tail = _rows(_packer(tmp_path, manifest, buffer=32, state=state, encoder=encoder))
        assert head + tail == full, cut
        # the replay re-encodes only what was still held (then the samples after the checkpoint)
        replayed = set(encoder.encoded) - set(sum(tail, [])) - {s for s in order if not 0 < by_id[s] <= 64}
        assert not replayed, cut
        assert set(state.pending_ids) <= set(encoder.encoded)
    assert queued_seen >= 3  # checkpoints taken while formed rows waited in the queue


def test_stream_packer_resume_through_dataloader_workers(tmp_path):
    pytest.importorskip("torch")
    manifest = _fake_shards(tmp_path, [60, 45, 80])
    full = _rows(_packer(tmp_path, manifest, buffer=16, num_workers=2))
    for cut in (2, 9, 17):
        first = _packer(tmp_path, manifest, buffer=16, num_workers=2)
        head = _rows(first, cut)
        tail = _rows(_packer(tmp_path, manifest, buffer=16, num_workers=2, state=_roundtrip(first.state())))
        assert head + tail == full, cut


def test_state_of_an_older_checkpoint_without_queue_still_resumes_every_sample_once(tmp_path):
    """A checkpoint written before this packer has no `queued`: every pending sample goes back into
    the window. Rows may differ from an uninterrupted run, but no sample is lost or repeated."""
    manifest = _fake_shards(tmp_path, [150])
    full = _rows(_packer(tmp_path, manifest, buffer=16))
    first = _packer(tmp_path, manifest, buffer=16)
    head = _rows(first, 5)
    state = first.state()
    state.queued, state.tracker_now = [], None
    tail = _rows(_packer(tmp_path, manifest, buffer=16, state=state))
    assert sorted(sum(head + tail, [])) == sorted(sum(full, []))


# ------------------------------------------------------------------------------ schedule
@pytest.mark.parametrize("world,num_workers", [(1, 0), (2, 0), (2, 2), (3, 2)])
def test_rank_order_is_what_the_dataloader_hands_out(tmp_path, world, num_workers):
    manifest = _fake_shards(tmp_path, [17, 5, 23, 10])  # 55: readers of unequal sizes
    ids = {(i, k): f"s{sum(e['samples'] for e in manifest[:i]) + k:05d}" for i, e in enumerate(manifest)
           for k in range(e["samples"])}
    for rank in range(world):
        ds = ShardDataset(tmp_path, manifest, rank=rank, world_size=world, num_workers=num_workers, seed=5, epoch=1)
        if num_workers:
            from torch.utils.data import DataLoader

            got = [item[0]["id"] for item, _ in DataLoader(ds, batch_size=1, num_workers=num_workers,
                                                              collate_fn=CollateWithState(_first))]
        else:
            got = [s["id"] for (s, _), _ in ds]
        assert got == [ids[x] for x in rank_order(manifest, rank, world, num_workers, 5, 1)]


def _loop_steps(root, manifest, cfg: TrainConfig, world: int, seed: int) -> list[int]:
    """What the training loop does, without a model: per epoch every rank packs its share; all
    ranks move on when one cannot fill `accum` rows, so an epoch has min(rows // accum) steps."""
    accum = cfg.accum_for(world)
    steps = []
    for epoch in range(cfg.epochs):
        rows = [len(_rows(_packer(root, manifest, buffer=cfg.packing_buffer, rank=r, world=world,
                                  num_workers=cfg.num_workers, epoch=epoch, seed=seed,
                                  max_length=cfg.max_length))) for r in range(world)]
        steps.append(min(rows) // accum)
    return steps


@pytest.mark.parametrize("world,num_workers,buffer", [(1, 0, 8), (2, 0, 16), (2, 2, 5)])
def test_schedule_from_the_manifest_equals_the_steps_the_packer_takes(tmp_path, world, num_workers, buffer):
    cfg = TrainConfig(model="fake-model", max_length=64, packing_buffer=buffer, num_workers=num_workers,
                      global_batch_size=2 * world, grad_accum=0, epochs=2)
    manifest = _fake_shards(tmp_path, [70, 33, 101, 12], spec=length_spec(cfg))
    schedule = plan_schedule(manifest, cfg, world, seed=3)
    assert schedule.exact and schedule.accum == 2
    assert schedule.steps_per_epoch == _loop_steps(tmp_path, manifest, cfg, world, seed=3)
    assert schedule.total_steps == sum(schedule.steps_per_epoch) > 0
    # what each rank computes in the job (its own share, all-reduced MIN) is the same
    mins = [plan_schedule(manifest, cfg, world, seed=3, ranks=[r], reduce_min=lambda v: v).steps_per_epoch
            for r in range(world)]
    assert [min(col) for col in zip(*mins)] == schedule.steps_per_epoch


def test_schedule_falls_back_to_an_estimate_without_usable_lengths(tmp_path):
    cfg = TrainConfig(model="fake-model", max_length=64, tokens_per_sample=16)
    manifest = _fake_shards(tmp_path, [40, 40])  # no lengths
    lengths, why = manifest_lengths(manifest, cfg)
    assert lengths is None and "no token lengths" in why
    other = [dict(e, lengths=[1] * e["samples"], length_spec={**length_spec(cfg), "max_pixels": 1}) for e in manifest]
    assert manifest_lengths(other, cfg)[0] is None and "counted for" in manifest_lengths(other, cfg)[1]
    s = plan_schedule(manifest, cfg, 1, seed=0)
    assert not s.exact and "estimate" in s.source
    # 80 samples, 64 x 0.99 / 16 = 3.96 samples per row -> 20 rows, accum 2 -> 10 steps
    assert s.total_steps == 10 == estimated_schedule(80, cfg, 1, "x").total_steps


def test_the_report_topologies_keep_the_global_batch():
    cfg = TrainConfig(global_batch_size=64, grad_accum=0)
    assert (cfg.accum_for(64), cfg.accum_for(8)) == (1, 8)
    with pytest.raises(ValueError, match="multiple"):
        cfg.accum_for(48)
    assert TrainConfig(grad_accum=2).accum_for(64) == 2


# ------------------------------------------------------------------------------ the real encoder
TEXTS = ["What colour is the square?", "The square is red.", "ما لون المربع؟", "المربع أحمر.",
         "Describe the picture in detail.", "A blue rectangle on a plain background, nothing else.",
         "Is there a circle? No, there is only a green shape.", "صف الصورة بالتفصيل."] * 4


def _png(colour, w, h):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("transformers")
    from ain_testkit.tiny_judge import build_model_dir

    out = tmp_path_factory.mktemp("tiny_qwen2vl")
    build_model_dir(out, TEXTS, [], seed=0)
    return out


def _samples(n=30, seed=0):
    """Samples like the mix's: images of many sizes (some above max_pixels, some below min_pixels),
    several turns, text only, and the three kinds the encoder drops."""
    rng = random.Random(seed)
    colours = ["red", "green", "blue", "yellow"]
    out = []
    for k in range(n):
        q, a = rng.choice(TEXTS[:8:2]), rng.choice(TEXTS[1:8:2])
        n_img = [0, 1, 1, 2][k % 4]
        images = [_png(rng.choice(colours), rng.randint(20, 700), rng.randint(20, 700)) for _ in range(n_img)]
        turns = [{"role": "user", "content": "<image>" * n_img + "\n" + q}, {"role": "assistant", "content": a}]
        if k % 5 == 1:
            turns = [{"role": "system", "content": "You answer briefly."}] + turns + [
                {"role": "user", "content": q}, {"role": "assistant", "content": a + " " + a}]
        if k == 7:  # no answer to learn: the encoder drops it
            turns = turns[:1]
        if k == 11:  # one placeholder too many
            turns[0]["content"] += "<image>"
        if k == 13 and images:  # not an image
            images[0] = b"not a png"
        out.append(({"id": f"t{k:04d}", "turns": turns, "language": "ar", "domain": "x"}, images))
    return out


def test_pack_time_token_counts_equal_the_training_encoder(tiny):
    from transformers import AutoProcessor

    from ain.data.pack import TokenLengths
    from ain.train.collate import try_encode

    processor = AutoProcessor.from_pretrained(tiny)
    dropped = Counter()
    for min_pixels, max_pixels in ((56 * 56, 112 * 112), (28 * 28, 262144)):
        counter = TokenLengths(str(tiny), min_pixels, max_pixels)
        cfg = SimpleNamespace(max_length=10**6, min_pixels=min_pixels, max_pixels=max_pixels)
        for sample, images in _samples():
            enc, reason = try_encode(processor, sample, images, cfg)
            assert counter(sample, images) == (enc.length if enc is not None else None), (sample["id"], reason)
            dropped[reason] += enc is None
    assert dropped == Counter({"no_assistant_tokens": 2, "image_count_mismatch": 2, "bad_image": 2})


def test_freezing_follows_llama_factory(tiny):
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from ain.train.loop import freeze_modules

    def trainable(**flags):
        model = Qwen2VLForConditionalGeneration.from_pretrained(tiny, dtype=torch.float32)
        frozen = freeze_modules(model, TrainConfig(**flags))
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        return frozen, names, {n for n, _ in model.named_parameters()}

    frozen, names, every = trainable()  # the defaults: LLaMA-Factory's example
    assert frozen == ["visual.patch_embed", "visual.blocks", "visual.merger"]
    assert names and not any(".visual." in f".{n}" for n in names) and any("language_model" in n for n in names)
    frozen, names, _ = trainable(freeze_vision_tower=True, freeze_multi_modal_projector=False)
    assert any("merger" in n for n in names) and not any("blocks" in n for n in names if "visual" in n)
    frozen, names, every = trainable(freeze_vision_tower=False, freeze_multi_modal_projector=False)
    assert frozen == [] and names == every


def _packed_run(tmp_path: Path, tiny: Path, train_cfg: TrainConfig, samples) -> Path:
    """Run the pack stage on `samples` (as the mix would hand them over) for a recipe that trains."""
    from ain.config import RunConfig
    from ain.data import pack
    from ain.data.config import PackConfig
    from ain.rundir import RunDir
    from ain.stages import TaskContext

    root = tmp_path / "run"
    run = RunDir(root)
    store = run.stage("ingest").create().out / "images"
    rows = []
    for sample, images in samples:
        names = []
        for data in images:
            sha = hashlib.sha256(data).hexdigest()
            (store / sha[:2]).mkdir(parents=True, exist_ok=True)
            (store / sha[:2] / f"{sha}.png").write_bytes(data)
            names.append(f"{sha}.png")
        rows.append(dict(sample, images=names))
    mix = run.stage("mix").create()
    (mix.out / "mixed-00000.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    mix.write_marker(0, {"items": len(rows)})
    run.stage("pack").create()
    cfg = RunConfig(stages=["ingest", "mix", "pack", "train"], pack=PackConfig(num_tasks=1, max_samples_per_shard=7),
                    train=train_cfg)
    pack.run_pack_task(TaskContext(cfg=cfg, run=run, stage="pack", index=0, num_tasks=1, log=LOG))
    return run.stage("pack").out


def test_pack_stage_records_lengths_and_the_schedule_matches_the_real_encoder(tmp_path, tiny):
    """End to end without DeepSpeed: the pack stage writes the lengths; plan_schedule over them
    equals the steps StreamPacker makes from the samples the training Encoder encodes."""
    import torch
    from transformers import AutoConfig, AutoProcessor

    from ain.data.shards import image_members, iter_samples
    from ain.train.collate import try_encode
    from ain.train.loop import Encoder

    torch.set_num_threads(1)
    cfg = TrainConfig(model=str(tiny), bf16=False, min_pixels=56 * 56, max_pixels=112 * 112, max_length=60,
                      packing_buffer=6, num_workers=0, global_batch_size=2, grad_accum=0)
    out = _packed_run(tmp_path, tiny, cfg, _samples(40, seed=1))
    manifest = read_manifest(out)
    assert len(manifest) == 6 and all(e["length_spec"] == length_spec(cfg) for e in manifest)
    processor = AutoProcessor.from_pretrained(tiny)
    recorded = [n for e in manifest for n in e["lengths"]]
    encoded = []
    for sample, images in iter_samples(out):
        enc, _ = try_encode(processor, sample, [images[m] for m in image_members(sample)],
                            SimpleNamespace(max_length=10**6, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels))
        encoded.append(enc.length if enc is not None else None)
    assert recorded == encoded and any(n is not None and n > cfg.max_length for n in recorded)
    encoder = Encoder(processor, AutoConfig.from_pretrained(tiny), cfg)
    for world in (1, 2):
        schedule = plan_schedule(manifest, cfg, world, seed=4)
        assert schedule.exact
        rows = [_rows(_packer(out, manifest, buffer=cfg.packing_buffer, rank=r, world=world, seed=4,
                              encoder=encoder, max_length=cfg.max_length)) for r in range(world)]
        assert schedule.total_steps == min(len(r) for r in rows) // cfg.accum_for(world) > 0
