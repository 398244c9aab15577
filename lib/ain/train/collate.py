"""Samples -> model inputs for the Qwen2-VL full fine-tune: encoding, packing, collation.

Pipeline for one training row (see /work/shared/ENVIRONMENT.md, "Sequence packing for Qwen2-VL"):

    enc = encode_sample(processor, sample, image_bytes, cfg, skipped=counter)   # or None (counted)
    pos = rope_positions(model, enc)                                            # (3, L), sample alone
    rows = pack_stream([e.length for e in encs], cfg.max_length, cfg.packing_buffer)
    batch = collate_packed([encs[i] for i in row], [poss[i] for i in row])
    loss = model(**batch).loss          # batch carries attention_mask=None and use_cache=False

Packed-row contract (transformers 5.23, verified: per-token losses equal to running each sample
alone to ~1e-6 in fp32): batch size 1; `position_ids` (4, 1, L) whose row 0 restarts at 0 for
every sample (transformers derives the block-causal mask / varlen boundaries from it) and whose
rows 1-3 are each sample's own M-RoPE positions; `attention_mask=None` and `use_cache=False`
(any 2D mask, even all ones, or a cache switches boundary detection off and silently mixes
attention across samples); pixel_values / image_grid_thw concatenated in sample order; each
sample's first label -100 so nothing is predicted across a boundary.
"""

from __future__ import annotations

import io
import logging
from bisect import bisect_left, bisect_right, insort
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:  # torch is imported where it is used: the packing functions below are pure Python
    import torch  # (the dry run's schedule replays them on the login node)

IGNORE_INDEX = -100
IMAGE_TOKEN = "<image>"  # ain.data.schema.IMAGE_TOKEN
IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# reasons encode_sample gives for dropping a sample (keys of the `skipped` counter)
TOO_LONG = "too_long"
BAD_IMAGE = "bad_image"
IMAGE_COUNT = "image_count_mismatch"
NO_TARGET = "no_assistant_tokens"
UNENCODABLE = "unencodable"  # the processor refused the sample (ingest should have caught it)

log = logging.getLogger(__name__)


@dataclass
class EncodedSample:
    """One sample as token ids (all 1-D, length L) plus its images' patches."""

    input_ids: torch.Tensor  # (L,) long
    labels: torch.Tensor  # (L,) long, IGNORE_INDEX outside the assistant answers
    mm_token_type_ids: torch.Tensor  # (L,) int: 0 text, 1 image, 2 video
    pixel_values: Optional[torch.Tensor] = None  # (patches, C*T*P*P) or None without images
    image_grid_thw: Optional[torch.Tensor] = None  # (images, 3) or None
    id: str = ""

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    def model_inputs(self) -> dict[str, Any]:
        """Inputs to run this sample alone (batch 1; the model computes its own positions)."""
        out: dict[str, Any] = {"input_ids": self.input_ids[None], "mm_token_type_ids": self.mm_token_type_ids[None],
                               "labels": self.labels[None], "use_cache": False}
        if self.pixel_values is not None:
            out["pixel_values"] = self.pixel_values
            out["image_grid_thw"] = self.image_grid_thw
        return out


class SkipSample(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# encoding ----------------------------------------------------------------------------------------
def sample_messages(sample: dict, images: Sequence[Any]) -> list[dict]:
    """Chat messages of a sample's turns; each "<image>" becomes an image part, in order."""
    n = sum(t["content"].count(IMAGE_TOKEN) for t in sample["turns"])
    if n != len(images):
        raise SkipSample(IMAGE_COUNT, f"{n} {IMAGE_TOKEN} placeholders for {len(images)} images")
    it = iter(images)
    messages = []
    for turn in sample["turns"]:
        pieces = turn["content"].split(IMAGE_TOKEN)
        parts: list[dict] = []
        for k, text in enumerate(pieces):
            if k:
                parts.append({"type": "image", "image": next(it)})
            if text:
                parts.append({"type": "text", "text": text})
        messages.append({"role": turn["role"], "content": parts})
    return messages


def decode_image(data: Any):
    """PIL RGB image from bytes (or a PIL image, passed through converted)."""
    from PIL import Image

    try:
        image = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")
    except Exception as exc:  # PIL raises many types for corrupt files
        raise SkipSample(BAD_IMAGE, f"{type(exc).__name__}: {exc}") from exc


def set_image_size(processor, min_pixels: int, max_pixels: int) -> None:
    """Make the processor resize every image to an area within [min_pixels, max_pixels]
    (transformers 5.x reads `image_processor.size` {shortest_edge, longest_edge})."""
    ip = processor.image_processor
    size = {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}
    try:
        from transformers.image_utils import SizeDict
        ip.size = SizeDict(**size)
    except ImportError:  # older transformers keep a plain dict
        ip.size = size
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if hasattr(ip, name):
            setattr(ip, name, int(value))


def assistant_labels(input_ids: list[int], tokenizer) -> list[int]:
    """input_ids on the content of every assistant message and its closing <|im_end|>;
    IGNORE_INDEX elsewhere (headers "<|im_start|>role\\n", other roles, the "\\n" after <|im_end|>)."""
    start, end = tokenizer.convert_tokens_to_ids(IM_START), tokenizer.convert_tokens_to_ids(IM_END)
    labels = [IGNORE_INDEX] * len(input_ids)
    n = len(input_ids)
    for i, tok in enumerate(input_ids):
        if tok != start:
            continue
        j, header = i + 1, ""
        while j < n and j <= i + 16 and "\n" not in header:  # the role and its newline: a few tokens
            j += 1
            header = tokenizer.decode(input_ids[i + 1:j])
        if header.split("\n", 1)[0].strip() != "assistant":
            continue
        k = j
        while k < n and input_ids[k] != end:
            k += 1
        for p in range(j, min(k + 1, n)):
            labels[p] = input_ids[p]
    return labels


def try_encode(processor, sample: dict, images: Sequence[Any], cfg) -> tuple[Optional[EncodedSample], Optional[str]]:
    """(encoded, None) or (None, reason): see `encode_sample`."""
    try:
        pil = [decode_image(b) for b in images]
        messages = sample_messages(sample, pil)
    except SkipSample as exc:
        return None, exc.reason
    if pil:
        set_image_size(processor, cfg.min_pixels, cfg.max_pixels)
    import torch

    try:  # ingest refuses what the processor cannot take; a sample that still fails is skipped, never fatal
        enc = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt",
                                            add_generation_prompt=False)
    except (ValueError, RuntimeError, IndexError) as exc:  # e.g. smart_resize: "absolute aspect ratio must be smaller than 200"
        log.warning("sample %s cannot be encoded: %s: %s", sample.get("id"), type(exc).__name__, str(exc)[:200])
        return None, UNENCODABLE
    ids = enc["input_ids"][0].long()
    if ids.shape[0] > cfg.max_length:
        return None, TOO_LONG
    labels = torch.tensor(assistant_labels(ids.tolist(), processor.tokenizer), dtype=torch.long)
    if not (labels != IGNORE_INDEX).any():
        return None, NO_TARGET
    mm = enc.get("mm_token_type_ids")
    if mm is None:  # older processors: derive from the image token
        mm = (enc["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).int()
    pixel = enc.get("pixel_values") if pil else None
    grid = enc.get("image_grid_thw") if pil else None
    return EncodedSample(input_ids=ids, labels=labels, mm_token_type_ids=mm[0].int(), pixel_values=pixel,
                         image_grid_thw=grid, id=str(sample.get("id", ""))), None


def encode_sample(processor, sample: dict, images: Sequence[Any], cfg,
                  skipped: Optional[Counter] = None) -> Optional[EncodedSample]:
    """Encode one sample (schema of ain.data.schema; `images` as bytes, in order) for training.

    The turns become chat messages (each "<image>" an image part), rendered by the processor's
    chat template with the images decoded by PIL and resized to an area within
    [cfg.min_pixels, cfg.max_pixels]. Labels are the input ids on the assistant answers and their
    closing <|im_end|>, -100 elsewhere. Returns None when the sample cannot be used, adding the
    reason to `skipped` when given: "too_long" (more than cfg.max_length tokens), "bad_image",
    "image_count_mismatch", "no_assistant_tokens". Uses cfg.max_length, cfg.min_pixels and
    cfg.max_pixels (a TrainConfig)."""
    enc, reason = try_encode(processor, sample, images, cfg)
    if enc is None and skipped is not None:
        skipped[reason] += 1
    return enc


# positions ---------------------------------------------------------------------------------------
def _rope_owner(model):
    """The object whose `get_rope_index` to call: the model's inner Qwen2VLModel, the model itself,
    or (given a Qwen2VLConfig, e.g. in a DataLoader worker without the weights) a light stand-in:
    get_rope_index only reads `config.vision_config.spatial_merge_size`."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "get_rope_index"):
        return inner
    if hasattr(model, "get_rope_index"):
        return model
    if hasattr(model, "vision_config"):
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

        class _Stub:
            get_rope_index = Qwen2VLModel.get_rope_index
            get_vision_position_ids = Qwen2VLModel.get_vision_position_ids

            def __init__(self, config):
                self.config = config

        return _Stub(model)
    raise TypeError(f"{type(model).__name__}: not a Qwen2-VL model or config")


def rope_positions(model, encoded: EncodedSample) -> torch.Tensor:
    """(3, L) M-RoPE positions of this sample alone, from `model.model.get_rope_index`.
    `model`: a Qwen2VLForConditionalGeneration, its inner Qwen2VLModel, or a Qwen2VLConfig
    (same result, no weights needed). Text-only samples: 0..L-1 on all three rows."""
    import torch

    if encoded.image_grid_thw is None:
        return torch.arange(encoded.length, dtype=torch.long).expand(3, -1).clone()
    owner = _rope_owner(model)
    with torch.no_grad():
        pos, _ = owner.get_rope_index(encoded.input_ids[None], encoded.mm_token_type_ids[None],
                                      image_grid_thw=encoded.image_grid_thw, video_grid_thw=None,
                                      attention_mask=None)
    return pos[:, 0].long().cpu()


# packing: the previous look-ahead best fit (kept as the baseline the bench compares with) --------
def pack_rows(lengths: Sequence[int], max_length: int, buffer: int) -> list[list[int]]:
    """Group sample indices into rows of at most `max_length` tokens.

    Best fit with a look-ahead window: a row opens with the oldest unplaced sample, then takes,
    from the next `buffer` unplaced samples, the longest one that still fits (earliest on ties),
    until none fits. Deterministic; every index appears exactly once; indices are ascending
    within a row and rows are ordered by their first index. buffer=1 is plain greedy (next fit).
    Raises ValueError for a length over max_length (encode_sample drops those)."""
    n = len(lengths)
    for i, length in enumerate(lengths):
        if length > max_length or length < 0:
            raise ValueError(f"sample {i}: length {length} outside [0, {max_length}]")
    buffer = max(1, int(buffer))
    placed = [False] * n
    window: list[tuple[int, int]] = []  # sorted (length, -index): largest fit, earliest on ties
    nxt = oldest = 0
    rows: list[list[int]] = []
    while True:
        while len(window) < buffer and nxt < n:
            insort(window, (lengths[nxt], -nxt))
            nxt += 1
        if not window:
            break
        while placed[oldest]:
            oldest += 1
        window.pop(bisect_left(window, (lengths[oldest], -oldest)))
        placed[oldest] = True
        row, room = [oldest], max_length - lengths[oldest]
        while True:
            while len(window) < buffer and nxt < n:
                insort(window, (lengths[nxt], -nxt))
                nxt += 1
            p = bisect_right(window, (room, 1))
            if p == 0:
                break
            length, neg = window.pop(p - 1)
            placed[-neg] = True
            row.append(-neg)
            room -= length
        rows.append(sorted(row))
    return rows


def packing_efficiency(lengths: Sequence[int], max_length: int, buffer: int) -> float:
    """Share of the rows' max_length tokens that `pack_rows` fills with real tokens.

    Reference arithmetic (ENVIRONMENT.md: 64 lengths drawn from 200-1500 tokens, rows of 2048):
    "greedy packing fills 95-96%" is greedy over the whole set longest first (first-fit
    decreasing); padding random pairs to the longest fills 78-82%; sorting by length before
    pairing about 99%. Measured in tests/unit/test_collate.py on 5 seeded sets of that kind:
    in-order next fit (pack_rows buffer=1) 68-76%, in-order first fit 84-93%, first-fit
    decreasing 90-96%, pack_rows buffer=64 90-96% (equal to FFD on 4 of 5 sets, 3.6 points
    under on one), buffer=16 88-95%, padded pairs 77-82%. With buffer >= the data set's size
    pack_rows sees everything FFD sees but keeps rows in input order."""
    if not lengths:
        return 1.0
    rows = pack_rows(lengths, max_length, buffer)
    return sum(lengths) / (len(rows) * max_length)


# buffered best-fit decreasing: what training uses ---------------------------------------------------
# A stream is packed through a WINDOW of at most `buffer` samples (the only samples held):
#
#   1. fill the window from the stream up to `buffer` samples (dropped samples, length None or over
#      max_length, are pulled and discarded);
#   2. pack the whole window by best-fit decreasing (`best_fit_decreasing`);
#   3. emit the rows that are full (at most `row_slack` tokens of room), the rows holding a sample
#      that has waited `max_age` = 4 x buffer pulls, and, if that frees fewer than `min_free` =
#      buffer // 4 samples (at least 1), the fullest of the other rows until it does; at the end of
#      the stream every row. The rest stays in the window and is re-packed with the next samples.
#   4. hand out the emitted rows (ordered by their first sample) before filling again, so the window
#      plus the rows waiting to be handed out never hold more than `buffer` samples.
#
# Everything is a function of the window's lengths and ages (pulls since a sample was pulled), so the
# same stream always gives the same rows, and a checkpoint that restores the window and the waiting
# rows continues exactly (ain.train.loop.StreamPacker). The offline `pack_stream` and the training
# loop's StreamPacker implement the same steps; tests/unit/test_packing_schedule.py and
# test_train_loop.py check that they agree row for row.


def row_slack(max_length: int) -> int:
    """Room (tokens) a row may leave and still count as full: max_length // 512 (4 at 2,048)."""
    return max(0, int(max_length) // 512)


def max_age(buffer: int) -> int:
    """Pulls a sample may wait in the window before its row is emitted whatever its fill."""
    return 4 * max(1, int(buffer))


def min_free(buffer: int) -> int:
    """Samples an emission must free when the window is full (so the stream keeps moving)."""
    return max(1, int(buffer) // 4)


def best_fit_decreasing(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Rows (lists of positions into `lengths`, in placement order) by best-fit decreasing: the
    longest sample first (ties: the earlier position), each into the open row with the least room
    that still fits it (ties: the row opened first), else into a new row. Rows in the order opened.
    Over a whole data set this is the ceiling the streaming packer is measured against."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rooms: list[tuple[int, int]] = []  # sorted (room left, row)
    rows: list[list[int]] = []
    for i in order:
        length = lengths[i]
        if length > max_length or length < 0:
            raise ValueError(f"sample {i}: length {length} outside [0, {max_length}]")
        p = bisect_left(rooms, (length, -1))
        if p < len(rooms):
            room, r = rooms.pop(p)
        else:
            room, r = max_length, len(rows)
            rows.append([])
        rows[r].append(i)
        insort(rooms, (room - length, r))
    return rows


def window_rows(lengths: Sequence[int], ages: Sequence[int], max_length: int, buffer: int,
                final: bool) -> list[list[int]]:
    """The rows to emit from a window (step 3 above): lists of window positions, ascending within a
    row, rows ordered by their first position. `lengths[i]`/`ages[i]`: window sample i, the window
    in stream order; `final`: the stream has ended (emit everything)."""
    rows = best_fit_decreasing(lengths, max_length)
    if final:
        chosen = list(range(len(rows)))
    else:
        room = [max_length - sum(lengths[i] for i in row) for row in rows]
        slack, oldest = row_slack(max_length), max_age(buffer)
        chosen = [k for k, row in enumerate(rows) if room[k] <= slack or any(ages[i] >= oldest for i in row)]
        freed = sum(len(rows[k]) for k in chosen)
        need = min(min_free(buffer), len(lengths))
        if freed < need:
            taken = set(chosen)
            for k in sorted((k for k in range(len(rows)) if k not in taken), key=lambda k: (room[k], k)):
                chosen.append(k)
                freed += len(rows[k])
                if freed >= need:
                    break
    return sorted((sorted(rows[k]) for k in chosen), key=lambda row: row[0])


def pack_stream(lengths: Sequence[Optional[int]], max_length: int, buffer: int,
                packing: bool = True) -> list[list[int]]:
    """Rows (lists of indices into `lengths`) exactly as the training loop's StreamPacker forms them
    from a stream of samples of these lengths, in stream order. None, or a length over max_length,
    is a sample the encoder drops (it is pulled, so it counts towards ages, and never placed).
    packing=False: one sample per row. Deterministic; every kept index appears once; no row over
    max_length; indices ascending within a row."""
    buffer = max(1, int(buffer)) if packing else 1
    n = len(lengths)
    window: list[int] = []  # indices of kept samples, stream order
    nxt, exhausted = 0, False
    rows: list[list[int]] = []
    while True:
        while len(window) < buffer and not exhausted:
            if nxt >= n:
                exhausted = True
                break
            length = lengths[nxt]
            if length is not None and 0 <= length <= max_length:
                window.append(nxt)
            nxt += 1
        if not window:
            return rows
        if not packing:
            rows.append([window.pop(0)])
            continue
        emit = window_rows([lengths[i] for i in window], [nxt - i for i in window],  # type: ignore[misc]
                           max_length, buffer, exhausted)
        taken = set()
        for row in emit:
            rows.append([window[k] for k in row])
            taken.update(row)
        window = [i for k, i in enumerate(window) if k not in taken]


def fill_ratio(lengths: Sequence[Optional[int]], rows: Sequence[Sequence[int]], max_length: int) -> float:
    """Share of the rows' max_length token budget that real tokens fill."""
    if not rows:
        return 1.0
    return sum(lengths[i] for row in rows for i in row) / (len(rows) * max_length)  # type: ignore[misc]


# collation ---------------------------------------------------------------------------------------
def collate_packed(encoded_samples: Sequence[EncodedSample], rope_positions_list: Sequence[torch.Tensor]
                   ) -> dict[str, Any]:
    """One packed row (batch 1) of several samples, attention kept within each sample.

    Returns input_ids/labels/mm_token_type_ids (1, L), position_ids (4, 1, L) (row 0: 0..L_k-1
    per sample; rows 1-3: each sample's `rope_positions`), pixel_values/image_grid_thw concatenated
    in sample order (absent without images), attention_mask=None and use_cache=False: call
    `model(**batch)` as is (never add a 2D attention mask, never enable the cache)."""
    import torch

    if not encoded_samples or len(encoded_samples) != len(rope_positions_list):
        raise ValueError("collate_packed needs one rope position tensor per sample, at least one sample")
    ids, labels, mm, text_pos, rope = [], [], [], [], []
    pixels, grids = [], []
    for enc, pos in zip(encoded_samples, rope_positions_list):
        if tuple(pos.shape) != (3, enc.length):
            raise ValueError(f"rope positions {tuple(pos.shape)} do not match sample length {enc.length}")
        ids.append(enc.input_ids)
        lab = enc.labels.clone()
        lab[0] = IGNORE_INDEX  # nothing predicted across the boundary
        labels.append(lab)
        mm.append(enc.mm_token_type_ids)
        text_pos.append(torch.arange(enc.length, dtype=torch.long))
        rope.append(pos.long())
        if enc.pixel_values is not None:
            pixels.append(enc.pixel_values)
            grids.append(enc.image_grid_thw)
    position_ids = torch.cat([torch.cat(text_pos)[None], torch.cat(rope, dim=1)], dim=0)[:, None, :]
    batch: dict[str, Any] = {"input_ids": torch.cat(ids)[None], "labels": torch.cat(labels)[None],
                             "mm_token_type_ids": torch.cat(mm)[None], "position_ids": position_ids,
                             "attention_mask": None, "use_cache": False}
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)
        batch["image_grid_thw"] = torch.cat(grids)
    return batch


def collate_padded(encoded_samples: Sequence[EncodedSample], pad_token_id: int = 0) -> dict[str, Any]:
    """The naive baseline: one row per sample, right-padded to the longest, a normal 2D attention
    mask; the model computes the M-RoPE positions itself."""
    import torch

    width = max(e.length for e in encoded_samples)

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.cat([t.long(), torch.full((width - t.shape[0],), value, dtype=torch.long)])

    batch: dict[str, Any] = {
        "input_ids": torch.stack([pad(e.input_ids, pad_token_id) for e in encoded_samples]),
        "labels": torch.stack([pad(e.labels, IGNORE_INDEX) for e in encoded_samples]),
        "mm_token_type_ids": torch.stack([pad(e.mm_token_type_ids, 0) for e in encoded_samples]).int(),
        "attention_mask": torch.stack([pad(torch.ones(e.length, dtype=torch.long), 0) for e in encoded_samples]),
        "use_cache": False}
    with_images = [e for e in encoded_samples if e.pixel_values is not None]
    if with_images:
        batch["pixel_values"] = torch.cat([e.pixel_values for e in with_images])
        batch["image_grid_thw"] = torch.cat([e.image_grid_thw for e in with_images])
    return batch
