"""What a run is doing, reconstructed from its run directory and `squeue`.

Per stage: tasks done / running / pending / failed / lost, job ids, throughput (items per
second of task time, from the markers) and an ETA. A task is *failed* when it has a failure
record and is not active; *lost* when it was submitted but has no marker, no failure record and
is not in the queue (killed by the node, OOM, cancelled): both are resubmitted by a re-launch.

Per source: a stage whose done markers carry "sources" ({name: {"file", "rows", "samples", ...,
"kinds": {kind: n}}}, e.g. ingest) gets those added up over its finished tasks, shown as a table,
and a warning for every source that gave no sample once the stage is done (a whole source lost
to a format or encoding problem must not hide behind a green stage).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ain.atomic import read_json
from ain.fingerprint import moved_aside, stale_stages
from ain.rundir import RunDir
from ain.slurm import scheduler
from ain.slurm.submissions import submitted_elements
from ain.stages import load_hook, plan


@dataclass
class TaskProblem:
    index: int
    kind: str                      # failed | lost
    record: dict[str, Any] | None
    log_file: Path | None
    log_tail: list[str]


@dataclass
class StageStatus:
    name: str
    num_tasks: int
    done: int = 0
    running: int = 0
    pending: int = 0
    failed: int = 0
    lost: int = 0
    job_ids: list[str] = field(default_factory=list)
    items: int = 0
    task_seconds: float = 0.0
    first_start: float | None = None
    last_end: float | None = None
    problems: list[TaskProblem] = field(default_factory=list)
    progress: dict[str, Any] | None = None   # spec.progress hook: training step, loss, rates, ETA
    code: str | None = None   # digest of the code snapshot its latest Slurm submission runs (run/code/<digest>)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # per input source, over done tasks
    stale: str | None = None  # why its outputs no longer match the frozen config (ain.fingerprint)

    @property
    def empty_sources(self) -> list[str]:
        """Sources that gave no sample, once every task is done."""
        if self.done < self.num_tasks:
            return []
        return [name for name, s in self.sources.items() if not s.get("samples")]

    @property
    def throughput(self) -> float | None:
        """Items per second per task (from finished tasks)."""
        return self.items / self.task_seconds if self.task_seconds > 0 else None

    @property
    def eta_s(self) -> float | None:
        if self.progress is not None and self.done < self.num_tasks:
            return self.progress.get("eta_s")
        remaining = self.num_tasks - self.done
        if remaining == 0:
            return 0.0
        if self.done == 0 or self.task_seconds <= 0:
            return None
        per_task = self.task_seconds / self.done
        parallel = max(1, self.running)
        return per_task * remaining / parallel

    @property
    def state(self) -> str:
        if self.stale:
            return "stale"
        if self.done == self.num_tasks:
            return "done"
        if self.failed or self.lost:
            return "failed"
        if self.running:
            return "running"
        if self.pending:
            return "pending"
        return "not submitted"


def tail(path: Path | None, n: int = 15) -> list[str]:
    if path is None or not path.exists():
        return []
    with open(path, errors="replace") as f:
        return [line.rstrip("\n") for line in deque(f, maxlen=n)]


def log_files(run: RunDir, stage: str, element: str) -> list[Path]:
    """submitit's per-task logs: <job>_<array index>_0_log.{out,err}."""
    logs = run.stage(stage).logs
    return [logs / f"{element}_0_log.err", logs / f"{element}_0_log.out"]


def collect(run: RunDir, use_queue: bool = True, tail_lines: int = 15) -> list[StageStatus]:
    cfg = run.load_config()
    events = [ev for ev in run.events() if ev.get("kind") == "submit"]
    submitted = {(ev["stage"], index) for ev in events for index in ev["indices"]}
    elements = submitted_elements(run)
    queue = scheduler.queue(elements) if (use_queue and elements and scheduler.slurm_available()) else {}
    # latest element per (stage, index): later submissions replace earlier ones
    latest: dict[tuple[str, int], str] = {}
    for element, key in elements.items():
        latest[key] = element
    stale = {s.stage: s.reason() for s in stale_stages(cfg, run)}
    out: list[StageStatus] = []
    for st in plan(cfg):
        paths = run.stage(st.name)
        s = StageStatus(st.name, st.num_tasks, stale=stale.get(st.name))
        s.job_ids = [ev["job_id"] for ev in events if ev["stage"] == st.name]
        s.code = next((ev["code"] for ev in reversed(events) if ev["stage"] == st.name and ev.get("code")), None)
        done = paths.done_indices()
        for index in sorted(done):
            m = paths.read_marker(index) or {}
            add_sources(s.sources, m.get("sources"))
            s.items += int(m.get("items", 0) or 0)
            s.task_seconds += float(m.get("seconds", 0.0) or 0.0)
            if m.get("start"):
                s.first_start = min(s.first_start or m["start"], m["start"])
            if m.get("end"):
                s.last_end = max(s.last_end or m["end"], m["end"])
        s.done = len(done)
        for index in range(st.num_tasks):
            if index in done:
                continue
            element = latest.get((st.name, index))
            entry = queue.get(element) if element else None
            if entry is not None and entry.active:
                if entry.state == "PENDING":
                    s.pending += 1
                else:
                    s.running += 1
                continue
            failure = paths.failure(index)
            if failure.exists() or (st.name, index) in submitted:
                record = read_json(failure) if failure.exists() else None
                kind = "failed" if record else "lost"
                if kind == "failed":
                    s.failed += 1
                else:
                    s.lost += 1
                log = None
                if element:
                    existing = [p for p in log_files(run, st.name, element) if p.exists() and p.stat().st_size]
                    log = existing[0] if existing else None
                s.problems.append(TaskProblem(index, kind, record, log, tail(log, tail_lines)))
        if st.spec.progress:  # live progress of a long job (training: step, loss, MFU, ETA)
            s.progress = load_hook(st.spec.progress)(paths.out)
        out.append(s)
    return out


def add_sources(total: dict[str, dict[str, Any]], part: Any) -> None:
    """Add one marker's per-source counts to `total` (numbers summed, "kinds" merged)."""
    if not isinstance(part, dict):
        return
    for name, entry in part.items():
        if not isinstance(entry, dict):
            continue
        acc = total.setdefault(name, {"kinds": {}})
        for key, value in entry.items():
            if key == "kinds" and isinstance(value, dict):
                for kind, n in value.items():
                    acc["kinds"][kind] = acc["kinds"].get(kind, 0) + int(n or 0)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                acc[key] = acc.get(key, 0) + value
            else:
                acc.setdefault(key, value)


def _top_kinds(kinds: dict[str, int], n: int = 3) -> str:
    top = sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k} {v}" for k, v in top[:n])
    return text + (f", +{len(top) - n} more" if len(top) > n else "")


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def render(run: RunDir, statuses: list[StageStatus]) -> Any:
    """A rich renderable: the stage table, then each failed or lost task with its log tail."""
    from rich.console import Group  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    table = Table(title=f"{run.root}  ({time.strftime('%H:%M:%S')})")
    for col in ("stage", "state", "done", "run", "pend", "fail", "lost", "jobs", "it/s/task", "ETA"):
        table.add_column(col, justify="left" if col in ("stage", "state", "jobs") else "right", no_wrap=True)
    for s in statuses:
        tp = f"{s.throughput:.2f}" if s.throughput is not None else "-"
        table.add_row(s.name, s.state, f"{s.done}/{s.num_tasks}", str(s.running), str(s.pending), str(s.failed),
                      str(s.lost), ",".join(s.job_ids[-3:]) or "-", tp, _fmt_seconds(s.eta_s))
    parts: list[Any] = [table]
    by_code: dict[str, list[str]] = {}
    for s in statuses:
        if s.code:
            by_code.setdefault(s.code, []).append(s.name)
    if len(by_code) == 1:
        parts.append(Text(f"code: every submission runs snapshot {next(iter(by_code))} ({run.root}/code/)"))
    elif by_code:  # re-launched after an edit: queued jobs keep the code they were submitted with
        parts.append(Text("code: stages run different snapshots: " + "; ".join(
            f"{digest}: {', '.join(names)}" for digest, names in by_code.items()), style="yellow"))
    for s in statuses:
        if s.stale:
            parts.append(Text(f"stale: {s.name}: {s.stale}; `--force` moves it aside and recomputes it", style="yellow"))
    for record in moved_aside(run):
        parts.append(Text(f"moved aside at launch {record['launch']}: {record['stage']} ({record['reason']}) -> "
                          f"{record['path']}", style="dim"))
    for s in statuses:
        if not s.sources:
            continue
        src_table = Table(title=f"{s.name}: per source ({s.done}/{s.num_tasks} tasks done)")
        for col in ("source", "rows", "samples", "quarantined", "unreadable", "top reasons", "file"):
            src_table.add_column(col, justify="right" if col in ("rows", "samples", "quarantined", "unreadable")
                                 else "left")
        for name, e in s.sources.items():
            src_table.add_row(name, str(e.get("rows", 0)), str(e.get("samples", 0)), str(e.get("quarantined", 0)),
                              str(e.get("unreadable", 0)), _top_kinds(e.get("kinds", {})) or "-", str(e.get("file", "")),
                              style="yellow" if name in s.empty_sources else None)
        parts.append(src_table)
        for name in s.empty_sources:
            e = s.sources[name]
            parts.append(Text(f"warning: {s.name}: source {name} ({e.get('file', '?')}) gave no sample from its "
                              f"{e.get('rows', 0)} rows" + (f" (quarantined: {_top_kinds(e.get('kinds', {}))})"
                                                            if e.get("kinds") else "")
                              + "; see its quarantine records", style="bold yellow"))
    for s in statuses:
        t = s.progress
        if t:
            parts.append(Text(f"{s.name}: step {t['step']}/{t['total_steps'] or '?'} (estimated), loss {t['loss']}, "
                              f"lr {t['lr']:.3g}, {t['tokens_per_s']:,.0f} tokens/s, MFU {t['mfu']}, "
                              f"ETA {_fmt_seconds(t['eta_s'])}"))
    for s in statuses:
        for p in s.problems:
            head = f"{s.name}[{p.index}] {p.kind}"
            if p.record:
                head += f" on {p.record.get('host')} (job {p.record.get('job_id')}): {p.record.get('error')}"
            else:
                head += ": no marker, no failure record, not in the queue (killed, cancelled or OOM?)"
            parts.append(Text(head, style="bold red"))
            if p.log_file:
                parts.append(Text(f"  last lines of {p.log_file}:", style="dim"))
                parts.append(Text("\n".join("    " + line for line in p.log_tail)))
    if any(s.problems for s in statuses):
        parts.append(Text("Re-run the same submit command to resubmit failed and lost tasks.", style="yellow"))
    return Group(*parts)
