"""The dry run's GPU-hours estimate of the train stage, and the shape it will run in.

    tokens     = samples x train.tokens_per_sample x train.epochs
                 (or the pack manifest's recorded token lengths, when it has them)
    GPU-hours  = tokens / (tokens per second per GPU) / 3600;   wall hours = GPU-hours / GPUs

samples: the pack stage's manifest when it exists (the real count), else train.expected_samples
(the report's 3.6M). Throughput: the median tokens/s per GPU of this run's own training steps
when metrics.jsonl has some (measured), else train.tokens_per_gpu_s (configured). Both sources
are printed with the figure, so nobody mistakes a guess for a measurement.

Shape (second line): nodes x GPUs, micro-batch x gradient accumulation (derived when
train.grad_accum is 0), the global batch IN PACKED ROWS per optimizer step and about how many
samples that is, and the optimizer steps the LR schedule will span: replayed from the manifest's
token lengths when the pack stage recorded them (ain.train.loop.plan_schedule, what the train
stage itself does for every rank; here rank 0 only, so within a step or two), else estimated at
train.tokens_per_sample.

Attention (third line): the kernel each training rank will try (ain.train.attention.plan_attention;
the ranks decide on their own GPUs).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from ain.data.shards import read_manifest
from ain.rundir import RunDir
from ain.train.attention import plan_attention
from ain.train.ds_config import warmup_steps
from ain.train.loop import Schedule, estimated_schedule, manifest_lengths, plan_schedule
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
    nodes: int = 1
    gpus_per_node: int = 0
    max_length: int = 2048
    schedule: Optional[Schedule] = None
    schedule_error: str = ""
    warmup_steps: int = 0
    tokens_source: str = "train.tokens_per_sample"
    attention: str = ""

    @property
    def gpu_hours(self) -> float:
        return self.tokens / self.tokens_per_gpu_s / 3600.0

    @property
    def wall_hours(self) -> float:
        return self.gpu_hours / max(1, self.gpus)

    # the estimate protocol of ain.slurm.cost (StageSpec.estimate): one task, on all its devices
    @property
    def task_hours(self) -> float:
        return self.wall_hours

    @property
    def devices_per_task(self) -> int:
        return self.gpus

    @property
    def work(self) -> str:
        return f"{self.samples:,} samples, {self.tokens:,.0f} tokens"

    @property
    def rate(self) -> str:
        return f"{self.tokens_per_gpu_s:,.0f} tokens/s per GPU ({self.throughput_source})"

    def shape(self) -> str:
        """The topology, the global batch (in packed rows) and the schedule's steps."""
        per_node = self.gpus_per_node or max(1, self.gpus // max(1, self.nodes))
        where = f"{self.nodes} node{'s' if self.nodes != 1 else ''} x {per_node} {'GPUs' if self.gpus_per_node else 'ranks'}"
        s = self.schedule
        if s is None:
            return f"train shape: {where}; batch: {self.schedule_error}"
        return (f"train shape: {where}, micro 1 row x accum {s.accum} per rank -> global batch {s.global_rows} "
                f"packed rows of <= {self.max_length:,} tokens per optimizer step (~{s.samples_per_row * s.global_rows:,.0f}"
                f" samples at {s.samples_per_row:.2f} samples/row; the batch unit is rows, not samples); "
                f"{s.total_steps:,} optimizer steps, warmup {self.warmup_steps:,} ({s.source})")

    def describe(self) -> str:
        return (f"train estimate: {self.samples:,} samples ({self.samples_source}) x "
                f"{self.tokens / max(self.samples, 1):,.0f} tokens ({self.tokens_source}) = {self.tokens:,.0f} tokens; at "
                f"{self.tokens_per_gpu_s:,.0f} tokens/s per GPU ({self.throughput_source}): "
                f"{self.gpu_hours:,.1f} GPU-hours, {self.wall_hours:,.1f} h on {self.gpus} GPUs\n"
                f"{self.shape()}" + (f"\n{self.attention}" if self.attention else ""))


def estimate_train(cfg: RunConfig, run_root: Path, upstream: Optional[Mapping[str, Any]] = None) -> GpuHours:
    t = cfg.train
    manifest = read_manifest(RunDir(run_root).stage("pack").out)
    if manifest:
        samples, samples_source = sum(int(e["samples"]) for e in manifest), "pack manifest"
    else:
        samples, samples_source = t.expected_samples, "train.expected_samples"
    gpus = t.resources.nodes * max(t.resources.gpus_per_node, 0)
    devices = gpus or t.resources.nodes * t.resources.tasks_per_node  # CPU runs: one "device" per rank
    measured = [m["tokens_per_s"] / devices for m in read_metrics(RunDir(run_root).stage("train").out)
                if m.get("tokens_per_s")]
    if measured:
        rate, rate_source = statistics.median(measured), f"measured, median of {len(measured)} steps"
    else:
        rate, rate_source = t.tokens_per_gpu_s, "train.tokens_per_gpu_s"
    tokens = float(samples) * t.tokens_per_sample * max(1, t.epochs)
    tokens_source = "train.tokens_per_sample"
    lengths, _ = manifest_lengths(manifest, t) if manifest else (None, "")
    if lengths is not None:
        kept = [n for shard in lengths for n in shard if n is not None and n <= t.max_length]
        tokens, tokens_source = float(sum(kept)) * max(1, t.epochs), "pack manifest token lengths"
    schedule, error, warmup = None, "", 0
    world = t.world_size
    try:
        if manifest:
            schedule = plan_schedule(manifest, t, world, cfg.seed, ranks=[0])  # all 64 would take ~40 s
        else:
            schedule = estimated_schedule(samples, t, world, "no pack manifest yet")
        warmup = warmup_steps(t, schedule.total_steps)
    except ValueError as exc:  # grad_accum 0 with a global batch the topology cannot divide
        error = str(exc)
    return GpuHours(samples, samples_source, tokens, rate, rate_source, devices, nodes=t.resources.nodes,
                    gpus_per_node=max(t.resources.gpus_per_node, 0), max_length=t.max_length, schedule=schedule,
                    schedule_error=error, warmup_steps=warmup, tokens_source=tokens_source,
                    attention=plan_attention(t.attn_implementation, t.bf16))
