"""The dry run's GPU-hours estimate of the train stage.

    tokens     = samples x train.tokens_per_sample x train.epochs
    GPU-hours  = tokens / (tokens per second per GPU) / 3600;   wall hours = GPU-hours / GPUs

samples: the pack stage's manifest when it exists (the real count), else train.expected_samples
(the report's 3.6M). Throughput: the median tokens/s per GPU of this run's own training steps
when metrics.jsonl has some (measured), else train.tokens_per_gpu_s (configured). Both sources
are printed with the figure, so nobody mistakes a guess for a measurement.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ain.data.shards import read_manifest
from ain.train.telemetry import read_metrics

if TYPE_CHECKING:
    from ain.config import RunConfig


@dataclass(frozen=True)
class GpuHours:
    samples: int
    samples_source: str
    tokens: float
    tokens_per_gpu_s: float
    throughput_source: str
    gpus: int

    @property
    def gpu_hours(self) -> float:
        return self.tokens / self.tokens_per_gpu_s / 3600.0

    @property
    def wall_hours(self) -> float:
        return self.gpu_hours / max(1, self.gpus)

    def describe(self) -> str:
        return (f"train estimate: {self.samples:,} samples ({self.samples_source}) x "
                f"{self.tokens / max(self.samples, 1):,.0f} tokens = {self.tokens:,.0f} tokens; at "
                f"{self.tokens_per_gpu_s:,.0f} tokens/s per GPU ({self.throughput_source}): "
                f"{self.gpu_hours:,.1f} GPU-hours, {self.wall_hours:,.1f} h on {self.gpus} GPUs")


def estimate_train(cfg: RunConfig, run_root: Path) -> GpuHours:
    t = cfg.train
    manifest = read_manifest(Path(run_root) / "stages" / "pack" / "out")
    if manifest:
        samples, samples_source = sum(int(e["samples"]) for e in manifest), "pack manifest"
    else:
        samples, samples_source = t.expected_samples, "train.expected_samples"
    gpus = t.resources.nodes * max(t.resources.gpus_per_node, 0)
    devices = gpus or t.resources.nodes * t.resources.tasks_per_node  # CPU runs: one "device" per rank
    measured = [m["tokens_per_s"] / devices for m in read_metrics(Path(run_root) / "stages" / "train" / "out")
                if m.get("tokens_per_s")]
    if measured:
        rate, rate_source = statistics.median(measured), f"measured, median of {len(measured)} steps"
    else:
        rate, rate_source = t.tokens_per_gpu_s, "train.tokens_per_gpu_s"
    tokens = float(samples) * t.tokens_per_sample * max(1, t.epochs)
    return GpuHours(samples, samples_source, tokens, rate, rate_source, devices)
