"""Inference backends; both ask exactly the same prompts with the same images.

- `HFBackend`: transformers in this process. Generation is batched (left padding, greedy,
  images first then the prompt text in one user turn, as the official runner builds it).
  ArabicMMLU takes one forward pass over the raw prompt (no chat template, as util_compute.py)
  and the argmax of the last position's logits restricted to the option letters' token ids
  (`tokenizer.encode(letter)[-1]`).
- `EndpointBackend`: an OpenAI-compatible server (vLLM on a cluster, `transformers serve` in
  tests) through `ain.serve.client.ChatClient`; images are sent as `data:` URLs of the same
  encoded bytes the hf backend decodes (ain.eval.data.Item.image_files). OpenAI-compatible servers do not expose restricted next-token logits, so on
  this backend ArabicMMLU is answered by generation (one token, first letter parsed), which the
  report marks.
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
        replies = self.generate([(p, []) for p, _ in requests], max_new_tokens=1)
        out: list[tuple[Optional[int], list[float]]] = []
        for reply, (_, letters) in zip(replies, requests):
            first = reply.strip()[:1]
            out.append((letters.index(first) if first in letters else None, []))
        return out

    def close(self) -> None:
        pass
