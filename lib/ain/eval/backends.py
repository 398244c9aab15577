"""Inference backends; both ask exactly the same prompts with the same images.

- `HFBackend`: transformers in this process. Generation is batched (left padding, greedy,
  images first then the prompt text in one user turn, as the official runner builds it).
  ArabicMMLU takes one forward pass over the raw prompt (no chat template, as util_compute.py)
  and the argmax of the last position's logits restricted to the option letters' token ids
  (`tokenizer.encode(letter)[-1]`).
- `EndpointBackend`: an OpenAI-compatible server (vLLM on a cluster, `transformers serve` in
  tests) through `ain.serve.client.ChatClient`; images are sent as `data:` URLs of the same
  encoded bytes the hf backend decodes (ain.eval.data.Item.image_files). ArabicMMLU goes
  through /v1/completions on the raw prompt with logprobs (vLLM): the option letter with the
  highest logprob among the first token's top 20 (vLLM's maximum); a server that ignores
  `logprobs` (transformers serve) is read by its one generated token. The report marks both.
"""

from __future__ import annotations

import base64
import logging
from typing import Any, Optional

log = logging.getLogger(__name__)


def _messages_hf(prompt: str, n_images: int) -> list[dict]:
    return [{"role": "user", "content": [*({"type": "image"} for _ in range(n_images)),
                                         {"type": "text", "text": prompt}]}]


class HFBackend:
    name = "hf"

    def __init__(self, model_path: str, dtype: str = "bfloat16", attn_implementation: str = "sdpa") -> None:
        import torch  # noqa: PLC0415
        from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: PLC0415

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.tokenizer = self.processor.tokenizer
        # Left padding: every row's last prompt token sits at position -1, where generation starts.
        self.tokenizer.padding_side = "left"
        self.processor.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(
            model_path, dtype=getattr(torch, dtype), attn_implementation=attn_implementation).to(self.device).eval()

    def generate(self, requests: list[tuple[str, list[Any]]], max_new_tokens: int) -> list[str]:
        """[(prompt, encoded images)] -> replies, one generate() call for the whole list."""
        texts = [self.processor.apply_chat_template(_messages_hf(p, len(imgs)), tokenize=False, add_generation_prompt=True)
                 for p, imgs in requests]
        images = [img.decode() for _, imgs in requests for img in imgs]
        inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt").to(self.device)
        with self.torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def letter_choice(self, requests: list[tuple[str, list[str]]]) -> list[tuple[int, list[float]]]:
        """[(raw prompt, option letters)] -> (argmax index, restricted logits) per prompt."""
        enc = self.tokenizer([p for p, _ in requests], return_tensors="pt", padding=True).to(self.device)
        with self.torch.inference_mode():
            logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, -1, :]
        out = []
        for row, (_, letters) in zip(logits.float().cpu(), requests):
            ids = [self.tokenizer.encode(letter, add_special_tokens=False)[-1] for letter in letters]
            values = [float(row[i]) for i in ids]
            out.append((max(range(len(values)), key=values.__getitem__), values))
        return out

    def close(self) -> None:
        pass


def image_data_url(image: Any) -> str:
    """An encoded image (ain.eval.data.ImageFile) as a data: URL of its own bytes."""
    return f"data:{image.mime};base64," + base64.b64encode(image.data).decode("ascii")


def _messages_openai(prompt: str, images: list[Any]) -> list[dict]:
    return [{"role": "user", "content": [*({"type": "image_url", "image_url": {"url": image_data_url(i)}} for i in images),
                                         {"type": "text", "text": prompt}]}]


# vLLM's default --max-logprobs is 20: the most one request may ask for.
LOGPROBS_K = 20


def restricted_choice(top: dict[str, float], letters: list[str]) -> tuple[Optional[int], list[float]]:
    """(index of the best letter, each letter's logprob or -inf) from one token's top logprobs; a
    token counts for a letter when it is the letter itself, spaces aside (" A" and "A")."""
    best: dict[str, float] = {}
    for token, logprob in top.items():
        letter = token.strip()
        if letter in letters and logprob > best.get(letter, float("-inf")):
            best[letter] = logprob
    values = [best.get(letter, float("-inf")) for letter in letters]
    if not best:
        return None, values
    return max(range(len(letters)), key=values.__getitem__), values


class EndpointBackend:
    name = "endpoint"

    def __init__(self, client: Any) -> None:
        self.client = client

    def generate(self, requests: list[tuple[str, list[Any]]], max_new_tokens: int) -> list[str]:
        from ain.serve.client import run_all  # noqa: PLC0415

        results = run_all(self.client, [{"messages": _messages_openai(p, imgs), "max_tokens": max_new_tokens,
                                          "temperature": 0.0} for p, imgs in requests])
        out = []
        for r in results:
            if isinstance(r, Exception):
                raise r  # an unavailable endpoint fails the task; it resumes after the last commit
            out.append(r.text)
        return out

    def letter_choice(self, requests: list[tuple[str, list[str]]]) -> list[tuple[Optional[int], list[float]]]:
        """ArabicMMLU as util_compute.py scores it, through /v1/completions: the raw prompt (no chat
        template), one token, its top LOGPROBS_K logprobs; the answer is the option letter with the
        highest logprob among them (None when no letter is among the top K: counted as wrong)."""
        from ain.serve.client import run_all  # noqa: PLC0415

        results = run_all(self.client, [{"prompt": p, "max_tokens": 1, "temperature": 0.0, "logprobs": LOGPROBS_K}
                                        for p, _ in requests])
        out: list[tuple[Optional[int], list[float]]] = []
        for result, (_, letters) in zip(results, requests):
            if isinstance(result, Exception):
                raise result
            if result.top_logprobs is None:  # a server that ignores `logprobs` (transformers serve): its one token
                first = result.text.strip()[:1]
                out.append((letters.index(first) if first in letters else None, []))
            else:
                out.append(restricted_choice(result.top_logprobs[0] or {}, letters))
        return out

    def close(self) -> None:
        pass
