"""Ablation sweeps: variants of one recipe in one DAG, each piece of work computed once.

    python jobs/submit_sweep.py recipe=ain cluster=slurm sweep=authentic_share
    python jobs/submit_sweep.py recipe=smoke sweep.mix.authentic_arabic_share=0.2,0.35,0.5

A sweep file (`configs/sweep/<name>.yaml`, or a path) lists `variants`, each a set of overrides
applied on top of the command line's, or a `grid` of keys and values (every combination); on the
command line `sweep.<key>=a,b,c` adds a grid axis. Every variant is an ordinary run directory,
`<runs_root>/<sweep>/<variant>/`, so `jobs/status.py` and the reports work on each as on any run.

Sharing follows the stage fingerprints (ain.fingerprint): the first variant, baseline first, that
computes a (stage, fingerprint) owns it; every other variant with the same fingerprint links its
`stages/<stage>` to the owner's and does not submit it, and its own later stages wait for the
owner's jobs. A fingerprint covers its upstream stages', so variants fork at the first stage whose
config differs and run in parallel from there.

On Slurm the sweep ends in one more job, after every job of every variant has ended (afterany: a
failed variant shows `-` in the table rather than holding it back), that writes
`<sweep>/report/sweep.md`; its id is in `<sweep>/report_job.json`, its log under `report_job/`.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import yaml

from ain import PROJECT_ROOT
from ain.atomic import atomic_write_json, atomic_write_text, read_json
from ain.config import RunConfig, load_config
from ain.config_base import ConfigError
from ain.fingerprint import Fingerprint, stage_fingerprints
from ain.rundir import RunDir, private_mkdir
from ain.slurm import scheduler
from ain.slurm.cost import stage_costs
from ain.slurm.launcher import Launcher, StageLaunch, job_name
from ain.slurm.sbatch import slurm_parameters
from ain.slurm.snapshot import snapshot_code
from ain.slurm.status import collect

SWEEPS_DIR = PROJECT_ROOT / "configs" / "sweep"
SWEEP_FILE = "sweep.json"
REPORT_JOB_FILE = "report_job.json"


@dataclass
class Variant:
    name: str
    overrides: list[str]
    cfg: RunConfig
    prints: dict[str, Fingerprint]
    owners: dict[str, str] = field(default_factory=dict)
    """stage -> the variant that computes it (this one, or the first with the same fingerprint)."""

    @property
    def own(self) -> list[str]:
        return [s for s in self.cfg.stages if self.owners[s] == self.name]

    @property
    def shared(self) -> dict[str, str]:
        return {s: o for s, o in self.owners.items() if o != self.name}


@dataclass
class SweepPlan:
    name: str
    root: Path
    baseline: str
    description: str
    variants: list[Variant]
    """Baseline first: it owns everything it computes."""

    def jobs(self) -> tuple[int, int]:
        """(distinct stage computations, stage computations if every variant ran alone)."""
        return (sum(len(v.own) for v in self.variants), sum(len(v.cfg.stages) for v in self.variants))

    def describe(self, costs: bool = True) -> str:
        distinct, alone = self.jobs()
        lines = [f"sweep {self.name}: {len(self.variants)} variants under {self.root} (baseline {self.baseline})",
                 f"stage computations: {distinct} (each variant alone: {alone})"]
        for v in self.variants:
            shared = ", ".join(f"{s} from {o}" for s, o in v.shared.items())
            lines.append(f"  {v.name}: {' '.join(v.overrides) or '(no change)'}; runs {', '.join(v.own) or 'nothing'}"
                         + (f"; shares {shared}" if shared else ""))
        if costs:
            lines += self.cost_lines()
        return "\n".join(lines)

    def cost_lines(self) -> list[str]:
        """GPU-hours of the work computed once for several variants, and of each variant's own."""
        shared_stages = {(o, s) for v in self.variants for s, o in v.shared.items()}
        shared_gpu, own_gpu = 0.0, {}
        for v in self.variants:
            own_gpu[v.name] = 0.0
            for c in stage_costs(v.cfg, self.root / v.name):
                if v.owners.get(c.stage) != v.name:
                    continue
                if (v.name, c.stage) in shared_stages:
                    shared_gpu += c.gpu_hours
                else:
                    own_gpu[v.name] += c.gpu_hours
        lines = [f"cost: shared stages {shared_gpu:,.1f} GPU-h (once for all variants); per variant: "
                 + ", ".join(f"{n} {h:,.1f}" for n, h in own_gpu.items())
                 + f"; total {shared_gpu + sum(own_gpu.values()):,.1f} GPU-h (ain.slurm.cost: measured, estimated "
                 "or time-limit figures, see each variant's --dry-run)"]
        return lines


def _value_text(value: Any) -> str:
    """A value as an OmegaConf dotlist override's right-hand side."""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()  # YAML's true/false
    return str(value)


def _short(key: str, value: Any) -> str:
    text = _value_text(value)
    return f"{key.rsplit('.', 1)[-1]}-{text}".replace("/", "_").replace(" ", "")


def _read_sweep_file(ref: str) -> tuple[str, dict[str, Any]]:
    path = Path(ref) if ref.endswith((".yaml", ".yml")) or "/" in ref else SWEEPS_DIR / f"{ref}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))
        raise ConfigError(f"sweep={ref}: no file {path}; known: {', '.join(known)}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unknown = set(data) - {"description", "baseline", "variants", "grid"}
    if not isinstance(data, dict) or unknown:
        raise ConfigError(f"{path}: a mapping with description, baseline, variants and/or grid; unknown {sorted(unknown)}")
    return path.stem, data


def variant_overrides(data: dict[str, Any], grid_args: dict[str, list[Any]], where: str) -> dict[str, list[str]]:
    """name -> overrides, from a sweep file's `variants` and `grid` and the command line's axes."""
    out: dict[str, list[str]] = {}
    for name, overrides in (data.get("variants") or {}).items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where}: variants.{name}: a mapping of key: value overrides")
        out[str(name)] = [f"{k}={_value_text(v)}" for k, v in overrides.items()]
    grid = {**(data.get("grid") or {}), **grid_args}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid {key}: a non-empty list of values")
    if grid:
        keys = list(grid)
        base = out or {"": []}
        combined: dict[str, list[str]] = {}
        for name, overrides in base.items():
            for combo in itertools.product(*(grid[k] for k in keys)):
                label = "_".join([name] * bool(name) + [_short(k, v) for k, v in zip(keys, combo)])
                combined[label] = overrides + [f"{k}={_value_text(v)}" for k, v in zip(keys, combo)]
        out = combined
    if not out:
        raise ConfigError(f"{where}: no variants (give `variants:` or `grid:` in the file, or sweep.<key>=a,b on "
                          "the command line)")
    return out


def plan_sweep(argv: list[str], check_paths: bool = True) -> SweepPlan:
    """The variants of `sweep=<file>` and `sweep.<key>=a,b,c` on top of the other overrides, with
    the owner of every stage. `name=` names the sweep (default: the sweep file's name)."""
    ref, name, grid_args, common = None, None, {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if key == "sweep":
            ref = value
        elif key.startswith("sweep."):
            grid_args[key[len("sweep."):]] = [yaml.safe_load(v) for v in value.split(",")]
        elif key == "name":
            name = value
        else:
            common.append(arg)
    file_name, data = _read_sweep_file(ref) if ref else ("sweep", {})
    where = f"sweep={ref}" if ref else "command line"
    variants = variant_overrides(data, grid_args, where)
    baseline = str(data.get("baseline") or next(iter(variants)))
    if baseline not in variants:
        raise ConfigError(f"{where}: baseline {baseline!r} is not a variant ({', '.join(variants)})")
    name = name or file_name
    probe = load_config(common, check_paths=False)
    root = Path(probe.runs_root) / name
    order = [baseline] + [v for v in variants if v != baseline]
    planned: list[Variant] = []
    for vname in order:
        overrides = variants[vname]
        try:
            cfg = load_config([*common, *overrides, f"runs_root={root}", f"name={vname}"], check_paths=check_paths)
        except ConfigError as exc:
            raise ConfigError(f"variant {vname}: {exc}") from None
        planned.append(Variant(vname, overrides, cfg, stage_fingerprints(cfg)))
    owner_of: dict[tuple[str, str], str] = {}
    for v in planned:
        for stage, fp in v.prints.items():
            v.owners[stage] = owner_of.setdefault((stage, fp.digest), v.name)
    return SweepPlan(name, root, baseline, str(data.get("description", "")), planned)


def link_shared(plan: SweepPlan, v: Variant) -> dict[str, RunDir]:
    """Link each stage `v` shares to its owner's directory (relative links: the sweep can move);
    returns stage -> the owner's run. A stage directory `v` already holds (an earlier launch
    computed it there) stays: it is then its own."""
    borrowed: dict[str, RunDir] = {}
    stages_dir = private_mkdir(RunDir(plan.root / v.name).stages_root)
    for stage, owner in v.shared.items():
        link = stages_dir / stage
        target = RunDir(plan.root / owner).stage(stage).root
        if link.is_symlink():
            if link.resolve() != target.resolve():
                link.unlink()
        elif link.exists():
            v.owners[stage] = v.name
            continue
        if not link.is_symlink():
            private_mkdir(target)
            os.symlink(os.path.relpath(target, stages_dir), link)
        borrowed[stage] = RunDir(plan.root / owner)
    return borrowed


def reuse_sources(plan: SweepPlan, v: Variant) -> dict[str, RunDir]:
    """Stages `v` computes itself whose work an earlier variant computes under other thresholds
    (same reuse key, fingerprint.Fingerprint): they run after that variant's, to read its caches
    instead of computing the same scores and re-translations at the same time."""
    out: dict[str, RunDir] = {}
    for stage in v.own:
        for u in plan.variants:
            if u is v:
                break
            if stage in u.own and u.prints[stage].reuse_key == v.prints[stage].reuse_key:
                out[stage] = RunDir(plan.root / u.name)
                break
    return out


def launch_sweep(plan: SweepPlan, force: bool = False, argv: list[str] | None = None) -> dict[str, list[StageLaunch]]:
    """Launch every variant, baseline first; a variant submits only the stages it owns."""
    private_mkdir(plan.root)
    reports: dict[str, list[StageLaunch]] = {}
    for v in plan.variants:
        borrowed = link_shared(plan, v)
        atomic_write_json(plan.root / SWEEP_FILE, sweep_record(plan))
        launcher = Launcher(v.cfg, RunDir(v.cfg.run_dir), selected=v.own, borrowed=borrowed,
                            after_siblings=reuse_sources(plan, v))
        reports[v.name] = launcher.launch(force=force, argv=argv)
    return reports


class SweepReportTask:
    """The body of the sweep's last Slurm job (see the module docstring)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def __call__(self) -> str:
        path = write_sweep_report(Path(self.root))["report"]
        print(f"sweep report written: {path}", flush=True)  # into the job's log
        return path


def submit_report_job(plan: SweepPlan, reports: dict[str, list[StageLaunch]]) -> str | None:
    """Submit the job that writes the comparison table after every job these launches submitted
    or found queued; None when there is none (everything was done already)."""
    waits = sorted({e for report in reports.values() for sl in report for e in [*sl.job_ids, *sl.active]})
    if not waits:
        return None
    cfg = plan.variants[0].cfg
    executor = submitit.SlurmExecutor(folder=plan.root / "report_job", max_num_timeout=0)
    # the report stage's resources: the same kind of work (markers, small JSON files, plots)
    executor.update_parameters(**slurm_parameters(
        cfg.cluster, job_name(cfg, "sweep-report"), cfg.report.resources, waits,
        snapshot_code(RunDir(cfg.run_dir).root.resolve()), dependency_kind="afterany"))
    with submitit.helpers.clean_env():  # a sweep submitted from inside a job must not pass its SLURM_* on
        job = executor.submit(SweepReportTask(str(plan.root.resolve())))
    atomic_write_json(plan.root / REPORT_JOB_FILE, {"job_id": job.job_id, "after": waits})
    return job.job_id


def sweep_record(plan: SweepPlan) -> dict[str, Any]:
    return {"name": plan.name, "baseline": plan.baseline, "description": plan.description,
            "variants": [{"name": v.name, "overrides": v.overrides, "owners": v.owners,
                          "fingerprints": {s: fp.digest for s, fp in v.prints.items()}} for v in plan.variants]}


def is_sweep(root: Path) -> bool:
    return (Path(root) / SWEEP_FILE).is_file()


def read_sweep(root: Path) -> dict[str, Any]:
    return read_json(Path(root) / SWEEP_FILE)


# ------------------------------------------------------------------------------------ report
def _read(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def _final_loss(run: RunDir) -> float | None:
    metrics = run.stage("train").out / "metrics.jsonl"
    if not metrics.is_file():
        return None
    losses = [json.loads(line).get("loss") for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    losses = [x for x in losses if isinstance(x, (int, float))]
    return losses[-1] if losses else None


def variant_results(run: RunDir) -> dict[str, Any]:
    """What one variant measured: its data funnel (mix), final training loss, every score."""
    mix = _read(run.stage("mix").out / "mix_report.json")
    evaluation = _read(run.root / "report" / "eval.json")
    curation = _read(run.root / "report" / "curation.json")
    row: dict[str, Any] = {"samples": None, "arabic_share": None, "authentic_arabic_share": None, "domains": {},
                           "by_domain": {}, "funnel": {}, "final_loss": _final_loss(run), "scores": {}}
    if mix:
        realised = mix.get("realised", {})
        counts = mix.get("counts", {})
        row.update(samples=mix.get("samples"), arabic_share=realised.get("arabic_share"),
                   authentic_arabic_share=realised.get("authentic_arabic_share"), domains=realised.get("domains", {}),
                   by_domain=realised.get("by_domain", {}))
        row["funnel"]["dropped as unsafe"] = sum(v for k, v in counts.items() if k.startswith("dropped_unsafe"))
    if curation:  # the report stage's funnel: what each curation stage let through
        for entry in curation.get("funnel", []):
            row["funnel"][FUNNEL_COLUMNS.get(entry.get("stage"), entry.get("stage"))] = entry.get("out")
    if evaluation:
        camel = evaluation.get("camel_bench", {})
        for domain, entry in camel.get("domains", {}).items():
            row["scores"][_score_key("camel_bench", domain)] = entry.get("score")
        if camel.get("total") is not None:
            row["scores"][_score_key("camel_bench", "Total")] = camel["total"]
        if evaluation.get("arabic_mmlu"):
            row["scores"][_score_key("arabic_mmlu", "Total")] = evaluation["arabic_mmlu"].get("score")
        for bench, entry in (evaluation.get("english") or {}).items():
            row["scores"][_score_key("english", bench)] = entry.get("score")
    return row


FUNNEL_COLUMNS = {"ingest": "ingested", "translate": "translated", "verify": "passed verify", "mix": "mixed",
                  "pack": "packed"}


def _funnel_and_domain_lines(variants: list[str], rows: dict[str, Any]) -> list[str]:
    """The data funnel (samples after each curation stage) and, per domain, the mixed samples and
    their Arabic and authentic-Arabic shares (mix_report's `by_domain`)."""
    lines: list[str] = []
    order = ["ingested", "translated", "passed verify", "dropped as unsafe", "mixed", "packed"]
    columns = [c for c in order if any(c in rows[n]["funnel"] for n in variants)]
    if columns:
        lines += ["", "## Data funnel", "", "| Variant | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        lines += [f"| {n} | " + " | ".join(_fmt(rows[n]["funnel"].get(c)) for c in columns) + " |" for n in variants]
    if any(rows[n]["by_domain"] for n in variants):
        lines += ["", "## Per domain (mixed samples)", "",
                  "| Variant | Domain | Samples | Arabic share | Authentic Arabic share |", "|---|---|---|---|---|"]
        for n in variants:
            for domain, d in rows[n]["by_domain"].items():
                lines.append(f"| {n} | {domain} | {d['samples']} | {_fmt(d['arabic_share'], 3)} | "
                             f"{_fmt(d['authentic_arabic_share'], 3)} |")
    return lines


def _score_key(family: str, column: str) -> str:
    """One name per score in the sweep table, for this run's results and the published rows alike."""
    if family == "camel_bench":
        return "CAMEL total" if column == "Total" else f"CAMEL {column}"
    return "ArabicMMLU" if family == "arabic_mmlu" else column


def _published_ain(root: Path, variants: list[str]) -> dict[str, float]:
    """The published AIN-7B row (configs/eval/published.yaml, as any variant's eval report holds it)."""
    for name in variants:
        evaluation = _read(root / name / "report" / "eval.json")
        if evaluation:
            tables = evaluation.get("published", {})
            return {_score_key(family, column): value
                    for family in ("camel_bench", "arabic_mmlu", "english") if family in tables
                    for column, value in zip(tables[family].get("columns", []),
                                             tables[family].get("rows", {}).get("AIN-7B") or [])}
    return {}


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def plot_scores(path: Path, variants: list[str], rows: dict[str, Any], columns: list[str],
                published: dict[str, float]) -> None:
    """One group of bars per score (MME's 0-2000 scale left out), one bar per variant, and the
    published AIN-7B row as a marker."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    columns = [c for c in columns if not c.startswith("mme")]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(columns) * max(1, len(variants)) / 2), 4))
    width = 0.8 / max(1, len(variants))
    for k, name in enumerate(variants):
        values = [rows[name]["scores"].get(c) for c in columns]
        ax.bar([i + k * width for i in range(len(columns))], [v or 0 for v in values], width, label=name)
    marks = [(i + 0.4 - width / 2, published[c]) for i, c in enumerate(columns) if published.get(c) is not None]
    if marks:
        ax.scatter(*zip(*marks), marker="_", s=400, color="black", label="AIN-7B (published)")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(columns))])
    ax.set_xticklabels(columns, rotation=30, ha="right")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)


def write_sweep_report(root: Path) -> dict[str, Any]:
    """`<sweep>/report/sweep.md` and `sweep_results.json`: per variant the data funnel, the final
    loss and every score, with deltas against the baseline and the published AIN-7B row."""
    record = read_sweep(root)
    names = [v["name"] for v in record["variants"]]
    rows = {n: variant_results(RunDir(Path(root) / n)) for n in names}
    base = rows[record["baseline"]]
    published = _published_ain(Path(root), names)
    measured = {k for r in rows.values() for k in r["scores"]}
    order = list(published)  # the paper's column order: CAMEL-Bench domains, total, ArabicMMLU, English
    columns = [k for k in order if k in measured] + sorted(measured - set(order))
    lines = [f"# Sweep {record['name']}", "", record.get("description", ""), "",
             f"Baseline: **{record['baseline']}**. Deltas (Δ) are against it; `-`: not measured (yet).", "",
             "## Data and training", "",
             "| Variant | Overrides | Samples | Arabic share | Authentic Arabic share | Final loss |",
             "|---|---|---|---|---|---|"]
    for v in record["variants"]:
        r = rows[v["name"]]
        lines.append(f"| {v['name']} | {' '.join(v['overrides']) or '-'} | {_fmt(r['samples'])} | "
                     f"{_fmt(r['arabic_share'], 3)} | {_fmt(r['authentic_arabic_share'], 3)} | {_fmt(r['final_loss'], 4)} |")
    lines += _funnel_and_domain_lines(names, rows)
    if columns:
        lines += ["", "## Scores", "", "| Variant | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for v in record["variants"]:
            r = rows[v["name"]]
            cells = []
            for c in columns:
                value, ref = r["scores"].get(c), base["scores"].get(c)
                delta = f" (Δ {value - ref:+.2f})" if v["name"] != record["baseline"] and None not in (value, ref) else ""
                cells.append(_fmt(value) + delta)
            lines.append(f"| {v['name']} | " + " | ".join(cells) + " |")
        if published:
            lines.append("| AIN-7B (published) | " + " | ".join(_fmt(published.get(c)) for c in columns) + " |")
    shared = {v["name"]: sorted(s for s, o in v["owners"].items() if o != v["name"]) for v in record["variants"]}
    lines += ["", "## Shared work", ""] + [f"- {n}: shares {', '.join(s) or 'nothing'}" for n, s in shared.items()]
    result = {"sweep": record["name"], "baseline": record["baseline"], "variants": rows, "published": published,
              "shared": shared, "report": str(Path(root) / "report" / "sweep.md")}
    report = private_mkdir(Path(root) / "report")
    if columns:
        plot_scores(report / "sweep_scores.png", [v["name"] for v in record["variants"]], rows, columns, published)
        lines[lines.index("## Scores") + 1:lines.index("## Scores") + 1] = ["", "![scores](sweep_scores.png)"]
    atomic_write_json(report / "sweep_results.json", result)
    atomic_write_text(report / "sweep.md", "\n".join(lines) + "\n")
    return result


# ------------------------------------------------------------------------------------ status
def sweep_status(root: Path, use_queue: bool = True) -> dict[str, dict[str, dict[str, Any]]]:
    """variant -> stage -> {state, done, num_tasks, owner}: a shared stage shows its owner's state."""
    record = read_sweep(root)
    per_run = {v["name"]: {s.name: s for s in collect(RunDir(Path(root) / v["name"]), use_queue=use_queue)}
               for v in record["variants"]}
    grid: dict[str, dict[str, dict[str, Any]]] = {}
    for v in record["variants"]:
        grid[v["name"]] = {}
        for stage, owner in v["owners"].items():
            s = per_run.get(owner, {}).get(stage) or per_run[v["name"]][stage]
            grid[v["name"]][stage] = {"state": s.state, "done": s.done, "num_tasks": s.num_tasks, "owner": owner}
    return grid


def report_job_line(root: Path, use_queue: bool = True) -> str | None:
    """Where the sweep's report job stands, for status (None before one was submitted)."""
    path = Path(root) / REPORT_JOB_FILE
    if not path.exists():
        return None
    job = read_json(path)["job_id"]
    entry = scheduler.queue([job]).get(job) if use_queue else None
    table = Path(root) / "report" / "sweep.md"
    return (f"sweep report job {job}: {entry.state if entry else 'not in the queue'}; "
            f"{table} {'written' if table.exists() else 'not written yet'}")


def render_sweep_status(root: Path, grid: dict[str, dict[str, dict[str, Any]]], use_queue: bool = True) -> Any:
    """A rich table, variants x stages; a shared stage is marked with the variant computing it."""
    from rich.table import Table  # noqa: PLC0415

    stages = list(dict.fromkeys(s for row in grid.values() for s in row))
    table = Table(title=f"sweep {root}")
    table.add_column("variant", no_wrap=True)
    for stage in stages:
        table.add_column(stage, no_wrap=True)
    for name, row in grid.items():
        cells = []
        for stage in stages:
            c = row.get(stage)
            if c is None:
                cells.append("-")
                continue
            text = f"{c['state']} {c['done']}/{c['num_tasks']}"
            cells.append(text if c["owner"] == name else f"= {c['owner']}")
        table.add_row(name, *cells)
    table.caption = report_job_line(root, use_queue)
    return table
