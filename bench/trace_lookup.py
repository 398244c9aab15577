"""Per-sample trace at a million samples: an indexed lookup beside a full scan, in the same run.

    .venv/bin/python bench/trace_lookup.py [--samples 1000000] [--lookups 20] [--dir /tmp] [--keep] [--cold]

Generates (seed 0, string templates: no json.dumps per row) a run directory in a temp folder under
--dir with the outputs of every stage `jobs/trace.py` reads, at plausible row sizes and shares,
written as the stages write them (JSON Lines, sorted keys):

  ingest     --samples samples (70% English, 30% authentic Arabic; 1-2 turns of 40-300
             characters; 0-1 image), 1% more rows quarantined, over 8 task files
  translate  one row per English sample: the sample and its first attempt (en/ar/back/spans)
  verify     one scores row per attempt; 97% pass at once, 1% after a re-translation, 2% rejected
             after three attempts (rejected rows carry every attempt's text); passed Arabic samples
  safety     one verdict per unique image (0.8 per sample), one per text turn of every candidate
  mix        decisions-00000.jsonl (every candidate), mixed-00000.jsonl (the ~80% kept, shuffled)
  pack       manifests of 1000-sample shards (shard files themselves are not written: the trace
             says "shard not checked")
  train      8 ranks, 16 sample ids per rank per step, one epoch over the mix

Then: `ain.lineage.build_index` (timed), N lookups of random ids (English, their "-ar"
translations, Arabic, rejected, quarantined) through the index in this process, the same ids by a
full scan (`use_index=False`: a bytes search of every stage file, then a parse of matching lines),
and one `jobs/trace.py --json` subprocess end to end (interpreter start, imports, lookup, print).
Every indexed trace is checked equal to the scanned one. The page cache is warm for both (the files
were just written). With --cold (root only: it writes /proc/sys/vm/drop_caches, which slows every
process on the machine for a while) the page cache is dropped before each of 5 lookups, 2 scans
and one CLI run as well: a trace on a login node that has not read the run lately. Prints one
JSON object per line, the last a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

EN = ["What is shown in this chart?", "Describe the image in detail.", "Which year had the highest sales?",
      "The figure shows a steady increase in monthly revenue from January to June, with a small dip in April.",
      "A man is holding a red umbrella near the river while it is raining, and two children walk behind him.",
      "Read the text on the sign.", "How many people are in the photo?",
      "The table lists the population of five cities; the largest is Cairo with about twenty million people, "
      "followed by Riyadh and Baghdad, while Amman and Muscat are much smaller."]
AR = ["ما الذي يظهر في هذا الرسم البياني؟", "صف الصورة بالتفصيل.", "أي سنة كانت فيها المبيعات الأعلى؟",
      "يُظهر الشكل زيادة مطردة في الإيرادات الشهرية من يناير إلى يونيو، مع انخفاض طفيف في أبريل.",
      "رجل يحمل مظلة حمراء بالقرب من النهر بينما تمطر، ويمشي خلفه طفلان.", "اقرأ النص المكتوب على اللافتة.",
      "كم عدد الأشخاص في الصورة؟",
      "يسرد الجدول عدد سكان خمس مدن؛ أكبرها القاهرة بنحو عشرين مليون نسمة، تليها الرياض وبغداد."]
DOMAINS = ["general", "charts", "ocr", "medical", "remote_sensing", "video", "cultural", "agro"]
TASKS = 8
RANKS = 8
PER_RANK_STEP = 16
SHARD_SAMPLES = 1000

J = json.dumps  # used on the small fixed pools only, never per row


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


EN_Q, AR_Q = [_q(t) for t in EN], [_q(t) for t in AR]
EN_IMG_Q = [_q("<image>\n" + t) for t in EN]
AR_IMG_Q = [_q("<image>\n" + t) for t in AR]
EN_M = [_q("⟦0⟧\n" + t) for t in EN]
AR_M = [_q("⟦0⟧\n" + t) for t in AR]


def sample_row(sid: str, lang: str, source: str, row: int, image: str | None, a: int, b: int, authentic: bool = True,
               extra: str = "") -> str:
    img = "<image>" if image else ""
    pool, pool_img = (EN_Q, EN_IMG_Q) if lang == "en" else (AR_Q, AR_IMG_Q)
    user = (pool_img if img else pool)[a]
    images = f'["{image}"]' if image else "[]"
    auth = "true" if authentic else "false"
    return (f'{{"authentic": {auth}, {extra}"domain": "{DOMAINS[(a + b) % len(DOMAINS)]}", "id": "{sid}", '
            f'"images": {images}, "language": "{lang}", "origin": {{"file": "/data/{source}.jsonl", '
            f'"id": "{source[:2]}-{row:08d}", "row": {row}}}, "source": "{source}", "turns": [{{"content": {user}, '
            f'"role": "user"}}, {{"content": {pool[b]}, "role": "assistant"}}]}}')


def attempt_text(a: int, b: int, image: bool, number: int, temperature: float, scores: str = "") -> str:
    en0, ar0 = (EN_M[a], AR_M[a]) if image else (EN_Q[a], AR_Q[a])
    spans = '["<image>"]' if image else "[]"
    return (f'{{"attempt": {number}, "error": null, {scores}"temperature": {temperature}, "turns": ['
            f'{{"ar": {ar0}, "back": {en0}, "copied": false, "en": {en0}, "role": "user", "spans": {spans}, '
            f'"truncated": false, "turn": 0}}, {{"ar": {AR_Q[b]}, "back": {EN_Q[b]}, "copied": false, "en": {EN_Q[b]}, '
            f'"role": "assistant", "spans": [], "truncated": false, "turn": 1}}]}}')


def scores_obj(passed: bool, rng: random.Random) -> tuple[str, str, str]:
    """(min, reasons, turns) JSON fragments of one attempt's scores."""
    bleu = 71.3 if passed else 41.2
    turn = (f'"bleu2": 80.1, "bleu4": {bleu}, "labse": 0.91, "meteor": 88.4, "rouge1": 86.0, "rouge_l": 84.2')
    reasons = "[]" if passed else f'["turn 1: bleu4 {bleu:.2f} < 60.00"]'
    turns = f'[{{{turn}, "passed": true, "turn": 0}}, {{{turn}, "passed": {"true" if passed else "false"}, "turn": 1}}]'
    return f"{{{turn}}}", reasons, turns


def generate(root: Path, n: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    run = root / "bench"
    stages = {s: run / "stages" / s / "out" for s in ("ingest", "translate", "verify", "safety", "mix", "pack", "train")}
    for d in stages.values():
        d.mkdir(parents=True)
    (run / "config.yaml").write_text(
        "name: bench\nseed: 0\nstages: [ingest, translate, verify, safety, mix, pack, report, train]\n"
        f"pack:\n  num_tasks: {TASKS}\nsafety:\n  vision_judge: {{model: AIML-TUDA/LlavaGuard-v1.2-7B-OV-hf}}\n"
        "  text_judge: {model: Qwen/Qwen3Guard-Gen-8B}\n  text_judge_format: qwen3guard\n", encoding="utf-8")

    def opener(stage: str, name: str):
        return open(stages[stage] / name, "w", encoding="utf-8", buffering=1 << 22)

    n_en = int(n * 0.7)
    ingest = [opener("ingest", f"samples-{i:05d}.jsonl") for i in range(TASKS)]
    quarantine = [opener("ingest", f"quarantine-{i:05d}.jsonl") for i in range(TASKS)]
    translations = [opener("translate", f"translations-{i:05d}.jsonl") for i in range(TASKS)]
    passed_f = [opener("verify", f"passed-{i:05d}.jsonl") for i in range(TASKS)]
    rejected_f = [opener("verify", f"rejected-{i:05d}.jsonl") for i in range(TASKS)]
    scores_f = [opener("verify", f"scores-{i:05d}.jsonl") for i in range(TASKS)]
    images_f = [opener("safety", f"images-{i:05d}.jsonl") for i in range(TASKS)]
    texts_f = [opener("safety", f"texts-{i:05d}.jsonl") for i in range(TASKS)]
    candidates: list[tuple[str, str]] = []   # (id, domain)
    picks = {"english": [], "translation": [], "arabic": [], "rejected": [], "quarantined": []}
    rejected_ids: set[str] = set()
    image_count = 0
    text_row = ('{{"category": "NA: None applying", "code": "NA", "judge_categories": [], "judge_label": "Safe", '
                '"language": "{lang}", "rating": "Safe", "rationale": "Safety: Safe\\nCategories: None", "role": "{role}", '
                '"sample_id": "{sid}", "status": "judged", "turn": {turn}}}\n')
    g = 0
    for i in range(n):
        english = i < n_en
        source, row = ("en_llava", i) if english else ("ar_native", i - n_en)
        sid = f"{source}-{row}"
        t = g % TASKS
        g += 1
        if rng.random() < 0.01:  # a quarantined row takes this row number
            quarantine[t].write(f'{{"file": "/data/{source}.jsonl", "kind": "bad_image", "raw": "{{\\"image\\": '
                                f'\\"img/{row}.png\\"}}", "reason": "image 1: not a decodable image", "row": {row}, '
                                f'"source": "{source}"}}\n')
            if len(picks["quarantined"]) < 5:
                picks["quarantined"].append(sid)
            continue
        a, b = rng.randrange(len(EN)), rng.randrange(len(EN))
        image = None
        if rng.random() < 0.8:
            image = f"{rng.getrandbits(256):064x}.png"
            images_f[int(image[:8], 16) % TASKS].write(
                f'{{"category": "NA: None applying", "code": "NA", "image": "{image}", "judge": "vision", '
                f'"rating": "Safe", "rationale": "The image shows an everyday scene with no policy concern.", '
                f'"status": "judged"}}\n')
            image_count += 1
        lang = "en" if english else "ar"
        line = sample_row(sid, lang, source, row, image, a, b)
        ingest[t].write(line + "\n")
        candidates.append((sid, DOMAINS[(a + b) % len(DOMAINS)]))
        for turn, role in ((0, "user"), (1, "assistant")):
            texts_f[t].write(text_row.format(lang=lang, role=role, sid=sid, turn=turn))
        if not english:
            if len(picks["arabic"]) < 5:
                picks["arabic"].append(sid)
            continue
        translations[t].write(f'{{"attempts": [{attempt_text(a, b, bool(image), 0, 0.0)}], "id": "{sid}", '
                              f'"sample": {line}}}\n')
        u = rng.random()
        outcome = "first" if u < 0.97 else "retry" if u < 0.98 else "rejected"
        attempts = 1 if outcome == "first" else 2 if outcome == "retry" else 3
        bodies = []
        for k in range(attempts):
            ok = (outcome == "first") or (outcome == "retry" and k == 1)
            mn, reasons, turns = scores_obj(ok, rng)
            temp = (0.0, 0.4, 0.8)[k]
            scores_f[t].write(f'{{"attempt": {k}, "id": "{sid}", "min": {mn}, "passed": {"true" if ok else "false"}, '
                              f'"reasons": {reasons}, "temperature": {temp}, "turns": {turns}}}\n')
            bodies.append(attempt_text(a, b, bool(image), k, temp,
                                       f'"scores": {{"min": {mn}, "passed": {"true" if ok else "false"}, '
                                       f'"reasons": {reasons}, "turns": {turns}}}, '))
        if outcome == "rejected":
            rejected_ids.add(sid)
            rejected_f[t].write(f'{{"attempts": [{", ".join(bodies)}], "id": "{sid}", '
                                f'"reasons": ["turn 1: bleu4 41.20 < 60.00"]}}\n')
            if len(picks["rejected"]) < 5:
                picks["rejected"].append(sid)
            continue
        ar = sample_row(f"{sid}-ar", "ar", source, row, image, a, b, authentic=False,
                        extra=f'"attempts": {attempts}, ').replace('"turns"', f'"translation_of": "{sid}", "turns"', 1)
        passed_f[t].write(ar[:-1] + ', "verify": {"bleu4": 71.3, "labse": 0.91, "meteor": 88.4, "rouge_l": 84.2}}\n')
        for turn, role in ((0, "user"), (1, "assistant")):
            texts_f[t].write(text_row.format(lang="ar", role=role, sid=f"{sid}-ar", turn=turn))
        if len(picks["english"]) < 5 and rng.random() < 0.01:
            picks["english"].append(sid)
            picks["translation"].append(f"{sid}-ar")
    translated = [(f"{sid}-ar", dom) for sid, dom in candidates if sid.startswith("en_")]
    for f in [*ingest, *quarantine, *translations, *passed_f, *rejected_f, *scores_f, *images_f, *texts_f]:
        f.close()

    # mix: the translated candidates whose -ar row exists (rejected ones have none) are not
    # tracked per id here; every candidate gets a decision, ~80% are kept
    all_candidates = candidates + [c for c in translated if c[0][:-3] not in rejected_ids]
    kept = []
    with opener("mix", "decisions-00000.jsonl") as dec:
        for sid, _ in all_candidates:
            if rng.random() < 0.8:
                kept.append(sid)
                dec.write(f'{{"category": null, "duplicate_of": null, "id": "{sid}", "kept": true, '
                          f'"position": null, "reason": null}}\n')
            else:
                dec.write(f'{{"category": null, "duplicate_of": null, "id": "{sid}", "kept": false, '
                          f'"position": null, "reason": "authentic_arabic_share"}}\n')
    rng.shuffle(kept)
    domain = dict(all_candidates)
    with opener("mix", "mixed-00000.jsonl") as mixed:
        for sid in kept:
            lang = "ar" if sid.endswith("-ar") or sid.startswith("ar_") else "en"
            mixed.write(f'{{"authentic": true, "domain": "{domain[sid]}", "id": "{sid}", "images": [], '
                        f'"language": "{lang}", "source": "x", "turns": [{{"content": {EN_Q[0]}, "role": "user"}}, '
                        f'{{"content": {EN_Q[3]}, "role": "assistant"}}]}}\n')
    m = len(kept)
    for task in range(TASKS):
        start, stop = task * m // TASKS, (task + 1) * m // TASKS
        with opener("pack", f"manifest-{task:05d}.jsonl") as man:
            for k, s in enumerate(range(start, stop, SHARD_SAMPLES)):
                e = min(s + SHARD_SAMPLES, stop)
                lengths = ", ".join(str(300 + (j * 37) % 900) for j in range(e - s))
                man.write(f'{{"bytes": {(e - s) * 120000}, "domains": {{}}, "first_id": "{kept[s]}", '
                          f'"languages": {{}}, "last_id": "{kept[e - 1]}", "lengths": [{lengths}], "samples": {e - s}, '
                          f'"sha256": "{"0" * 64}", "shard": "shard-{task:03d}-{k:05d}.tar"}}\n')
    ranks = [opener("train", f"samples-rank{r}.jsonl") for r in range(RANKS)]
    step, pos = 0, 0
    while pos < m:
        step += 1
        for r in range(RANKS):
            ids = kept[pos:pos + PER_RANK_STEP]
            pos += len(ids)
            ranks[r].write(J({"step": step, "ids": ids}) + "\n")
    for f in ranks:
        f.close()
    size = sum(p.stat().st_size for p in (run / "stages").rglob("*.jsonl"))
    return {"run": run, "picks": picks, "candidates": len(all_candidates), "mixed": m, "images": image_count,
            "steps": step, "bytes": size}


def drop_caches() -> bool:
    """Write back and drop the page cache (root); False where that is not allowed."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def cold_figures(run: Path, ids: list[str], english: str) -> dict:
    from ain.lineage import Lineage

    out: dict = {}
    for what, use_index, n in (("lookup", True, 5), ("scan", False, 2)):
        times = []
        for sid in ids[:n]:
            if not drop_caches():
                return {"cold": "not measured: cannot write /proc/sys/vm/drop_caches (needs root)"}
            t0 = time.perf_counter()
            Lineage(run, use_index=use_index).trace(sid)
            times.append(time.perf_counter() - t0)
        out[f"cold_{what}_median_s"] = round(statistics.median(times), 3)
        out[f"cold_{what}_max_s"] = round(max(times), 3)
    drop_caches()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "jobs/trace.py"), str(run), english, "--json"], capture_output=True,
                   check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "lib")})
    out["cold_cli_end_to_end_s"] = round(time.perf_counter() - t0, 2)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=1_000_000)
    p.add_argument("--lookups", type=int, default=20, help="ids traced each way (index, scan)")
    p.add_argument("--dir", default=tempfile.gettempdir())
    p.add_argument("--keep", action="store_true", help="keep the generated run directory")
    p.add_argument("--cold", action="store_true", help="also measure from a dropped page cache (root)")
    args = p.parse_args()

    from ain.lineage import Lineage, build_index

    tmp = Path(tempfile.mkdtemp(prefix="trace-bench-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        gen = generate(tmp, args.samples)
        gen_s = time.perf_counter() - t0
        run = gen["run"]
        print(json.dumps({"generated": args.samples, "candidates": gen["candidates"], "mixed": gen["mixed"],
                          "images": gen["images"], "train_steps": gen["steps"], "gb": round(gen["bytes"] / 1e9, 2),
                          "seconds": round(gen_s, 1)}), flush=True)

        t0 = time.perf_counter()
        summary = build_index(run)
        build_s = time.perf_counter() - t0
        index_bytes = sum(p.stat().st_size for p in (run / "lineage").rglob("*") if p.is_file())
        print(json.dumps({"index_build_s": round(build_s, 1), "index_mb": round(index_bytes / 1e6, 1),
                          "entries": sum(s["entries"] for s in summary.values()),
                          "per_stage_s": {k: v["seconds"] for k, v in summary.items()}}), flush=True)

        picks = gen["picks"]
        ids = [i for kind in ("english", "translation", "arabic", "rejected", "quarantined") for i in picks[kind]]
        ids = (ids * (args.lookups // max(len(ids), 1) + 1))[: args.lookups]
        lookup, scan = [], []
        for sid in ids:
            t0 = time.perf_counter()
            indexed = Lineage(run).trace(sid)
            lookup.append(time.perf_counter() - t0)
            if not all(indexed["lookup"]["indexed"].values()) or indexed["lookup"]["stale"]:
                raise SystemExit(f"{sid}: the index was not used: {indexed['lookup']}")
        for sid in ids[: max(1, min(len(ids), 5))]:  # a scan reads every file: a few are enough
            t0 = time.perf_counter()
            scanned = Lineage(run, use_index=False).trace(sid)
            scan.append(time.perf_counter() - t0)
            indexed = Lineage(run).trace(sid)
            for t in (scanned, indexed):
                t.pop("lookup")
            if scanned != indexed:
                raise SystemExit(f"{sid}: the indexed trace differs from the scanned one")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "jobs/trace.py"), str(run), picks["english"][0], "--json"],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "lib")})
        cli_s = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        result = {"samples": args.samples, "gb": round(gen["bytes"] / 1e9, 2),
                  "lookup_median_s": round(statistics.median(lookup), 4), "lookup_max_s": round(max(lookup), 4),
                  "scan_median_s": round(statistics.median(scan), 2), "scan_max_s": round(max(scan), 2),
                  "ratio_scan_over_lookup": round(statistics.median(scan) / statistics.median(lookup), 1),
                  "cli_end_to_end_s": round(cli_s, 2), "index_build_s": round(build_s, 1),
                  "index_mb": round(index_bytes / 1e6, 1), "generate_s": round(gen_s, 1),
                  "lookups": len(lookup), "scans": len(scan), "cpus": os.cpu_count()}
        if args.cold:
            result.update(cold_figures(run, ids, picks["english"][0]))
        print(json.dumps(result), flush=True)
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
