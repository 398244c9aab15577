"""The dry run's cost table: per stage, the work, GPU-hours and wall-clock hours, and where each
figure comes from.

Sources, best first:

  measured   finished tasks of the same stage with the same fingerprint (ain.fingerprint): in
             this run, or in any run under runs_root (a sweep's variants, an earlier run of the
             same config). Same fingerprint = the same computation, so its task-seconds apply.
  estimate   the stage's `estimate` hook: its work before it runs (WorkEstimate: samples,
             tokens, images, eval items; from the data itself) at a throughput figure of the
             config (training: tokens / train.tokens_per_gpu_s; translate: output tokens /
             translate.output_tokens_per_gpu_s; ...). The hooks run in pipeline order, each seeing
             the estimates before it (`upstream`): ingest surveys the sources, translate counts
             the tokens of the English text ingest found, safety the images and turns.
  limit      the task's time limit (resources.time_min): an upper bound, not a forecast. A stage
             with work units but no throughput figure (mix, pack) still shows its units.

GPUs per task are the task's own (nodes x gpus_per_node; per_task judge servers run on them).
Wall-clock hours assume `cluster.array_parallelism` tasks of an array at once (fewer when
`cluster.max_gpus`, the profile's GPU share, holds fewer tasks' GPUs) and stages one after
another; shared judge server jobs are not included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from ain.fingerprint import Fingerprint, records_under, stage_fingerprints
from ain.stages import load_hook, plan

if TYPE_CHECKING:
    from ain.config import RunConfig


@dataclass(frozen=True)
class WorkEstimate:
    """A stage's work before it runs, as its estimate hook (ain.pipeline StageSpec.estimate) sees
    it, and the time that work takes at a throughput figure when the config has one.

    `units` are shown in order ("samples", "input tokens", "images", ...); `sources` says where
    they come from (surveyed rows, a tokenizer, an assumption). `task_hours` is None when there is
    no throughput figure (the cost table then falls back to the time limit). `carry` holds what
    later stages' hooks read (e.g. ingest's sampled English texts for translate's token count)."""

    stage: str
    units: tuple[tuple[str, float], ...]
    sources: str
    task_hours: Optional[float] = None
    devices_per_task: int = 1
    rate: str = ""                   # "500 output tokens/s per GPU (translate.output_tokens_per_gpu_s)"
    carry: Mapping[str, Any] = field(default_factory=dict)

    def unit(self, name: str, default: float = 0.0) -> float:
        return next((v for k, v in self.units if k == name), default)

    @property
    def work(self) -> str:
        return ", ".join(f"{value:,.0f} {name}" for name, value in self.units)

    def describe(self) -> str:
        line = f"{self.stage} work: {self.work} ({self.sources})"
        if self.task_hours is not None:
            line += f"; at {self.rate}: {self.task_hours:,.2f} h per task on {self.devices_per_task} device(s)"
        return line


def device_hours(work: float, per_device_s: float, devices: int, tasks: int) -> float:
    """Hours one task takes for its share (1/tasks) of `work` at `per_device_s` units per second
    on each of its `devices`."""
    return work / max(per_device_s, 1e-12) / max(1, devices) / max(1, tasks) / 3600.0


def compute_estimates(cfg: "RunConfig", run_root: Path) -> dict[str, Any]:
    """stage -> its estimate hook's result, in pipeline order; each hook gets the results before
    it (`upstream`). A hook that fails is reported in its place, not raised: the dry run is for
    reading a plan, and one unreadable source must not hide the rest of it."""
    out: dict[str, Any] = {}
    for st in plan(cfg):
        if st.spec.estimate:
            try:
                out[st.name] = load_hook(st.spec.estimate)(cfg, run_root, out)
            except Exception as exc:  # noqa: BLE001 - shown in the dry run, the launch checks for real
                out[st.name] = WorkEstimate(st.name, (), f"no estimate: {type(exc).__name__}: {exc}")
    return out


@dataclass(frozen=True)
class StageCost:
    stage: str
    tasks: int
    gpus_per_task: int
    task_hours: float          # per task
    parallel: int              # tasks at once
    source: str                # measured | estimate | limit
    detail: str                # where the figure comes from, and the work it covers
    work: str = ""             # the stage's work units (WorkEstimate.work), when estimated
    on_gpus: bool = True       # False: a CPU-only stage, whose estimate counts one device per task/rank

    @property
    def gpu_hours(self) -> float:
        return self.tasks * self.task_hours * self.gpus_per_task

    @property
    def wall_hours(self) -> float:
        return math.ceil(self.tasks / max(1, self.parallel)) * self.task_hours


def measured(runs_root: Path, stage: str, digest: str) -> Optional[tuple[float, int, int, str]]:
    """(mean task-seconds, tasks measured, items, where) over finished tasks of this stage with
    this fingerprint, or None."""
    for paths, record in records_under(runs_root, stage):
        if record.get("digest") != digest:
            continue
        markers = [m for i in sorted(paths.done_indices()) if (m := paths.read_marker(i)) and m.get("seconds")]
        markers = [m for m in markers if m.get("fingerprint") in (digest, None)]
        if markers:
            seconds = sum(float(m["seconds"]) for m in markers) / len(markers)
            items = sum(int(m.get("items", 0) or 0) for m in markers)
            return seconds, len(markers), items, str(paths.root.parent.parent)
    return None


def stage_costs(cfg: "RunConfig", run_root: Path, prints: Optional[dict[str, Fingerprint]] = None,
                estimates: Optional[dict[str, Any]] = None) -> list[StageCost]:
    """Per stage of the plan. `prints` and `estimates` (compute_estimates), when the caller has
    them already (the dry run), are not computed again."""
    prints = prints if prints is not None else stage_fingerprints(cfg)
    estimates = estimates if estimates is not None else compute_estimates(cfg, run_root)
    runs_root = Path(cfg.runs_root)
    out: list[StageCost] = []
    for st in plan(cfg):
        r = st.resources
        gpus = r.nodes * r.gpus_per_node
        parallel = 1 if st.spec.multi_node else min(st.num_tasks, max(1, cfg.cluster.array_parallelism))
        if cfg.cluster.max_gpus and gpus:  # the profile's GPU share bounds how many tasks run at once
            parallel = max(1, min(parallel, cfg.cluster.max_gpus // gpus))
        estimate = estimates.get(st.name)
        work = getattr(estimate, "work", "")
        found = measured(runs_root, st.name, prints[st.name].digest) if runs_root.is_dir() else None
        if found:
            seconds, n, items, where = found
            out.append(StageCost(st.name, st.num_tasks, gpus, seconds / 3600, parallel, "measured",
                                 f"{n} finished task(s) of the same fingerprint in {where}: {seconds / 60:.1f} min "
                                 f"per task, {items:,} items", work))
            continue
        if estimate is not None and estimate.task_hours is not None:
            devices = estimate.devices_per_task or max(1, gpus)  # on CPU: one device per rank
            out.append(StageCost(st.name, st.num_tasks, devices, estimate.task_hours, parallel, "estimate",
                                 estimate.rate, work, on_gpus=gpus > 0))
        else:
            out.append(StageCost(st.name, st.num_tasks, gpus, r.time_min / 60, parallel, "limit",
                                 f"time limit {r.time_min} min per task (upper bound)", work))
    return out


def describe_costs(costs: list[StageCost], title: str = "cost") -> list[str]:
    lines = [f"{title} (GPU-hours; wall hours with array parallelism, stages in sequence):"]
    for c in costs:
        unit = "GPU" if c.on_gpus else "CPU device"
        lines.append(f"  {c.stage}: {c.tasks} task(s) x {c.gpus_per_task} {unit}, {c.gpu_hours:,.1f} {unit}-h, "
                     f"{c.wall_hours:,.2f} h wall [{c.source}: {c.detail}]" + (f"; work: {c.work}" if c.work else ""))
    cpu = sum(c.gpu_hours for c in costs if not c.on_gpus)
    lines.append(f"  total: {sum(c.gpu_hours for c in costs if c.on_gpus):,.1f} GPU-h"
                 + (f" (+ {cpu:,.1f} CPU device-h)" if cpu else "") + f", {sum(c.wall_hours for c in costs):,.2f} h wall"
                 + ("" if all(c.source == "measured" for c in costs) else
                    " (includes upper bounds from time limits where nothing was measured)"))
    return lines
