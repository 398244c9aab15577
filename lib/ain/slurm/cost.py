"""The dry run's cost table: per stage, the work, GPU-hours and wall-clock hours, and where each
figure comes from.

Sources, best first:

  measured   finished tasks of the same stage with the same fingerprint (ain.fingerprint): in
             this run, or in any run under runs_root (a sweep's variants, an earlier run of the
             same config). Same fingerprint = the same computation, so its task-seconds apply.
  estimate   the stage's `estimate` hook (training: tokens / configured tokens-per-GPU-second).
  limit      the task's time limit (resources.time_min): an upper bound, not a forecast.

GPUs per task are the task's own (nodes x gpus_per_node; per_task judge servers run on them).
Wall-clock hours assume `cluster.array_parallelism` tasks of an array at once and stages one
after another; shared judge server jobs are not included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ain.fingerprint import Fingerprint, records_under, stage_fingerprints
from ain.stages import load_hook, plan

if TYPE_CHECKING:
    from ain.config import RunConfig


@dataclass(frozen=True)
class StageCost:
    stage: str
    tasks: int
    gpus_per_task: int
    task_hours: float          # per task
    parallel: int              # tasks at once
    source: str                # measured | estimate | limit
    detail: str                # where the figure comes from, and the work it covers

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
    """Per stage of the plan. `prints` and `estimates` (stage -> its estimate hook's result), when
    the caller has them already (the dry run), are not computed again; an estimate is only
    computed for a stage with nothing measured."""
    prints = prints if prints is not None else stage_fingerprints(cfg)
    estimates = dict(estimates or {})
    runs_root = Path(cfg.runs_root)
    out: list[StageCost] = []
    for st in plan(cfg):
        r = st.resources
        gpus = r.nodes * r.gpus_per_node
        parallel = 1 if st.spec.multi_node else min(st.num_tasks, max(1, cfg.cluster.array_parallelism))
        found = measured(runs_root, st.name, prints[st.name].digest) if runs_root.is_dir() else None
        if found:
            seconds, n, items, where = found
            out.append(StageCost(st.name, st.num_tasks, gpus, seconds / 3600, parallel, "measured",
                                 f"{n} finished task(s) of the same fingerprint in {where}: {seconds / 60:.1f} min "
                                 f"per task, {items:,} items"))
            continue
        if st.spec.estimate and st.name not in estimates:
            estimates[st.name] = load_hook(st.spec.estimate)(cfg, run_root)
        estimate = estimates.get(st.name)
        if estimate is not None and hasattr(estimate, "wall_hours"):
            devices = getattr(estimate, "gpus", None) or max(1, gpus)  # on CPU: one device per rank
            out.append(StageCost(st.name, st.num_tasks, devices, estimate.wall_hours, parallel, "estimate",
                                 estimate.describe().splitlines()[0]))
        else:
            out.append(StageCost(st.name, st.num_tasks, gpus, r.time_min / 60, parallel, "limit",
                                 f"time limit {r.time_min} min per task (upper bound)"))
    return out


def describe_costs(costs: list[StageCost], title: str = "cost") -> list[str]:
    lines = [f"{title} (GPU-hours; wall hours with array parallelism, stages in sequence):"]
    for c in costs:
        lines.append(f"  {c.stage}: {c.tasks} task(s) x {c.gpus_per_task} GPU, {c.gpu_hours:,.1f} GPU-h, "
                     f"{c.wall_hours:,.2f} h wall [{c.source}: {c.detail}]")
    lines.append(f"  total: {sum(c.gpu_hours for c in costs):,.1f} GPU-h, {sum(c.wall_hours for c in costs):,.2f} h wall"
                 + ("" if all(c.source == "measured" for c in costs) else
                    " (includes upper bounds from time limits where nothing was measured)"))
    return lines
