"""The pack stage: the training mix -> WebDataset tar shards plus a manifest.

Slicing: the mix (stages/mix/out/mixed-*.jsonl, name order, one sample per line in final
training order) has n rows; task i of N packs the CONTIGUOUS rows [i*n//N, (i+1)*n//N), so
reading the tasks' shards in name order gives back the mix order. (Other stages deal rows
round-robin; here order is the point.)

Outputs of task i, in stages/pack/out/:

    shard-<i:03d>-<k:05d>.tar     closed at pack.target_shard_mb (10^6 bytes) or
                                  pack.max_samples_per_shard, whichever comes first
    manifest-<i:05d>.jsonl        one line per shard: shard, samples, bytes, sha256,
                                  languages, domains, first_id, last_id, and when the run
                                  trains: lengths, length_spec (below)

Token lengths (what training's schedule replays, ain.train.loop.plan_schedule): when the recipe
has a train stage, each manifest line also carries "lengths", one entry per sample in shard order:
the number of tokens `ain.train.collate.try_encode` will give the sample (its row length), or
null for a sample it will drop (image placeholders that do not match the images, an image PIL
cannot open, no assistant turn); a length over train.max_length is recorded as is (training drops
it). "length_spec" = {"model", "min_pixels", "max_pixels"} of train says what they were counted
for. The count is exact without decoding any pixels (`TokenLengths`): the processor's own chat
template renders the sample as training renders it, each image placeholder is expanded to the
image's token count (counted as one token plus n - 1: the image token is a special token, split
off before the text around it is tokenised), which the image processor computes from the size alone
(`get_number_of_image_patches`, Qwen2-VL's smart_resize within [min_pixels, max_pixels], divided
by merge_size^2: the method vLLM uses to place image tokens without the image), and the processor's
tokenizer counts the result. The image size comes from the file header (PIL opens lazily). The
pack stage cannot import the train component (import-linter), so this repeats, in a few lines,
how collate turns turns into chat messages; tests/unit/test_packing_schedule.py checks the counts
against try_encode. It needs train.model's processor files (tokenizer, chat template, image
processor config; no weights) where pack runs, as the train stage does; ~0.25 ms per sample.

Crash safety and resume: a shard is written to `<name>.partial` and renamed when complete
(shards.ShardWriter); only then is its manifest line written and committed together with the
position (slice rows packed) and the shard count (ResumableJsonl). A restart deletes this
task's `.partial` shards and any renamed-but-uncommitted shard, and continues after the last
committed shard, so a shard is listed once, complete, or not at all. Shards are a pure function
of their samples, so a resumed task ends with the same bytes as an uninterrupted one.

A sample whose id is not a safe key, or whose image is missing from the store, fails the task
(ValueError / FileNotFoundError naming the sample): ingest guarantees both, so either is a bug
or tampering, and skipping would silently change the training set.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from ain.data.images import ImageStore
from ain.data.schema import IMAGE_EXTENSIONS, IMAGE_TOKEN
from ain.data.shards import ShardWriter, check_key, shard_name
from ain.stages import TaskContext

_IMAGE_NAME = re.compile(r"^[0-9a-f]{64}\.(%s)$" % "|".join(IMAGE_EXTENSIONS))
MIX_GLOB = "mixed-*.jsonl"
LOG_EVERY_S = 30.0


def mix_files(ctx: TaskContext) -> list[Path]:
    """The mix stage's outputs, after checking that the stage is complete."""
    mix = ctx.upstream("mix")
    expected = ctx.cfg.mix.num_tasks
    if len(mix.done_indices()) < expected:
        raise RuntimeError(f"stage pack needs mix to be complete: {len(mix.done_indices())}/{expected} "
                           f"tasks done in {mix.done}")
    files = sorted(mix.out.glob(MIX_GLOB))
    if not files:
        raise RuntimeError(f"mix is marked done but {mix.out} has no {MIX_GLOB}")
    return files


def count_rows(files: list[Path]) -> int:
    n = 0
    for path in files:
        with open(path, "rb") as f:
            n += sum(1 for line in f if line.strip())
    return n


def slice_bounds(n: int, index: int, num_tasks: int) -> tuple[int, int]:
    return index * n // num_tasks, (index + 1) * n // num_tasks


def iter_slice(files: list[Path], start: int, stop: int) -> Iterator[dict[str, Any]]:
    """Rows [start, stop) of the concatenated files (blank lines not counted). Only rows in the
    slice are parsed: the last of 16 pack tasks would otherwise decode 15/16 of the mix for nothing."""
    g = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                if g >= stop:
                    return
                if g >= start:
                    yield json.loads(line)
                g += 1


def load_images(store: ImageStore, sample: dict[str, Any]) -> list[bytes]:
    """The sample's image bytes from the ingest store; names are checked first because they
    become paths."""
    out = []
    for name in sample.get("images", []):
        if not isinstance(name, str) or not _IMAGE_NAME.match(name):
            raise ValueError(f"sample {sample.get('id')!r}: image name {name!r} is not <sha256>.<ext>")
        path = os.path.join(store.root, name[:2], name)
        try:
            out.append(_read_file(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"sample {sample.get('id')!r}: image {name} is not in the store ({path})") from None
    return out


def _read_file(path: str) -> bytes:
    """A whole file in one read() into an exactly sized buffer (Path.read_bytes goes through
    two Python I/O layers and an extra read for EOF: measurably slower per image)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size)
        if len(data) < size:  # short read: finish it
            parts = [data]
            while chunk := os.read(fd, size - sum(map(len, parts))):
                parts.append(chunk)
            data = b"".join(parts)
        return data
    finally:
        os.close(fd)


def clean_leftovers(out_dir: Path, index: int, committed_shards: int) -> list[str]:
    """Delete this task's unfinished (.partial) and unlisted (renamed after the last commit)
    shards; check that every committed shard is still there."""
    removed = []
    for path in sorted(out_dir.glob(f"shard-{index:03d}-*.tar.partial")):
        path.unlink()
        removed.append(path.name)
    for path in sorted(out_dir.glob(f"shard-{index:03d}-*.tar")):
        k = int(path.stem.rsplit("-", 1)[1])
        if k >= committed_shards:
            path.unlink()
            removed.append(path.name)
    for k in range(committed_shards):
        if not (out_dir / shard_name(index, k)).exists():
            raise RuntimeError(f"{out_dir / shard_name(index, k)} is committed in pack task {index}'s state but "
                               "missing: delete this task's shards, manifest and state file to redo it")
    return removed


class TokenLengths:
    """Each sample's token count exactly as training encodes it, without decoding pixels (see the
    module docstring). `model`, `min_pixels`, `max_pixels`: train's."""

    def __init__(self, model: str, min_pixels: int, max_pixels: int) -> None:
        from transformers import AutoProcessor  # noqa: PLC0415 (only in the pack job, and only when training follows)

        self.processor = AutoProcessor.from_pretrained(model)
        self.spec = {"model": model, "min_pixels": int(min_pixels), "max_pixels": int(max_pixels)}
        self.image_token = getattr(self.processor, "image_token", "<|image_pad|>")
        self.merge = int(self.processor.image_processor.merge_size) ** 2
        bos = self.processor.tokenizer.bos_token
        self.bos = bos if isinstance(bos, str) and bos else None

    def image_tokens(self, width: int, height: int) -> int:
        """Visual tokens of one image of this size (the processor's resize, then 2x2 merge)."""
        patches = self.processor.image_processor.get_number_of_image_patches(
            height, width, {"min_pixels": self.spec["min_pixels"], "max_pixels": self.spec["max_pixels"]})
        return int(patches) // self.merge

    def __call__(self, sample: dict[str, Any], images: list[bytes]) -> int | None:
        turns = sample.get("turns") or []
        if sum(str(t.get("content", "")).count(IMAGE_TOKEN) for t in turns) != len(images):
            return None  # collate: image_count_mismatch
        if not any(t.get("role") == "assistant" for t in turns):
            return None  # collate: no_assistant_tokens
        sizes = []
        for data in images:
            try:
                with Image.open(io.BytesIO(data)) as im:
                    sizes.append(im.size)
            except Exception:  # collate: bad_image (PIL raises many types)
                return None
        messages = []
        for turn in turns:  # as ain.train.collate.sample_messages
            parts: list[dict[str, Any]] = []
            for k, text in enumerate(str(turn["content"]).split(IMAGE_TOKEN)):
                if k:
                    parts.append({"type": "image"})
                if text:
                    parts.append({"type": "text", "text": text})
            messages.append({"role": turn["role"], "content": parts})
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        if not isinstance(text, str):
            text = text[0]
        if text.count(self.image_token) != len(sizes):
            return None  # the template did not place one image token per image: training would fail too
        # The processor expands each image token to the image's n tokens before tokenising; an image
        # token is a special token, split off before the text around it is tokenised, so counting
        # the text with one per image and adding n - 1 each is the same count, without
        # tokenising hundreds of them.
        add_special = not (self.bos and text.startswith(self.bos))  # as ProcessorMixin.apply_chat_template
        ids = self.processor.tokenizer(text, add_special_tokens=add_special)["input_ids"]
        return len(ids) + sum(self.image_tokens(w, h) - 1 for w, h in sizes)


def token_lengths_for(ctx: TaskContext) -> TokenLengths | None:
    """The counter for this run's training, or None when the recipe does not train."""
    if "train" not in ctx.cfg.stages:
        return None
    t = ctx.cfg.train
    return TokenLengths(t.model, t.min_pixels, t.max_pixels)


def run_pack_task(ctx: TaskContext) -> dict[str, Any]:
    cfg = ctx.cfg.pack
    files = mix_files(ctx)
    n = count_rows(files)
    start, stop = slice_bounds(n, ctx.index, ctx.num_tasks)
    store = ImageStore(ctx.upstream("ingest").out / "images")
    out_dir = ctx.paths.out
    out_dir.mkdir(parents=True, exist_ok=True)
    max_bytes = int(cfg.target_shard_mb * 1_000_000)

    counter = token_lengths_for(ctx)
    out = ctx.resumable_outputs(manifest=f"manifest-{ctx.index:05d}.jsonl")
    writer: ShardWriter | None = None
    lengths: list[int | None] = []
    publisher: _Publisher | None = None
    try:
        if out.counters.get("mix_rows", n) != n:
            raise RuntimeError(f"pack task {ctx.index}: the mix now has {n} rows but had {out.counters['mix_rows']} "
                               "before a restart: an input changed under a running stage; start a new run")
        k = out.counters.get("shards", 0)
        removed = clean_leftovers(out_dir, ctx.index, k)
        if out.resumed_from or removed:
            ctx.log.info("pack task %d resumes after %d samples (%d shards); removed %s", ctx.index,
                         out.resumed_from, k, removed or "nothing")
        publisher = _Publisher(ctx, out, n, stop - start, counter.spec if counter else None)
        position = out.position
        for sample in iter_slice(files, start + position, stop):
            check_key(sample.get("id"))
            images = load_images(store, sample)
            if writer is None:
                writer = ShardWriter(out_dir / shard_name(ctx.index, k))
            writer.add(sample, images)
            if counter is not None:
                lengths.append(counter(sample, images))
            position += 1
            if writer.size >= max_bytes or writer.samples >= cfg.max_samples_per_shard:
                publisher.submit(writer, position, lengths)
                writer, k, lengths = None, k + 1, []
        if writer is not None:
            publisher.submit(writer, position, lengths)
            writer = None
        publisher.drain()
        if start + position != stop:
            raise RuntimeError(f"pack task {ctx.index}: packed {position} of {stop - start} rows: the mix changed")
        out.counters["mix_rows"] = n
        out.commit(position)
        manifest = out.finish()
    except BaseException:
        if writer is not None:
            writer.discard()  # a kill (SIGKILL, node loss) leaves the .partial; the restart removes it
        if publisher is not None:
            publisher.stop()  # complete shards already handed over are still published
        raise
    finally:
        out.close()
    c = out.counters
    langs = {k[len("lang_"):]: v for k, v in sorted(c.items()) if k.startswith("lang_")}
    domains = {k[len("domain_"):]: v for k, v in sorted(c.items()) if k.startswith("domain_")}
    ctx.log.info("pack task %d: %d samples in %d shards, %.1f MB", ctx.index, c.get("items", 0),
                 c.get("shards", 0), c.get("bytes", 0) / 1e6)
    return {"items": c.get("items", 0), "shards": c.get("shards", 0), "bytes": c.get("bytes", 0),
            "files": manifest, "slice": [start, stop], "languages": langs, "domains": domains,
            "resumed_from": out.resumed_from}


class _Publisher:
    """Publishes finished shards in order on one background thread, so the fsync of shard k
    overlaps writing shard k+1 (on this VM's disk the per-shard fsyncs were ~30% of packing
    time; on network filesystems they are worse). Per shard, in this order: end the tar,
    fsync, rename, fsync the directory, then write its manifest line and commit (position =
    slice rows up to the end of that shard). A crash at any point therefore leaves either an
    unlisted file (the restart removes it) or a listed, complete shard. Only this thread
    touches the ResumableJsonl until `drain()` returns. An error here is re-raised in the
    main thread at its next `submit()` or at `drain()`."""

    def __init__(self, ctx: TaskContext, out: Any, mix_rows: int, slice_rows: int,
                 length_spec: dict[str, Any] | None = None) -> None:
        self.ctx, self.out, self.mix_rows, self.slice_rows = ctx, out, mix_rows, slice_rows
        self.length_spec = length_spec
        self.error: BaseException | None = None
        self._queue: queue.Queue[tuple[ShardWriter, int, list[int | None]] | None] = queue.Queue(maxsize=1)
        self._t0 = self._last_log = time.time()
        self._thread = threading.Thread(target=self._run, name="shard-publisher", daemon=True)
        self._thread.start()

    def submit(self, writer: ShardWriter, position: int, lengths: list[int | None] | None = None) -> None:
        self._raise()
        self._queue.put((writer, position, list(lengths or [])))

    def drain(self) -> None:
        """Wait until every submitted shard is published; raise the publisher's error if any."""
        self.stop()
        self._raise()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            writer, position, lengths = item
            if self.error is not None:
                writer.discard()  # after a failure nothing more is listed
                continue
            try:
                _publish(self.out, writer, position, self.mix_rows, lengths if self.length_spec else None,
                         self.length_spec)
            except BaseException as exc:  # handed to the main thread
                self.error = exc
                writer.discard()
                continue
            if time.time() - self._last_log >= LOG_EVERY_S:
                self._last_log = time.time()
                self.ctx.log.info("pack task %d: %d/%d samples, %.1f MB/s", self.ctx.index, position, self.slice_rows,
                                  self.out.counters.get("bytes", 0) / 1e6 / max(self._last_log - self._t0, 1e-9))


def _publish(out, writer: ShardWriter, position: int, mix_rows: int, lengths: list[int | None] | None = None,
             length_spec: dict[str, Any] | None = None) -> None:
    """Rename the finished shard, then list it and commit: the order that makes a crash at any
    point leave either an unlisted file (removed on restart) or a listed, complete shard."""
    entry = writer.close()
    if lengths is not None:
        if len(lengths) != entry["samples"]:
            raise RuntimeError(f"{entry['shard']}: {len(lengths)} token lengths for {entry['samples']} samples")
        entry["lengths"], entry["length_spec"] = lengths, length_spec
    out.write("manifest", entry)
    out.count("shards")
    out.count("items", entry["samples"])
    out.count("bytes", entry["bytes"])
    for lang, k in entry["languages"].items():
        out.count(f"lang_{lang}", k)
    for domain, k in entry["domains"].items():
        out.count(f"domain_{domain}", k)
    out.counters["mix_rows"] = mix_rows
    out.commit(position)
