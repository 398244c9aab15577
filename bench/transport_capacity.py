"""Judge clients against a server with realistic latency: custom transport vs libraries.

The stand-in OpenAI-compatible server (bench/_standin.py: a separate process, asyncio, HTTP/1.1
keep-alive on 127.0.0.1) answers POST /v1/chat/completions after a fixed latency L (default 1 s,
the order of a real judge's answer) with at most B requests in service at once (default 64, a
vLLM batch); the excess waits in its queue. Its capacity is B / L requests per second. Against it, in the same
run and interleaved round by round, each client sends the same N = waves x B requests (default
4 x 64 = 256, four latency periods) with concurrency k (default B and 2B: exactly the server's
batch, and above it, as a judge stage's `max_concurrency` is best set):

  - chat_http11:  `ChatClient` on the hand-written `Http11Transport` (one single-connection
                  httpx client per in-flight slot), its path for plain-http endpoints (taken from
                  `ain.serve.transport`, or from the git history should it ever be removed);
  - chat_httpx:   `ChatClient` on httpx's default transport (`fast_transport=False`, its path
                  for https and proxied endpoints: one pooled `httpx.AsyncClient` with
                  `Limits(max_connections=k)`);
  - chat_httpx_slots: `ChatClient` with the per-slot plumbing of chat_http11 but httpx's default
                  transport (one httpx client with a pool of one connection per slot): separates
                  the transport's cost from the shared pool's;
  - openai:       the official `openai.AsyncOpenAI` client (its own pooled httpx2 client),
                  `chat.completions.create` from k workers, max_retries=0.

Each client first sends k requests (connections opened, code paths warmed), then the
N measured ones. Achieved req/s = N / wall time from the first send to the last answer; ratio to
capacity = achieved / (B / L); client CPU = `time.process_time` of this process per request
(the server is another process). Prints one JSON object per measurement, a summary per client
(median and worst over --rounds) and a markdown table. At k = B every millisecond between an
answer and the next request is idle server time, and the first wave's sends and the last
wave's answers are a fixed cost that N = 4B does not amortise, so even an ideal client stays a
little under 1.0 there; at k = 2B the server's queue hides the client's turnaround.

    OMP_NUM_THREADS=1 .venv/bin/python bench/transport_capacity.py            # ~100 s
    OMP_NUM_THREADS=1 .venv/bin/python bench/transport_capacity.py --latency 1 --batch 64 --concurrency 64 128 \
        --waves 4 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

import httpx  # noqa: E402
from _standin import server_stats, standin_server  # noqa: E402 - bench/_standin.py

from ain.serve.client import ChatClient  # noqa: E402

TRANSPORT_PATH = "lib/ain/serve/transport.py"


# clients (this process) ---------------------------------------------------------------------------
def load_http11_transport():
    """`Http11Transport` from the package, or (once it is removed) from the last commit that had it."""
    try:
        from ain.serve.transport import Http11Transport
        return Http11Transport, "lib/ain/serve/transport.py (working tree)"
    except ImportError:
        pass
    git = ["git", "-C", str(ROOT)]
    removed_in = subprocess.run(git + ["rev-list", "-n", "1", "HEAD", "--", TRANSPORT_PATH],
                                capture_output=True, text=True, check=True).stdout.strip()
    if not removed_in:
        raise SystemExit(f"{TRANSPORT_PATH} is neither in the working tree nor in the git history")
    source = subprocess.run(git + ["show", f"{removed_in}^:{TRANSPORT_PATH}"], capture_output=True, text=True,
                            check=True).stdout
    module = types.ModuleType("bench_http11_transport")
    exec(compile(source, f"{removed_in[:10]}^:{TRANSPORT_PATH}", "exec"), module.__dict__)
    return module.Http11Transport, f"{TRANSPORT_PATH} at {removed_in[:10]}^ (git history)"


def http11_chat_client(transport_cls, base_url: str, **kw) -> ChatClient:
    """ChatClient with the old plumbing for plain-http endpoints: one single-connection httpx
    client per in-flight slot, each on its own `Http11Transport`."""

    class Http11ChatClient(ChatClient):
        def _new_http(self) -> httpx.AsyncClient:
            http = httpx.AsyncClient(transport=transport_cls(), timeout=httpx.Timeout(self.request_timeout_s),
                                     trust_env=False)
            self._all.append(http)
            return http

    return Http11ChatClient(base_url, "bench", **kw)


def httpx_chat_client(base_url: str, **kw) -> ChatClient:
    """ChatClient on httpx's default transport (`fast_transport=False`, where the flag exists)."""
    if "fast_transport" in inspect.signature(ChatClient).parameters:
        kw["fast_transport"] = False
    client = ChatClient(base_url, "bench", **kw)
    assert not getattr(client, "uses_fast_transport", False)
    return client


def httpx_slot_chat_client(base_url: str, **kw) -> ChatClient:
    """ChatClient with one httpx client per in-flight slot, each on httpx's default transport with
    a pool of one connection (the per-slot plumbing of `chat_http11` without the custom transport)."""

    class SlotChatClient(ChatClient):
        def _new_http(self) -> httpx.AsyncClient:
            http = httpx.AsyncClient(limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                                     timeout=httpx.Timeout(self.request_timeout_s), trust_env=False)
            self._all.append(http)
            return http

    return SlotChatClient(base_url, "bench", **kw)


def httpx2_slot_chat_client(base_url: str, **kw) -> ChatClient:
    """As `httpx_slot_chat_client` on httpx2 (the fork the openai client uses, whose pool has the
    quadratic scans fixed). Optional: not a project dependency; only the success path is
    exercised (ChatClient catches httpx's exception types, not httpx2's)."""
    import httpx2

    class Httpx2SlotChatClient(ChatClient):
        def _new_http(self):
            http = httpx2.AsyncClient(limits=httpx2.Limits(max_connections=1, max_keepalive_connections=1),
                                      timeout=httpx2.Timeout(self.request_timeout_s), trust_env=False)
            self._all.append(http)
            return http

    client = Httpx2SlotChatClient(base_url, "bench", **kw)
    client._url = str(client._url)
    return client


def requests_for(n: int, tag: str) -> list[list[dict]]:
    return [[{"role": "user", "content": f"[{tag}] Rate translation {i}: " + "x" * 200}] for i in range(n)]


async def run_chat_client(client: ChatClient, warm: list, measured: list) -> tuple[float, float, int]:
    try:
        await client.chat_many([{"messages": m} for m in warm])
        cpu0, t0 = time.process_time(), time.perf_counter()
        results = await client.chat_many([{"messages": m} for m in measured])
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await client.aclose()
    return wall, cpu, sum(isinstance(r, Exception) for r in results)


async def run_openai(base_url: str, k: int, warm: list, measured: list) -> tuple[float, float, int]:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=60.0)

    async def many(batch: list) -> int:
        todo, failures = iter(batch), 0

        async def worker() -> None:
            nonlocal failures
            for messages in todo:
                try:
                    r = await client.chat.completions.create(model="bench", messages=messages, temperature=0.0,
                                                             top_p=1.0, max_tokens=16)
                    assert r.choices[0].message.content
                except Exception:  # noqa: BLE001 - counted, like ChatClient.chat_many's returned exceptions
                    failures += 1

        await asyncio.gather(*(worker() for _ in range(min(k, len(batch)))))
        return failures

    try:
        await many(warm)
        cpu0, t0 = time.process_time(), time.perf_counter()
        failures = await many(measured)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await client.close()
    return wall, cpu, failures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=1.0, help="server latency per request, seconds (L)")
    ap.add_argument("--batch", type=int, default=64, help="requests the server serves at once (B)")
    ap.add_argument("--concurrency", type=int, nargs="*", help="client concurrencies k (default B and 2B)")
    ap.add_argument("--waves", type=int, default=4, help="measured requests N = waves x B")
    ap.add_argument("--rounds", type=int, default=2, help="rounds; the clients are interleaved within each")
    ap.add_argument("--clients", nargs="*", default=["chat_http11", "chat_httpx", "chat_httpx_slots", "openai"],
                    help="also: chat_httpx2_slots (needs httpx2, which openai 3.x installs)")
    args = ap.parse_args()
    ks = args.concurrency or [args.batch, 2 * args.batch]
    if min(ks) < args.batch:
        raise SystemExit(f"client concurrency {min(ks)} < server batch {args.batch}: the client could not fill it")
    n = args.waves * args.batch
    capacity = args.batch / args.latency
    http11, http11_from = (load_http11_transport() if "chat_http11" in args.clients else (None, None))
    if "openai" in args.clients:
        import openai  # noqa: F401  (import outside the timings)

    results: dict[tuple[int, str], list[dict]] = {(k, c): [] for k in ks for c in args.clients}
    with standin_server(args.latency, args.batch) as base_url:
        for rnd, k, name in ((r, k, c) for r in range(args.rounds) for k in ks for c in args.clients):
            opts = dict(max_concurrency=k, request_timeout_s=60, max_retries=0, max_tokens=16)
            warm, measured = requests_for(k, f"{rnd}-{name}-warm"), requests_for(n, f"{rnd}-{name}")
            server_stats(base_url)  # resets the server's high-water mark
            if name == "chat_http11":
                wall, cpu, failures = asyncio.run(run_chat_client(
                    http11_chat_client(http11, base_url, **opts), warm, measured))
            elif name == "chat_httpx":
                wall, cpu, failures = asyncio.run(run_chat_client(httpx_chat_client(base_url, **opts),
                                                                  warm, measured))
            elif name == "chat_httpx_slots":
                wall, cpu, failures = asyncio.run(run_chat_client(httpx_slot_chat_client(base_url, **opts),
                                                                  warm, measured))
            elif name == "chat_httpx2_slots":
                wall, cpu, failures = asyncio.run(run_chat_client(httpx2_slot_chat_client(base_url, **opts),
                                                                  warm, measured))
            elif name == "openai":
                wall, cpu, failures = asyncio.run(run_openai(base_url, k, warm, measured))
            else:
                raise SystemExit(f"unknown client {name!r}")
            row = {"what": "measure", "round": rnd, "client": name, "concurrency": k, "n": n, "wall_s": round(wall, 3),
                   "req_per_s": round(n / wall, 2), "ratio_to_capacity": round(n / wall / capacity, 4),
                   "client_cpu_ms_per_req": round(1000 * cpu / n, 3), "failures": failures,
                   "server_max_in_service": server_stats(base_url)["max_in_service"]}
            results[k, name].append(row)
            print(json.dumps(row), flush=True)

    summary = []
    for (k, name), rows in results.items():
        rates = [r["req_per_s"] for r in rows]
        med = statistics.median(rates)
        ref = results.get((k, "chat_http11"))
        base = statistics.median(r["req_per_s"] for r in ref) if ref else None
        s = {"what": "summary", "client": name, "concurrency": k, "rounds": len(rows),
             "req_per_s_median": round(med, 2), "req_per_s_best": round(max(rates), 2),
             "ratio_to_capacity_median": round(med / capacity, 4),
             "ratio_to_capacity_min": round(min(rates) / capacity, 4),
             "ratio_to_chat_http11": round(med / base, 4) if base else None,
             "client_cpu_ms_per_req": round(statistics.median(r["client_cpu_ms_per_req"] for r in rows), 3),
             "failures": sum(r["failures"] for r in rows)}
        summary.append(s)
        print(json.dumps(s), flush=True)
    print(json.dumps({"what": "setup", "latency_s": args.latency, "batch": args.batch, "concurrency": ks, "n": n,
                      "capacity_req_per_s": capacity, "http11_transport_from": http11_from,
                      "python": platform.python_version(), "httpx": version("httpx"),
                      "openai": _version("openai"), "cores": os.cpu_count()}), flush=True)
    print(f"\n| client | k | req/s (median of {args.rounds}) | ratio to capacity B/L = {capacity:g} (median; worst) "
          "| ratio to ChatClient + Http11Transport | client CPU ms/req | failures |\n|---|---|---|---|---|---|---|")
    for s in summary:
        rel = f"{s['ratio_to_chat_http11']:.3f}" if s["ratio_to_chat_http11"] is not None else "-"
        print(f"| {s['client']} | {s['concurrency']} | {s['req_per_s_median']:.1f} | "
              f"{s['ratio_to_capacity_median']:.3f}; {s['ratio_to_capacity_min']:.3f} | {rel} | "
              f"{s['client_cpu_ms_per_req']} | {s['failures']} |")


def _version(name: str) -> str | None:
    try:
        return version(name)
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    main()
