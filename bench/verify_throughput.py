"""Translation-gate throughput on one core: overlap metrics and the LaBSE stand-in.

    OMP_NUM_THREADS=1 .venv/bin/python bench/verify_throughput.py [--pairs 2000] [--repeat 3]

Prints one JSON object per line:
  - overlap: samples/s of `ain.curate.metrics.overlap_scores` (normalised text, reused scorers,
    WordNet loaded once, per-word synset cache) against a naive baseline measured in the same
    run on the same pairs (fresh sacrebleu BLEU and RougeScorer objects per call, nltk's METEOR
    on the plain WordNet reader; WordNet itself is not reloaded), the ratio, the largest score
    difference between the two (must be ~0), and a per-metric breakdown.
  - embed: pairs/s of `Embedder.cosine_pairs` on a tiny random BERT (the LaBSE stand-in: 2
    layers, 32 wide; LaBSE itself is ~470M parameters and much slower) batched (64) against
    one pair at a time.
Pairs are generated deterministically (seed 0): templated English sentences of 6-40 words and a
"back-translation" with synonym swaps, dropped words, reordering and punctuation changes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from importlib.metadata import version

os.environ.setdefault("OMP_NUM_THREADS", "1")

SUBJECTS = ["the man", "a woman", "two children", "the old dog", "a young girl", "the chef", "a group of tourists",
            "the doctor", "a small cat", "the students", "an elderly couple", "the bus driver", "a farmer",
            "the football team", "a police officer", "the teacher", "my neighbour", "the orchestra"]
VERBS = ["is holding", "is looking at", "walks towards", "is sitting next to", "points at", "is carrying",
         "is painting", "is repairing", "is cleaning", "waits beside", "is reading about", "photographs",
         "is buying", "is selling", "is cooking", "drives past"]
OBJECTS = ["a red umbrella", "the wooden table", "a large blue car", "an old bicycle", "a basket of apples",
           "the ancient mosque", "a stack of books", "a white horse", "the broken window", "a cup of coffee",
           "the city map", "a bright yellow kite", "three green bottles", "the new computer", "a plate of rice",
           "the market stall", "a heavy suitcase", "a chart of monthly sales"]
PLACES = ["in the park", "near the river", "at the market", "inside the museum", "on a busy street",
          "in a small kitchen", "at the train station", "under a large tree", "in the desert", "by the sea",
          "in the hospital corridor", "on the roof", "in a crowded classroom", "at the airport"]
CLAUSES = ["while it is raining", "during the afternoon", "as the sun sets", "before the shop closes",
           "because the road is closed", "after a long day at work", "although it is very cold",
           "while music plays in the background", "as people walk by", "on a quiet Sunday morning"]
QUESTIONS = ["What is {s} doing in this image?", "Where is {o} placed?", "How many people can be seen {p}?",
             "What colour is {o}?", "Describe the scene {p}.", "Why might {s} be {p}?"]
ANSWERS = ["Yes.", "No.", "Two.", "It is red.", "The answer is B.", "About 45%."]
SYNONYMS = {"man": "gentleman", "woman": "lady", "children": "kids", "dog": "hound", "large": "big",
            "small": "little", "old": "aged", "near": "close to", "walks": "moves", "is looking at": "looks at",
            "image": "picture", "bright": "vivid", "busy": "crowded", "cold": "chilly", "quiet": "calm",
            "buying": "purchasing", "closes": "shuts", "road": "street", "sets": "goes down",
            "photographs": "takes a photo of", "students": "pupils", "heavy": "weighty"}


def _sentence(rng: random.Random) -> str:
    kind = rng.random()
    s, v, o, p = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(PLACES)
    if kind < 0.15:
        return rng.choice(QUESTIONS).format(s=s, o=o, p=p)
    if kind < 0.22:
        return rng.choice(ANSWERS)
    text = f"{s} {v} {o} {p}"
    if rng.random() < 0.6:
        text += f" {rng.choice(CLAUSES)}"
    if rng.random() < 0.35:
        s2, v2, o2 = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)
        text += f", and {s2} {v2} {o2}"
    return text[0].upper() + text[1:] + "."


def _back_translation(rng: random.Random, text: str) -> str:
    out = text
    r = rng.random()
    if r < 0.25:
        return out                                  # perfect round trip
    for src, dst in SYNONYMS.items():
        if src in out and rng.random() < 0.5:
            out = out.replace(src, dst, 1)
    words = out.split()
    if len(words) > 6 and rng.random() < 0.4:       # drop an article or a word
        i = rng.randrange(len(words))
        del words[i]
    if len(words) > 8 and rng.random() < 0.3:       # move a phrase
        i = rng.randrange(2, len(words) - 3)
        words = words[i:] + words[:i]
    out = " ".join(words)
    if rng.random() < 0.3:
        out = out.rstrip(".").lower()               # case and punctuation drift
    return out


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(back-translation, original) pairs."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        en = _sentence(rng)
        pairs.append((_back_translation(rng, en), en))
    return pairs


AR_WORDS = ["الرجل", "امرأة", "طفلان", "الكلب", "يحمل", "ينظر", "إلى", "مظلة", "حمراء", "الطاولة", "الخشبية",
            "في", "الحديقة", "قرب", "النهر", "السوق", "المتحف", "سيارة", "زرقاء", "كبيرة", "دراجة", "قديمة",
            "سلة", "تفاح", "المسجد", "كتب", "حصان", "أبيض", "النافذة", "المكسورة", "فنجان", "قهوة", "الطلاب",
            "المعلم", "المطار", "المحطة", "الشمس", "تغرب", "بينما", "تمطر", "هل", "ماذا", "كم", "لون", "نعم"]


def make_arabic(rng: random.Random, en: str) -> str:
    """Arabic-looking text of a similar length (no translator here; the tiny model is random)."""
    n = max(1, int(len(en.split()) * 0.8))
    return " ".join(rng.choice(AR_WORDS) for _ in range(n)) + rng.choice([".", "؟", ""])


# ------------------------------------------------------------------ overlap metrics

def naive_overlap(hyp: str, ref: str) -> dict[str, float]:
    """Same metrics, same normalisation, but new scorer objects on every call and nltk's plain
    WordNet reader (no synset cache): what a straightforward per-sample loop does."""
    from nltk.corpus import wordnet
    from nltk.translate.meteor_score import meteor_score
    from rouge_score.rouge_scorer import RougeScorer
    from sacrebleu.metrics import BLEU

    from ain.curate.metrics import RegexTokenizer, normalize_for_overlap, word_tokenize

    h, r = normalize_for_overlap(hyp), normalize_for_overlap(ref)
    b2 = BLEU(max_ngram_order=2, effective_order=True).sentence_score(h, [r]).score
    b4 = BLEU(max_ngram_order=4, effective_order=True).sentence_score(h, [r]).score
    m = meteor_score([word_tokenize(r)], word_tokenize(h), wordnet=wordnet)
    rs = RougeScorer(["rouge1", "rougeL"], tokenizer=RegexTokenizer()).score(r, h)
    return {"bleu2": min(100.0, b2), "bleu4": min(100.0, b4), "meteor": 100 * m,
            "rouge1": 100 * rs["rouge1"].fmeasure, "rouge_l": 100 * rs["rougeL"].fmeasure}


def _time(fn, pairs, repeat: int) -> tuple[float, list]:
    best, out = float("inf"), []
    for _ in range(repeat):
        t = time.perf_counter()
        out = [fn(h, r) for h, r in pairs]
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_overlap(n: int, repeat: int) -> dict:
    from ain.curate import metrics

    pairs = make_pairs(n)
    t = time.perf_counter()
    metrics.load_wordnet()
    wordnet_load_s = time.perf_counter() - t
    metrics._punctuation_table()
    naive_overlap(*pairs[0])                  # imports and lazy objects out of the timing
    metrics.overlap_scores(*pairs[0])

    naive_s, naive_out = _time(naive_overlap, pairs, repeat)
    # the project version: first a cold pass (synset cache empty), then warm passes
    metrics.load_wordnet()._synsets.cache_clear()
    t = time.perf_counter()
    for h, r in pairs:
        metrics.overlap_scores(h, r)
    cold_s = time.perf_counter() - t
    fast_s, fast_out = _time(metrics.overlap_scores, pairs, repeat)
    max_diff = max(abs(a[k] - b[k]) for a, b in zip(naive_out, fast_out) for k in a)

    norm = [(metrics.normalize_for_overlap(h), metrics.normalize_for_overlap(r)) for h, r in pairs]
    parts = {
        "normalize": _time(lambda h, r: (metrics.normalize_for_overlap(h), metrics.normalize_for_overlap(r)),
                           pairs, repeat)[0],
        "bleu2+bleu4": _time(metrics.bleu_2_and_4, norm, repeat)[0],
        "meteor": _time(metrics.meteor, norm, repeat)[0],
        "rouge1+rougeL": _time(metrics.rouge, norm, repeat)[0],
    }
    words = sum(len(r.split()) for _, r in pairs) / len(pairs)
    passed = sum(1 for s in fast_out if s["bleu4"] >= 60 and s["meteor"] >= 80 and s["rouge_l"] >= 80)
    return {"bench": "overlap", "pairs": n, "mean_ref_words": round(words, 1), "repeat": repeat,
            "baseline_samples_per_s": round(n / naive_s, 1),
            "project_samples_per_s": round(n / fast_s, 1),
            "project_cold_cache_samples_per_s": round(n / cold_s, 1),
            "speedup": round(naive_s / fast_s, 2), "speedup_cold_cache": round(naive_s / cold_s, 2),
            "max_abs_score_diff": max_diff, "wordnet_load_s": round(wordnet_load_s, 2),
            "share_of_time": {k: round(v / sum(parts.values()), 3) for k, v in parts.items()},
            "overlap_pass_rate": round(passed / n, 3)}


# ------------------------------------------------------------------ embedder

def bench_embed(n: int, repeat: int) -> dict:
    import torch

    from ain.curate.metrics import Embedder
    from ain_testkit.tiny_embedder import build_tiny_embedder

    torch.set_num_threads(1)
    rng = random.Random(1)
    en = [r for _, r in make_pairs(n, seed=2)]
    ar = [make_arabic(rng, e) for e in en]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path = build_tiny_embedder(tmp, en + ar, seed=0)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        emb = Embedder(str(path), device="cpu")
        load_s = time.perf_counter() - t
        emb.cosine_pairs(en[:8], ar[:8])
        batched_s, batched = float("inf"), []
        for _ in range(repeat):
            t = time.perf_counter()
            batched = emb.cosine_pairs(en, ar, batch_size=64)
            batched_s = min(batched_s, time.perf_counter() - t)
        m = min(n, 500)                     # one-by-one is slow: a subset, scaled
        t = time.perf_counter()
        single = [emb.cosine_pairs([a], [b], batch_size=1)[0] for a, b in zip(en[:m], ar[:m])]
        single_s = (time.perf_counter() - t) * n / m
        unique = len(set(en) | set(ar))
    diff = max(abs(a - b) for a, b in zip(batched[:m], single))
    return {"bench": "embed", "model": "tiny random BERT (2 layers, hidden 32), LaBSE stand-in", "pairs": n,
            "distinct_texts": unique, "build_s": round(build_s, 2), "load_s": round(load_s, 2),
            "baseline_one_pair_at_a_time_pairs_per_s": round(n / single_s, 1),
            "batched_pairs_per_s": round(n / batched_s, 1), "speedup": round(single_s / batched_s, 2),
            "max_abs_cos_diff": diff, "mean_cos": round(sum(batched) / n, 3)}


def environment() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"bench": "environment", "cpu": cpu, "cores_used": 1, "python": platform.python_version(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads(),
            "versions": {p: version(p) for p in ("nltk", "sacrebleu", "rouge-score", "sentence-transformers",
                                                 "transformers", "torch", "tokenizers")}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--embed-pairs", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3, help="timed passes; the best is reported")
    ap.add_argument("--skip-embed", action="store_true")
    args = ap.parse_args(argv)
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    except (AttributeError, OSError):
        pass
    print(json.dumps(bench_overlap(args.pairs, args.repeat)), flush=True)
    if not args.skip_embed:
        print(json.dumps(bench_embed(args.embed_pairs, args.repeat)), flush=True)
    print(json.dumps(environment()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
