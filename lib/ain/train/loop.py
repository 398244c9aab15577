"""The DeepSpeed training loop: Qwen2-VL full fine-tune on the packed WebDataset shards.

    result = train(cfg, manifest_dir, out_dir, seed=0, max_steps=None, stop_flag=None)

Distributed environment: RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT (exported by
the launcher; DeepSpeed ignores Slurm's variables), a single process when absent. On CPU
(`not torch.cuda.is_available()`): DS_ACCELERATOR=cpu, the shared-memory comm op disabled (it
would JIT-compile with g++), gloo; on GPU nccl (see /work/shared/ENVIRONMENT.md).

Model and optimizer (`load_model`, ain.train.ds_config): under ZeRO-3 the model is built
partitioned (deepspeed.zero.Init through transformers' HfDeepSpeedConfig; rank 0 alone reads the
weights), so the DeepSpeed config, and with it the schedule's length, is settled before the model
loads; the attention kernel is probed per rank (ain.train.attention: flash_attention_2 where it
runs, else sdpa, recorded in metrics.jsonl); the optimizer is torch's AdamW (fused on CUDA) given
to deepspeed.initialize, not DeepSpeed's JIT-built FusedAdam.

Data path per rank: ShardDataset (this rank's share of the epoch, `cfg.num_workers` DataLoader
workers, 0 = main process) -> transform `Encoder` (encode_sample + rope_positions, in the
workers) -> `StreamPacker` in the main process (buffered best-fit decreasing, the streaming form
of `collate.pack_stream`: a window of at most `cfg.packing_buffer` samples, full rows emitted,
leftovers carried; one sample per row when cfg.packing is false) -> `collate_packed` of each row
(batch 1: train.micro_batch_size must be 1).

Schedule (`plan_schedule`): before training, every rank replays its own share of each epoch over
the token lengths the pack stage recorded in the manifest (stream.rank_order: the order its
DataLoader hands samples out; collate.pack_stream: the packer's rows) and the ranks all-reduce
MIN of rows // accum per epoch, so the LR schedule's total_steps is the number of optimizer steps
the loop takes (the cosine reaches 0 at the last step, warmup is warmup_ratio of the run). A
manifest without usable lengths falls back to an estimate (logged). grad_accum 0 is derived from
train.global_batch_size (rows) and the world size.

Exact resume of the data (the approach chosen): the packer holds samples that the DataLoader
has handed out (the StateTracker has moved past them) but that no trained row contains yet (in
its window, or in rows formed and not yet handed out), and it takes them out of order. A
checkpoint therefore records, per rank, a REPLAY POINT instead of the tracker's current state:

    {"epoch", "tracker": StateTracker state just BEFORE the oldest sample still held
     (the current state when nothing is held), "replay": how many items the DataLoader
     handed out since that point, "pending": offsets (0-based, within those items) of the
     samples still held, "pending_ids": their ids (checked on resume), "queued": the formed
     rows not yet handed out (indices into pending), "tracker_now": the tracker's current
     state, counters}

On resume the dataset restarts from that tracker state (ShardDataset(resume=...) continues the
item sequence exactly, workers included); of the first `replay` items only the pending offsets
go back into the window and the queued rows (in their original order, so both are identical),
the others were trained on already (or were dropped by encode_sample and already counted) and
are discarded, unencoded: the dataset passes them through `Replayed` instead of the Encoder
(`replay_until=tracker_now`, `replay_keep=pending_ids`). Packing is a deterministic function of
the window (lengths and ages), so the rows, hence the losses, continue exactly. Cost: re-reading
the span (a sample waits at most 4 x packing_buffer pulls before its row is emitted, so at most
~5 x packing_buffer samples per rank) and re-encoding the at most packing_buffer pending ones.

Checkpoints: at optimizer-step boundaries only, all ranks together: every cfg.save_every_steps
or save_every_minutes, when `stop_flag()` is true on ANY rank (flags are all-reduced every step:
a signal handler only sets a flag), and at the end. ain.train.checkpoint writes them (the step
directory, then an atomic `latest`; a failed save on any rank raises on every rank) and resumes
from `latest` with the per-rank data states above.

Ranks run in lock step: before each optimizer step every rank fetches its accum rows and the
ranks all-reduce "got them all"; if one rank's share of the epoch is exhausted, all ranks move
to the next epoch together (the other ranks' few leftover samples of that epoch are not used).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ain.preemption import finish_distributed
from ain.train.checkpoint import Checkpoints
from ain.train.config import TrainConfig

log = logging.getLogger(__name__)



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
        if enc is not None and enc.pixel_values is not None and self.cfg.bf16:
            import torch

            # The vision tower casts its input to its own dtype (bf16 here) before the first
            # layer, so this is exact; it halves what the packing window holds (~3 MB per
            # 512x512 image instead of ~6 MB).
            enc.pixel_values = enc.pixel_values.to(torch.bfloat16)
        return str(sample.get("id", "")), enc, pos, reason


class Replayed:
    """ShardDataset `replay_transform`: a sample of the resume replay that no longer sits in the
    packing window (it was trained on before the checkpoint) is not encoded again; the packer
    discards it by position."""

    def __call__(self, sample: dict, images: list[bytes]):
        return str(sample.get("id", "")), None, None, "replayed"


@dataclass
class _Entry:
    seq: int  # index of the item since the packer's base (replay point)
    sid: str
    length: int
    payload: Any
    snapshot: dict  # tracker state just before this item was handed out


@dataclass
class PackerState:
    """A StreamPacker's position, JSON-able via dataclasses.asdict (see the module docstring).
    `queued`: the rows formed but not handed out yet, as indices into `pending` (absent from
    checkpoints written before buffered best-fit decreasing: then every pending sample goes back
    into the window); `tracker_now`: the tracker state at the save (lets the resumed DataLoader
    skip encoding replayed samples that are not pending; None: encode them all)."""

    epoch: int
    tracker: dict
    replay: int = 0
    pending: list = field(default_factory=list)
    pending_ids: list = field(default_factory=list)
    queued: list = field(default_factory=list)
    tracker_now: Optional[dict] = None


class StreamPacker:
    """Rows from a stream of (item, state) pairs; item = (id, payload-with-.length or None,
    extra, skip reason). The rows are exactly `collate.pack_stream(lengths, max_length, buffer,
    packing)` over the items' lengths (None for a dropped item): buffered best-fit decreasing
    through a window of `buffer` samples (one sample per row when packing is false).

    `tracker`: a StateTracker already at the stream's starting point; `replay`/`pending`/
    `pending_ids`/`queued`: from a saved `state()` (see the module docstring); the replayed items
    are pulled when the packer is made."""

    def __init__(self, items: Iterator, tracker, *, epoch: int, max_length: int, buffer: int,
                 packing: bool = True, replay: int = 0, pending: Optional[list] = None,
                 pending_ids: Optional[list] = None, queued: Optional[list] = None,
                 skipped: Optional[Counter] = None) -> None:
        self.items, self.tracker, self.epoch = items, tracker, epoch
        self.max_length, self.packing = max_length, packing
        self.buffer = max(1, int(buffer)) if packing else 1
        self.replay = int(replay)
        self.skipped = skipped if skipped is not None else Counter()
        self.window: list[_Entry] = []  # stream order
        self.queue: deque[list[_Entry]] = deque()  # rows formed, not handed out yet
        self.pulled = 0  # items handed out since the base
        self.exhausted = False
        if self.replay:
            self._restore(list(pending or []), list(pending_ids or [None] * len(pending or [])), queued or [])

    def _pull(self) -> Optional[tuple]:
        """The next item as (seq, id, payload, extra, reason, snapshot); None at the end."""
        try:
            item, state = next(self.items)
        except StopIteration:
            self.exhausted = True
            return None
        snapshot = self.tracker.state_dict()
        self.tracker.update(state)
        seq = self.pulled
        self.pulled += 1
        sid, payload, extra, reason = item
        return seq, sid, payload, extra, reason, snapshot

    def _restore(self, pending: list, pending_ids: list, queued: list) -> None:
        """Pull the `replay` items of the saved span: the pending ones become the window and the
        waiting rows again, the others were trained on already (or dropped and counted) and go."""
        where = {int(off): k for k, off in enumerate(pending)}
        entries: list[Optional[_Entry]] = [None] * len(pending)
        while self.pulled < self.replay:
            got = self._pull()
            if got is None:
                raise RuntimeError(f"data stream ended during the resume replay ({self.pulled} of "
                                   f"{self.replay} items): the shards changed since the checkpoint")
            seq, sid, payload, extra, reason, snapshot = got
            k = where.get(seq)
            if k is None:
                continue
            want = pending_ids[k]
            if want is not None and want != sid:
                raise RuntimeError(f"resume replay: item {seq} is {sid!r}, the checkpoint says {want!r}")
            if payload is None:
                raise RuntimeError(f"resume replay: buffered sample {sid!r} no longer encodes ({reason})")
            entries[k] = _Entry(seq, sid, int(payload.length), (payload, extra), snapshot)
        if any(e is None for e in entries):
            raise RuntimeError(f"resume replay: pending offsets {pending} are not all within the "
                               f"{self.replay} replayed items")
        in_rows = set()
        for row in queued:
            self.queue.append([entries[k] for k in row])  # type: ignore[misc]
            in_rows.update(row)
        self.window = sorted((e for k, e in enumerate(entries) if k not in in_rows),  # type: ignore[misc]
                             key=lambda e: e.seq)

    def _fill(self) -> None:
        while len(self.window) < self.buffer and not self.exhausted:
            got = self._pull()
            if got is None:
                break
            seq, sid, payload, extra, reason, snapshot = got
            if payload is None:
                self.skipped[reason or "unknown"] += 1
                continue
            self.window.append(_Entry(seq, sid, int(payload.length), (payload, extra), snapshot))

    def next_row(self) -> Optional[list[_Entry]]:
        """The next row's entries (ordered as in the stream), or None when the stream is done."""
        from ain.train.collate import window_rows

        if self.queue:
            return self.queue.popleft()
        self._fill()
        if not self.window:
            return None
        if not self.packing:
            return [self.window.pop(0)]
        emit = window_rows([e.length for e in self.window], [self.pulled - e.seq for e in self.window],
                           self.max_length, self.buffer, self.exhausted)
        taken = set()
        for row in emit:
            self.queue.append([self.window[k] for k in row])
            taken.update(row)
        self.window = [e for k, e in enumerate(self.window) if k not in taken]
        return self.queue.popleft()

    @property
    def held(self) -> int:
        """Samples held: the window plus the rows waiting to be handed out (<= buffer)."""
        return len(self.window) + sum(len(row) for row in self.queue)

    def state(self) -> PackerState:
        """Replay point of the current position (JSON-able via dataclasses.asdict)."""
        held = sorted(self.window + [e for row in self.queue for e in row], key=lambda e: e.seq)
        now = self.tracker.state_dict()
        if not held:
            return PackerState(self.epoch, now)
        base = held[0]
        index = {id(e): k for k, e in enumerate(held)}
        return PackerState(self.epoch, base.snapshot, replay=self.pulled - base.seq,
                           pending=[e.seq - base.seq for e in held], pending_ids=[e.sid for e in held],
                           queued=[[index[id(e)] for e in row] for row in self.queue], tracker_now=now)


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


def check_gpus_usable(on_cpu: bool, torch_version: str, torch_cuda: Optional[str]) -> None:
    """Slurm gave this job GPUs (SLURM_GPUS_ON_NODE) but torch sees none: stop now, naming the
    likely cause, instead of training on the CPU for days (the CPU path is for tests). PyPI's
    torch wheels are built for one CUDA version (torch 2.14: 13.0) and need a driver that runs it."""
    gpus = os.environ.get("SLURM_GPUS_ON_NODE", "").strip()
    if on_cpu and gpus.isdigit() and int(gpus) > 0:
        raise RuntimeError(f"Slurm allocated {gpus} GPU(s) on this node but torch {torch_version} (built for CUDA "
                           f"{torch_cuda}) sees none: is the NVIDIA driver older than that CUDA needs "
                           "(nvidia-smi), or CUDA_VISIBLE_DEVICES empty? See README, 'On a cluster'.")


def init_distributed(on_cpu: bool) -> None:
    if on_cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import deepspeed.ops

    if on_cpu:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo" if on_cpu else "nccl")


# ------------------------------------------------------------------------------ schedule
ASSUMED_FILL = 0.99  # share of a row's tokens packing fills (docs/PERFORMANCE.md), for estimates only


def length_spec(cfg: TrainConfig) -> dict:
    """What a sample's token count depends on besides the sample: the pack stage records it beside
    the lengths (ain.data.pack, manifest key "length_spec") and the schedule uses the lengths only
    when it matches."""
    return {"model": cfg.model, "min_pixels": int(cfg.min_pixels), "max_pixels": int(cfg.max_pixels)}


def manifest_lengths(manifest: list[dict], cfg: TrainConfig) -> tuple[Optional[list[list]], str]:
    """(per manifest entry, each sample's token count or None for a sample the encoder drops;
    why not, when the manifest cannot say)."""
    out = []
    for e in manifest:
        lengths = e.get("lengths")
        if lengths is None:
            return None, f"shard {e.get('shard')} has no token lengths (packed without the train stage?)"
        if len(lengths) != int(e["samples"]):
            return None, f"shard {e.get('shard')}: {len(lengths)} lengths for {e['samples']} samples"
        if e.get("length_spec") != length_spec(cfg):
            return None, (f"shard {e.get('shard')}: lengths counted for {e.get('length_spec')}, training uses "
                          f"{length_spec(cfg)}")
        out.append(lengths)
    return out, ""


def rank_rows(manifest: list[dict], lengths: list[list], cfg: TrainConfig, *, rank: int, world_size: int,
              seed: int, epoch: int) -> list[int]:
    """Samples per packed row, in order, of rank `rank` in `epoch`: its samples in the order its
    DataLoader hands them out (stream.rank_order), packed exactly as StreamPacker packs them
    (collate.pack_stream)."""
    from ain.train.collate import pack_stream
    from ain.train.stream import rank_order

    order = rank_order(manifest, rank, world_size, cfg.num_workers, seed, epoch)
    rows = pack_stream([lengths[i][k] for i, k in order], cfg.max_length, cfg.packing_buffer, cfg.packing)
    return [len(row) for row in rows]


@dataclass
class Schedule:
    """Optimizer steps of a run, before it starts. exact: replayed from the pack manifest's token
    lengths (`steps_per_epoch[e]` = min over ranks of rows // accum: ranks move to the next epoch
    together); else estimated from train.tokens_per_sample at ASSUMED_FILL."""

    total_steps: int
    steps_per_epoch: list[int]
    rows: int  # packed rows trained on, all ranks, all epochs
    samples: int  # samples in those rows (exact) or expected
    accum: int
    world_size: int
    exact: bool
    source: str

    @property
    def global_rows(self) -> int:
        return self.accum * self.world_size  # micro_batch_size is 1

    @property
    def samples_per_row(self) -> float:
        return self.samples / max(1, self.rows)


def estimated_schedule(samples: int, cfg: TrainConfig, world_size: int, why: str) -> Schedule:
    """Steps from a sample count and train.tokens_per_sample when there are no lengths to replay."""
    accum = cfg.accum_for(world_size)
    per_row = max(1.0, cfg.max_length * ASSUMED_FILL / max(1, cfg.tokens_per_sample)) if cfg.packing else 1.0
    rows_per_rank = int(samples / world_size / per_row)
    per_epoch = max(1, rows_per_rank // accum)
    epochs = max(1, cfg.epochs)
    rows = per_epoch * accum * world_size * epochs
    return Schedule(per_epoch * epochs, [per_epoch] * epochs, rows, int(rows * per_row), accum, world_size,
                    False, f"estimate: {per_row:.2f} samples per row assumed ({why})")


def plan_schedule(manifest: list[dict], cfg: TrainConfig, world_size: int, seed: int,
                  ranks: Optional[list[int]] = None,
                  reduce_min: Optional[Callable[[list[int]], list[int]]] = None) -> Schedule:
    """The run's optimizer steps: replays the packing of every rank and epoch over the manifest's
    token lengths (the same functions the stream and the packer use, so total_steps equals the
    steps the loop takes), or estimates them when the manifest has no usable lengths.

    `ranks`: replay only these (default all). In the training job each rank replays its own share
    and `reduce_min` (an all-reduce MIN over the ranks) combines the per-epoch steps: exact. The
    dry run replays rank 0 alone (~3 s per 56k samples) and calls the result approximate: ranks'
    row counts differ by a row or two."""
    accum = cfg.accum_for(world_size)
    lengths, why = manifest_lengths(manifest, cfg)
    if lengths is None:
        return estimated_schedule(sum(int(e["samples"]) for e in manifest), cfg, world_size, why)
    epochs = max(1, cfg.epochs)
    ranks = list(range(world_size)) if ranks is None else list(ranks)
    rows = [[rank_rows(manifest, lengths, cfg, rank=r, world_size=world_size, seed=seed, epoch=e) for r in ranks]
            for e in range(epochs)]
    per_epoch = [min(len(r) for r in by_rank) // accum for by_rank in rows]
    if reduce_min is not None:
        per_epoch = reduce_min(per_epoch)
    exact = reduce_min is not None or len(set(ranks)) == world_size
    # samples in the rows trained (each epoch's first steps x accum rows of every rank), scaled up
    # from the ranks replayed here when those are not all
    samples = sum(sum(r[:n * accum]) for by_rank, n in zip(rows, per_epoch) for r in by_rank)
    samples = samples * world_size // len(ranks)
    total = sum(per_epoch)
    source = ("replayed from the pack manifest's token lengths" if exact else
              f"replayed for rank(s) {ranks} of {world_size} from the pack manifest's token lengths; "
              "the train stage replays every rank")
    return Schedule(max(1, total), per_epoch, total * accum * world_size, samples, accum, world_size, exact, source)


# ------------------------------------------------------------------------------ model
_ZERO3_CONFIG: Any = None  # transformers keeps only a weak reference to it; alive while the process trains


def load_model(cfg: TrainConfig, ds_config: Optional[dict] = None, attention=None):
    """(model, processor, attention choice). Under ZeRO-3 (`ds_config` with zero stage 3) the
    model is built inside `deepspeed.zero.Init`: transformers' HfDeepSpeedConfig, registered
    before `from_pretrained`, makes it construct every parameter already partitioned across the
    ranks, read the weights on rank 0 only (the other ranks map the checkpoint to the meta device)
    and scatter them, so 8 ranks of a node hold 1/world of the model each instead of 8 full
    copies in CPU memory (~15 GB each for 7B in bf16). ZeRO-2 loads a full copy per rank as
    before. The attention kernel is probed first (ain.train.attention): flash_attention_2 only
    where it can run, else sdpa with a warning; a from_pretrained that still refuses flash
    attention falls back the same way."""
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from ain.train.attention import FALLBACK, FLASH, AttentionChoice, choose_attention

    global _ZERO3_CONFIG
    if ds_config is not None and int(ds_config.get("zero_optimization", {}).get("stage", 0)) == 3:
        from transformers.integrations import HfDeepSpeedConfig

        _ZERO3_CONFIG = HfDeepSpeedConfig(ds_config)
    else:
        release_zero3_config()
    choice = attention or choose_attention(cfg.attn_implementation, bf16=cfg.bf16)
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32

    def build(implementation: str):
        return Qwen2VLForConditionalGeneration.from_pretrained(cfg.model, dtype=dtype,
                                                               attn_implementation=implementation)

    try:
        model = build(choice.implementation)
    except (ImportError, ValueError) as exc:  # transformers' own flash-attention checks
        if choice.implementation != FLASH:
            raise
        log.warning("from_pretrained refused %s (%s): using %s", FLASH, exc, FALLBACK)
        choice = AttentionChoice(choice.requested, FALLBACK, f"from_pretrained: {type(exc).__name__}: {exc}")
        model = build(FALLBACK)
    processor = AutoProcessor.from_pretrained(cfg.model)
    text_config = getattr(model.config, "text_config", model.config)
    text_config.use_cache = False
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    freeze_modules(model, cfg)
    model.train()
    return model, processor, choice


def zero3_init_active() -> bool:
    """Whether from_pretrained would build the model partitioned (ZeRO-3 config registered)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return bool(is_deepspeed_zero3_enabled())


def release_zero3_config() -> None:
    """Forget the ZeRO-3 config (the end of a training run in this process)."""
    global _ZERO3_CONFIG
    if _ZERO3_CONFIG is not None:
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        _ZERO3_CONFIG = None


def freeze_modules(model, cfg: TrainConfig) -> list[str]:
    """Freeze what LLaMA-Factory's Qwen2-VL full SFT freezes (its COMPOSITE_MODELS entry for
    qwen2_vl, src/llamafactory/model/model_utils/visual.py): the vision tower `visual.patch_embed`
    and `visual.blocks` (train.freeze_vision_tower) and the projector `visual.merger`
    (train.freeze_multi_modal_projector). Returns the frozen module names."""
    visual = getattr(getattr(model, "model", None), "visual", None) or model.visual
    names = (["patch_embed", "blocks"] if cfg.freeze_vision_tower else []) + (
        ["merger"] if cfg.freeze_multi_modal_projector else [])
    for name in names:
        for p in getattr(visual, name).parameters():
            p.requires_grad_(False)
    return [f"visual.{n}" for n in names]


# ------------------------------------------------------------------------------ loop
def train(cfg: TrainConfig, manifest_dir: Path, out_dir: Path, *, seed: int, max_steps: int | None = None,
          stop_flag: Callable[[], bool] | None = None, log_dir: Path | None = None) -> dict:
    """Train (or resume from out_dir/latest) until max_steps, the end of cfg.epochs, or
    stop_flag(). Returns {"steps", "losses" (this process's steps), "samples_seen" (this rank,
    whole run), "resumed_from_step", "stopped_early", "sample_ids" (trained on by this rank in
    this process, in order), "skipped", "buffered_at_save" (samples the packer held at the last
    save), "total_steps" (the LR schedule's length: max_steps, else the planned steps),
    "planned_steps", "schedule_exact" (replayed from manifest lengths, not estimated),
    "grad_accum" (as derived), "attn_implementation" and "attn_fallback" (ain.train.attention),
    "optimizer" (the class DeepSpeed steps), "zero3_init" (model built partitioned)}. Per-step
    metrics and sample ids go to `log_dir` (default out_dir; see ain.train.telemetry)."""
    import torch
    import torch.distributed as tdist
    from torch.utils.data import DataLoader

    from ain.data.shards import read_manifest
    from ain.train.collate import collate_packed
    from ain.train.ds_config import deepspeed_config, make_optimizer
    from ain.train.stream import CollateWithState, ShardDataset, StateTracker
    from ain.train.telemetry import TrainLog, count_parameters, row_flops

    if cfg.micro_batch_size != 1:
        raise ValueError("train.micro_batch_size must be 1: a packed row is a batch of 1 (use grad_accum)")
    on_cpu = not torch.cuda.is_available()
    check_gpus_usable(on_cpu, torch.__version__, torch.version.cuda)
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
    cfg = replace(cfg, grad_accum=cfg.accum_for(world))  # 0 = derived from the global batch

    def reduce_min(values: list[int]) -> list[int]:
        t = torch.tensor(values, dtype=torch.long, device="cuda" if not on_cpu else "cpu")
        tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
        return [int(v) for v in t.tolist()]

    # the schedule first: the DeepSpeed config (its scheduler's length) must exist before the
    # model does, for ZeRO-3 to build the model partitioned (load_model)
    schedule = plan_schedule(manifest, cfg, world, seed, ranks=[rank], reduce_min=reduce_min)
    if not schedule.exact:
        log.warning("LR schedule over an ESTIMATED %d steps: %s", schedule.total_steps, schedule.source)
    total_steps = int(max_steps) if max_steps else schedule.total_steps
    log.info("%d optimizer steps (%s; steps per epoch %s) of %d rows = %d ranks x micro 1 x accum %d",
             total_steps, schedule.source if not max_steps else "max_steps", schedule.steps_per_epoch,
             cfg.grad_accum * world, world, cfg.grad_accum)
    ds_cfg = deepspeed_config(cfg, world, total_steps)
    torch.manual_seed(seed)
    model, processor, attention = load_model(cfg, ds_cfg)
    zero3_init = zero3_init_active()
    log.info("model loaded: attention %s%s; %s", attention.implementation,
             f" (asked {attention.requested}: {attention.fallback})" if attention.fallback else "",
             "built partitioned (ZeRO-3 init)" if zero3_init else "a full copy on this rank")
    params = [p for p in model.parameters() if p.requires_grad]
    # torch's AdamW (fused on CUDA) as a client optimizer: no FusedAdam JIT build (ds_config)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds_cfg,
                                           optimizer=make_optimizer(cfg, on_cpu))
    device = engine.device

    # resume
    step, resumed_from = 0, 0
    data_state: Optional[dict] = None
    counters = {"samples_seen": 0, "rows": 0, "skipped": {}}

    def flag(value: bool) -> bool:
        t = torch.tensor([1.0 if value else 0.0], device=device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather(obj: Any) -> list:
        gathered: list = [None] * world
        tdist.all_gather_object(gathered, obj)
        return gathered

    checkpoints = Checkpoints(out_dir, engine, rank=rank, world=world, keep=cfg.keep_checkpoints,
                              any_rank=flag, gather=gather, barrier=tdist.barrier)
    resumed = checkpoints.resume()
    if resumed is not None:
        (step, data_state) = resumed
        resumed_from = step
        counters = {k: data_state[k] for k in counters}
    skipped = Counter(counters["skipped"])

    encoder = Encoder(processor, model.config, cfg)
    text_config = getattr(model.config, "text_config", model.config)
    n_text, n_vision, n_frozen_vision = count_parameters(model)
    train_log = TrainLog(Path(log_dir or out_dir), rank, resumed_from, world_size=world,
                         peak_flops=cfg.peak_tflops_per_gpu * 1e12, log_every=cfg.log_every_steps,
                         fields=attention.record())

    def make_packer(epoch: int, state: Optional[dict]) -> tuple[StreamPacker, Any]:
        tracker = StateTracker(cfg.num_workers, epoch=epoch, state=state["tracker"] if state else None)
        if state is None:
            tracker.new_epoch(epoch)
        state = state or {}
        ds = ShardDataset(manifest_dir, manifest, rank=rank, world_size=world, num_workers=cfg.num_workers,
                          seed=seed, epoch=epoch, transform=encoder, resume=tracker.state_dict(),
                          replay_until=state.get("tracker_now") if state.get("replay") else None,
                          replay_keep=state.get("pending_ids"), replay_transform=Replayed())
        loader = DataLoader(ds, batch_size=1, num_workers=cfg.num_workers,
                            collate_fn=CollateWithState(lambda items: items[0]))
        it = iter(loader)
        packer = StreamPacker(it, tracker, epoch=epoch, max_length=cfg.max_length, buffer=cfg.packing_buffer,
                              packing=cfg.packing, replay=state.get("replay", 0), pending=state.get("pending"),
                              pending_ids=state.get("pending_ids"), queued=state.get("queued"), skipped=skipped)
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

    def save() -> None:
        nonlocal last_saved, buffered_at_save
        ps = packer.state() if packer is not None else PackerState(epoch, {"epoch": epoch})
        buffered_at_save = len(ps.pending)
        checkpoints.save(step, {"epoch": ps.epoch, "tracker": ps.tracker, "replay": ps.replay, "pending": ps.pending,
                                "pending_ids": ps.pending_ids, "queued": ps.queued, "tracker_now": ps.tracker_now,
                                "samples_seen": counters["samples_seen"], "rows": counters["rows"],
                                "skipped": dict(skipped)})
        last_saved = step

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
                                    [e.payload[0].length for e in entries], patches, n_frozen_vision)
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
    if not stopped_early and not max_steps and step != schedule.total_steps:
        log.warning("took %d optimizer steps, the LR schedule planned %d (%s): the cosine did not end where "
                    "planned", step, schedule.total_steps, schedule.source)
    counters["skipped"] = dict(skipped)
    train_log.close()
    release_zero3_config()
    finish_distributed()
    return {"steps": step, "losses": losses, "samples_seen": counters["samples_seen"],
            "resumed_from_step": resumed_from, "stopped_early": stopped_early, "sample_ids": sample_ids,
            "skipped": dict(skipped), "rows": counters["rows"], "buffered_at_save": buffered_at_save,
            "total_steps": total_steps, "planned_steps": schedule.total_steps, "schedule_exact": schedule.exact,
            "grad_accum": cfg.grad_accum, "attn_implementation": attention.implementation,
            "attn_fallback": attention.fallback, "optimizer": type(engine.basic_optimizer).__name__,
            "zero3_init": bool(zero3_init)}


def main_json(args: dict) -> dict:  # pragma: no cover - convenience for subprocess callers
    cfg = TrainConfig(**args["cfg"])
    return train(cfg, Path(args["manifest_dir"]), Path(args["out_dir"]), seed=int(args.get("seed", 0)),
                 max_steps=args.get("max_steps"))


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(json.dumps(main_json(json.loads(sys.argv[1]))))
