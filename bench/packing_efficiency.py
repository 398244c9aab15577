#!/usr/bin/env python
"""Padding removed by sequence packing, on the smoke pipeline's packed shards.

    python bench/packing_efficiency.py <run_dir>/stages/pack/out [--model .cache/tiny/judge]

Every sample of the shards is encoded exactly as training encodes it (chat template, images
resized to the smoke recipe's pixel bounds, labels), giving its token count. Then, per layout:

  useful tokens / total tokens in the rows a step would process
  - padded micro-batches of B samples in data order (the baseline: each padded to its longest)
  - packed rows (ain.train.collate.pack_rows, best fit in a look-ahead window), counted as if each
    row were padded to max_length (static shapes); as executed, packed rows carry no padding at
    all (position ids and per-sample rope keep attention within each sample), so this is the
    share of the row budget filled

Prints a markdown table (for docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ratio(fill: list[tuple[int, int]]) -> float:
    return sum(u for u, _ in fill) / max(1, sum(t for _, t in fill))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pack_out", type=Path)
    p.add_argument("--model", default=str(ROOT / ".cache/tiny/judge"))
    p.add_argument("--recipe", default="smoke")
    args = p.parse_args()

    from transformers import AutoProcessor

    from ain.config import load_config
    from ain.data.shards import image_members, iter_samples
    from ain.train.collate import pack_rows, try_encode

    cfg = load_config([f"recipe={args.recipe}", "cluster=local"], check_paths=False).train
    processor = AutoProcessor.from_pretrained(args.model)
    lengths, skipped = [], 0
    for sample, images in iter_samples(args.pack_out):
        order = [images[name] for name in image_members(sample)]
        enc, _ = try_encode(processor, sample, order, cfg)
        if enc is None:
            skipped += 1
        else:
            lengths.append(enc.length)
    n, useful = len(lengths), sum(lengths)
    print(f"{n} samples encoded ({skipped} over max_length {cfg.max_length} or unusable); tokens per sample: "
          f"min {min(lengths)}, mean {useful / n:.0f}, max {max(lengths)}\n")
    print("| layout | rows | useful / total tokens | without the last (partial) row |\n|---|---|---|---|")
    for b in (2, 4, 8):
        batches = [lengths[i:i + b] for i in range(0, n, b)]
        fill = [(sum(x), max(x) * len(x)) for x in batches]
        print(f"| padded micro-batches of {b} (baseline) | {len(batches)} | {_ratio(fill):.3f} | {_ratio(fill[:-1]):.3f} |")
    for max_length in sorted({cfg.max_length, 2048}):
        for buffer in (1, cfg.packing_buffer, 64):
            rows = pack_rows(lengths, max_length, buffer)
            fill = [(sum(lengths[i] for i in row), max_length) for row in rows]
            print(f"| packed to {max_length}, look-ahead {buffer} | {len(rows)} | {_ratio(fill):.3f} | "
                  f"{_ratio(fill[:-1]):.3f} |")
    print("| packed, as executed (no padding) | - | 1.000 | 1.000 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
