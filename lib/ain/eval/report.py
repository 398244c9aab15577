"""The eval_report stage: this checkpoint's results beside the published numbers.

Writes runs/<name>/report/eval.md, eval.json and one bar chart per benchmark family
(eval_camel_bench.png, eval_arabic_mmlu.png, eval_english.png).

Aggregation (documented choices; REFERENCE.md §4 notes the paper does not specify them):
  - a CAMEL-Bench domain score is `eval_report.domain_average`: micro (correct / scored items
    pooled over the domain's datasets, default) or macro (mean of its datasets' scores); datasets
    with no scored item (answers withheld, no judge) do not enter it and are listed;
  - the CAMEL-Bench total is AIN's: the unweighted mean of the 8 domain scores; with fewer than
    8 domains scored it is shown as a partial mean and flagged;
  - ArabicMMLU: accuracy per category (19), then their unweighted mean (AIN's Total);
  - English: each benchmark's official metric (MMBench CircularEval, MME perception score, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ain.atomic import atomic_write_json, atomic_write_text
from ain.eval.registry import eval_units, load_registry
from ain.eval.scoring import MATCH_PATHS
from ain.eval.stage import read_scores
from ain.stages import TaskContext

DASH = "—"
GROUPING_NOTE = {
    "ain": "AIN's (eval.camel_grouping=ain): its Video column is \"General Video & Multi-Image "
           "Understanding\", so the multi-image sets mutliimagemmt and muribench are scored there.",
    "camel_bench": "CAMEL-Bench's (eval.camel_grouping=camel_bench): multi-image sets under VQA "
                   "(MM understanding), Video = the two video sets.",
}


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def collect(run, cfg) -> dict[str, Any]:
    ecfg, rcfg = cfg.eval, cfg.eval_report
    registry = load_registry(ecfg.registry_path(), ecfg.camel_grouping)
    units = eval_units(ecfg, registry)
    scores = read_scores(run.stage("eval").out, len(units))
    missing_units = [u.name for u, s in zip(units, scores) if s is None]
    datasets: dict[str, dict[str, Any]] = {}
    checkpoint = next((s["checkpoint"] for s in scores if s), ecfg.checkpoint)
    for s in scores:
        if s:
            datasets.update(s["datasets"])

    camel: dict[str, Any] = {"domains": {}, "columns": registry.published["camel_bench"]["columns"]}
    for d in registry.domains:
        present = [datasets[n] | {"name": n} for n in d.datasets if n in datasets]
        if not present:
            continue
        scored = [x for x in present if x.get("score") is not None]
        if rcfg.domain_average == "micro":
            n = sum(x["scored"] for x in scored)
            value = 100.0 * sum(x["correct"] for x in scored) / n if n else None
        else:
            value = sum(x["score"] for x in scored) / len(scored) if scored else None
        camel["domains"][d.label] = {"domain": d.name, "score": value, "datasets": [x["name"] for x in present],
                                     "scored_datasets": [x["name"] for x in scored],
                                     "unscored_datasets": {x["name"]: x["status"] for x in present if x.get("score") is None}}
    domain_scores = [v["score"] for v in camel["domains"].values() if v["score"] is not None]
    camel["total"] = sum(domain_scores) / len(domain_scores) if domain_scores else None
    camel["total_complete"] = len(domain_scores) == len(registry.domains)
    camel["domains_scored"] = len(domain_scores)

    mmlu = next((v for v in datasets.values() if v["family"] == "arabic_mmlu"), None)
    english = {k: v for k, v in datasets.items() if v["family"] == "english"}
    unscored: dict[str, int] = {}
    for v in datasets.values():
        for reason, n in v["unscored"].items():
            unscored[reason] = unscored.get(reason, 0) + n
    published = {fam: table for fam, table in registry.published.items()}
    camel["grouping"] = ecfg.camel_grouping
    return {"checkpoint": checkpoint, "label": rcfg.label, "domain_average": rcfg.domain_average,
            "compare_with": rcfg.compare_with, "units": len(units), "missing_units": missing_units,
            "camel_bench": camel, "arabic_mmlu": mmlu, "english": english, "datasets": datasets,
            "unscored": unscored, "published": published}


def _published_rows(data: dict[str, Any], family: str) -> list[tuple[str, list[float]]]:
    rows = data["published"].get(family, {}).get("rows", {})
    return [(name, rows[name]) for name in data["compare_with"] if name in rows]


def render_markdown(data: dict[str, Any]) -> str:
    lines = [f"# Evaluation of `{data['checkpoint']}`", ""]
    if data["missing_units"]:
        lines += [f"**Incomplete**: no scores yet for {', '.join(data['missing_units'])}.", ""]
    camel = data["camel_bench"]
    if camel["domains"]:
        cols = camel["columns"]
        lines += ["## CAMEL-Bench", "",
                  f"Domain score: {data['domain_average']} average over its scored datasets; Total: unweighted mean "
                  "of the 8 domains (AIN).", "",
                  f"Grouping: {GROUPING_NOTE[camel.get('grouping', 'ain')]} Datasets per domain: "
                  + "; ".join(f"{label}: {', '.join(v['datasets'])}" for label, v in camel["domains"].items()) + ".", "",
                  "| Model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        ours = [_fmt(camel["domains"].get(c, {}).get("score")) for c in cols[:-1]]
        total = _fmt(camel["total"]) + ("" if camel["total_complete"] or camel["total"] is None
                                        else f" (partial: {camel['domains_scored']}/{len(cols) - 1} domains)")
        lines.append(f"| **{data['label']}** | " + " | ".join(ours) + f" | {total} |")
        for name, values in _published_rows(data, "camel_bench"):
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
        lines += ["", "### Per dataset", "", "| Dataset | Domain | Items | Scored | Correct | Score | Status |",
                  "|---|---|---|---|---|---|---|"]
        for name, v in data["datasets"].items():
            if v["family"] != "camel_bench":
                continue
            lines.append(f"| {name} | {v['domain_label']} | {v['items']} | {v['scored']} | {v['correct']} | "
                         f"{_fmt(v.get('score'))} | {_status(v)} |")
        lines.append("")
    mmlu = data["arabic_mmlu"]
    if mmlu:
        lines += ["## ArabicMMLU", "", "Restricted next-token letter log-probability"
                  + (" (endpoint backend: the top-20 logprobs of /v1/completions)" if mmlu.get("endpoint_logprobs") else "")
                  + "; Total = unweighted mean of the categories.", "", "| Model | Total |", "|---|---|",
                  f"| **{data['label']}** | {_fmt(mmlu.get('score'))} |"]
        for name, values in _published_rows(data, "arabic_mmlu"):
            lines.append(f"| {name} | {values[0]:.2f} |")
        lines += ["", f"Categories scored: {len(mmlu.get('categories', {}))} of {mmlu.get('categories_expected', 19)}; "
                  f"micro accuracy {_fmt(mmlu.get('micro_accuracy'))}; status: {_status(mmlu)}.", "",
                  "| Category | Accuracy |", "|---|---|"]
        lines += [f"| {c} | {_fmt(v)} |" for c, v in mmlu.get("categories", {}).items()]
        lines.append("")
    if data["english"]:
        cols = data["published"]["english"]["columns"]
        shown = [c for c in cols if c in data["english"]] + [c for c in data["english"] if c not in cols]
        lines += ["## English benchmarks", "", "| Model | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|",
                  f"| **{data['label']}** | " + " | ".join(_fmt(data["english"][c].get("score")) for c in shown) + " |"]
        for name, values in _published_rows(data, "english"):
            lookup = dict(zip(cols, values))
            lines.append(f"| {name} | " + " | ".join(_fmt(lookup.get(c)) for c in shown) + " |")
        lines += ["", "| Benchmark | Metric | Items | Scored | Score | Status |", "|---|---|---|---|---|---|"]
        for name, v in data["english"].items():
            lines.append(f"| {name} | {v['metric']} | {v['items']} | {v['scored']} | {_fmt(v.get('score'))} | {_status(v)} |")
        lines.append("")
    lines += _matching_section(data)
    lines += ["## Unscored items", ""]
    if data["unscored"]:
        lines += ["| Reason | Items |", "|---|---|"] + [f"| {r} | {n} |" for r, n in sorted(data["unscored"].items())]
    else:
        lines.append("None: every item had a gold answer and a verdict.")
    return "\n".join(lines) + "\n"


def _matching_section(data: dict[str, Any]) -> list[str]:
    """Per dataset with a judge_fallback: how many replies the rule read, the judge read, and how
    many needed the judge and were scored wrong without a usable answer from it."""
    matching = {name: v["matched_by"] for name, v in data["datasets"].items() if v.get("matched_by")}
    if not matching:
        return []
    lines = ["## Answer matching", "",
             "Replies read by rule first; those the rule cannot read go to the LLM judge (`eval.judge`: MMBench "
             "choice matcher, MathVista answer extractor) as in the official pipelines. Items per path:", "",
             "| Dataset | " + " | ".join(MATCH_PATHS.values()) + " |", "|---" * (len(MATCH_PATHS) + 1) + "|"]
    for name, counts in matching.items():
        lines.append(f"| {name} | " + " | ".join(str(counts.get(k, 0)) for k in MATCH_PATHS) + " |")
    unmatched = sum(c.get("none", 0) for c in matching.values())
    if unmatched:
        lines += ["", f"No judge configured: {unmatched} item(s) needed it and were scored wrong "
                  "(VLMEvalKit's exact-matching policy); set eval.judge to match them."]
    return lines + [""]


def _status(v: dict[str, Any]) -> str:
    extra = "; ".join(f"{n} {r}" for r, n in sorted(v.get("unscored", {}).items()))
    return v["status"] + (f" ({extra})" if extra and v["status"] == "partially scored" else "")


def plots(data: dict[str, Any], report_dir: Path) -> list[str]:
    """One grouped bar chart per family: this checkpoint beside the published rows."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    made = []

    def chart(name: str, columns: list[str], series: list[tuple[str, list[Optional[float]]]], title: str) -> None:
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(columns) * max(1, len(series)) / 2), 4))
        width = 0.8 / max(1, len(series))
        for k, (label, values) in enumerate(series):
            xs = [i + k * width for i in range(len(columns))]
            ax.bar(xs, [v if v is not None else 0 for v in values], width, label=label)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(columns))])
        ax.set_xticklabels(columns, rotation=30, ha="right")
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        tmp = report_dir / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        tmp.replace(report_dir / name)
        made.append(name)

    camel = data["camel_bench"]
    if camel["domains"]:
        cols = camel["columns"]
        ours = [camel["domains"].get(c, {}).get("score") for c in cols[:-1]] + [camel["total"]]
        chart("eval_camel_bench.png", cols, [(data["label"], ours), *_published_rows(data, "camel_bench")],
              "CAMEL-Bench")
    if data["arabic_mmlu"]:
        chart("eval_arabic_mmlu.png", ["Total"], [(data["label"], [data["arabic_mmlu"].get("score")]),
                                                  *_published_rows(data, "arabic_mmlu")], "ArabicMMLU")
    if data["english"]:
        cols_all = data["published"]["english"]["columns"]
        # MME is on a 0-2000 scale: plotted separately would be better; here it is left out of the bars.
        cols = [c for c in cols_all if c in data["english"] and data["english"][c]["metric"] != "mme"]
        if cols:
            series = [(data["label"], [data["english"][c].get("score") for c in cols])]
            for name, values in _published_rows(data, "english"):
                lookup = dict(zip(cols_all, values))
                series.append((name, [lookup[c] for c in cols]))
            chart("eval_english.png", cols, series, "English benchmarks")
    return made


def write_report(run, cfg) -> dict[str, Any]:
    data = collect(run, cfg)
    report_dir = run.root / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    data["plots"] = plots(data, report_dir)
    atomic_write_json(report_dir / "eval.json", data)
    atomic_write_text(report_dir / "eval.md", render_markdown(data))
    return data


def run_eval_report_task(ctx: TaskContext) -> dict[str, Any]:
    data = write_report(ctx.run, ctx.cfg)
    ctx.log.info("eval report written to %s", ctx.run.root / "report" / "eval.md")
    return {"items": len(data["datasets"]), "plots": len(data["plots"]), "missing_units": len(data["missing_units"])}
