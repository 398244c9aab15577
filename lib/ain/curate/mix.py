"""The mix stage: every curated sample -> the training mix, in one task (deduplication and
quotas need the global view).

Candidates are the ingested samples (English and authentic Arabic) and, when the run verifies
translations, the translated Arabic samples that passed the gate. In order:

  1. safety: a sample is dropped if any of its images or turns was judged unsafe (counted per
     LlavaGuard category) or stayed unjudged under `safety.unjudged_policy=drop`;
  2. exact deduplication: same turns (role and text) and same images;
  3. authentic Arabic share: the over-represented group (authentic or translated Arabic) is
     downsampled to meet `mix.authentic_arabic_share`;
  4. Arabic share among all samples (`mix.arabic_share`), by downsampling the larger side;
  5. per-domain caps;
  6. a shuffle with `seed`.
Every drop is counted with its reason; `mix_report.json` puts the realised proportions next to
the targets, and a warning names each target that the data cannot meet.

Per sample, `decisions-<i>.jsonl` (candidate order: ingest, then translated) records what
happened to it, for `jobs/trace.py` and the review site:

    {"id", "kept": bool, "reason": null | "unsafe_image" | "unsafe_text" | "unjudged" | "duplicate"
     | "authentic_arabic_share" | "arabic_share" | "domain_cap", "category": LlavaGuard code of an
     unsafe drop, "duplicate_of": the id of the earlier sample it duplicates, "position": its row in
     mixed-<i>.jsonl when kept}

A kept sample's reason is null, or "unjudged" when `safety.unjudged_policy=keep` kept it. Recording
the decisions draws nothing from the random generator: the mix is the same with or without them.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from ain.atomic import atomic_write_json
from ain.rundir import RunDir
from ain.stages import TaskContext


def stage_rows(run: RunDir, stage: str, pattern: str, num_tasks: int) -> Iterator[dict[str, Any]]:
    """All rows of a complete upstream stage, in file and line order."""
    paths = run.stage(stage)
    paths.require_complete(num_tasks, "mix")
    return paths.rows(pattern)


def content_key(sample: dict[str, Any]) -> str:
    body = json.dumps([[t["role"], t["content"]] for t in sample["turns"]] + [sample["images"]], ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def downsample(items: list[dict], keep: int, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """Keep `keep` items chosen by `rng`, preserving their order; return (kept, dropped)."""
    if keep >= len(items):
        return items, []
    chosen = set(rng.sample(range(len(items)), keep))
    return [x for i, x in enumerate(items) if i in chosen], [x for i, x in enumerate(items) if i not in chosen]


def share_split(group_a: int, group_b: int, target_a: float) -> tuple[int, int]:
    """Largest (a, b) with a <= group_a, b <= group_b and a / (a + b) == target_a (rounded)."""
    if target_a <= 0:
        return 0, group_b
    if target_a >= 1:
        return group_a, 0
    if group_a / max(group_a + group_b, 1) > target_a:          # too many a: shrink a
        return min(group_a, round(group_b * target_a / (1 - target_a))), group_b
    return group_a, min(group_b, round(group_a * (1 - target_a) / target_a))


def apply_share(group_a: list[dict], group_b: list[dict], target: float | None, key: str, names: tuple[str, str],
                rng: random.Random, counts: Counter, warnings: list[str]) -> tuple[list[dict], list[dict]]:
    """Downsample the over-represented group so that a / (a + b) meets `target` (null: no-op);
    warn instead when a group the target needs is empty."""
    if target is None:
        return group_a, group_b
    if (target > 0 and not group_a) or (target < 1 and not group_b):
        warnings.append(f"mix.{key}={target}: cannot be met with {len(group_a)} {names[0]} and "
                        f"{len(group_b)} {names[1]} samples; kept what there is")
        return group_a, group_b
    a, b = share_split(len(group_a), len(group_b), target)
    group_a, dropped_a = downsample(group_a, a, rng)
    group_b, dropped_b = downsample(group_b, b, rng)
    counts[f"dropped_{key}"] += len(dropped_a) + len(dropped_b)
    return group_a, group_b


def decision(sample_id: str, kept: bool, reason: str | None = None, category: str | None = None,
             duplicate_of: str | None = None) -> dict[str, Any]:
    """One row of decisions-<i>.jsonl (position is filled in after the shuffle)."""
    return {"id": sample_id, "kept": kept, "reason": reason, "category": category, "duplicate_of": duplicate_of,
            "position": None}


def dropped_between(before: list[dict], after: list[dict]) -> list[dict]:
    """The samples of `before` that are not in `after` (ids are unique among candidates)."""
    kept = {s["id"] for s in after}
    return [s for s in before if s["id"] not in kept]


def run_mix_task(ctx: TaskContext) -> dict[str, Any]:
    cfg, mcfg = ctx.cfg, ctx.cfg.mix
    rng = random.Random(cfg.seed)
    counts: Counter = Counter()
    warnings: list[str] = []
    decisions: dict[str, dict[str, Any]] = {}  # id -> its decision row, in candidate order

    candidates = list(stage_rows(ctx.run, "ingest", "samples-*.jsonl", cfg.ingest.num_tasks))
    counts["in_ingest"] = len(candidates)
    if "verify" in cfg.stages:
        translated = list(stage_rows(ctx.run, "verify", "passed-*.jsonl", cfg.verify.num_tasks))
        counts["in_translated"] = len(translated)
        candidates += translated
    for s in candidates:
        decisions[s["id"]] = decision(s["id"], True)

    if "safety" in cfg.stages:
        from ain.curate.safety import load_verdicts, sample_safety  # noqa: PLC0415 (only with safety)

        image_verdicts, text_verdicts = load_verdicts(ctx.run)
        kept = []
        for s in candidates:
            keep, reason, category = sample_safety(s, image_verdicts, text_verdicts, cfg.safety.unjudged_policy)
            if keep:
                kept.append(s)
                if reason:  # kept under unjudged_policy=keep: still counted
                    counts[f"kept_{reason}"] += 1
                    decisions[s["id"]]["reason"] = reason
            else:
                counts[f"dropped_{reason}"] += 1
                decisions[s["id"]] = decision(s["id"], False, reason, category)
                if category:
                    counts[f"dropped_category_{category}"] += 1
        candidates = kept

    if mcfg.dedup:
        seen: dict[str, str] = {}  # content key -> id of the first sample with it (the one kept)
        unique = []
        for s in candidates:
            key = content_key(s)
            if key in seen:
                counts["dropped_duplicate"] += 1
                decisions[s["id"]] = decision(s["id"], False, "duplicate", duplicate_of=seen[key])
            else:
                seen[key] = s["id"]
                unique.append(s)
        candidates = unique

    english = [s for s in candidates if s["language"] != "ar"]
    authentic = [s for s in candidates if s["language"] == "ar" and s.get("authentic", True)]
    translated_ar = [s for s in candidates if s["language"] == "ar" and not s.get("authentic", True)]
    before = authentic + translated_ar
    authentic, translated_ar = apply_share(authentic, translated_ar, mcfg.authentic_arabic_share,
                                           "authentic_arabic_share", ("authentic", "translated Arabic"), rng, counts,
                                           warnings)
    for s in dropped_between(before, authentic + translated_ar):
        decisions[s["id"]] = decision(s["id"], False, "authentic_arabic_share")
    before = authentic + translated_ar + english
    arabic, english = apply_share(authentic + translated_ar, english, mcfg.arabic_share, "arabic_share",
                                  ("Arabic", "other"), rng, counts, warnings)
    mixed = english + arabic
    for s in dropped_between(before, mixed):
        decisions[s["id"]] = decision(s["id"], False, "arabic_share")
    for domain, cap in sorted(mcfg.domain_caps.items()):
        in_domain = [s for s in mixed if s["domain"] == domain]
        if not in_domain:
            warnings.append(f"mix.domain_caps.{domain}: no sample has this domain")
            continue
        _, dropped = downsample(in_domain, cap, rng)
        drop_ids = {s["id"] for s in dropped}
        mixed = [s for s in mixed if s["id"] not in drop_ids]
        counts["dropped_domain_cap"] += len(dropped)
        for sample_id in drop_ids:
            decisions[sample_id] = decision(sample_id, False, "domain_cap")
    rng.shuffle(mixed)
    for position, s in enumerate(mixed):
        decisions[s["id"]]["position"] = position

    out = ctx.resumable_outputs(mixed=f"mixed-{ctx.index:05d}.jsonl", decisions=f"decisions-{ctx.index:05d}.jsonl")
    try:
        for s in mixed:
            out.write("mixed", s)
        for row in decisions.values():
            out.write("decisions", row)
        out.commit(len(mixed))
        files = out.finish()
    finally:
        out.close()
    report = mix_report(mixed, counts, warnings, cfg)
    atomic_write_json(ctx.paths.out / "mix_report.json", report)
    for w in warnings:
        ctx.log.warning(w)
    return {"items": len(mixed), "mixed": len(mixed), **counts, "warnings": len(warnings), "files": files}


def shares(samples: list[dict]) -> dict[str, Any]:
    """Samples, Arabic share and authentic share of the Arabic, of a group of mixed samples."""
    arabic = [s for s in samples if s["language"] == "ar"]
    return {"samples": len(samples), "arabic_share": len(arabic) / max(len(samples), 1),
            "authentic_arabic_share": (sum(1 for s in arabic if s.get("authentic", True)) / len(arabic)
                                       if arabic else None)}


def mix_report(mixed: list[dict], counts: Counter, warnings: list[str], cfg) -> dict[str, Any]:
    overall = shares(mixed)
    by_domain: dict[str, list[dict]] = {}
    for sample in mixed:
        by_domain.setdefault(sample["domain"], []).append(sample)
    return {
        "seed": cfg.seed,
        "samples": len(mixed),
        "counts": dict(counts),
        "warnings": warnings,
        "targets": {"authentic_arabic_share": cfg.mix.authentic_arabic_share, "arabic_share": cfg.mix.arabic_share,
                    "domain_caps": dict(cfg.mix.domain_caps)},
        "realised": {
            "authentic_arabic_share": overall["authentic_arabic_share"],
            "arabic_share": overall["arabic_share"],
            "languages": dict(Counter(s["language"] for s in mixed)),
            "domains": dict(Counter(s["domain"] for s in mixed)),
            "sources": dict(Counter(s["source"] for s in mixed)),
            "by_domain": {domain: shares(group) for domain, group in sorted(by_domain.items())},
        },
    }


def read_mix_report(run: RunDir) -> dict[str, Any]:
    path: Path = run.stage("mix").out / "mix_report.json"
    return json.loads(path.read_text(encoding="utf-8"))
