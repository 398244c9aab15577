"""Configuration of the evaluation stages (`eval`, `eval_report`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ain.config_base import Need, Resources

if TYPE_CHECKING:
    from ain.config import RunConfig


@dataclass
class EvalConfig:
    """Benchmarks of one checkpoint: one array task per evaluation unit (a CAMEL-Bench domain or one
    of its datasets, ArabicMMLU, an English benchmark)."""

    checkpoint: str = ""
    """Model to evaluate: a hub id or local directory; empty: this run's export stage output."""
    benchmarks: list[str] = field(default_factory=lambda: ["camel_bench", "arabic_mmlu", "english"])
    """Benchmark families to run (see configs/eval/)."""
    num_tasks: int = 0
    """Derived at load time: the number of evaluation units the registry yields for `benchmarks`."""
    resources: Resources = field(default_factory=lambda: Resources(
        nodes=1, tasks_per_node=1, cpus_per_task=8, gpus_per_node=1, mem_gb=64, time_min=240))

    def resolve(self, cfg: "RunConfig") -> None:
        """Fill derived fields (called by load_config before validation)."""
        self.num_tasks = max(self.num_tasks, 1)

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        """Report mistakes with need(ok, key, message)."""


@dataclass
class EvalReportConfig:
    """Aggregation: the results table of this checkpoint beside the published numbers."""

    num_tasks: int = 1
    """Always 1."""
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=1, mem_gb=4, time_min=30))

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        need(self.num_tasks == 1, "eval_report.num_tasks", "must be 1")
