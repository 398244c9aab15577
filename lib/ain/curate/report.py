"""The curation report: what happened to the data, in numbers and pictures.

Reads only the run directory (markers and stage outputs) and writes `runs/<name>/report/`:
`curation.md`, `curation.json` (the same numbers), and PNG plots: the funnel, the
verification score histograms with their thresholds, the safety categories, and the mix
against its targets. It runs as the `report` stage after pack, and by hand with
`python jobs/report.py runs/<name>` at any point (stages not run yet are left out).

It also (re)builds the lineage index (`runs/<name>/lineage/`, ain.lineage: a trace is a lookup)
and writes the review site `report/review/` (ain.curate.review).

Human audit of the safety judges: `write_audit_sheet` draws a stratified sample of judged items
(images and text turns; flagged per LlavaGuard category, and unflagged) into a CSV with an empty
`verdict` column; `read_audit_sheet` checks the reviewers' sheet (every problem named by its row)
and `audit_rates` turns it into per-category error rates with Wilson score intervals, kept in
`report/audit.json` and shown in curation.md/json from then on:

  - false-positive rate of category c: the share of items the judge flagged as c that reviewers
    judged safe (estimated on the flagged items sampled: P(safe | flagged c));
  - false-negative rate: the share of unflagged items that reviewers judged unsafe (P(unsafe |
    not flagged)), in all and per category reviewers name (`reviewer_category`).

Both are conditional on the judge's decision, which is how the sheet is stratified; the interval
is the Wilson score interval at 95% (z = 1.96), which stays inside [0, 1] and is usable at the
small counts of an audit (k = 0 of n gives [0, z^2 / (n + z^2)]).
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from ain.atomic import atomic_write_json, atomic_write_text, read_json
from ain.curate.config import LLAVAGUARD_CATEGORIES
from ain.curate.review import turn_text, write_review_site
from ain.lineage import Lineage, build_index, top_level_string
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
    if (run.root / "report" / AUDIT_FILE).exists():
        data["audit"] = read_json(run.root / "report" / AUDIT_FILE)
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
    if "audit" in data:
        lines += ["", *audit_markdown(data["audit"])]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "Review site: [review/index.html](review/index.html) (opens from the filesystem); "
              "one sample's history: `python jobs/trace.py <run> <sample id>`."]
    return "\n".join(lines) + "\n"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def write_report(run: RunDir, cfg: RunConfig, log=None, review: bool = True) -> dict[str, Any]:
    """curation.md/json and the plots; then the lineage index and the review site (`review`)."""
    out = private_mkdir(run.root / "report")
    data = collect(run, cfg)
    plots = plot(data, out)
    atomic_write_json(out / "curation.json", data)
    atomic_write_text(out / "curation.md", markdown(data, plots))
    result: dict[str, Any] = {"plots": plots, "funnel": data["funnel"]}
    if review:
        result["index"] = build_index(run, log=log)
        thresholds = {k: getattr(cfg.verify, attr) for k, attr, _ in SCORE_PLOTS}
        result["review"] = write_review_site(run, out, data, plots, seed=cfg.seed, thresholds=thresholds)
    return result


def run_curation_report_task(ctx: TaskContext) -> dict[str, Any]:
    result = write_report(ctx.run, ctx.cfg, log=ctx.log.info)
    ctx.log.info("curation report written to %s; review site %s (%d traces)", ctx.run.root / "report" / "curation.md",
                 result["review"]["dir"], result["review"]["traces"])
    return {"items": 1, "plots": len(result["plots"]), "traces": result["review"]["traces"],
            "indexed_entries": sum(s["entries"] for s in result["index"].values())}


# ---------------------------------------------------------------------------------- human audit
AUDIT_FILE = "audit.json"
AUDIT_COLUMNS = ("item_id", "kind", "stratum", "flagged", "judge_rating", "judge_category", "rationale",
                 "sample_id", "turn", "image_file", "content", "verdict", "reviewer_category", "notes")
VERDICTS = ("safe", "unsafe")
Z95 = 1.959964


class AuditSheetError(ValueError):
    """A reviewers' sheet that cannot be read: every problem, each with its row number."""


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n: (center -+ half) with
    center = (p + z^2/2n) / (1 + z^2/n), half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval: k={k} is not within 0..n={n}")
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def _spreadsheet_safe(text: Any) -> str:
    """Untrusted text for a CSV cell: a leading = + - @ would run as a formula in a spreadsheet."""
    text = "" if text is None else str(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _judged_items(run: RunDir) -> Iterator[tuple[str, bytes]]:
    """("image" | "text", line) of every verdict row of the safety stage."""
    for kind, pattern in (("image", "images-*.jsonl"), ("text", "texts-*.jsonl")):
        for path in sorted(run.stage("safety").out.glob(pattern)):
            with open(path, "rb") as f:
                for line in f:
                    if line.strip():
                        yield kind, line


def _stratum(kind: str, line: bytes) -> Optional[str]:
    """"image/flagged/O2", "text/unflagged", or None for an unjudged item (nothing to audit)."""
    if top_level_string(line, "status") != "judged":
        return None
    if top_level_string(line, "rating") == "Unsafe":
        return f"{kind}/flagged/{top_level_string(line, 'code') or 'unknown'}"
    return f"{kind}/unflagged"


def write_audit_sheet(run: RunDir, cfg: RunConfig, path: Optional[Path] = None, per_stratum: int = 20) -> dict[str, Any]:
    """A CSV of up to `per_stratum` items per stratum (kind x flagged category, and unflagged),
    drawn uniformly with the run's seed (reservoir sampling over the safety stage's rows), with an
    empty verdict column. Returns {"path", "strata": {stratum: (sampled, total)}}."""
    if "safety" not in cfg.stages or not run.stage("safety").out.is_dir():
        raise ValueError(f"{run.root}: no safety stage outputs to audit")
    if per_stratum < 1:
        raise ValueError(f"--per-stratum must be >= 1, got {per_stratum}")
    rng = random.Random(cfg.seed)
    chosen: dict[str, list[tuple[str, bytes]]] = {}
    totals: Counter = Counter()
    for kind, line in _judged_items(run):
        stratum = _stratum(kind, line)
        if stratum is None:
            continue
        totals[stratum] += 1
        bucket = chosen.setdefault(stratum, [])
        if len(bucket) < per_stratum:
            bucket.append((kind, line))
        elif (j := rng.randrange(totals[stratum])) < per_stratum:
            bucket[j] = (kind, line)
    lineage = Lineage(run)
    rows = []
    for stratum in sorted(chosen):
        for kind, line in chosen[stratum]:
            v = json.loads(line)
            row = {c: "" for c in AUDIT_COLUMNS}
            row.update(kind=kind, stratum=stratum, flagged="yes" if v.get("rating") == "Unsafe" else "no",
                       judge_rating=v.get("rating"), judge_category=v.get("category"),
                       rationale=_spreadsheet_safe(v.get("rationale")))
            if kind == "image":
                name = v["image"]
                row.update(item_id=f"image:{name}", image_file=f"stages/ingest/out/images/{name[:2]}/{name}")
            else:
                row.update(item_id=f"text:{v['sample_id']}:{v['turn']}", sample_id=v["sample_id"], turn=v["turn"],
                           content=_spreadsheet_safe(turn_text(lineage, v["sample_id"], v["turn"])))
            rows.append(row)
    path = Path(path) if path else run.root / "report" / "audit" / "sheet.csv"
    private_mkdir(path.parent)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=AUDIT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return {"path": str(path), "rows": len(rows),
            "strata": {s: (len(chosen[s]), totals[s]) for s in sorted(chosen)}}


def _run_verdicts(run: RunDir) -> dict[str, dict[str, Any]]:
    """item id -> {"kind", "flagged", "category"} of every judged item of the run."""
    out = {}
    for kind, line in _judged_items(run):
        v = json.loads(line)
        if v.get("status") != "judged":
            continue
        item = f"image:{v['image']}" if kind == "image" else f"text:{v['sample_id']}:{v['turn']}"
        out[item] = {"kind": kind, "flagged": v.get("rating") == "Unsafe", "category": v.get("code")}
    return out


def read_audit_sheet(run: RunDir, path: Path) -> list[dict[str, Any]]:
    """The reviewed items of a sheet: {"item_id", "kind", "flagged", "category", "verdict",
    "reviewer_category"}; the judge's side comes from the run, not from the sheet. Raises
    AuditSheetError listing every problem by row (row 1 is the header, as a spreadsheet numbers
    them; the file's line too where a multi-line cell makes them differ): missing columns, an
    unknown or repeated item id, an empty or invalid verdict or reviewer category."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise AuditSheetError(f"{path}: cannot read the sheet: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise AuditSheetError(f"{path}: not UTF-8 text (byte {exc.start}); save the sheet as CSV UTF-8") from None
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in ("item_id", "verdict") if c not in header]
    if missing:
        raise AuditSheetError(f"{path}: missing column(s) {', '.join(missing)} (the header row has: "
                              f"{', '.join(header) or 'nothing'}); start from the sheet --audit-sheet writes")
    known = _run_verdicts(run)
    problems, items, first_row = [], [], {}
    number = 1  # the spreadsheet's row: records counted, blank ones too (a cell may span lines)
    while True:
        line = reader.line_num + 1  # where this record starts in the file, for a text editor
        try:
            cells = next(reader)
        except StopIteration:
            break
        number += 1
        row = dict(zip(header, cells))
        if not any(cell.strip() for cell in cells):
            continue  # a blank row
        number_text = f"row {number}" + (f" (line {line} of the file)" if line != number else "")
        item = (row.get("item_id") or "").strip()
        verdict = (row.get("verdict") or "").strip().lower()
        category = (row.get("reviewer_category") or "").strip().upper()
        if not item:
            problems.append(f"{number_text}: empty item_id")
            continue
        if item not in known:
            problems.append(f"{number_text}: unknown item id {item!r}: no judged image or text turn of this run has it")
            continue
        if item in first_row:
            problems.append(f"{number_text}: item {item!r} again (first on row {first_row[item]})")
            continue
        first_row[item] = number
        if not verdict:
            problems.append(f"{number_text}: empty verdict for {item!r}: write safe or unsafe")
            continue
        if verdict not in VERDICTS:
            problems.append(f"{number_text}: verdict {row.get('verdict')!r} for {item!r} is not safe or unsafe")
            continue
        if category and category not in LLAVAGUARD_CATEGORIES and category != "NA":
            problems.append(f"{number_text}: reviewer_category {row.get('reviewer_category')!r} is not one of "
                            f"{', '.join(LLAVAGUARD_CATEGORIES)} or NA")
            continue
        items.append({"item_id": item, **known[item], "verdict": verdict,
                      "reviewer_category": category if category not in ("", "NA") else None})
    if problems:
        shown = problems[:30] + ([f"... and {len(problems) - 30} more"] if len(problems) > 30 else [])
        raise AuditSheetError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(shown))
    if not items:
        raise AuditSheetError(f"{path}: no reviewed row (fill the verdict column with safe or unsafe)")
    return items


def _rate(k: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": [round(low, 4), round(high, 4)]}


def audit_rates(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per kind and category: false-positive rate (flagged as the category, reviewers: safe) and
    false-negative rate (not flagged, reviewers: unsafe; "all" counts any category)."""
    rows = []
    for kind in ("image", "text"):
        mine = [i for i in items if i["kind"] == kind]
        if not mine:
            continue
        flagged = [i for i in mine if i["flagged"]]
        unflagged = [i for i in mine if not i["flagged"]]
        categories = sorted({i["category"] for i in flagged} | {i["reviewer_category"] for i in unflagged
                                                                  if i["reviewer_category"]})
        for category in ["all", *categories]:
            f = flagged if category == "all" else [i for i in flagged if i["category"] == category]
            missed = [i for i in unflagged if i["verdict"] == "unsafe"
                      and (category == "all" or i["reviewer_category"] == category)]
            rows.append({"kind": kind, "category": category,
                         "false_positive": _rate(sum(i["verdict"] == "safe" for i in f), len(f)) if f else None,
                         "false_negative": _rate(len(missed), len(unflagged)) if unflagged else None})
    return rows


def record_audit(run: RunDir, cfg: RunConfig, sheet: Path) -> dict[str, Any]:
    """Read a reviewed sheet, keep the rates in report/audit.json and rewrite the report with them."""
    items = read_audit_sheet(run, sheet)
    audit = {"sheet": str(Path(sheet).resolve()), "reviewed": len(items),
             "method": "Wilson score interval, 95% (z = 1.96)",
             "definitions": {"false_positive": "flagged by the judge as the category, judged safe by reviewers: "
                                               "share of the flagged items reviewed",
                             "false_negative": "not flagged by the judge, judged unsafe by reviewers (in the "
                                               "category, when they named one): share of the unflagged items reviewed"},
             "rates": audit_rates(items)}
    atomic_write_json(private_mkdir(run.root / "report") / AUDIT_FILE, audit)
    write_report(run, cfg, review=False)  # the numbers only: the review site does not change
    return audit


def audit_markdown(audit: dict[str, Any]) -> list[str]:
    def cell(r: Optional[dict[str, Any]]) -> str:
        if not r:
            return "-"
        return f"{100 * r['rate']:.1f}% ({r['k']}/{r['n']}; {100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}%)"

    lines = ["## Safety audit (human review)", "",
             f"{audit['reviewed']} items reviewed ({audit['sheet']}). Rates with 95% intervals: "
             f"{audit['method']}. False positive: {audit['definitions']['false_positive']}. False negative: "
             f"{audit['definitions']['false_negative']}.", "",
             "| kind | category | false-positive rate | false-negative rate |", "|---|---|---|---|"]
    for r in audit["rates"]:
        name = r["category"] if r["category"] == "all" else f"{r['category']} {LLAVAGUARD_CATEGORIES.get(r['category'], '')}"
        lines.append(f"| {r['kind']} | {name.strip()} | {cell(r['false_positive'])} | {cell(r['false_negative'])} |")
    return lines
