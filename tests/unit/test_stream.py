"""ain.train.stream: sample-level shard plan, exact resume, DataLoader state tracking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ain.data.shards import CorruptShard, ShardWriter, read_manifest
from ain.train.stream import CollateWithState, ShardDataset, ShardStream, StateTracker, plan_epoch

SHARD_SIZES = [7, 3, 11, 1, 5]  # 27 samples, uneven shards


def _build(root: Path, sizes=SHARD_SIZES) -> list[dict]:
    root.mkdir(parents=True, exist_ok=True)
    entries, n = [], 0
    for k, size in enumerate(sizes):
        w = ShardWriter(root / f"shard-000-{k:05d}.tar")
        for _ in range(size):
            sid = f"s{n:04d}"
            w.add({"id": sid, "images": ["img.png"] if n % 2 else [], "language": "ar", "domain": "x"},
                  [sid.encode()] if n % 2 else [])
            n += 1
        entries.append(w.close())
    with open(root / "manifest-000.jsonl", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in entries)
    return read_manifest(root)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    return root, _build(root)


ALL_IDS = {f"s{i:04d}" for i in range(sum(SHARD_SIZES))}


def _ids(stream, limit=None):
    out = []
    for sample, images in stream:
        assert images == ([sample["id"].encode()] if sample["images"] else [])
        out.append(sample["id"])
        if limit is not None and len(out) == limit:
            break
    return out


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [1, 2])
def test_union_exactly_once(shards, world_size, num_workers):
    root, manifest = shards
    seen, counts = [], []
    for rank in range(world_size):
        for worker in range(num_workers):
            s = ShardStream(root, manifest, rank=rank, world_size=world_size, worker=worker,
                            num_workers=num_workers, seed=3, epoch=1)
            ids = _ids(s)
            assert len(ids) == len(s)
            counts.append(len(ids))
            seen += ids
    assert len(seen) == len(ALL_IDS) and set(seen) == ALL_IDS
    assert max(counts) - min(counts) <= 1  # balanced at the sample level


def test_more_readers_than_shards_all_get_samples(tmp_path):
    manifest = _build(tmp_path, [10, 2])
    plan = plan_epoch(manifest, world_size=4, num_workers=2, seed=0, epoch=0)
    assert len(plan) == 8
    sizes = [sum(b - a for _, a, b in ranges) for ranges in plan]
    assert sorted(sizes) == [1, 1, 1, 1, 2, 2, 2, 2] and all(ranges for ranges in plan)
    got = [sid for r in range(4) for w in range(2)
           for sid in _ids(ShardStream(tmp_path, manifest, rank=r, world_size=4, worker=w, num_workers=2))]
    assert sorted(got) == [f"s{i:04d}" for i in range(12)]


def test_plan_deterministic_and_epoch_dependent(shards):
    _, manifest = shards
    a = plan_epoch(manifest, 2, 2, seed=7, epoch=0)
    assert a == plan_epoch(manifest, 2, 2, seed=7, epoch=0)
    orders = {tuple(r[0] for ranges in plan_epoch(manifest, 1, 1, seed=7, epoch=e) for r in ranges)
              for e in range(4)}
    assert len(orders) > 1  # another epoch (or seed) reorders the shards


@pytest.mark.parametrize("k", [0, 1, 5, 7, 13, 14])
def test_resume_exact(shards, k):
    root, manifest = shards
    kw = dict(rank=0, world_size=2, worker=1, num_workers=2, seed=1, epoch=2)
    full = _ids(ShardStream(root, manifest, **kw))
    s = ShardStream(root, manifest, **kw)
    head = _ids(s, limit=k) if k else []
    state = json.loads(json.dumps(s.state()))  # survives a JSON checkpoint
    resumed = ShardStream(root, manifest, **kw)
    resumed.load_state(state)
    assert head + _ids(resumed) == full
    assert resumed.done and resumed.state()["consumed"] == len(full)


def test_state_of_other_plan_refused(shards):
    root, manifest = shards
    s = ShardStream(root, manifest, rank=0, world_size=2, seed=1)
    other = ShardStream(root, manifest, rank=0, world_size=3, seed=1)
    with pytest.raises(ValueError, match="plan"):
        other.load_state(s.state())
    with pytest.raises(ValueError, match="epoch"):
        ShardStream(root, manifest, rank=0, world_size=2, seed=1, epoch=1).load_state(s.state())


def test_corrupt_shard_raises_naming_it(tmp_path):
    manifest = _build(tmp_path, [4, 4])
    victim = tmp_path / manifest[1]["shard"]
    data = bytearray(victim.read_bytes())
    data[600] ^= 0xFF  # same size, different sha256
    victim.write_bytes(bytes(data))
    with pytest.raises(CorruptShard, match=manifest[1]["shard"]):
        _ids(ShardStream(tmp_path, manifest, rank=0, world_size=1))
    victim.unlink()
    with pytest.raises(CorruptShard, match="missing"):
        _ids(ShardStream(tmp_path, manifest, rank=0, world_size=1))


def _transform(sample, images):
    return sample["id"]


def _loader(root, manifest, rank, resume=None, batch_size=2):
    from torch.utils.data import DataLoader

    ds = ShardDataset(root, manifest, rank=rank, world_size=2, num_workers=2, seed=5, epoch=0,
                      transform=_transform, resume=resume)
    return DataLoader(ds, batch_size=batch_size, num_workers=2, collate_fn=CollateWithState(),
                      prefetch_factor=2, multiprocessing_context="fork")


@pytest.mark.parametrize("k", [1, 2, 3])
def test_dataloader_interrupt_and_resume(shards, k):
    root, manifest = shards
    rank = 1
    full = [sid for batch, _ in _loader(root, manifest, rank) for sid in batch]
    assert len(full) == len(set(full)) > 0

    tracker = StateTracker(num_workers=2)
    head = []
    it = iter(_loader(root, manifest, rank))
    for _ in range(k):
        batch, state = next(it)
        head += batch
        tracker.update(state)
    del it  # workers are ahead of us (prefetch); only the tracker's states count
    saved = json.loads(json.dumps(tracker.state_dict()))
    tail = [sid for batch, _ in _loader(root, manifest, rank, resume=saved) for sid in batch]
    assert head + tail == full


def test_dataset_refuses_worker_mismatch(shards):
    root, manifest = shards
    ds = ShardDataset(root, manifest, rank=0, world_size=1, num_workers=2)
    with pytest.raises(ValueError, match="num_workers=2"):
        next(iter(ds))  # main process (0 loader workers) but planned for 2
