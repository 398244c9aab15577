"""The `vdr_report` stage: the leaderboard table and plots in `runs/<name>/report/`.

vdr_leaderboard.md / .json: one row per model, ranked by our NDCG@10 on `vdr_report.split` at the
model's full width, with the blog's published NDCG@10 beside ours; then NDCG@10 per Matryoshka
dimension; then the blog's own table for reference. vdr_leaderboard.png: ours vs the blog per
model; vdr_matryoshka.png: NDCG@10 against the embedding dimension.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ain.atomic import atomic_write_json, atomic_write_text
from ain.stages import TaskContext
from ain.vdr.config import blog_leaderboard


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.4f}"


def load_results(eval_out: Path) -> list[dict[str, Any]]:
    results = [json.loads(p.read_text()) for p in sorted(eval_out.glob("results-*.json"))]
    if not results:
        raise RuntimeError(f"{eval_out}: no results-*.json; run the vdr_eval stage first")
    return results


def leaderboard(results: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        full = str(r["width"])
        ours = r["splits"].get(split, {}).get(full, {})
        rows.append({"name": r["name"], "params": r["params"], "width": r["width"], "error": r.get("error"),
                     "ndcg@10": ours.get("ndcg@10"), "mrr@10": ours.get("mrr@10"), "recall@10": ours.get("recall@10"),
                     "dev_ndcg@10": r["splits"].get("dev", {}).get(full, {}).get("ndcg@10"),
                     "test_ndcg@10": r["splits"].get("test", {}).get(full, {}).get("ndcg@10"),
                     "blog_dev_ndcg@10": r["blog_dev_ndcg10"], "blog_test_ndcg@10": r["blog_test_ndcg10"],
                     "by_dim": {d: m.get("ndcg@10") for d, m in r["splits"].get(split, {}).items()},
                     "sizes": r["sizes"]})
    rows.sort(key=lambda row: -(row["ndcg@10"] or 0.0))
    return rows


def markdown(rows: list[dict[str, Any]], split: str) -> str:
    sizes = next((r["sizes"][split] for r in rows if r["sizes"].get(split)), {})
    lines = [f"# Arabic VDR leaderboard ({split}: {sizes.get('queries', '?')} queries x {sizes.get('corpus', '?')} "
             "documents)", "",
             "Our numbers beside the blog's published ones (its dev: 999 queries x 4,995 documents). "
             "NDCG@10 at each model's full embedding width.", "",
             "| # | Model | Params | NDCG@10 dev | blog dev | NDCG@10 test | blog test | MRR@10 | Recall@10 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        if r["error"]:
            lines.append(f"| {i} | {r['name']} (not loaded: {r['error'][:120].replace('|', '/')}) | {r['params']} "
                         f"| — | {_fmt(r['blog_dev_ndcg@10'])} | — | {_fmt(r['blog_test_ndcg@10'])} | — | — |")
            continue
        lines.append(f"| {i} | {r['name']} | {r['params']} | {_fmt(r['dev_ndcg@10'])} | {_fmt(r['blog_dev_ndcg@10'])} "
                     f"| {_fmt(r['test_ndcg@10'])} | {_fmt(r['blog_test_ndcg@10'])} | {_fmt(r['mrr@10'])} "
                     f"| {_fmt(r['recall@10'])} |")
    dims = sorted({int(d) for r in rows for d in r["by_dim"]}, reverse=True)
    lines += ["", f"NDCG@10 on {split} per Matryoshka dimension:", "",
              "| Model | " + " | ".join(str(d) for d in dims) + " |", "|---|" + "---|" * len(dims)]
    for r in (r for r in rows if not r["error"]):
        lines.append(f"| {r['name']} | " + " | ".join(_fmt(r["by_dim"].get(str(d))) for d in dims) + " |")
    lines += ["", "The blog's table (dev NDCG@10):", "", "| Model | Params | NDCG@10 |", "|---|---|---|"]
    for m in blog_leaderboard():
        lines.append(f"| {m.name} | {m.params} | {_fmt(m.blog_dev_ndcg10)} |")
    return "\n".join(lines) + "\n"


def plots(rows: list[dict[str, Any]], split: str, out: Path) -> list[str]:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = [r["name"] for r in rows][::-1]
    ours = [r["ndcg@10"] or 0.0 for r in rows][::-1]
    blog = [(r[f"blog_{split}_ndcg@10"] if f"blog_{split}_ndcg@10" in r else None) for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], ours, height=0.4, label="ours")
    ax.barh([i - 0.2 for i in y], [b or 0.0 for b in blog], height=0.4, label="blog (published)")
    ax.set_yticks(list(y))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel(f"NDCG@10 ({split})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "vdr_leaderboard.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        if not r["by_dim"]:
            continue
        dims = sorted(int(d) for d in r["by_dim"])
        ax.plot(dims, [r["by_dim"][str(d)] for d in dims], marker="o", label=r["name"])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("embedding dimension (Matryoshka truncation)")
    ax.set_ylabel(f"NDCG@10 ({split})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "vdr_matryoshka.png", dpi=110)
    plt.close(fig)
    return ["vdr_leaderboard.png", "vdr_matryoshka.png"]


def write_report(eval_out: Path, report_dir: Path, split: str) -> dict[str, Any]:
    rows = leaderboard(load_results(eval_out), split)
    report_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(report_dir / "vdr_leaderboard.md", markdown(rows, split))
    atomic_write_json(report_dir / "vdr_leaderboard.json", {"split": split, "rows": rows})
    return {"rows": rows, "plots": plots(rows, split, report_dir)}


def run_vdr_report_task(ctx: TaskContext) -> dict[str, Any]:
    result = write_report(ctx.upstream("vdr_eval").out, ctx.run.root / "report", ctx.stage_cfg.split)
    ctx.log.info("leaderboard written to %s", ctx.run.root / "report" / "vdr_leaderboard.md")
    return {"items": len(result["rows"]), "plots": len(result["plots"]),
            "leader": result["rows"][0]["name"], "leader_ndcg@10": result["rows"][0]["ndcg@10"]}
