"""The curation report: what happened to the data, in numbers and pictures.

Reads only the run directory (markers and stage outputs) and writes `runs/<name>/report/`:
`curation.md`, `curation.json` (the same numbers), and PNG plots: the funnel, the
verification score histograms with their thresholds, the safety categories, and the mix
against its targets. It runs as the `report` stage after pack, and by hand with
`python jobs/report.py runs/<name>` at any point (stages not run yet are left out).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ain.atomic import atomic_write_json, atomic_write_text
from ain.curate.config import LLAVAGUARD_CATEGORIES
from ain.rundir import RunDir, private_mkdir
from ain.stages import TaskContext

if TYPE_CHECKING:
    from ain.config import RunConfig

SCORE_PLOTS = (("labse", "min_labse", "LaBSE cosine (EN, AR)"), ("bleu4", "min_bleu4", "BLEU-4 (back-translation)"),
               ("meteor", "min_meteor", "METEOR"), ("rouge_l", "min_rouge_l", "ROUGE-L F1"))


def _markers(run: RunDir, stage: str) -> list[dict[str, Any]]:
    """Completion markers, with counters that a stage nests under "counters" lifted to the top."""
    paths = run.stage(stage)
    markers = [paths.read_marker(i) or {} for i in sorted(paths.done_indices())]
    return [{**m.get("counters", {}), **m} for m in markers]


def _sum(markers: list[dict], key: str) -> int:
    return sum(int(m.get(key, 0) or 0) for m in markers)


def _prefixed(markers: list[dict], prefix: str) -> dict[str, int]:
    out: Counter = Counter()
    for m in markers:
        for k, v in m.items():
            if k.startswith(prefix) and isinstance(v, int):
                out[k[len(prefix):]] += v
    return dict(out)


def collect(run: RunDir, cfg: RunConfig) -> dict[str, Any]:
    """Every number of the report, from markers and outputs."""
    data: dict[str, Any] = {"run": str(run.root), "stages": list(cfg.stages), "funnel": []}
    funnel = data["funnel"]
    if "ingest" in cfg.stages and (m := _markers(run, "ingest")):
        rows = _sum(m, "ingested") + _sum(m, "quarantined")
        funnel.append({"stage": "ingest", "in": rows, "out": _sum(m, "ingested"),
                       "dropped": _prefixed(m, "quarantined_")})
        data["languages_ingested"] = _prefixed(m, "lang_")
    if "translate" in cfg.stages and (m := _markers(run, "translate")):
        funnel.append({"stage": "translate", "in": _sum(m, "translated") + _sum(m, "skipped"),
                       "out": _sum(m, "translated"), "dropped": _prefixed(m, "skipped_")})
    if "verify" in cfg.stages and (m := _markers(run, "verify")):
        funnel.append({"stage": "verify", "in": _sum(m, "passed") + _sum(m, "rejected"), "out": _sum(m, "passed"),
                       "dropped": _prefixed(m, "rejected_"),
                       "passed_first_try": _sum(m, "passed_first_try"),
                       "passed_after_retranslation": _sum(m, "passed_after_retranslation"),
                       "retranslations": _sum(m, "retranslations")})
        data["scores"] = _verify_scores(run)
        data["thresholds"] = {k: getattr(cfg.verify, attr) for k, attr, _ in SCORE_PLOTS}
    if "safety" in cfg.stages and (m := _markers(run, "safety")):
        data["safety"] = {k: _sum(m, k) for k in ("images_judged", "images_unsafe", "images_unjudged",
                                                  "texts_judged", "texts_unsafe", "texts_unjudged")}
        data["safety"]["unsafe_by_category"] = _prefixed(m, "unsafe_")
    if "mix" in cfg.stages and (run.stage("mix").out / "mix_report.json").exists():
        mix = json.loads((run.stage("mix").out / "mix_report.json").read_text(encoding="utf-8"))
        counts = mix["counts"]
        funnel.append({"stage": "mix", "in": counts.get("in_ingest", 0) + counts.get("in_translated", 0),
                       "out": mix["samples"],
                       "dropped": {k[len("dropped_"):]: v for k, v in counts.items()
                                   if k.startswith("dropped_") and not k.startswith("dropped_category_")}})
        data["mix"] = mix
    if "pack" in cfg.stages and (m := _markers(run, "pack")):
        funnel.append({"stage": "pack", "in": _sum(m, "items"), "out": _sum(m, "items"), "dropped": {},
                       "shards": _sum(m, "shards"), "bytes": _sum(m, "bytes")})
    return data


def _verify_scores(run: RunDir) -> dict[str, list[float]]:
    """Per-turn scores of every attempt (first attempts and re-translations)."""
    scores: dict[str, list[float]] = {k: [] for k, _, _ in SCORE_PLOTS}
    for row in run.stage("verify").rows("scores-*.jsonl"):
        for turn in row.get("turns", []):
            for k in scores:
                if k in turn:
                    scores[k].append(float(turn[k]))
    return scores


def plot(data: dict[str, Any], out: Path) -> list[str]:
    """PNG plots next to the markdown; returns their file names."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    made = []
    if data["funnel"]:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        names = [f["stage"] for f in data["funnel"]]
        ax.bar(names, [f["in"] for f in data["funnel"]], color="#cfd8dc", label="in")
        ax.bar(names, [f["out"] for f in data["funnel"]], color="#1e88e5", label="out")
        for i, f in enumerate(data["funnel"]):
            ax.text(i, f["out"], str(f["out"]), ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("samples")
        ax.set_title("Funnel: samples in and out of each stage")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "funnel.png", dpi=110)
        plt.close(fig)
        made.append("funnel.png")
    if data.get("scores") and any(data["scores"].values()):
        fig, axes = plt.subplots(1, 4, figsize=(13, 3))
        for ax, (key, _, title) in zip(axes, SCORE_PLOTS):
            values = data["scores"][key]
            ax.hist(values, bins=20, color="#43a047")
            ax.axvline(data["thresholds"][key], color="#e53935", linestyle="--", label="threshold")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(f"{len(values)} turn scores", fontsize=8)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "verify_scores.png", dpi=110)
        plt.close(fig)
        made.append("verify_scores.png")
    if data.get("safety"):
        cats = data["safety"]["unsafe_by_category"]
        fig, ax = plt.subplots(figsize=(7, 3))
        labels = sorted(cats) or ["none"]
        ax.barh([f"{c} {LLAVAGUARD_CATEGORIES.get(c, '')}"[:40] for c in labels], [cats.get(c, 0) for c in labels],
                color="#fb8c00")
        ax.set_title("Unsafe verdicts by LlavaGuard category", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "safety_categories.png", dpi=110)
        plt.close(fig)
        made.append("safety_categories.png")
    if data.get("mix"):
        real = data["mix"]["realised"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
        doms = real["domains"]
        axes[0].bar(list(doms), list(doms.values()), color="#8e24aa")
        axes[0].set_title("Mix by domain")
        axes[0].tick_params(axis="x", rotation=45, labelsize=7)
        shares = [("authentic AR / AR", real["authentic_arabic_share"], data["mix"]["targets"]["authentic_arabic_share"]),
                  ("AR / all", real["arabic_share"], data["mix"]["targets"]["arabic_share"])]
        xs = range(len(shares))
        axes[1].bar([x - 0.2 for x in xs], [s[1] or 0 for s in shares], width=0.4, label="realised", color="#00897b")
        axes[1].bar([x + 0.2 for x in xs], [s[2] if s[2] is not None else 0 for s in shares], width=0.4,
                    label="target (0: none)", color="#b0bec5")
        axes[1].set_xticks(list(xs), [s[0] for s in shares])
        axes[1].set_ylim(0, 1)
        axes[1].legend(fontsize=7)
        axes[1].set_title("Shares against targets")
        fig.tight_layout()
        fig.savefig(out / "mix.png", dpi=110)
        plt.close(fig)
        made.append("mix.png")
    return made


def markdown(data: dict[str, Any], plots: list[str]) -> str:
    lines = [f"# Curation report: {data['run']}", "", "## Funnel", "",
             "| stage | in | out | dropped (reason: count) |", "|---|---:|---:|---|"]
    for f in data["funnel"]:
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(f["dropped"].items()) if v) or "-"
        lines.append(f"| {f['stage']} | {f['in']} | {f['out']} | {dropped} |")
    for f in data["funnel"]:
        if f["stage"] == "verify":
            lines += ["", f"Verification: {f['passed_first_try']} passed on the first translation, "
                          f"{f['passed_after_retranslation']} after re-translation "
                          f"({f['retranslations']} re-translations in all)."]
        if f["stage"] == "pack":
            lines += ["", f"Packed {f['out']} samples into {f['shards']} shards ({f['bytes'] / 1e6:.2f} MB)."]
    if "scores" in data:
        lines += ["", "## Translation scores (every turn of every attempt)", "", "| metric | threshold | turns | below |",
                  "|---|---:|---:|---:|"]
        for key, _, title in SCORE_PLOTS:
            values, thr = data["scores"][key], data["thresholds"][key]
            lines.append(f"| {title} | {thr} | {len(values)} | {sum(v < thr for v in values)} |")
    if "safety" in data:
        s = data["safety"]
        lines += ["", "## Safety", "",
                  f"Images: {s['images_judged']} judged, {s['images_unsafe']} unsafe, {s['images_unjudged']} unjudged. "
                  f"Text turns: {s['texts_judged']} judged, {s['texts_unsafe']} unsafe, {s['texts_unjudged']} unjudged.",
                  "", "| category | unsafe verdicts |", "|---|---:|"]
        lines += [f"| {c} {LLAVAGUARD_CATEGORIES.get(c, '')} | {n} |" for c, n in sorted(s["unsafe_by_category"].items())]
    if "mix" in data:
        mix = data["mix"]
        real, tgt = mix["realised"], mix["targets"]
        lines += ["", "## Mix", "", f"{mix['samples']} samples, shuffled with seed {mix['seed']}.", "",
                  "| quantity | target | realised |", "|---|---:|---:|",
                  f"| authentic share of Arabic | {tgt['authentic_arabic_share']} | {_pct(real['authentic_arabic_share'])} |",
                  f"| Arabic share of all | {tgt['arabic_share']} | {_pct(real['arabic_share'])} |"]
        lines += ["", "| domain | samples | cap |", "|---|---:|---:|"]
        lines += [f"| {d} | {n} | {tgt['domain_caps'].get(d, '-')} |" for d, n in sorted(real["domains"].items())]
        if mix["warnings"]:
            lines += ["", "Warnings:", ""] + [f"- {w}" for w in mix["warnings"]]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def write_report(run: RunDir, cfg: RunConfig) -> dict[str, Any]:
    out = private_mkdir(run.root / "report")
    data = collect(run, cfg)
    plots = plot(data, out)
    atomic_write_json(out / "curation.json", data)
    atomic_write_text(out / "curation.md", markdown(data, plots))
    return {"plots": plots, "funnel": data["funnel"]}


def run_curation_report_task(ctx: TaskContext) -> dict[str, Any]:
    result = write_report(ctx.run, ctx.cfg)
    ctx.log.info("curation report written to %s", ctx.run.root / "report" / "curation.md")
    return {"items": 1, "plots": len(result["plots"])}
