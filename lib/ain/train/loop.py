"""The DeepSpeed training loop: Qwen2-VL full fine-tune on the packed WebDataset shards.

    result = train(cfg, manifest_dir, out_dir, seed=0, max_steps=None, stop_flag=None)

Distributed environment: RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT (exported by
the launcher; DeepSpeed ignores Slurm's variables), a single process when absent. On CPU
(`not torch.cuda.is_available()`): DS_ACCELERATOR=cpu, the shared-memory comm op disabled (it
would JIT-compile with g++), gloo; on GPU nccl (see /work/shared/ENVIRONMENT.md).

Data path per rank: ShardDataset (this rank's share of the epoch, `cfg.num_workers` DataLoader
workers, 0 = main process) -> transform `Encoder` (encode_sample + rope_positions, in the
workers) -> `StreamPacker` in the main process (streaming version of `collate.pack_rows`: a
look-ahead window of `cfg.packing_buffer` samples; one sample per row when cfg.packing is false)
-> `collate_packed` of each row (batch 1: train.micro_batch_size must be 1).

Exact resume of the data (the approach chosen): the packer's window holds samples that the
DataLoader has handed out (the StateTracker has moved past them) but that no trained row
contains yet, and best-fit packing takes them out of order. A checkpoint therefore records, per
rank, a REPLAY POINT instead of the tracker's current state:

    {"epoch", "tracker": StateTracker state just BEFORE the oldest sample still in the window
     (the current state when the window is empty), "replay": how many items the DataLoader
     handed out since that point, "pending": offsets (0-based, within those items) of the
     samples still in the window, "pending_ids": their ids (checked on resume), counters}

On resume the dataset restarts from that tracker state (ShardDataset(resume=...) continues the
item sequence exactly, workers included); of the first `replay` items only the pending offsets
go back into the window (in their original order, so the window is identical), the others were
trained on already (or were dropped by encode_sample and already counted) and are discarded.
Packing is a deterministic function of the window, so the rows, hence the losses, continue
exactly. Cost: re-reading/re-encoding at most one window's span of samples on resume.

Checkpoints: at optimizer-step boundaries only, all ranks together: every cfg.save_every_steps,
when `stop_flag()` is true on ANY rank (flags are all-reduced every step: a signal handler only
sets a flag), and at the end. `engine.save_checkpoint(out_dir, tag="step<n>", client_state=
{"step", "data": [per-rank data states, gathered]}, save_latest=False)`, a barrier, then rank 0
writes `latest` via a temp file + rename (a crash mid-save never leaves `latest` pointing at an
incomplete tag). A save that fails on any rank (disk full) raises CheckpointWriteError on every
rank with `latest` unmoved. On start, step dirs newer than `latest` (unfinished saves) are
deleted, and if out_dir/latest exists, the engine and the data state are loaded.

Ranks run in lock step: before each optimizer step every rank fetches its accum rows and the
ranks all-reduce "got them all"; if one rank's share of the epoch is exhausted, all ranks move
to the next epoch together (the other ranks' few leftover samples of that epoch are not used).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ain.preemption import finish_distributed
from ain.train.config import TrainConfig

log = logging.getLogger(__name__)

LATEST = "latest"


# ------------------------------------------------------------------------------ data
class Encoder:
    """ShardDataset transform: (sample, images) -> (id, EncodedSample or None, rope positions or
    None, skip reason or None). Runs in the DataLoader workers (needs only the processor and the
    model config)."""

    def __init__(self, processor, model_config, cfg: TrainConfig) -> None:
        self.processor, self.model_config, self.cfg = processor, model_config, cfg

    def __call__(self, sample: dict, images: list[bytes]):
        from ain.train.collate import rope_positions, try_encode

        enc, reason = try_encode(self.processor, sample, images, self.cfg)
        pos = rope_positions(self.model_config, enc) if enc is not None else None
        return str(sample.get("id", "")), enc, pos, reason


@dataclass
class _Entry:
    seq: int  # index of the item since the packer's base (replay point)
    sid: str
    length: int
    payload: Any
    snapshot: dict  # tracker state just before this item was handed out


@dataclass
class PackerState:
    epoch: int
    tracker: dict
    replay: int = 0
    pending: list = field(default_factory=list)
    pending_ids: list = field(default_factory=list)


class StreamPacker:
    """Rows from a stream of (item, state) pairs; item = (id, payload-with-.length or None,
    extra, skip reason). Same rows as `pack_rows(lengths, max_length, buffer)` over the kept
    items (buffer 1 and packing=False differ: packing=False is one sample per row).

    `tracker`: a StateTracker already at the stream's starting point; `replay`/`pending`: from a
    saved `state()` (see the module docstring)."""

    def __init__(self, items: Iterator, tracker, *, epoch: int, max_length: int, buffer: int,
                 packing: bool = True, replay: int = 0, pending: Optional[list] = None,
                 pending_ids: Optional[list] = None, skipped: Optional[Counter] = None) -> None:
        self.items, self.tracker, self.epoch = items, tracker, epoch
        self.max_length, self.buffer, self.packing = max_length, max(1, int(buffer)), packing
        self.replay = int(replay)
        self.pending = dict(zip(pending or [], pending_ids or [None] * len(pending or [])))
        self.skipped = skipped if skipped is not None else Counter()
        self.window: list[_Entry] = []
        self.pulled = 0  # items handed out since the base
        self.exhausted = False

    def _pull(self) -> bool:
        """Take one item from the stream into the window (or discard it). False at the end."""
        try:
            item, state = next(self.items)
        except StopIteration:
            self.exhausted = True
            if self.pulled < self.replay:
                raise RuntimeError(f"data stream ended during the resume replay ({self.pulled} of "  # noqa: B904
                                   f"{self.replay} items): the shards changed since the checkpoint")
            return False
        snapshot = self.tracker.state_dict()
        self.tracker.update(state)
        seq = self.pulled
        self.pulled += 1
        sid, payload, extra, reason = item
        if seq < self.replay:  # resume replay: keep only what was still in the window
            if seq not in self.pending:
                return True
            want = self.pending[seq]
            if want is not None and want != sid:
                raise RuntimeError(f"resume replay: item {seq} is {sid!r}, the checkpoint says {want!r}")
            if payload is None:
                raise RuntimeError(f"resume replay: buffered sample {sid!r} no longer encodes ({reason})")
        elif payload is None:
            self.skipped[reason or "unknown"] += 1
            return True
        self.window.append(_Entry(seq, sid, int(payload.length), (payload, extra), snapshot))
        return True

    def _fill(self) -> None:
        while len(self.window) < self.buffer and not self.exhausted:
            self._pull()

    def next_row(self) -> Optional[list[_Entry]]:
        """The next row's entries (ordered as in the stream), or None when the stream is done."""
        self._fill()
        if not self.window:
            return None
        first = self.window.pop(0)
        row, room = [first], self.max_length - first.length
        while self.packing:
            self._fill()
            best = -1
            for k, e in enumerate(self.window):
                if e.length <= room and (best < 0 or e.length > self.window[best].length):
                    best = k
            if best < 0:
                break
            e = self.window.pop(best)
            row.append(e)
            room -= e.length
        row.sort(key=lambda e: e.seq)
        return row

    def state(self) -> PackerState:
        """Replay point of the current position (JSON-able via dataclasses.asdict)."""
        if not self.window:
            return PackerState(self.epoch, self.tracker.state_dict())
        base = self.window[0]  # the window is in stream order: its first entry is the oldest
        return PackerState(self.epoch, base.snapshot, replay=self.pulled - base.seq,
                           pending=[e.seq - base.seq for e in self.window],
                           pending_ids=[e.sid for e in self.window])


# ------------------------------------------------------------------------------ distributed
def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the environment; a single process by default (and
    then MASTER_ADDR/MASTER_PORT default to 127.0.0.1:29500)."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])


def init_distributed(on_cpu: bool) -> None:
    if on_cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import deepspeed.ops

    if on_cpu:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo" if on_cpu else "nccl")


def write_latest(out_dir: Path, tag: str) -> None:
    """`latest` <- tag, atomically (temp file, fsync, rename)."""
    tmp = out_dir / f".{LATEST}.tmp"
    with open(tmp, "w") as f:
        f.write(tag)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out_dir / LATEST)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, quota, I/O error) on some rank."""


def step_dirs(out_dir: Path) -> list[Path]:
    """The step<n> checkpoint directories under out_dir, oldest first."""
    return sorted((p for p in out_dir.glob("step*") if p.is_dir() and p.name[4:].isdigit()),
                  key=lambda p: int(p.name[4:]))


def discard_unadopted(out_dir: Path) -> list[str]:
    """Delete step<n> directories newer than the one `latest` names (all of them if there is no
    `latest`): a save that failed or was killed before `latest` moved. They are never loaded, but
    left alone they would count towards keep_checkpoints and hold disk space that a full disk
    needs back. Returns the deleted tags."""
    pointer = out_dir / LATEST
    adopted = int(pointer.read_text().strip()[4:]) if pointer.exists() else -1
    removed = [p for p in step_dirs(out_dir) if int(p.name[4:]) > adopted]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in removed]


def prune_checkpoints(out_dir: Path, keep: int, current: str) -> None:
    """Delete all but the newest `keep` step<n> checkpoints (never `current`, which `latest` names)."""
    if keep <= 0:
        return
    tags = step_dirs(out_dir)
    for old in tags[:-keep]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


def estimate_total_steps(manifest: list[dict], cfg: TrainConfig, world_size: int) -> int:
    """Optimizer steps for the scheduler when max_steps is not given: samples x epochs / world /
    accum, divided by an assumed 2 samples per packed row when packing (the real row count is
    only known after tokenising; the loop runs until the data ends either way)."""
    samples = sum(int(e["samples"]) for e in manifest) * max(1, cfg.epochs)
    rows = samples / (2.0 if cfg.packing else 1.0)
    return max(1, math.ceil(rows / world_size / (cfg.grad_accum * cfg.micro_batch_size)))


# ------------------------------------------------------------------------------ model
def load_model(cfg: TrainConfig):
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    model = Qwen2VLForConditionalGeneration.from_pretrained(cfg.model, dtype=dtype,
                                                            attn_implementation=cfg.attn_implementation)
    processor = AutoProcessor.from_pretrained(cfg.model)
    text_config = getattr(model.config, "text_config", model.config)
    text_config.use_cache = False
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.freeze_vision:
        visual = getattr(model.model, "visual", None) or model.visual
        for p in visual.parameters():
            p.requires_grad_(False)
    model.train()
    return model, processor


# ------------------------------------------------------------------------------ loop
def train(cfg: TrainConfig, manifest_dir: Path, out_dir: Path, *, seed: int, max_steps: int | None = None,
          stop_flag: Callable[[], bool] | None = None, log_dir: Path | None = None) -> dict:
    """Train (or resume from out_dir/latest) until max_steps, the end of cfg.epochs, or
    stop_flag(). Returns {"steps", "losses" (this process's steps), "samples_seen" (this rank,
    whole run), "resumed_from_step", "stopped_early", "sample_ids" (trained on by this rank in
    this process, in order), "skipped", "buffered_at_save" (samples in the packing window at the
    last save)}. Per-step metrics and sample ids go to `log_dir` (default out_dir; see
    ain.train.telemetry)."""
    import torch
    import torch.distributed as tdist
    from torch.utils.data import DataLoader

    from ain.data.shards import read_manifest
    from ain.train.collate import collate_packed
    from ain.train.ds_config import deepspeed_config
    from ain.train.stream import CollateWithState, ShardDataset, StateTracker
    from ain.train.telemetry import TrainLog, count_parameters, row_flops

    if cfg.micro_batch_size != 1:
        raise ValueError("train.micro_batch_size must be 1: a packed row is a batch of 1 (use grad_accum)")
    on_cpu = not torch.cuda.is_available()
    rank, world, local_rank = dist_env()
    if not on_cpu:
        torch.cuda.set_device(local_rank)
    init_distributed(on_cpu)
    import deepspeed

    out_dir = Path(out_dir)
    manifest_dir = Path(manifest_dir)
    manifest = read_manifest(manifest_dir)
    if not manifest:
        raise FileNotFoundError(f"no manifest-*.jsonl with shards in {manifest_dir}")
    torch.manual_seed(seed)
    model, processor = load_model(cfg)
    total_steps = int(max_steps) if max_steps else estimate_total_steps(manifest, cfg, world)
    params = [p for p in model.parameters() if p.requires_grad]
    ds_cfg = deepspeed_config(cfg, world, total_steps, on_cpu=on_cpu)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds_cfg)
    device = engine.device

    # resume
    step, resumed_from = 0, 0
    data_state: Optional[dict] = None
    counters = {"samples_seen": 0, "rows": 0, "skipped": {}}
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        removed = discard_unadopted(out_dir)
        if removed:
            log.warning("removed unadopted checkpoint(s) %s in %s (a save that did not finish)", removed, out_dir)
    tdist.barrier()
    if (out_dir / LATEST).exists():
        tag = (out_dir / LATEST).read_text().strip()
        path, client = engine.load_checkpoint(str(out_dir), tag=tag)
        if path is None or client is None:
            raise RuntimeError(f"checkpoint {out_dir / tag} (from {LATEST}) could not be loaded")
        if len(client["data"]) != world:
            raise RuntimeError(f"checkpoint {tag} has {len(client['data'])} ranks, this run {world}")
        step = resumed_from = int(client["step"])
        data_state = client["data"][rank]
        counters = {k: data_state[k] for k in counters}
        log.info("resumed from %s (step %d)", out_dir / tag, step)
    skipped = Counter(counters["skipped"])

    encoder = Encoder(processor, model.config, cfg)
    text_config = getattr(model.config, "text_config", model.config)
    n_text, n_vision = count_parameters(model)
    train_log = TrainLog(Path(log_dir or out_dir), rank, resumed_from, world_size=world,
                         peak_flops=cfg.peak_tflops_per_gpu * 1e12, log_every=cfg.log_every_steps)

    def make_packer(epoch: int, state: Optional[dict]) -> tuple[StreamPacker, Any]:
        tracker = StateTracker(cfg.num_workers, epoch=epoch, state=state["tracker"] if state else None)
        if state is None:
            tracker.new_epoch(epoch)
        ds = ShardDataset(manifest_dir, manifest, rank=rank, world_size=world, num_workers=cfg.num_workers,
                          seed=seed, epoch=epoch, transform=encoder, resume=tracker.state_dict())
        loader = DataLoader(ds, batch_size=1, num_workers=cfg.num_workers,
                            collate_fn=CollateWithState(lambda items: items[0]))
        it = iter(loader)
        packer = StreamPacker(it, tracker, epoch=epoch, max_length=cfg.max_length, buffer=cfg.packing_buffer,
                              packing=cfg.packing, replay=state["replay"] if state else 0,
                              pending=state["pending"] if state else None,
                              pending_ids=state["pending_ids"] if state else None, skipped=skipped)
        return packer, it

    epoch = int(data_state["epoch"]) if data_state else 0
    packer, loader_it = make_packer(epoch, data_state) if epoch < cfg.epochs else (None, None)

    losses: list[float] = []
    sample_ids: list[str] = []
    stopped_early = False
    last_saved = step if resumed_from else -1
    buffered_at_save = 0
    accum = cfg.grad_accum
    last_save_time = time.time()

    def flag(value: bool) -> bool:
        t = torch.tensor([1.0 if value else 0.0], device=device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def save() -> None:
        nonlocal last_saved, buffered_at_save
        ps = packer.state() if packer is not None else PackerState(epoch, {"epoch": epoch})
        mine = {"epoch": ps.epoch, "tracker": ps.tracker, "replay": ps.replay, "pending": ps.pending,
                "pending_ids": ps.pending_ids, "samples_seen": counters["samples_seen"],
                "rows": counters["rows"], "skipped": dict(skipped)}
        buffered_at_save = len(ps.pending)
        gathered: list = [None] * world
        tdist.all_gather_object(gathered, mine)
        tag = f"step{step}"
        try:
            engine.save_checkpoint(str(out_dir), tag=tag, client_state={"step": step, "data": gathered},
                                   save_latest=False)
            error: Optional[BaseException] = None
        except (OSError, RuntimeError) as exc:  # torch.save reports ENOSPC as a RuntimeError
            error = exc
        # Every rank learns that a save failed, so none waits at the next collective for a rank
        # that is gone; `latest` does not move and still names the previous, complete checkpoint.
        if flag(error is not None):
            previous = (out_dir / LATEST).read_text().strip() if (out_dir / LATEST).exists() else "nothing"
            reason = f"{type(error).__name__}: {error}" if error else "failed on another rank"
            # torch.save reports a full disk as "unexpected pos ..."; the free space says what happened
            free_mb = shutil.disk_usage(out_dir).free / 2**20
            raise CheckpointWriteError(f"checkpoint {out_dir / tag} could not be written ({reason}; "
                                       f"{free_mb:.1f} MB free on that filesystem); "
                                       f"`latest` still names {previous}; free space and re-run to resume "
                                       f"from it") from error
        if os.environ.get("AIN_FAIL_SAVE_AT_STEP") == str(step):  # fault injection: die mid-save
            log.error("AIN_FAIL_SAVE_AT_STEP=%d: exiting before `latest` moves", step)
            os._exit(17)
        tdist.barrier()
        if rank == 0:
            write_latest(out_dir, tag)
            prune_checkpoints(out_dir, keep=cfg.keep_checkpoints, current=tag)
        tdist.barrier()
        last_saved = step
        log.info("saved %s", out_dir / tag)

    while packer is not None and (not max_steps or step < max_steps):
        rows = []
        while len(rows) < accum:
            entries = packer.next_row()
            if entries is None:
                break
            rows.append(entries)
        if flag(len(rows) < accum):  # some rank's share of this epoch is done: all ranks move on
            epoch += 1
            del loader_it
            packer, loader_it = make_packer(epoch, None) if epoch < cfg.epochs else (None, None)
            continue
        micro_losses, step_ids, step_tokens, step_flops = [], [], 0, 0.0
        lr = engine.get_lr()[0]
        for entries in rows:
            batch = collate_packed([e.payload[0] for e in entries], [e.payload[1] for e in entries])
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            out = engine(**batch)
            engine.backward(out.loss)
            engine.step()
            micro_losses.append(float(out.loss.detach().float().item()))
            step_tokens += int(batch["input_ids"].shape[1])
            patches = int(batch["pixel_values"].shape[0]) if "pixel_values" in batch else 0
            step_flops += row_flops(n_text, n_vision, text_config.num_hidden_layers, text_config.hidden_size,
                                    [e.payload[0].length for e in entries], patches)
            step_ids.extend(e.sid for e in entries)
            counters["samples_seen"] += len(entries)
            counters["rows"] += 1
        step += 1
        sample_ids.extend(step_ids)
        losses.append(sum(micro_losses) / len(micro_losses))
        grad_norm = engine.get_global_grad_norm()
        train_log.step(step, loss=losses[-1], lr=lr, grad_norm=None if grad_norm is None else float(grad_norm),
                       tokens=step_tokens, samples=len(step_ids), flops=step_flops, sample_ids=step_ids,
                       total_steps=total_steps)
        stop = flag(bool(stop_flag and stop_flag()))
        due = bool(cfg.save_every_steps and step % cfg.save_every_steps == 0)
        if cfg.save_every_minutes > 0:  # rank 0's clock decides, for all ranks
            due = flag(due or (rank == 0 and time.time() - last_save_time >= 60 * cfg.save_every_minutes))
        if stop or due:
            save()
            last_save_time = time.time()
        if stop:
            stopped_early = True
            break
    if not stopped_early and last_saved != step and step > 0:
        save()
    counters["skipped"] = dict(skipped)
    train_log.close()
    finish_distributed()
    return {"steps": step, "losses": losses, "samples_seen": counters["samples_seen"],
            "resumed_from_step": resumed_from, "stopped_early": stopped_early, "sample_ids": sample_ids,
            "skipped": dict(skipped), "rows": counters["rows"], "buffered_at_save": buffered_at_save,
            "total_steps": total_steps}


def main_json(args: dict) -> dict:  # pragma: no cover - convenience for subprocess callers
    cfg = TrainConfig(**args["cfg"])
    return train(cfg, Path(args["manifest_dir"]), Path(args["out_dir"]), seed=int(args.get("seed", 0)),
                 max_steps=args.get("max_steps"))


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(json.dumps(main_json(json.loads(sys.argv[1]))))
