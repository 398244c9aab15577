#!/usr/bin/env python
"""How full sequence packing makes the rows: the old look-ahead best fit, training's buffered
best-fit decreasing, and the whole-set ceiling, on two length distributions, in one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/packing_efficiency.py [--n 20000] [--seed 0]
    OMP_NUM_THREADS=1 .venv/bin/python bench/packing_efficiency.py --shards <run_dir>/stages/pack/out

Synthetic streams (default), rows of --max-length 2,048 tokens:
  - uniform:   --n lengths uniform in [200, 1500] (the issue's measurement)
  - lognormal: --n lengths round(lognormal(median 500, sigma 0.8)) clipped to [16, 2048]: a long
               tail (mean ~650 tokens, ~4% of samples at the 2,048 cap)

Per stream and algorithm: rows, fill = useful tokens / (rows x max_length), the fill without the
stream's last 1% of rows (the end-of-stream flush), the most samples held at once, seconds.
  - look-ahead best fit (ain.train.collate.pack_rows, the packer before): window 64 and 1,024
  - buffered best-fit decreasing (collate.pack_stream, what StreamPacker does): window 256, 1,024
    (train.packing_buffer's default) and 4,096
  - best-fit decreasing over the whole stream (collate.best_fit_decreasing): the ceiling, holds
    everything

--shards: the lengths of a packed run's samples, encoded exactly as training encodes them (the
tiny processor of the smoke recipe), in the manifest's order: one more table, and the padded
micro-batch baseline (each batch padded to its longest sample).

Prints markdown tables (for docs/PERFORMANCE.md, "Padding removed by sequence packing").
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]


def uniform_lengths(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(200, 1500) for _ in range(n)]


def lognormal_lengths(n: int, seed: int, max_length: int = 2048) -> list[int]:
    rng = random.Random(seed)
    return [min(max_length, max(16, round(rng.lognormvariate(math.log(500), 0.8)))) for _ in range(n)]


def held_lookahead(n: int, buffer: int) -> int:
    return min(n, buffer)


def algorithms(max_length: int) -> list[tuple[str, Callable[[Sequence[int]], list[list[int]]], Callable[[int], int]]]:
    from ain.train.collate import best_fit_decreasing, pack_rows, pack_stream

    out = []
    for b in (64, 1024):
        out.append((f"look-ahead best fit, window {b:,} (before)",
                    lambda ls, b=b: pack_rows(ls, max_length, b), lambda n, b=b: min(n, b)))
    for b in (256, 1024, 4096):
        note = " (train.packing_buffer default)" if b == 1024 else ""
        out.append((f"buffered best-fit decreasing, window {b:,}{note}",
                    lambda ls, b=b: pack_stream(ls, max_length, b), lambda n, b=b: min(n, b)))
    out.append(("best-fit decreasing, whole stream (ceiling)",
                lambda ls: best_fit_decreasing(ls, max_length), lambda n: n))
    return out


def table(name: str, lengths: list[int], max_length: int, note: Optional[str] = None) -> list[dict]:
    n, useful = len(lengths), sum(lengths)
    print(f"\n**{name}**: {n:,} samples, {min(lengths)}-{max(lengths)} tokens, mean {useful / n:,.0f}"
          f"{'; ' + note if note else ''}\n")
    print("| algorithm | rows | fill | fill without the last 1% of rows | samples held at most (bound) | seconds |")
    print("|---|---|---|---|---|---|")
    results = []
    for label, pack, held in algorithms(max_length):
        t0 = time.perf_counter()
        rows = pack(lengths)
        seconds = time.perf_counter() - t0
        assert sorted(i for row in rows for i in row) == list(range(n)), label  # every sample once
        assert all(sum(lengths[i] for i in row) <= max_length for row in rows), label
        fill = useful / (len(rows) * max_length)
        keep = rows[:max(1, len(rows) - len(rows) // 100)]
        body = sum(lengths[i] for row in keep for i in row) / (len(keep) * max_length)
        print(f"| {label} | {len(rows):,} | **{fill:.4f}** | {body:.4f} | {held(n):,} | {seconds:.2f} |")
        results.append({"algorithm": label, "rows": len(rows), "fill": fill})
    return results


def shard_lengths(pack_out: Path, model: str, recipe: str) -> tuple[list[int], int, int]:
    from transformers import AutoProcessor

    from ain.config import load_config
    from ain.data.shards import image_members, iter_samples
    from ain.train.collate import try_encode

    cfg = load_config([f"recipe={recipe}", "cluster=local"], check_paths=False).train
    processor = AutoProcessor.from_pretrained(model)
    lengths, skipped = [], 0
    for sample, images in iter_samples(pack_out):
        enc, _ = try_encode(processor, sample, [images[name] for name in image_members(sample)], cfg)
        if enc is None:
            skipped += 1
        else:
            lengths.append(enc.length)
    return lengths, skipped, cfg.max_length


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20000, help="samples per synthetic stream")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--shards", type=Path, help="also: a pack stage's output, encoded as training does")
    p.add_argument("--model", default=str(ROOT / ".cache/tiny/judge"), help="processor for --shards")
    p.add_argument("--recipe", default="smoke", help="recipe whose train section --shards encodes with")
    args = p.parse_args()

    table(f"uniform [200, 1500], seed {args.seed}", uniform_lengths(args.n, args.seed), args.max_length)
    table(f"lognormal (median 500, sigma 0.8) clipped to [16, {args.max_length}], seed {args.seed}",
          lognormal_lengths(args.n, args.seed, args.max_length), args.max_length)
    if args.shards:
        lengths, skipped, max_length = shard_lengths(args.shards, args.model, args.recipe)
        table(f"{args.shards} encoded with {args.model}", lengths, max_length,
              f"{skipped} over max_length {max_length} or unusable; rows of {max_length}")
        print("\n| padded micro-batches in data order (baseline) | batches | useful / total tokens |\n|---|---|---|")
        for size in (2, 4, 8):
            batches = [lengths[i:i + size] for i in range(0, len(lengths), size)]
            total = sum(max(x) * len(x) for x in batches)
            print(f"| of {size} | {len(batches)} | {sum(lengths) / total:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
