"""The translate stage against a translator server at cluster scale: pipeline vs commit windows.

The stand-in OpenAI-compatible server as a translator (bench/_standin.py with `echo`: a separate
process, asyncio, HTTP/1.1 keep-alive on 127.0.0.1) answers each POST /v1/chat/completions by
echoing the text to translate (the prompt's part after its blank line, markers and all, so every
round trip passes its marker checks) after a latency drawn uniformly from L x [1 - jitter,
1 + jitter] (default L = 2 s, jitter 0.5: a 72B model's answers of varying length), with at most B
requests in service at once (default 256, a vLLM batch; the excess waits in its queue). Its capacity is B / L requests per second.

Against it, one scheme after another in the same run, the translate stage's own code runs on
synthetic LLaVA-Instruct-shaped English samples (1 to 3 rounds of user/assistant turns, an
<image> and numbers to mask): the real `ChatClient` (from the translator's `JudgeConfig`, with
its response cache), `Translator`, and `ResumableJsonl` outputs in a temporary directory,

  - pipeline:   `ain.curate.translate.translate_rows` (the stage's pipeline) with the `ain`
                recipe's translate settings (commit_every, translator.max_concurrency,
                in_flight_samples, max_pending_samples);
  - windows:    the stage's previous loop, kept here verbatim (windows of `commit_every`
                samples, each window's samples gathered, then committed), with the settings the
                recipe had (commit_every 16, max_concurrency 64);
  - windows_big: the same window loop with the recipe's new sizes (commit_every and
                max_concurrency as the pipeline row): what larger windows alone would give.

Achieved req/s = requests the server answered / wall time of the stage's loop (first send to the
last commit); ratio = achieved / (B / L); mean batch = the server's mean number of requests in
service (its busy slot-seconds / wall), and the same in steady state (sampled every 50 ms, less the
run's first and last 2 x L x (1 + jitter) seconds: the ramp and the final drain, which a task of
hours amortises). Each scheme's output is checked: every sample once, in
input order, no failed attempt. Prints one JSON object per scheme and a markdown table.

    OMP_NUM_THREADS=1 .venv/bin/python bench/translate_throughput.py          # ~2.5 minutes
    OMP_NUM_THREADS=1 .venv/bin/python bench/translate_throughput.py --latency 2 --jitter 0.5 --batch 256 \\
        --samples 1500 --window-samples 96 --big-window-samples 512
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from _standin import server_stats, standin_server  # noqa: E402 - bench/_standin.py

from ain.atomic import ResumableJsonl, iter_jsonl  # noqa: E402
from ain.config import load_config  # noqa: E402
from ain.curate.config import TranslateConfig  # noqa: E402
from ain.curate.translate import first_attempt, translate_rows, write_first_attempt  # noqa: E402
from ain.curate.translator import Translator  # noqa: E402
from ain.serve.client import ChatClient, ResponseCache  # noqa: E402
from ain.serve.server import Endpoint  # noqa: E402
from ain.stages import windows  # noqa: E402

log = logging.getLogger("translate_throughput")


# samples ------------------------------------------------------------------------------------------
WORDS = ("the a man woman dog cat street table red blue small large standing sitting holding near behind "
         "picture image shows several people car building window tree sky water wearing white black green "
         "playing looking towards front background left right top bottom two three many some each").split()


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    if rng.random() < 0.4:
        words.insert(rng.randrange(len(words)), str(rng.randint(2, 99)))  # a number: masked, ⟦n⟧
    return " ".join(words).capitalize() + "."


def make_samples(n: int, seed: int, tag: str) -> list[dict]:
    """LLaVA-Instruct-150K-shaped English samples: 1 round (detail/complex reasoning, 3 in 5) or
    2-3 rounds (conversations), an <image> in the first question, answers of 20-80 words."""
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        turns = []
        for r in range(rng.choice([1, 1, 1, 2, 3])):
            question = sentence(rng, 6, 16).replace(".", "?")
            turns.append({"role": "user", "content": ("<image>\n" if r == 0 else "") + question})
            turns.append({"role": "assistant", "content": " ".join(sentence(rng, 8, 20) for _ in range(rng.randint(2, 4)))})
        samples.append({"id": f"{tag}-{i:06d}", "language": "en", "domain": "general", "authentic": True,
                        "images": [f"{i:064x}.jpg"], "turns": turns})
    return samples


# schemes ------------------------------------------------------------------------------------------
async def translate_rows_windows(translator: Translator, rows, out: ResumableJsonl, temperature: float) -> None:
    """The translate stage's loop before the pipeline (verbatim but for the shared row writer):
    windows of commit_every samples, all of a window's requests gathered, then one commit."""
    position = out.position
    for window in windows(rows, translator.cfg.commit_every):
        results = await asyncio.gather(*(first_attempt(translator, s, temperature) for s in window))
        for sample, (attempt, skip_reason) in zip(window, results):
            write_first_attempt(out, sample, attempt, skip_reason)
        position += len(window)
        out.commit(position)


async def run_scheme(scheme: str, cfg: TranslateConfig, samples: list[dict], base_url: str, tmp: Path,
                     edge_s: float) -> dict:
    tmp.mkdir(parents=True)
    out = ResumableJsonl({"translations": tmp / "translations-00000.jsonl", "skipped": tmp / "skipped-00000.jsonl"},
                         tmp / "state.json")
    cache = ResponseCache(tmp / "responses-00000.jsonl")
    client = ChatClient.from_judge(cfg.translator, Endpoint(base_url, "bench"), cache=cache)
    translator = Translator(client, cfg)
    try:
        server_stats(base_url)  # reset the server's counts
        cpu0, t0, m0 = time.process_time(), time.perf_counter(), time.monotonic()
        if scheme == "pipeline":
            await translate_rows(translator, iter(samples), out, cfg.translator.temperature, log=log, label=scheme)
        else:
            await translate_rows_windows(translator, iter(samples), out, cfg.translator.temperature)
        wall, cpu, m1 = time.perf_counter() - t0, time.process_time() - cpu0, time.monotonic()
        stats = server_stats(base_url)
        files = out.finish()
    finally:
        await client.aclose()
        cache.close()
        out.close()
    rows = list(iter_jsonl(tmp / "translations-00000.jsonl"))
    assert [r["id"] for r in rows] == [s["id"] for s in samples], f"{scheme}: samples lost, repeated or reordered"
    assert out.counters.get("translated") == len(samples) and not out.counters.get("first_attempt_errors"), out.counters
    assert files["skipped"]["rows"] == 0
    # time.monotonic() is the system-wide CLOCK_MONOTONIC on Linux: the server's trace lines up
    steady = [n for t, n in stats["trace"] if m0 + edge_s <= t <= m1 - edge_s]
    return {"scheme": scheme, "commit_every": cfg.commit_every, "max_concurrency": cfg.translator.max_concurrency,
            "samples_in_flight": cfg.samples_in_flight() if scheme == "pipeline" else cfg.commit_every,
            "samples": len(samples), "requests": stats["hits"], "wall_s": round(wall, 2),
            "req_per_s": round(stats["hits"] / wall, 2), "samples_per_s": round(len(samples) / wall, 2),
            "mean_batch": round(stats["busy_slot_s"] / wall, 1), "max_in_service": stats["max_in_service"],
            "steady_mean_batch": round(sum(steady) / len(steady), 1) if steady else None,
            "client_cpu_ms_per_req": round(1000 * cpu / max(stats["hits"], 1), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=2.0, help="mean server latency per request, seconds (L)")
    ap.add_argument("--jitter", type=float, default=0.5, help="latency uniform in L x [1 - jitter, 1 + jitter]")
    ap.add_argument("--batch", type=int, default=256, help="requests the server serves at once (B)")
    ap.add_argument("--samples", type=int, default=1500, help="samples for the pipeline (the ain recipe)")
    ap.add_argument("--window-samples", type=int, default=96, help="samples for today's windows (16, 64)")
    ap.add_argument("--big-window-samples", type=int, default=512,
                    help="samples for windows at the recipe's new sizes (0: skip that row)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    capacity = args.batch / args.latency
    edge_s = 2 * args.latency * (1 + args.jitter)  # steady state: the run less its first and last 2 x L_max

    recipe = load_config(["recipe=ain", "cluster=slurm"], check_paths=False).translate
    today = copy.deepcopy(recipe)
    today.commit_every, today.translator.max_concurrency = 16, 64  # the recipe before this change
    schemes = [("pipeline", recipe, args.samples), ("windows", today, args.window_samples)]
    if args.big_window_samples:
        schemes.append(("windows_big", copy.deepcopy(recipe), args.big_window_samples))

    results = []
    with standin_server(args.latency, args.batch, jitter=args.jitter, seed=args.seed, echo=True) as base_url, \
            tempfile.TemporaryDirectory(prefix="translate-bench-") as tmp:
        for k, (scheme, cfg, n) in enumerate(schemes):
            samples = make_samples(n, args.seed + k, scheme)  # distinct texts: no cache hits across schemes
            row = asyncio.run(run_scheme(scheme, cfg, samples, base_url, Path(tmp) / scheme, edge_s))
            row["ratio_to_capacity"] = round(row["req_per_s"] / capacity, 4)
            results.append(row)
            print(json.dumps(row), flush=True)

    print(json.dumps({"what": "setup", "latency_s": args.latency, "jitter": args.jitter, "batch": args.batch,
                      "capacity_req_per_s": capacity, "python": platform.python_version(),
                      "cores": os.cpu_count(), "load_avg": os.getloadavg()}), flush=True)
    print(f"\n| scheme | commit_every | max_concurrency | samples in flight | samples | requests | wall s | req/s "
          f"| ratio to capacity B/L = {capacity:g} | mean server batch of {args.batch}: whole run; steady state "
          "| client CPU ms/req |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        in_flight = (f"{r['samples_in_flight']} (pending <= {recipe.pending_samples()})" if r["scheme"] == "pipeline"
                     else f"<= {r['samples_in_flight']} (one window)")
        print(f"| {r['scheme']} | {r['commit_every']} | {r['max_concurrency']} | {in_flight} | {r['samples']} | "
              f"{r['requests']} | {r['wall_s']:.1f} | {r['req_per_s']:.1f} | **{r['ratio_to_capacity']:.3f}** | "
              f"{r['mean_batch']:.0f}; {r['steady_mean_batch']} | {r['client_cpu_ms_per_req']} |")


if __name__ == "__main__":
    main()
