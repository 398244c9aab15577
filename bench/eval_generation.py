#!/usr/bin/env python
"""Batched vs one-at-a-time generation throughput of the eval stage's HF backend (goal >= 5x),
with the tiny Qwen2-VL on CPU and the same fixture prompts and images the eval stage sends.

    OMP_NUM_THREADS=1 python bench/eval_generation.py [--model .cache/tiny/judge] [--items 64]
        [--batch 16] [--max-new-tokens 32]

Prints items/s for batch size 1 and for --batch, and the speed-up.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

from ain.eval.backends import HFBackend
from ain.eval.data import iter_items
from ain.eval.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / ".cache/tiny/judge"))
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    registry = load_registry(ROOT / "configs/eval")
    spec = registry.datasets["foodvqa"]
    items = list(iter_items(spec, str(ROOT / "tests/fixtures/eval")))
    requests = [(it.prompt, it.images(spec.image_side, spec.max_images))
                for it in itertools.islice(itertools.cycle(items), args.items)]
    backend = HFBackend(args.model, dtype="float32", attn_implementation="sdpa")
    backend.generate(requests[:2], 4)  # warm-up
    results = {}
    for batch in (1, args.batch):
        start = time.perf_counter()
        for i in range(0, len(requests), batch):
            backend.generate(requests[i:i + batch], args.max_new_tokens)
        results[batch] = len(requests) / (time.perf_counter() - start)
        print(f"batch {batch:3d}: {results[batch]:7.2f} items/s")
    print(f"speed-up: {results[args.batch] / results[1]:.1f}x ({args.items} items, {args.max_new_tokens} new tokens, "
          f"torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
