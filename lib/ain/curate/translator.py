"""Round-trip translation of one sample: every text turn EN -> AR, then AR -> EN with the same
translator, protected spans masked (see protect.py) and their markers checked both ways.

The result is an *attempt*: what the translator said, per turn, still masked, so verification can
compare the translated words only, and the Arabic sample can be rebuilt with every protected
span restored verbatim.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from ain.curate.config import TranslateConfig
from ain.curate.protect import MarkerError, check_markers, mask, unmask
from ain.serve.client import ChatClient, InvalidAnswer, RequestRejected


class UntranslatableSample(ValueError):
    """The sample cannot be translated under the configured policy (e.g. over-long text)."""


class Truncated(ValueError):
    """The translator stopped at its token budget (finish_reason "length"): a cut translation."""


def output_budget(cfg: TranslateConfig, text: str) -> int:
    """max_tokens for translating `text`: translate.output_tokens_per_char per character, at least
    translate.min_output_tokens, at most the translator's max_tokens (the ceiling)."""
    wanted = max(cfg.min_output_tokens, math.ceil(len(text) * cfg.output_tokens_per_char))
    return min(wanted, cfg.translator.max_tokens)


@dataclass
class Translator:
    client: ChatClient
    cfg: TranslateConfig

    async def _ask(self, prompt_template: str, text: str, temperature: float) -> str:
        """The translation of `text`. A reply cut at its token budget is asked again with twice the
        budget (up to the translator's max_tokens); cut again, it raises Truncated: a failed
        attempt, never a silently shortened translation."""
        judge = self.cfg.translator
        messages = [{"role": "user", "content": prompt_template.replace("{text}", text)}]
        budget = output_budget(self.cfg, text)
        while True:
            result = await self.client.chat(messages, temperature=temperature, top_p=judge.top_p, max_tokens=budget)
            if result.finish_reason != "length":
                return result.text.strip()
            if budget >= judge.max_tokens:
                raise Truncated(f"truncated: the reply reached max_tokens={budget} for {len(text)} characters "
                                f"(translate.translator.max_tokens caps the budget)")
            budget = min(2 * budget, judge.max_tokens)

    def prepare(self, sample: dict[str, Any]) -> list[dict[str, Any]]:
        """Masked turns of a sample; raises UntranslatableSample per the empty/over-long policy."""
        turns = []
        for i, turn in enumerate(sample["turns"]):
            text = turn["content"]
            if len(text) > self.cfg.max_chars:
                if self.cfg.over_long == "skip":
                    raise UntranslatableSample(f"over_long: turn {i} has {len(text)} chars > translate.max_chars")
                text = text[: self.cfg.max_chars]
            m = mask(text)
            turns.append({"turn": i, "role": turn["role"], "en": m.text, "spans": list(m.spans),
                          "copied": not m.translatable, "truncated": text != turn["content"]})
        if not any(not t["copied"] for t in turns):
            raise UntranslatableSample("empty: no translatable text in any turn")
        return turns

    async def attempt(self, turns: list[dict[str, Any]], number: int, temperature: float) -> dict[str, Any]:
        """One round trip of all turns, concurrently. Marker loss or an unusable answer is
        recorded as the attempt's error (verification then retries or rejects the sample);
        an unreachable endpoint raises, failing the task so a re-run resumes it."""
        out = [dict(t) for t in turns]
        record: dict[str, Any] = {"attempt": number, "temperature": temperature, "turns": out, "error": None}
        todo = [t for t in out if not t["copied"]]
        try:
            forward = await asyncio.gather(*(self._ask(self.cfg.to_ar_prompt, t["en"], temperature) for t in todo))
            for t, ar in zip(todo, forward):
                check_markers(ar, len(t["spans"]))
                t["ar"] = ar
            back = await asyncio.gather(*(self._ask(self.cfg.to_en_prompt, t["ar"], temperature) for t in todo))
            for t, en in zip(todo, back):
                check_markers(en, len(t["spans"]))
                t["back"] = en
        except (MarkerError, Truncated) as exc:
            record["error"] = str(exc)
        except (InvalidAnswer, RequestRejected) as exc:
            record["error"] = f"answer: {type(exc).__name__}: {str(exc)[:300]}"
        for t in out:
            if t["copied"]:
                t["ar"] = t["back"] = t["en"]
        return record


def arabic_sample(sample: dict[str, Any], attempt: dict[str, Any]) -> dict[str, Any]:
    """The translated sample: same images and structure, Arabic turns, spans restored."""
    turns = [{"role": t["role"], "content": unmask(t["ar"], tuple(t["spans"]))} for t in attempt["turns"]]
    return {**sample, "id": f"{sample['id']}-ar", "turns": turns, "language": "ar", "authentic": False,
            "translation_of": sample["id"]}
