"""The stand-in OpenAI-compatible server of the client benchmarks (client_saturation.py,
transport_capacity.py, translate_throughput.py): the shape of a vLLM server with a fixed batch,
without a model.

A separate process (asyncio, HTTP/1.1 keep-alive on 127.0.0.1) answers each POST
/v1/chat/completions after a latency L, or one drawn uniformly from L x [1 - jitter, 1 + jitter]
(seeded, drawn in arrival order), with at most B requests in service at once; the excess waits in
its queue. Its capacity is B / L requests per second. The answer is a fixed judge verdict
(`{"score": 4}`, built once), or with `echo` the text of the last message after its first blank
line (a translator's prompt: the text to translate comes back, markers and all, so every round
trip passes its marker checks).

GET /stats returns the counts since the previous /stats and resets them: `hits` (answered
requests), `in_service`, `max_in_service`, `busy_slot_s` (the latencies of the answered requests
summed) and `trace` (pairs of `time.monotonic()` and requests in service, sampled every 50 ms;
CLOCK_MONOTONIC is system-wide on Linux, so the client can line it up with its own clock).

    with standin_server(latency_s=1.0, batch=64) as base_url:        # http://127.0.0.1:<port>/v1
        server_stats(base_url)                                       # reset before a measurement
        ...
        stats = server_stats(base_url)

    python bench/_standin.py --latency 1 --batch 64 [--jitter 0.5 --seed 0 --echo]   # prints its port
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx

ANSWER = json.dumps({"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
                     "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                  "message": {"role": "assistant", "content": "{\"score\": 4}"}}],
                     "usage": {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55}}).encode()
TRACE_EVERY_S = 0.05
_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


# client side (the benchmark's process) ------------------------------------------------------------
@contextlib.contextmanager
def standin_server(latency_s: float, batch: int, jitter: float = 0.0, seed: int = 0,
                   echo: bool = False) -> Iterator[str]:
    """Start the stand-in in a child process; yields its base URL; stops it on exit."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--latency", str(latency_s), "--batch", str(batch),
           "--jitter", str(jitter), "--seed", str(seed), *(["--echo"] if echo else [])]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        port = server.stdout.readline().strip()
        if not port.isdigit():
            raise SystemExit(f"the stand-in server did not start (exit status {server.wait()})")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        server.wait()


def server_stats(base_url: str) -> dict:
    """The server's counts since the last call (which this call resets)."""
    return httpx.get(base_url.rsplit("/v1", 1)[0] + "/stats", timeout=10).json()


# server side (the child process) ------------------------------------------------------------------
def _http(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def _echo_answer(body: bytes) -> bytes:
    prompt = json.loads(body)["messages"][-1]["content"]
    text = prompt.split("\n\n", 1)[1]  # the text to translate, echoed: markers kept
    answer = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
              "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
              "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4,
                        "total_tokens": (len(prompt) + len(text)) // 4}}
    return _http(json.dumps(answer, ensure_ascii=False).encode())


async def serve(latency_s: float, batch: int, jitter: float = 0.0, seed: int = 0, echo: bool = False) -> None:
    slots = asyncio.Semaphore(batch)
    rng = random.Random(seed)
    fixed = _http(ANSWER)
    stats = {"hits": 0, "in_service": 0, "max_in_service": 0, "busy_slot_s": 0.0}
    trace: list[tuple[float, int]] = []

    async def sample_occupancy() -> None:
        while True:
            trace.append((time.monotonic(), stats["in_service"]))
            await asyncio.sleep(TRACE_EVERY_S)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                m = _CONTENT_LENGTH.search(head)
                body = await reader.readexactly(int(m.group(1))) if m else b""
                if head.startswith(b"GET /stats"):
                    writer.write(_http(json.dumps({**stats, "trace": trace}).encode()))
                    stats.update(hits=0, max_in_service=stats["in_service"], busy_slot_s=0.0)
                    trace.clear()
                    await writer.drain()
                    continue
                response = _echo_answer(body) if echo else fixed
                delay = latency_s * rng.uniform(1.0 - jitter, 1.0 + jitter) if jitter else latency_s
                async with slots:  # at most `batch` in service; the rest queue here
                    stats["in_service"] += 1
                    stats["max_in_service"] = max(stats["max_in_service"], stats["in_service"])
                    await asyncio.sleep(delay)
                    stats["in_service"] -= 1
                    stats["busy_slot_s"] += delay
                    stats["hits"] += 1
                writer.write(response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    sampler = asyncio.ensure_future(sample_occupancy())  # noqa: F841 - a reference: the loop holds tasks weakly
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, required=True, help="mean latency per request, seconds (L)")
    ap.add_argument("--batch", type=int, required=True, help="requests in service at once (B)")
    ap.add_argument("--jitter", type=float, default=0.0, help="latency uniform in L x [1 - jitter, 1 + jitter]")
    ap.add_argument("--seed", type=int, default=0, help="seed of the latency draws")
    ap.add_argument("--echo", action="store_true", help="answer with the prompt's text after its first blank line")
    args = ap.parse_args()
    asyncio.run(serve(args.latency, args.batch, args.jitter, args.seed, args.echo))


if __name__ == "__main__":
    main()
