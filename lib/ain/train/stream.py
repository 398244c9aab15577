"""Exact, resumable streaming of the packed WebDataset shards to (rank, worker) readers.

Plan (`plan_epoch`): split at the SAMPLE level. The shard order is shuffled with a seed derived
from (seed, epoch); the shuffled shards are laid end to end as one virtual sequence of N samples;
reader r of R = world_size * readers_per_rank gets the contiguous slice [r*N//R, (r+1)*N//R),
expressed as a list of (shard, start, stop) sample ranges. So every reader gets N//R or N//R+1
samples (even with fewer shards than readers: a shard is then split between readers, each reading
only its own range), nothing is read twice and nothing is lost. Reader index = rank *
readers_per_rank + worker, with readers_per_rank = max(num_workers, 1) (a DataLoader with
num_workers=0 is one reader per rank). Only the shard order is shuffled; samples within a shard
keep their packed order (the packing look-ahead buffer and the pack stage's own mixing do the
rest).

Reading (`ShardStream`): one reader's ranges, in order. Each shard's size and sha256 are checked
against the manifest (`shards.verify_shard`) before the first sample of a range is read, so a
corrupt shard raises `CorruptShard` naming it and yields nothing from it. A range that starts
inside a shard is reached by reading through (and dropping) the samples before it.

State: `ShardStream.state()` is a small JSON-able dict {"epoch", "reader", "range", "offset",
"consumed", "plan"} giving the position AFTER the last sample handed out ("range" indexes the
reader's ranges, "offset" counts samples already handed out from that range; a finished range is
normalised to (range + 1, 0), so a state at the end of a shard never re-verifies it). A new stream
built with the same plan arguments and `load_state(state)` yields exactly the remaining samples.
"plan" is a fingerprint of (manifest, world_size, readers_per_rank, seed); loading a state of
another plan or reader raises ValueError (ZeRO checkpoints cannot change world size either).

DataLoader and checkpoints (`ShardDataset`, `CollateWithState`, `StateTracker`): DataLoader
workers prefetch, so a worker's own position is AHEAD of what the training loop has consumed;
saving it would lose the prefetched batches. Instead each worker yields (item, state-after-item)
pairs, `CollateWithState` turns a batch into (collated_batch, state of its last item) (all items of
a batch come from one worker), and the training loop calls `tracker.update(state)` for each batch
it actually consumes. `tracker.state_dict()` (JSON-able) goes into the checkpoint's client_state;
a resumed `ShardDataset(..., resume=that dict)` restarts every reader from its recorded position.
DataLoader hands batches out round-robin over its workers starting at worker 0, so the tracker
also records which reader comes next; the resumed dataset rotates the worker -> reader mapping so
the new loader's worker 0 plays that reader, and the batch sequence continues exactly as an
uninterrupted run's (tests/unit/test_stream.py checks this with a real DataLoader).

Packing: the recorded state is the position after the last sample of the last consumed batch.
The training loop's packer (ain.train.loop.StreamPacker) holds samples that are "consumed" but
not trained on, so its checkpoint records a replay point (the tracker state before the oldest
held sample) plus the held samples' positions; on resume `ShardDataset(replay_until=...,
replay_keep=...)` passes the replayed samples it no longer holds through a cheap
`replay_transform` instead of encoding them again (see the loop's docstring).

Order (`rank_order`): the (shard, sample) sequence one rank's training loop receives in an
epoch, computed from the plan alone: the DataLoader's round robin over the rank's readers. The
schedule replays the packing over it (ain.train.loop.plan_schedule).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ain.data.shards import CorruptShard, iter_shard, verify_shard

__all__ = ["CorruptShard", "plan_epoch", "plan_fingerprint", "rank_order", "ShardStream", "ShardDataset",
           "CollateWithState", "StateTracker"]

Range = tuple[str, int, int]


def _readers(num_workers: int) -> int:
    return max(int(num_workers), 1)


def _epoch_rng(seed: int, epoch: int) -> random.Random:
    digest = hashlib.sha256(f"ain-shard-order:{int(seed)}:{int(epoch)}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def plan_epoch(manifest: list[dict[str, Any]], world_size: int, num_workers: int, seed: int,
               epoch: int) -> list[list[Range]]:
    """The (shard, start, stop) sample ranges of every reader for one epoch, indexed by
    reader = rank * max(num_workers, 1) + worker. Every sample of the manifest is in exactly one
    range of one reader; readers get N//R or N//R+1 samples; deterministic in (seed, epoch)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    n_readers = world_size * _readers(num_workers)
    order = list(range(len(manifest)))
    _epoch_rng(seed, epoch).shuffle(order)
    total = sum(int(manifest[i]["samples"]) for i in order)
    bounds = [r * total // n_readers for r in range(n_readers + 1)]
    plan: list[list[Range]] = [[] for _ in range(n_readers)]
    pos = 0  # global sample index of the current shard's first sample
    reader = 0
    for i in order:
        entry = manifest[i]
        n = int(entry["samples"])
        lo, hi = pos, pos + n
        while lo < hi:
            while bounds[reader + 1] <= lo:
                reader += 1
            cut = min(hi, bounds[reader + 1])
            plan[reader].append((entry["shard"], lo - pos, cut - pos))
            lo = cut
        pos = hi
    return plan


def rank_order(manifest: list[dict[str, Any]], rank: int, world_size: int, num_workers: int, seed: int,
               epoch: int) -> list[tuple[int, int]]:
    """The samples one rank's training loop receives in one epoch, in order, as (manifest index,
    sample index within its shard): without the stream itself, for the schedule's replay.

    A DataLoader over an IterableDataset with W workers and batch size 1 hands out batches round
    robin, worker 0 first, skipping a worker once it is exhausted (its readers differ by at most
    one sample); with num_workers=0 the one reader is read in order. tests/unit/
    test_packing_schedule.py checks this against a real DataLoader."""
    per_rank = _readers(num_workers)
    index = {e["shard"]: i for i, e in enumerate(manifest)}
    plan = plan_epoch(manifest, world_size, num_workers, seed, epoch)
    readers = []
    for reader in plan[rank * per_rank:(rank + 1) * per_rank]:
        readers.append([(index[shard], k) for shard, start, stop in reader for k in range(start, stop)])
    if len(readers) == 1:
        return readers[0]
    out: list[tuple[int, int]] = []
    for j in range(max((len(r) for r in readers), default=0)):
        out.extend(r[j] for r in readers if j < len(r))
    return out


def plan_fingerprint(manifest: list[dict[str, Any]], world_size: int, num_workers: int, seed: int) -> str:
    """What a saved position depends on besides the epoch: the shards, the reader layout and the seed."""
    key = json.dumps([[e["shard"], e["samples"], e["sha256"]] for e in manifest]
                     + [world_size, _readers(num_workers), seed])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class ShardStream:
    """Iterable over (sample, images) of one reader, images a list of bytes in
    sample["images"] order. Iterating continues from the current position (so a stream can be
    iterated, stopped, and iterated again); `state()` / `load_state()` save and restore it."""

    def __init__(self, root: Path | str, manifest: list[dict[str, Any]], *, rank: int, world_size: int,
                 worker: int = 0, num_workers: int = 1, seed: int = 0, epoch: int = 0,
                 verify: bool = True) -> None:
        per_rank = _readers(num_workers)
        if not 0 <= rank < world_size or not 0 <= worker < per_rank:
            raise ValueError(f"rank {rank}/{world_size}, worker {worker}/{per_rank} out of range")
        self.root = Path(root)
        self.epoch = int(epoch)
        self.reader = rank * per_rank + worker
        self.verify = verify
        self.ranges = plan_epoch(manifest, world_size, num_workers, seed, epoch)[self.reader]
        self.plan = plan_fingerprint(manifest, world_size, num_workers, seed)
        self._entries = {e["shard"]: e for e in manifest}
        self._range = 0
        self._offset = 0
        self._consumed = 0

    def __len__(self) -> int:
        """Samples of this reader in the epoch (not what is left)."""
        return sum(stop - start for _, start, stop in self.ranges)

    def state(self) -> dict[str, Any]:
        r, off = self._range, self._offset
        if r < len(self.ranges) and off >= self.ranges[r][2] - self.ranges[r][1]:
            r, off = r + 1, 0
        return {"epoch": self.epoch, "reader": self.reader, "range": r, "offset": off,
                "consumed": self._consumed, "plan": self.plan}

    def load_state(self, state: dict[str, Any]) -> None:
        for key, mine in (("plan", self.plan), ("epoch", self.epoch), ("reader", self.reader)):
            if state.get(key) != mine:
                raise ValueError(f"stream state is for {key} {state.get(key)!r}, this stream has {mine!r} "
                                 "(same manifest, world size, workers, seed and epoch needed)")
        r, off = int(state["range"]), int(state["offset"])
        if not 0 <= r <= len(self.ranges) or off < 0 or (
                r < len(self.ranges) and off > self.ranges[r][2] - self.ranges[r][1]) or (r == len(self.ranges) and off):
            raise ValueError(f"stream state position (range {r}, offset {off}) is outside this reader's plan")
        self._range, self._offset, self._consumed = r, off, int(state.get("consumed", 0))

    @property
    def done(self) -> bool:
        return self.state()["range"] >= len(self.ranges)

    def __iter__(self) -> Iterator[tuple[dict[str, Any], list[bytes]]]:
        while self._range < len(self.ranges):
            shard, start, stop = self.ranges[self._range]
            skip = start + self._offset
            if skip < stop:
                path = self.root / shard
                entry = self._entries[shard]
                if self.verify:
                    verify_shard(path, entry)
                samples = iter_shard(path, entry)
                try:
                    for i, (sample, images) in enumerate(samples):
                        if i < skip:
                            continue
                        if i >= stop:
                            break
                        self._offset = i + 1 - start
                        self._consumed += 1
                        yield sample, list(images.values())
                finally:
                    samples.close()
                if self._offset < stop - start:
                    raise CorruptShard(f"shard {path}: ended at sample {start + self._offset}, "
                                       f"the plan needs samples up to {stop}")
            self._range += 1
            self._offset = 0


# ------------------------------------------------------------------------------ torch side
try:  # torch is a training dependency; the plan and stream above do not need it
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError:  # pragma: no cover
    IterableDataset = object  # type: ignore[assignment,misc]

    def get_worker_info():  # type: ignore[no-redef]
        return None


class ShardDataset(IterableDataset):  # type: ignore[misc]
    """One rank's share of one epoch, for a torch DataLoader with `num_workers` workers (must
    match the DataLoader's; 0 means the main process reads). Yields (transform(sample, images),
    state) where state is the reader's `state()` after that sample (feed it to `StateTracker`
    for each consumed batch). `resume`: a `StateTracker.state_dict()` saved in this epoch.

    Resume replay (the training loop's packer re-reads the span between its replay point and the
    checkpoint): with `replay_until` (the tracker's state at the checkpoint), a sample a reader
    had already handed out by then (its `consumed` count at most the saved one) whose id is not in
    `replay_keep` goes through `replay_transform` instead of `transform`: it is read but not
    encoded again, because the packer discards it anyway."""

    def __init__(self, root: Path | str, manifest: list[dict[str, Any]], *, rank: int, world_size: int,
                 num_workers: int, seed: int = 0, epoch: int = 0,
                 transform: Callable[[dict[str, Any], list[bytes]], Any] | None = None,
                 resume: dict[str, Any] | None = None, verify: bool = True,
                 replay_until: dict[str, Any] | None = None, replay_keep: Iterable[str] | None = None,
                 replay_transform: Callable[[dict[str, Any], list[bytes]], Any] | None = None) -> None:
        self.root, self.manifest = Path(root), manifest
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.seed, self.epoch, self.transform, self.verify = seed, epoch, transform, verify
        self.resume = resume
        self.replay_until = replay_until if replay_transform is not None else None
        self.replay_keep = frozenset(replay_keep or ())
        self.replay_transform = replay_transform

    def set_epoch(self, epoch: int, resume: dict[str, Any] | None = None) -> None:
        """Next epoch (call before creating the DataLoader iterator); drops a previous resume."""
        self.epoch, self.resume = epoch, resume

    def _worker(self) -> int:
        info = get_worker_info()
        loader_workers = info.num_workers if info is not None else 0
        if _readers(loader_workers) != _readers(self.num_workers):
            raise ValueError(f"ShardDataset was planned for num_workers={self.num_workers}, "
                             f"the DataLoader has {loader_workers}")
        wid = info.id if info is not None else 0
        rotate = 0
        if self.resume and self.resume.get("epoch") == self.epoch:
            rotate = int(self.resume.get("next_worker", 0))
        return (wid + rotate) % _readers(self.num_workers)

    def __iter__(self) -> Iterator[tuple[Any, dict[str, Any]]]:
        worker = self._worker()
        stream = ShardStream(self.root, self.manifest, rank=self.rank, world_size=self.world_size,
                             worker=worker, num_workers=self.num_workers, seed=self.seed,
                             epoch=self.epoch, verify=self.verify)
        if self.resume and self.resume.get("epoch") == self.epoch:
            saved = self.resume.get("readers", {}).get(str(stream.reader))
            if saved is not None:
                stream.load_state(saved)
        until = -1
        if self.replay_until and self.replay_until.get("epoch") == self.epoch:
            until = int(self.replay_until.get("readers", {}).get(str(stream.reader), {}).get("consumed", 0))
        for sample, images in stream:
            state = stream.state()
            if state["consumed"] <= until and str(sample.get("id", "")) not in self.replay_keep:
                item = self.replay_transform(sample, images)  # type: ignore[misc]
            else:
                item = self.transform(sample, images) if self.transform else (sample, images)
            yield item, state


class CollateWithState:
    """collate_fn for a DataLoader over ShardDataset: (inner([items]), state of the last item).
    All items of a DataLoader batch come from one worker, so the last state covers the batch."""

    def __init__(self, inner: Callable[[list[Any]], Any] | None = None) -> None:
        self.inner = inner

    def __call__(self, pairs: list[tuple[Any, dict[str, Any]]]) -> tuple[Any, dict[str, Any]]:
        items = [item for item, _ in pairs]
        return (self.inner(items) if self.inner else items), pairs[-1][1]


class StateTracker:
    """Main-process record of what the training loop has consumed: the last state per reader
    and which of this rank's readers the DataLoader serves next. `update()` once per consumed
    batch; `state_dict()` into the checkpoint; pass it back as ShardDataset(resume=...)."""

    def __init__(self, num_workers: int, epoch: int = 0, state: dict[str, Any] | None = None) -> None:
        self.per_rank = _readers(num_workers)
        self.epoch = epoch
        self.readers: dict[str, dict[str, Any]] = {}
        self.next_worker = 0
        if state is not None:
            self.epoch = int(state["epoch"])
            self.readers = {k: dict(v) for k, v in state.get("readers", {}).items()}
            self.next_worker = int(state.get("next_worker", 0))

    def update(self, state: dict[str, Any]) -> None:
        if state["epoch"] != self.epoch:
            self.epoch, self.readers = state["epoch"], {}
        self.readers[str(state["reader"])] = dict(state)
        self.next_worker = (state["reader"] % self.per_rank + 1) % self.per_rank

    def new_epoch(self, epoch: int) -> None:
        self.epoch, self.readers, self.next_worker = epoch, {}, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "next_worker": self.next_worker,
                "readers": {k: dict(v) for k, v in self.readers.items()}}
