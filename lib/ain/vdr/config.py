"""Configuration of the embedding track's stages (`vdr_prepare`, `vdr_train`, `vdr_eval`, `vdr_report`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ain.config_base import Need, Resources

if TYPE_CHECKING:
    from ain.config import RunConfig


@dataclass
class VdrPrepareConfig:
    """PEARL -> (query, image, 4 hard negatives) dataset with stratified splits."""

    num_tasks: int = 1
    """Array size."""
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=4, mem_gb=32, time_min=240))

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        """Report mistakes with need(ok, key, message)."""


@dataclass
class VdrTrainConfig:
    """sentence-transformers fine-tune with CachedMNRL inside MatryoshkaLoss, one node of GPUs."""

    num_tasks: int = 1
    """Always 1: one data-parallel job."""
    resources: Resources = field(default_factory=lambda: Resources(
        nodes=1, tasks_per_node=4, cpus_per_task=8, gpus_per_node=4, mem_gb=0, time_min=1440))

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        need(self.num_tasks == 1, "vdr_train.num_tasks", "must be 1")


@dataclass
class VdrEvalConfig:
    """Leaderboard: one task per model (the blog's base models and this run's fine-tune)."""

    num_tasks: int = 0
    """Derived at load time: one task per model."""
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=8, gpus_per_node=1, mem_gb=64,
                                                                   time_min=240))

    def resolve(self, cfg: "RunConfig") -> None:
        self.num_tasks = max(self.num_tasks, 1)

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        """Report mistakes with need(ok, key, message)."""


@dataclass
class VdrReportConfig:
    """The NDCG@10 table and plot, with the blog's published numbers beside ours."""

    num_tasks: int = 1
    """Always 1."""
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=1, mem_gb=4, time_min=30))

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        need(self.num_tasks == 1, "vdr_report.num_tasks", "must be 1")
