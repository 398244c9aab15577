"""Submit a run's stages: one Slurm array per stage, chained with afterok dependencies.

A launch is idempotent. For each stage, in DAG order:

    missing = all indices - done markers - elements still queued or running (asked of squeue)

Only `missing` is submitted. A stage that submitted anything makes the pending-on-dependency
elements of later stages stale (they wait on the failed task that caused the resubmission), so
those are cancelled and resubmitted behind the new job. Dependencies name whole new arrays and
the individual still-active elements of older ones (`afterok:123:118_4`), never an older array
as a whole, which may contain the failed task being replaced.

Slurm jobs run the code as it was at submission: the launch copies lib/ain and configs/ into
`<run>/code/<digest>/` and puts that first on the jobs' PYTHONPATH (ain.slurm.snapshot).

Without Slurm (cluster.executor=local, or auto with no scheduler), the same tasks run through
submitit's local executor, stage after stage, and the launch waits for them.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import submitit

from ain import fingerprint, hub
from ain.atomic import atomic_write_json, read_json
from ain.config_base import ConfigError
from ain.rundir import RunDir
from ain.slurm import scheduler
from ain.slurm.cost import compute_estimates, describe_costs, stage_costs
from ain.slurm.sbatch import render_sbatch, slurm_parameters
from ain.slurm.shared_server import SharedServerTask
from ain.slurm.snapshot import code_digest, snapshot_code, snapshot_dir
from ain.slurm.submissions import active_elements, submitted_elements
from ain.slurm.task import StageTask
from ain.stages import PlannedStage, plan

if TYPE_CHECKING:
    from ain.config import RunConfig


@dataclass
class StageLaunch:
    """What one launch did for one stage."""

    stage: str
    num_tasks: int
    done: list[int] = field(default_factory=list)
    active: list[str] = field(default_factory=list)       # queue elements left alone
    cancelled: list[str] = field(default_factory=list)    # stale dependents cancelled
    submitted: list[int] = field(default_factory=list)    # stage indices submitted now
    elements: list[str] = field(default_factory=list)     # their queue elements ('123_0', ...)
    job_id: str | None = None                             # the array submitted now (the first, if several)
    job_ids: list[str] = field(default_factory=list)      # every array submitted now: one per upstream group
    dependency: list[str] = field(default_factory=list)


def executor_kind(cfg: RunConfig) -> str:
    if cfg.cluster.executor != "auto":
        return cfg.cluster.executor
    return "slurm" if scheduler.slurm_available() else "local"


def job_name(cfg: RunConfig, stage: str) -> str:
    return f"ain-{cfg.name}-{stage}"


class Launcher:
    def __init__(self, cfg: RunConfig, run: RunDir, selected: list[str] | None = None,
                 borrowed: dict[str, RunDir] | None = None, after_siblings: dict[str, RunDir] | None = None) -> None:
        self.cfg = cfg
        self.run = run
        self.kind = executor_kind(cfg)
        self.selected = selected  # None: every stage (see ain.stages.select_stages)
        # Stages another run computes (a sweep's variants share them, ain.sweep): never submitted
        # here; their queued jobs are found in that run's events and waited for like any upstream.
        self.borrowed = borrowed or {}
        # Stages that reuse the same stage's work in another run (a sweep variant differing only in
        # thresholds, fingerprint.reusable_siblings): their tasks also wait for that run's tasks.
        self.after_siblings = after_siblings or {}
        if any(self._chosen(name) for name in self.borrowed):
            raise ValueError(f"borrowed stages {sorted(self.borrowed)} must not be selected")
        self._code_dir: Path | None = None  # this launch's code snapshot, made at its first submission

    def _chosen(self, name: str) -> bool:
        return self.selected is None or name in self.selected

    def _check_upstream(self, active: dict[str, list[str]]) -> None:
        """With a selection, every unselected stage the selected ones need (their upstream stages,
        transitively) must be complete, or still queued/running (then the selection waits for it)."""
        if self.selected is None:
            return
        stages = plan(self.cfg)
        upstreams = {st.name: set(st.upstream_groups()) - {None} for st in stages}
        needed: set[str] = set()
        todo = [u for name in self.selected for u in upstreams[name]]
        while todo:
            name = todo.pop()
            if name not in needed:
                needed.add(name)
                todo += upstreams[name]
        for st in stages:
            if st.name not in needed or st.name in self.selected:
                continue
            done = self.run.stage(st.name).done_indices()
            if len(done) < st.num_tasks and not active.get(st.name):
                fix = (f"{self.borrowed[st.name].root} computes it: launch the sweep again" if st.name in self.borrowed
                       else f"launch with --from {st.name}")
                raise ConfigError(f"stage {st.name} is incomplete ({len(done)}/{st.num_tasks} tasks done) and "
                                  f"not queued, but {self.selected[0]} needs it: {fix}")

    # planning ---------------------------------------------------------------------------------
    def dry_run(self) -> str:
        """The DAG, each stage's array and resources, and the sbatch text; submits nothing."""
        lines = [f"run directory: {self.run.root.resolve()}", f"executor: {self.kind}"]
        code_dir = None
        if self.kind == "slurm":
            try:
                code_dir = snapshot_dir(self.run.root.resolve(), code_digest())
                lines.append(f"code: jobs run a snapshot of lib/ain and configs/ made at submission, {code_dir}")
            except ConfigError as exc:  # shown here; a real launch refuses with the same message
                lines.append(f"code: {exc}")
        try:
            pins = self._hub_pins()
            lines.append("hub: jobs may download (cluster.hub_offline=false)" if pins is None else
                         f"hub: {len(pins)} model(s)/dataset(s) in the cache, pinned at launch (HF_HUB_OFFLINE=1 in jobs)")
        except ConfigError as exc:  # shown here; a real launch refuses with the same message
            lines.append(f"hub: {exc}")
        prints = fingerprint.stage_fingerprints(self.cfg)
        stale = fingerprint.stale_stages(self.cfg, self.run, prints)
        if stale:
            lines.append("stale (outputs computed from another config or other inputs; --force moves them to "
                         "stale/ and recomputes them):")
            lines += [f"  {s.stage}: {s.reason()}" for s in stale]
        lines.append("DAG:")
        for st in plan(self.cfg):
            if not self._chosen(st.name):
                lines.append(f"  {st.name}: not selected (left as it is)")
                continue
            paths = self.run.stage(st.name)
            missing = sorted(set(range(st.num_tasks)) - paths.done_indices())
            r = st.resources
            groups = st.upstream_groups()
            after = (", ".join(f"{u or '-'} ({len(ix)} task(s))" for u, ix in groups.items()) if len(groups) > 1
                     else next(iter(groups)) or "-")
            lines.append(
                f"  {st.name}: {st.num_tasks} tasks ({len(missing)} to run), after {after}; "
                f"per task {r.nodes} node(s) x {r.tasks_per_node} proc, {r.cpus_per_task} cpu, "
                f"{r.gpus_per_node} gpu/node, {r.mem_gb:g} GB, {r.time_min} min")
        for name, (judge, stages) in self.cfg.judges(self.run.root.resolve()).items():
            if judge.server.mode == "shared" and any(self._chosen(s) for s in stages):
                r = judge.server.shared_resources
                lines.append(f"  serve:{name}: one {judge.model} server job beside {', '.join(stages)}; "
                             f"{r.cpus_per_task} cpu, {r.gpus_per_node} gpu, {r.mem_gb:g} GB, {r.time_min} min")
        estimates = compute_estimates(self.cfg, self.run.root)
        lines += [e.describe() for name, e in estimates.items() if self._chosen(name)]
        costs = stage_costs(self.cfg, self.run.root, prints, estimates)
        lines += describe_costs([c for c in costs if self._chosen(c.stage)])
        for st in plan(self.cfg):
            if not self._chosen(st.name):
                continue
            dep = [f"<{u} job>" for u in st.upstream_groups() if u] or None
            text = render_sbatch(self.cfg.cluster, job_name(self.cfg, st.name), st.resources,
                                 self.run.stage(st.name).logs, st.num_tasks, python=sys.executable,
                                 dependency=dep, code_dir=code_dir)
            lines += ["", f"# ---- sbatch for stage {st.name} ----", text]
        return "\n".join(lines)

    # launching --------------------------------------------------------------------------------
    def _hub_pins(self) -> dict[str, str] | None:
        """The cached revision of every hub model and dataset of the recipe (ain.hub); ConfigError
        naming the missing ones and the prefetch command. None when jobs may download."""
        c = self.cfg.cluster
        if not c.hub_offline:
            return None
        pins, missing = hub.check_cached(hub.recipe_assets(self.cfg), c.hf_home)
        if missing:
            raise ConfigError(hub.missing_message(missing, c.hf_home, self.cfg.recipe, c.name))
        return pins

    def _pin_revisions(self, pins: dict[str, str] | None, force: bool) -> None:
        """hub_revisions.json: what this run's jobs load. A later launch whose cache holds other
        revisions is refused unless --force (outputs made under two revisions would be mixed)."""
        if pins is None:
            return
        path = self.run.root / "hub_revisions.json"
        old = read_json(path).get("revisions", {}) if path.exists() else {}
        changed = sorted(k for k in set(old) & set(pins) if old[k] != pins[k])
        if changed and not force:
            raise ConfigError(f"{path} pinned other hub revisions than the cache now holds: "
                              + "; ".join(f"{k}: {old[k][:12]} -> {pins[k][:12]}" for k in changed)
                              + ". Use --force to accept them (finished tasks are kept).")
        atomic_write_json(path, {"hf_home": self.cfg.cluster.hf_home, "revisions": {**old, **pins}})

    def launch(self, force: bool = False, argv: list[str] | None = None) -> list[StageLaunch]:
        # Everything this launch creates (pickles, sbatch scripts) and, through sbatch's umask
        # propagation, every file the jobs create is private to the user.
        old_umask = os.umask(0o077)
        try:
            pins = self._hub_pins()
            with self.run.lock():
                prints = fingerprint.stage_fingerprints(self.cfg)
                stale = fingerprint.stale_stages(self.cfg, self.run, prints)
                self.run.freeze(self.cfg, force=force, argv=argv)  # refuses a changed config without --force
                self._refuse_stale(stale, force)                    # ... and changed input files
                self._pin_revisions(pins, force)
                self._move_stale_aside(stale)
                fingerprint.write_records(self.run, prints)
                if self.kind == "slurm":
                    return self._launch_slurm()
                return self._launch_local()
        finally:
            os.umask(old_umask)

    def _refuse_stale(self, stale: list[fingerprint.Stale], force: bool) -> None:
        """Stale outputs are recomputed only when asked (--force), and never under a queued or
        running task of that stage (it would write into the directory being moved aside)."""
        if not stale:
            return
        what = "; ".join(f"{s.stage} ({s.reason()})" for s in stale)
        if not force:
            raise ConfigError(f"{self.run.root}: the outputs of {what} were computed from another config or "
                              "other inputs. Use another name=..., or --force to move them aside (stale/) and "
                              "recompute them.")
        if self.kind == "slurm":
            busy = active_elements(self.run, [s.stage for s in stale])
            if busy:
                raise ConfigError(f"stale stage(s) still have queued or running tasks ({', '.join(busy)}): "
                                  "wait for them or scancel them, then launch again")

    def _move_stale_aside(self, stale: list[fingerprint.Stale]) -> None:
        if not stale:
            return
        launch = len(list((self.run.root / "launch").glob("*.json"))) - 1  # this launch's record
        moved = fingerprint.move_aside(self.run, stale, launch)
        self.run.append_event({"kind": "stale", "stages": [s.stage for s in stale],
                               "reasons": {s.stage: s.reason() for s in stale}, "moved_to": [str(m) for m in moved]})

    def _elements(self) -> dict[str, tuple[str, int]]:
        """Queue element -> (stage, index) of this run's submissions and of its borrowed stages'."""
        elements = submitted_elements(self.run)
        for stage, owner in self.borrowed.items():
            elements.update({e: key for e, key in submitted_elements(owner).items() if key[0] == stage})
        return elements

    def _launch_slurm(self) -> list[StageLaunch]:
        elements = self._elements()
        queue = scheduler.queue(elements)
        report: list[StageLaunch] = []
        waits_on: dict[str, list[str]] = {}  # stage -> what its dependents wait for (new arrays + active elements)
        upstream_resubmitted = False
        active_by_stage: dict[str, list[str]] = {}
        for element, entry in queue.items():
            if entry.active and element in elements:
                active_by_stage.setdefault(elements[element][0], []).append(element)
        self._check_upstream(active_by_stage)
        for st in plan(self.cfg):
            paths = self.run.stage(st.name).create()
            done = paths.done_indices()
            if not self._chosen(st.name):  # left alone; a later selected stage waits on its queued tasks
                waits_on[st.name] = sorted(active_by_stage.get(st.name, []))
                continue
            sl = StageLaunch(st.name, st.num_tasks, done=sorted(done))
            active: dict[int, str] = {}
            stale: list[str] = []
            for element, entry in queue.items():
                stage, index = elements.get(element, (None, -1))
                if stage != st.name or not entry.active or index in done:
                    continue
                if entry.stuck_on_dependency or (upstream_resubmitted and entry.waiting_on_dependency):
                    stale.append(element)
                else:
                    active[index] = element
            if stale:
                scheduler.cancel(stale)
                sl.cancelled = sorted(stale)
                self.run.append_event({"kind": "cancel", "stage": st.name, "elements": sl.cancelled,
                                       "reason": "dependency on a replaced or failed upstream task"})
            missing = sorted(set(range(st.num_tasks)) - done - set(active))
            sl.active = sorted(active.values())
            sl.dependency = list(waits_on.get(st.depends_on, [])) if st.depends_on else []
            if missing:
                # one array per upstream stage the missing tasks wait for (usually just one)
                sl.dependency = []
                siblings = (active_elements(self.after_siblings[st.name], [st.name])
                            if st.name in self.after_siblings else [])
                for upstream, indices in st.upstream_groups(missing).items():
                    dependency = (waits_on.get(upstream, []) if upstream else []) + siblings
                    job_id, new_elements = self._submit_slurm(st, indices, dependency)
                    sl.job_ids.append(job_id)
                    sl.elements += new_elements
                    sl.dependency += [d for d in dependency if d not in sl.dependency]
                sl.job_id = sl.job_ids[0]
                sl.submitted = missing
            waits_on[st.name] = sl.job_ids + sl.active
            upstream_resubmitted = upstream_resubmitted or bool(missing)
            report.append(sl)
            if missing or sl.active:
                self._ensure_shared_servers(st.name, sl.dependency, report)
        return report

    def _ensure_shared_servers(self, stage: str, dependency: list[str], report: list[StageLaunch]) -> None:
        """`shared` judges of this stage: one server job per judge, submitted with the first
        client stage that has work, after the same upstream jobs, unless one is already queued
        or running."""

        for name, (judge, stages) in self.cfg.judges(self.run.root.resolve()).items():
            pseudo = f"serve:{name}"
            if stage not in stages or judge.server.mode != "shared" or active_elements(self.run, [pseudo]):
                continue
            folder = self.run.root / "serve"
            executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=self.cfg.cluster.max_requeues)
            executor.update_parameters(**slurm_parameters(self.cfg.cluster, job_name(self.cfg, pseudo.replace(":", "-")),
                                                          judge.server.shared_resources, dependency or None,
                                                          self._pinned_code()))
            with submitit.helpers.clean_env():
                job = executor.submit(SharedServerTask(str(self.run.root), name))
            self.run.append_event({"kind": "submit", "executor": "slurm", "stage": pseudo, "job_id": job.job_id,
                                   "indices": [0], "elements": [job.job_id], "dependency": dependency,
                                   "code": self._pinned_code().name, "argv": sys.argv})
            report.append(StageLaunch(pseudo, 1, submitted=[0], elements=[job.job_id], job_id=job.job_id,
                                      dependency=list(dependency)))

    def _pinned_code(self) -> Path:
        """This launch's code snapshot (made at the first submission; see ain.slurm.snapshot)."""
        if self._code_dir is None:
            self._code_dir = snapshot_code(self.run.root.resolve())
        return self._code_dir

    def _executor(self, st: PlannedStage, kind: str) -> submitit.Executor:
        folder = self.run.stage(st.name).logs
        if kind == "slurm":
            return submitit.SlurmExecutor(folder=folder, max_num_timeout=self.cfg.cluster.max_requeues)
        ex = submitit.LocalExecutor(folder=folder)
        # A multi-node stage (training) runs all its ranks on this machine: submitit starts them
        # as local tasks with the same rank environment it gives Slurm tasks.
        ex.update_parameters(timeout_min=st.resources.time_min,
                             tasks_per_node=st.resources.nodes * st.resources.tasks_per_node)
        return ex

    def _submit_slurm(self, st: PlannedStage, indices: list[int], dependency: list[str]) -> tuple[str, list[str]]:
        executor = self._executor(st, "slurm")
        executor.update_parameters(**slurm_parameters(self.cfg.cluster, job_name(self.cfg, st.name),
                                                      st.resources, dependency or None, self._pinned_code()))
        # A launch from inside a job must not pass its own SLURM_* / torch variables on.
        with submitit.helpers.clean_env():
            jobs = executor.map_array(StageTask(str(self.run.root.resolve()), st.name), indices)
        job_id = jobs[0].job_id.split("_", 1)[0]
        elements = [job.job_id for job in jobs]
        self.run.append_event({"kind": "submit", "executor": "slurm", "stage": st.name, "job_id": job_id,
                               "indices": indices, "elements": elements, "dependency": dependency,
                               "code": self._pinned_code().name, "argv": sys.argv})
        return job_id, elements

    def _launch_local(self) -> list[StageLaunch]:
        shared = [name for name, (judge, _) in self.cfg.judges(self.run.root.resolve()).items() if judge.server.mode == "shared"]
        if shared:
            raise ConfigError(f"judge(s) {shared}: server.mode=shared needs Slurm (a server job beside the "
                              "client arrays); on this machine use per_task or external")
        report: list[StageLaunch] = []
        self._check_upstream({})
        for st in plan(self.cfg):
            paths = self.run.stage(st.name).create()
            done = paths.done_indices()
            if not self._chosen(st.name):
                continue
            sl = StageLaunch(st.name, st.num_tasks, done=sorted(done))
            missing = sorted(set(range(st.num_tasks)) - done)
            report.append(sl)
            if not missing:
                continue
            sl.submitted = missing
            sl.job_id = f"local-{int(time.time())}"
            self.run.append_event({"kind": "submit", "executor": "local", "stage": st.name,
                                   "job_id": sl.job_id, "indices": missing, "argv": sys.argv})
            failed = self._run_local(st, missing)
            if failed:
                raise StageFailed(st.name, failed, self.run)
        return report

    def _run_local(self, st: PlannedStage, indices: list[int]) -> list[int]:
        """Run tasks through submitit's local executor, at most array_parallelism at once."""
        executor = self._executor(st, "local")
        task = StageTask(str(self.run.root.resolve()), st.name)
        width = max(1, min(self.cfg.cluster.array_parallelism, os.cpu_count() or 1))
        failed: list[int] = []
        for start in range(0, len(indices), width):
            batch = indices[start:start + width]
            jobs = executor.map_array(task, batch)
            for index, job in zip(batch, jobs):
                try:
                    job.results()  # every rank's result (a multi-rank stage has one per rank)
                except Exception:  # the failure record is in the run directory
                    failed.append(index)
        return failed


class StageFailed(RuntimeError):
    def __init__(self, stage: str, indices: list[int], run: RunDir) -> None:
        self.stage, self.indices = stage, indices
        super().__init__(f"stage {stage}: task(s) {indices} failed; see `python jobs/status.py {run.root}` "
                         f"and {run.stage(stage).failed}")


def wait_for(run: RunDir, report: list[StageLaunch], timeout_s: float = 3600, poll_s: float = 2.0) -> None:
    """Block until no element of this run is pending or running (for --wait, tests, e2e)."""
    deadline = time.time() + timeout_s
    elements = submitted_elements(run)
    while time.time() < deadline:
        if not any(e.active for e in scheduler.queue(elements).values()):
            return
        time.sleep(poll_s)
    raise TimeoutError(f"{run.root}: jobs still active after {timeout_s:.0f}s")


def describe(report: list[StageLaunch]) -> str:
    rows = []
    for sl in report:
        parts = [f"{sl.stage}: {len(sl.done)}/{sl.num_tasks} done"]
        if sl.submitted:
            parts.append(f"submitted {len(sl.submitted)} task(s) as job {','.join(sl.job_ids) or sl.job_id}"
                         + (f" after {':'.join(sl.dependency)}" if sl.dependency else ""))
        if sl.active:
            parts.append(f"{len(sl.active)} still queued/running ({', '.join(sl.active[:4])}"
                         + (", ..." if len(sl.active) > 4 else "") + ")")
        if sl.cancelled:
            parts.append(f"cancelled stale {', '.join(sl.cancelled)}")
        if not sl.submitted and not sl.active:
            parts.append("nothing to do" if len(sl.done) == sl.num_tasks else "")
        rows.append("; ".join(p for p in parts if p))
    return "\n".join(rows)


def resolve_run_dir(cfg: RunConfig) -> RunDir:
    return RunDir((Path(cfg.runs_root) / cfg.name).resolve())
