"""Configuration of the data stages (`ingest`, `pack`): each section owns its checks."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

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


@dataclass
class IngestConfig:
    sources: list[IngestSource] = field(default_factory=list)
    """Inputs, read in this order; rows are dealt round-robin to the tasks."""
    num_tasks: int = 2
    """Array size; each task reads a deterministic 1/num_tasks of every source."""
    commit_every: int = 64
    """Rows between progress commits (resume granularity)."""
    max_image_bytes: int = 64 * 1024 * 1024
    """Images larger than this are quarantined."""
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=1, mem_gb=4, time_min=120))

    def resolve(self, cfg: "RunConfig") -> None:
        """Relative input paths mean "from where the command was typed"; jobs run elsewhere."""
        for src in self.sources:
            if src.format != "hub" and src.path and not os.path.isabs(src.path):
                src.path = os.path.abspath(src.path)
            if src.image_root and not os.path.isabs(src.image_root):
                src.image_root = os.path.abspath(src.image_root)

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        need(bool(self.sources), "ingest.sources", "no inputs: list at least one source")
        need(self.commit_every >= 1, "ingest.commit_every", "must be >= 1")
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
        if check_paths and paths_ok and self.sources:
            from ain.data.ingest import prepare_sources  # noqa: PLC0415 (keeps config import-light)
            from ain.data.readers import SourceError  # noqa: PLC0415

            try:
                prepare_sources(self.sources)
            except SourceError as exc:
                need(False, "ingest.sources", str(exc))


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

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        need(self.target_shard_mb > 0, "pack.target_shard_mb", "must be > 0")
        need(self.max_samples_per_shard >= 1, "pack.max_samples_per_shard", "must be >= 1")
