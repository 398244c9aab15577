"""Peak memory of CachedMultipleNegativesRankingLoss vs plain MultipleNegativesRankingLoss as the
batch grows: the point of the cached loss is memory flat in the batch size.

    OMP_NUM_THREADS=1 .venv/bin/python bench/cmnrl_memory.py [--batches 8 32 128] [--mini-batch 4]
                                                              [--tokens 256] [--model .cache/tiny/vdr_embedder]

CPU, tiny scale: the tiny random Qwen3-VL embedder (64 wide, 2 layers; built if missing), wrapped
as in the recipe in MatryoshkaLoss(dims 64/32/16), one optimizer step (forward, backward, AdamW)
on (query, image) pairs: a generated Arabic query padded to about --tokens tokens (so activations,
which grow with batch x tokens, dominate over the 0.2M weights) and a 32x32 fixture image.

Each (loss, batch) runs in a fresh subprocess: it loads the model, runs one warm-up step at batch
2 (allocator, lazy imports, optimizer state), records its RSS high-water mark (ru_maxrss), runs
the measured step, and reports the growth of the high-water mark in MB: the extra peak memory the
step at that batch size needed. CPU has no allocator peak counter like
torch.cuda.max_memory_allocated, so RSS is the honest measure here; it includes allocator slack
(a few MB of noise). On a GPU the same script reports torch.cuda.max_memory_allocated instead.

Prints one JSON object per line, then a summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(model_dir: str, loss_name: str, batch: int, mini_batch: int, tokens: int) -> dict:
    import resource

    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    from PIL import Image
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MatryoshkaLoss,
        MultipleNegativesRankingLoss,
    )

    from ain_testkit.pearl_fixture import CATEGORIES, COUNTRIES, make_image, query_text

    cuda = torch.cuda.is_available()
    model = SentenceTransformer(model_dir, device="cuda" if cuda else "cpu")
    base = (CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini_batch) if loss_name == "cached_mnrl"
            else MultipleNegativesRankingLoss(model))
    loss = MatryoshkaLoss(model, base, matryoshka_dims=[64, 32, 16])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    import io

    def batch_of(n: int):
        qs, imgs = [], []
        for i in range(n):
            cat, country = CATEGORIES[i % len(CATEGORIES)], COUNTRIES[(i // len(CATEGORIES)) % len(COUNTRIES)]
            words = []
            while len(words) < tokens // 3:  # about 3 BPE tokens a word with the tiny tokenizer
                words += query_text(cat, country, i).split()
            qs.append(f"{i} " + " ".join(words))
            imgs.append(Image.open(io.BytesIO(make_image(cat, country, i))))
        return [model.preprocess(qs), model.preprocess(imgs)]

    def step(n: int) -> float:
        feats = batch_of(n)
        if cuda:
            feats = [{k: (v.cuda() if hasattr(v, "cuda") else v) for k, v in f.items()} for f in feats]
        start = time.time()
        opt.zero_grad()
        value = loss(feats, torch.zeros(n))
        value.backward()
        opt.step()
        return time.time() - start

    step(2)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    seconds = step(batch)
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"loss": loss_name, "batch": batch, "mini_batch": mini_batch if loss_name == "cached_mnrl" else None,
            "tokens": tokens, "peak_mb": round(peak_mb, 1), "step_s": round(seconds, 2),
            "device": "cuda" if cuda else "cpu"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--mini-batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--model", default=str(ROOT / ".cache/tiny/vdr_embedder"))
    p.add_argument("--one", nargs=2, metavar=("LOSS", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.model, args.one[0], int(args.one[1]), args.mini_batch, args.tokens)))
        return
    from ain_testkit.tiny_vdr_embedder import ensure_tiny_vdr_embedder

    ensure_tiny_vdr_embedder(args.model)
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for batch in args.batches:
        for loss_name in ("mnrl", "cached_mnrl"):
            out = subprocess.run([sys.executable, __file__, "--one", loss_name, str(batch), "--model", args.model,
                                  "--mini-batch", str(args.mini_batch), "--tokens", str(args.tokens)],
                                 capture_output=True, text=True, env=env, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n| batch | MNRL peak MB | CachedMNRL (mini {args.mini_batch}) peak MB | MNRL s/step | CachedMNRL s/step |")
    print("|---|---|---|---|---|")
    for batch in args.batches:
        m = next(r for r in rows if r["batch"] == batch and r["loss"] == "mnrl")
        c = next(r for r in rows if r["batch"] == batch and r["loss"] == "cached_mnrl")
        print(f"| {batch} | {m['peak_mb']} | {c['peak_mb']} | {m['step_s']} | {c['step_s']} |")


if __name__ == "__main__":
    main()
