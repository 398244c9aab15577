"""The translator's answer budget: sized to the input, and a reply cut at its budget is never kept.

The client is a stand-in (a recorded list of replies with their finish_reason) because the point is
the Translator's decisions; the real servers (transformers serve, vLLM) report finish_reason
"length" the same way (tests/e2e)."""

from __future__ import annotations

import asyncio

from ain.curate.config import TranslateConfig
from ain.curate.translator import Translator, output_budget
from ain.serve.client import ChatResult


class ScriptedClient:
    def __init__(self, replies: list[tuple[str, str]]) -> None:
        self.replies = list(replies)
        self.budgets: list[int] = []

    async def chat(self, messages, *, temperature=None, top_p=None, max_tokens=None, **kw) -> ChatResult:
        self.budgets.append(max_tokens)
        text, finish = self.replies.pop(0)
        return ChatResult(text=text, finish_reason=finish)


def cfg(**kw) -> TranslateConfig:
    c = TranslateConfig(**kw)
    c.translator.max_tokens = 1000
    return c


def test_budget_follows_the_input_between_the_floor_and_the_ceiling():
    c = cfg(output_tokens_per_char=1.0, min_output_tokens=64)
    assert output_budget(c, "x" * 10) == 64
    assert output_budget(c, "x" * 300) == 300
    assert output_budget(c, "x" * 6000) == 1000
    assert output_budget(cfg(output_tokens_per_char=0.5), "x" * 301) == 151


def run_attempt(replies: list[tuple[str, str]], text: str = "Hello there, how are you?"):
    client = ScriptedClient(replies)
    translator = Translator(client, cfg())
    turns = translator.prepare({"turns": [{"role": "user", "content": text}]})
    return asyncio.run(translator.attempt(turns, 0, 0.0)), client.budgets


def test_a_cut_reply_is_asked_again_with_twice_the_budget():
    attempt, budgets = run_attempt([("مرحبا كيف", "length"), ("مرحبا، كيف حالك؟", "stop"), ("Hello, how are you?", "stop")])
    assert attempt["error"] is None and attempt["turns"][0]["ar"] == "مرحبا، كيف حالك؟"
    assert budgets == [64, 128, 64]


def test_cut_at_the_ceiling_is_a_failed_attempt_with_reason_truncated():
    replies = [("cut", "length")] * 5
    attempt, budgets = run_attempt(replies, text="y" * 600)
    assert budgets == [600, 1000]                                    # 600 -> 1000 (the ceiling), then give up
    assert attempt["error"].startswith("truncated: the reply reached max_tokens=1000 for 600 characters")
    assert "ar" not in attempt["turns"][0]                           # nothing cut is kept
