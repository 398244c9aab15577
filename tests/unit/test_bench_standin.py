"""bench/_standin.py, the stand-in OpenAI-compatible server the client benchmarks share
(client_saturation, transport_capacity, translate_throughput): it holds at most `batch` requests
in service, answers after the latency (drawn within the jitter), speaks what `ChatClient` reads,
echoes a translator's text with `echo`, and its /stats counts reset on each call."""

from __future__ import annotations

import asyncio
import time

import pytest

from ain.serve.client import ChatClient
from bench._standin import server_stats, standin_server


def _chat_many(base_url: str, contents: list[str]) -> list:
    client = ChatClient(base_url, "bench", max_concurrency=len(contents), request_timeout_s=30, max_retries=0,
                        max_tokens=16)

    async def go() -> list:
        try:
            return await client.chat_many([{"messages": [{"role": "user", "content": c}]} for c in contents])
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_a_fixed_verdict_after_the_latency_at_most_batch_at_once():
    with standin_server(latency_s=0.2, batch=4) as base_url:
        server_stats(base_url)
        t0 = time.perf_counter()
        results = _chat_many(base_url, [f"rate {i}" for i in range(8)])
        wall = time.perf_counter() - t0
        stats = server_stats(base_url)
        again = server_stats(base_url)
    assert [r.text for r in results] == ['{"score": 4}'] * 8
    assert wall >= 0.4  # 8 requests, 4 at a time: two latency periods
    assert stats["hits"] == 8 and stats["max_in_service"] == 4 and stats["in_service"] == 0
    assert stats["busy_slot_s"] == pytest.approx(8 * 0.2) and stats["trace"]
    assert again["hits"] == 0 and again["max_in_service"] == 0 and again["busy_slot_s"] == 0  # reset by the call


def test_echo_returns_the_text_after_the_blank_line_with_jittered_latency():
    texts = [f"Sample {i} ⟦0⟧ with <image> kept" for i in range(6)]
    with standin_server(latency_s=0.1, batch=8, jitter=0.5, seed=3, echo=True) as base_url:
        server_stats(base_url)
        results = _chat_many(base_url, [f"Translate into Arabic:\n\n{t}" for t in texts])
        stats = server_stats(base_url)
    assert [r.text for r in results] == texts
    assert 6 * 0.05 <= stats["busy_slot_s"] <= 6 * 0.15 and stats["busy_slot_s"] != pytest.approx(6 * 0.1)
