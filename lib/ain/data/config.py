"""Configuration of the data stages (`ingest`, `pack`): each section owns its checks."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Optional

from ain.config_base import Need, Resources

if TYPE_CHECKING:
    from ain.config import RunConfig

SOURCE_FORMATS = ("auto", "jsonl", "json", "parquet", "hf_disk", "hub")


@dataclass
class IngestSource:
    """One input of the ingest stage."""

    path: str = ""
    """File, directory (Hugging Face dataset saved to disk), or hub id (format=hub)."""
    format: str = "auto"
    """auto (from the path), jsonl, json, parquet, hf_disk or hub."""
    style: str = "auto"
    """Conversation layout: auto, native (turns), llava (conversations/from/value) or sharegpt
    (messages/role/content)."""
    name: Optional[str] = None
    """Source name recorded on every sample (default: the file or dataset name)."""
    language: Optional[str] = None
    """en or ar for every row; None: the row's own `language` field, else detected from the script."""
    domain: Optional[str] = None
    """Domain for every row; None: the row's own `domain` field, else 'general'."""
    authentic: Optional[bool] = None
    """True when the text was written in its language (not translated); None: the row's field,
    else True."""
    image_root: Optional[str] = None
    """Directory that relative image paths resolve against (default: the file's directory)."""
    split: str = "train"
    """Split to read from a dataset dict (hf_disk, hub)."""




@dataclass(frozen=True)
class IngestLimits:
    """What a sample must satisfy to be trainable, and the caps that bound one row's cost: the
    effective values of IngestConfig (its None fields filled from the train section)."""

    max_row_bytes: int = 16 * 1024 * 1024
    max_turn_chars: int = 100_000
    max_image_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    min_pixels: int = 56 * 56
    max_pixels: int = 262144
    max_length: int = 0  # tokens; 0: no token check


@dataclass
class IngestConfig:
    OPERATIONAL: ClassVar[tuple[str, ...]] = ("commit_every",)
    """Fields that change how it runs, not what it computes: left out of fingerprints (ain.fingerprint)."""

    sources: list[IngestSource] = field(default_factory=list)
    """Inputs, read in this order; each task reads its contiguous slice of every source."""
    num_tasks: int = 2
    """Array size; task i reads only the i-th of num_tasks contiguous slices of every source (byte
    ranges of JSON lines, Parquet row groups, row ranges of a dataset: ain.data.readers). At most
    the number of input rows (where it can be counted cheaply) and cluster.max_array_size."""
    commit_every: int = 64
    """Rows between progress commits (resume granularity)."""
    max_image_bytes: int = 64 * 1024 * 1024
    """Images larger than this are quarantined (image_too_large)."""
    max_image_pixels: int = 50_000_000
    """Pixels one image may decode to, all frames of an animation together; read from the header and
    refused (image_too_large) before anything is decoded. Images over PIL's own limit (about
    179 Mpixel) are refused by PIL (bad_image DecompressionBombError) whatever this says."""
    max_row_bytes: int = 16 * 1024 * 1024
    """A JSON-lines row (line) longer than this is quarantined (row_too_large) without being held in
    memory. Rows embedding images as data: URLs need room for them (base64: 4/3 of the image)."""
    max_turn_chars: int = 100_000
    """Characters one turn may have (turn_too_long)."""
    max_bad_row_share: float = 0.5
    """A source is refused, naming the file, when more than this share of a task's rows of it are
    unreadable (not UTF-8, not JSON, not an object, duplicate keys, over max_row_bytes): that is a
    file read the wrong way, not a few bad rows. Judged once a task has 20 rows of the source; 1 turns
    the check off."""
    image_roots: list[str] = field(default_factory=list)
    """Directories image paths may resolve into besides each source's image_root (or its file's
    directory), after following symlinks: e.g. where a symlinked image folder points."""
    min_pixels: Optional[int] = None
    """Smallest image area after Qwen2-VL's resize; None: train.min_pixels."""
    max_pixels: Optional[int] = None
    """Largest image area after Qwen2-VL's resize (images whose resize cannot fit are quarantined);
    None: train.max_pixels."""
    max_length: Optional[int] = None
    """Tokens per sample: a sample whose image tokens and chat framing alone exceed it is quarantined
    (too_long; text tokens need the tokenizer, so training checks those); None: train.max_length;
    0: no check."""
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=1, mem_gb=4, time_min=120))

    def limits(self, cfg: Optional["RunConfig"] = None) -> IngestLimits:
        """The effective limits: fields left None take the train section's values (training is
        what the samples must satisfy), else the defaults of Qwen2-VL's processor."""
        train = getattr(cfg, "train", None)
        base = IngestLimits()

        def pick(own: Optional[int], name: str) -> int:
            if own is not None:
                return int(own)
            value = getattr(train, name, None)
            return int(value) if isinstance(value, int) and not isinstance(value, bool) else getattr(base, name)

        return IngestLimits(max_row_bytes=self.max_row_bytes, max_turn_chars=self.max_turn_chars,
                            max_image_bytes=self.max_image_bytes, max_image_pixels=self.max_image_pixels,
                            min_pixels=pick(self.min_pixels, "min_pixels"),
                            max_pixels=pick(self.max_pixels, "max_pixels"),
                            max_length=pick(self.max_length, "max_length"))

    def resolve(self, cfg: "RunConfig") -> None:
        """Relative input paths mean "from where the command was typed"; jobs run elsewhere.
        The trainability limits left None are filled from the train section, so config.yaml shows
        the values ingest checks."""
        for src in self.sources:
            if src.format != "hub" and src.path and not os.path.isabs(src.path):
                src.path = os.path.abspath(src.path)
            if src.image_root and not os.path.isabs(src.image_root):
                src.image_root = os.path.abspath(src.image_root)
        self.image_roots = [os.path.abspath(r) for r in self.image_roots]
        limits = self.limits(cfg)
        self.min_pixels, self.max_pixels, self.max_length = limits.min_pixels, limits.max_pixels, limits.max_length

    def input_files(self, cfg: "RunConfig") -> list[str]:
        """Files it reads from outside the run directory (their identity is in its fingerprint);
        hub datasets are pinned by revision at launch instead."""
        return [src.path for src in self.sources if src.format != "hub"]

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        need(bool(self.sources), "ingest.sources", "no inputs: list at least one source")
        need(self.commit_every >= 1, "ingest.commit_every", "must be >= 1")
        for key in ("max_image_bytes", "max_image_pixels", "max_row_bytes", "max_turn_chars"):
            need(getattr(self, key) >= 1, f"ingest.{key}", f"{getattr(self, key)}: must be >= 1")
        need(0.0 <= self.max_bad_row_share <= 1.0, "ingest.max_bad_row_share",
             f"{self.max_bad_row_share}: a share between 0 and 1 (1: never refuse a source for its bad rows)")
        for key in ("min_pixels", "max_pixels"):
            value = getattr(self, key)
            need(value is None or value >= 1, f"ingest.{key}", f"{value}: must be >= 1 (or null: train.{key})")
        if self.min_pixels is not None and self.max_pixels is not None:
            need(self.min_pixels <= self.max_pixels, "ingest.min_pixels",
                 f"{self.min_pixels} is over ingest.max_pixels={self.max_pixels}")
        need(self.max_length is None or self.max_length >= 0, "ingest.max_length",
             f"{self.max_length}: must be >= 0 (0: no token check; null: train.max_length)")
        paths_ok = True
        for i, src in enumerate(self.sources):
            key = f"ingest.sources[{i}]"
            need(src.format in SOURCE_FORMATS, f"{key}.format",
                 f"{src.format!r}: use {', '.join(SOURCE_FORMATS[:-1])} or {SOURCE_FORMATS[-1]}")
            need(src.style in ("auto", "native", "llava", "sharegpt"), f"{key}.style",
                 f"{src.style!r}: use auto, native, llava or sharegpt")
            need(src.language in (None, "en", "ar"), f"{key}.language", "en, ar or null")
            if check_paths and src.format != "hub":
                exists = bool(src.path) and Path(src.path).exists()
                paths_ok &= exists
                need(exists, f"{key}.path", f"{src.path!r} does not exist (relative paths resolve from {os.getcwd()})")
            if check_paths and src.image_root:
                is_dir = Path(src.image_root).is_dir()
                paths_ok &= is_dir
                need(is_dir, f"{key}.image_root", f"{src.image_root!r} is not a directory")
        if check_paths:
            for i, root in enumerate(self.image_roots):
                need(Path(root).is_dir(), f"ingest.image_roots[{i}]", f"{root!r} is not a directory")
        if check_paths and paths_ok and self.sources:
            from ain.data.ingest import prepare_sources  # noqa: PLC0415 (keeps config import-light)
            from ain.data.readers import SourceError, count_rows_upto  # noqa: PLC0415

            try:
                prepare_sources(self.sources)
            except SourceError as exc:
                need(False, "ingest.sources", str(exc))
                return
            if 1 < self.num_tasks <= cfg.cluster.max_array_size:
                total: int | None = 0
                for src in self.sources:
                    n = count_rows_upto(src, self.num_tasks)
                    total = None if n is None or total is None else total + n
                    if total is None or total >= self.num_tasks:
                        break
                need(total is None or total >= self.num_tasks, "ingest.num_tasks",
                     f"{self.num_tasks} tasks for {total} input rows: a task without rows only reads the "
                     f"sources; use at most {max(total or 1, 1)}")


@dataclass
class PackConfig:
    """The mix -> WebDataset tar shards with a manifest that training reads."""

    target_shard_mb: float = 512.0
    """A shard is closed once it holds this many MB."""
    max_samples_per_shard: int = 20000
    """... or this many samples."""
    num_tasks: int = 2
    """Array size; task i packs a contiguous slice of the mix into its own shards."""
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=2, mem_gb=8, time_min=120))

    def fingerprint_extra(self, cfg: "RunConfig") -> dict[str, object]:
        """Train's processor settings: pack records each sample's token count with them."""
        if "train" not in cfg.stages:
            return {}
        return {"train.model": cfg.train.model, "train.min_pixels": cfg.train.min_pixels,
                "train.max_pixels": cfg.train.max_pixels}

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        need(self.target_shard_mb > 0, "pack.target_shard_mb", "must be > 0")
        need(self.max_samples_per_shard >= 1, "pack.max_samples_per_shard", "must be >= 1")
