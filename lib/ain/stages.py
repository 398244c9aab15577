"""The stage contract and the registry of stages.

A stage is `num_tasks` independent tasks. Task i reads a deterministic slice of its inputs,
writes its outputs atomically, and returns a dict of counts that becomes its completion marker
`done/<i>.json`. A task whose marker exists is skipped, so a stage is idempotent and a re-run
submits only the missing indices.

A stage's code is one function `run_task(ctx: TaskContext) -> dict`. Its sub-config is
`getattr(cfg, stage_name)` and must have `num_tasks` and `resources`. `StageSpec` says the rest;
the registry of specs is `ain.pipeline.STAGES`, and a `RunConfig` carries it (`cfg.stage_specs`),
so this module and the scheduler below the components never import a component.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Iterator, Optional, TypeVar

from ain.atomic import ResumableJsonl
from ain.config_base import ConfigError, JudgeConfig, Resources
from ain.rundir import RunDir, StagePaths

if TYPE_CHECKING:
    from ain.config import RunConfig


def _no_judges(section: Any, cfg: "RunConfig", run_root: Optional[Path]) -> dict[str, JudgeConfig]:
    return {}


@dataclass(frozen=True)
class StageSpec:
    """Everything the launcher, the task wrapper, the dry run and `jobs/status.py` know of a stage."""

    name: str
    """The stage's name: its key in recipes' `stages`, its RunConfig section, its run directory."""
    run: str
    """`module:function` of `run_task(ctx: TaskContext) -> dict` (imported only inside the job)."""
    config: type
    """Its config section (a dataclass with `num_tasks`, `resources`, optional `resolve(cfg)` and
    `check(cfg, need, check_paths)`)."""
    judges: Callable[[Any, "RunConfig", Optional[Path]], dict[str, JudgeConfig]] = _no_judges
    """(section, cfg, run_root) -> role -> the judge it starts or calls. Stages naming the same role
    share its server in `shared` mode (translate and verify share the translator)."""
    task_depends_on: Optional[Callable[[Any, "RunConfig"], list[Optional[str]]]] = None
    """(section, cfg) -> per task, the earlier stage it waits for; None: every task waits for the
    previous listed stage."""
    reads: tuple[str, ...] = ()
    """The stages whose outputs it reads (those in the recipe count): its fingerprint includes
    theirs, so a change upstream makes it stale (ain.fingerprint)."""
    multi_node: bool = False
    """One job of nodes x tasks_per_node ranks (srun + torch.distributed), not an array of
    independent tasks; `jobs/render_sbatch.py` renders it for plain sbatch."""
    progress: Optional[str] = None
    """`module:function` (out_dir) -> dict | None: live progress for `jobs/status.py` (step, ETA)."""
    estimate: Optional[str] = None
    """`module:function` (cfg, run_root, upstream) -> the stage's work before it runs
    (ain.slurm.cost.WorkEstimate, or an object with its `task_hours`, `devices_per_task`, `work`,
    `rate` and `describe()`); `upstream` holds the estimates of the stages before it."""


def load_hook(path: str) -> Callable[..., Any]:
    """The function named `module:function` (run functions and hooks of a StageSpec)."""
    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


@dataclass
class TaskContext:
    """Everything one task of one stage needs."""

    cfg: "RunConfig"
    run: RunDir
    stage: str
    index: int
    num_tasks: int
    log: logging.Logger

    @property
    def paths(self) -> StagePaths:
        return self.run.stage(self.stage)

    @property
    def stage_cfg(self) -> Any:
        return getattr(self.cfg, self.stage)

    def upstream(self, stage: str) -> StagePaths:
        return self.run.stage(stage)

    def upstream_rows(self, stage: str, pattern: str, keep: Callable[[dict[str, Any]], bool] = lambda row: True,
                      skip: int = 0) -> Iterator[dict[str, Any]]:
        """This task's share of an upstream stage's rows: files matching `pattern` in name
        order, lines in file order, rows passing `keep` dealt round-robin over the tasks.
        Deterministic, so a resumed task skips exactly the `skip` rows it has consumed."""
        return itertools.islice(self._upstream_rows(stage, pattern, keep), skip, None)

    def _upstream_rows(self, stage: str, pattern: str,
                       keep: Callable[[dict[str, Any]], bool]) -> Iterator[dict[str, Any]]:
        paths = self.run.stage(stage)
        paths.require_complete(getattr(self.cfg, stage).num_tasks, f"stage {self.stage}")
        n = 0
        for row in paths.rows(pattern):
            if not keep(row):
                continue
            if n % self.num_tasks == self.index:
                yield row
            n += 1

    def run_resumable(self, out: ResumableJsonl, work: Callable[[], None]) -> dict[str, Any]:
        """Run `work` (which writes to and commits `out`), publish the outputs, log the
        throughput, and return the marker fields: items, resumed_from, files, counters."""
        start = time.time()
        try:
            work()
            files = out.finish()
        finally:
            out.close()
        done, seconds = out.position - out.resumed_from, time.time() - start
        self.log.info("%s task %d: %d items in %.1fs (%.2f items/s)", self.stage, self.index, done, seconds,
                      done / max(seconds, 1e-9))
        return {"items": out.position, "resumed_from": out.resumed_from, "files": files, **out.counters}

    def resumable_outputs(self, **streams: str) -> ResumableJsonl:
        """Output files of this task that survive preemption, e.g.
        `ctx.resumable_outputs(samples="samples-00003.jsonl")` (see ResumableJsonl)."""
        files = {name: self.paths.out / filename for name, filename in streams.items()}
        return ResumableJsonl(files, self.paths.state_file(self.index))


def windows(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of `size` items (the last may be shorter): a task's commit windows."""
    while window := list(itertools.islice(items, size)):
        yield window


T = TypeVar("T")
R = TypeVar("R")


async def ordered_pipeline(items: Iterable[T], work: Callable[[T], Awaitable[R]], emit: Callable[[T, R], None],
                           commit: Callable[[int], None], *, commit_every: int, in_flight: int,
                           max_pending: int = 0) -> int:
    """`await work(item)` for up to `in_flight` items at once, continuously: as any one finishes the
    next item starts, so a slow item does not hold the others back as a window would. Results
    are handed to `emit(item, result)` strictly in input order (a finished item waits for every
    earlier one), and `commit(n)` is called after every `commit_every` items emitted and once at
    the end, n counting the items emitted so far: everything emitted before commit(n) belongs to
    the first n items, so a resumed caller skips exactly n items.

    `max_pending` (at least `in_flight`; 0: `in_flight`) bounds the items started and not yet
    emitted: those running plus those finished and waiting for an earlier, slower one (memory,
    and the work a restart redoes). When reached, nothing starts until the earliest finishes.

    An exception from `work` (or from `emit`/`commit`) cancels every running item and
    propagates; nothing emitted after the last commit(n) is committed. Returns the items emitted.
    """
    if in_flight < 1 or commit_every < 1:
        raise ValueError(f"in_flight and commit_every must be >= 1, got {in_flight} and {commit_every}")
    max_pending = max(max_pending, in_flight)
    source = iter(items)
    exhausted = False
    done: asyncio.Queue[asyncio.Future[R]] = asyncio.Queue()
    running: dict[asyncio.Future[R], int] = {}      # task -> input index
    waiting: dict[int, tuple[T, Any]] = {}          # input index -> (item, result or pending marker)
    started = emitted = committed = 0
    unfinished = object()
    try:
        while True:
            while not exhausted and len(running) < in_flight and started - emitted < max_pending:
                try:
                    item = next(source)
                except StopIteration:
                    exhausted = True
                    break
                task = asyncio.ensure_future(work(item))
                task.add_done_callback(done.put_nowait)
                running[task] = started
                waiting[started] = (item, unfinished)
                started += 1
            if not running:
                break  # every started item has been emitted: its predecessors all finished
            task = await done.get()
            index = running.pop(task)
            waiting[index] = (waiting[index][0], task.result())  # re-raises the item's exception
            while emitted in waiting and waiting[emitted][1] is not unfinished:
                item, result = waiting.pop(emitted)
                emit(item, result)
                emitted += 1
                if emitted - committed >= commit_every:
                    commit(emitted)
                    committed = emitted
        if emitted > committed:
            commit(emitted)
        return emitted
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)


@dataclass(frozen=True)
class PlannedStage:
    spec: StageSpec
    num_tasks: int
    resources: Resources
    depends_on: str | None
    task_depends_on: tuple[str | None, ...] = ()
    """Per task, the stage it waits for, where the tasks differ (else all wait for depends_on)."""

    @property
    def name(self) -> str:
        return self.spec.name

    def upstream_of(self, index: int) -> str | None:
        return self.task_depends_on[index] if self.task_depends_on else self.depends_on

    def upstream_groups(self, indices: list[int] | None = None) -> dict[str | None, list[int]]:
        """`indices` (default: every task) grouped by the stage they wait for (one Slurm array per group)."""
        groups: dict[str | None, list[int]] = {}
        for i in range(self.num_tasks) if indices is None else indices:
            groups.setdefault(self.upstream_of(i), []).append(i)
        return groups


def plan(cfg: "RunConfig") -> list[PlannedStage]:
    """The DAG of this run: the recipe's stages in pipeline order, each after the previous, except
    where a stage's spec has `task_depends_on`, naming per task an earlier stage to wait for
    instead (vdr_eval: base models need only the prepared dataset, not the fine-tune)."""
    out: list[PlannedStage] = []
    previous: str | None = None
    for position, name in enumerate(cfg.stages):
        spec, sub = cfg.spec(name), getattr(cfg, name)
        per_task: tuple[str | None, ...] = ()
        if spec.task_depends_on is not None:
            per_task = tuple(spec.task_depends_on(sub, cfg))
            earlier = set(cfg.stages[:position])
            if len(per_task) != sub.num_tasks or any(u is not None and u not in earlier for u in per_task):
                raise ValueError(f"{name}.task_depends_on gave {per_task}: need {sub.num_tasks} entries, "
                                 f"each None or one of the earlier stages {sorted(earlier)}")
        out.append(PlannedStage(spec, sub.num_tasks, sub.resources, previous, per_task))
        previous = name
    return out


def select_stages(cfg: "RunConfig", only: list[str] | None = None, start: str | None = None) -> list[str] | None:
    """The stages a launch may submit: `--only a,b` (just those) or `--from s` (s and every later
    stage of the recipe); None means all. The others are left alone: their done tasks count,
    their queued ones are waited on, and an incomplete one upstream of the selection is an error
    at launch (see Launcher)."""
    if only and start:
        raise ConfigError("use --only or --from, not both")
    names = [n for item in (only or []) for n in item.split(",") if n]
    if start:
        names = [start]
    unknown = [n for n in names if n not in cfg.stages]
    if unknown:
        raise ConfigError(f"stage(s) {unknown} not in this recipe's stages {cfg.stages}")
    if start:
        return cfg.stages[cfg.stages.index(start):]
    return names or None


def stage_function(spec: StageSpec) -> Callable[[TaskContext], dict[str, Any]]:
    return load_hook(spec.run)
