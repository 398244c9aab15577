"""A tiny translator for the smoke recipe and tests: random init, then trained for seconds on CPU
to memorise a fixed table of translations, so the real server path returns real translations.

The prompts are rendered with the model's own chat template, exactly as the server renders a
request (same wording, no extra system message); labels cover only the answer and its end
token. Training stops as soon as greedy decoding reproduces every answer.

A table entry may be deliberately wrong (`corrupt`): the end-to-end test then checks that the
verification gate rejects exactly those samples.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ain.curate.config import TRANSLATE_TO_AR_PROMPT, TRANSLATE_TO_EN_PROMPT

log = logging.getLogger(__name__)


def translation_examples(table_path: Path, to_ar_prompt: str = TRANSLATE_TO_AR_PROMPT,
                         to_en_prompt: str = TRANSLATE_TO_EN_PROMPT) -> list[tuple[list[dict], str]]:
    """(messages, answer) pairs: EN->AR for every entry (corrupt ones replaced), AR->EN for
    every correct Arabic."""
    table = json.loads(Path(table_path).read_text(encoding="utf-8"))
    pairs: dict[str, str] = table["pairs"]
    corrupt: dict[str, str] = table.get("corrupt", {})
    examples = []
    for en, ar in pairs.items():
        examples.append(([{"role": "user", "content": to_ar_prompt.replace("{text}", en)}], corrupt.get(en, ar)))
        examples.append(([{"role": "user", "content": to_en_prompt.replace("{text}", ar)}], en))
    return examples


def memorise(model_dir: Path, examples: list[tuple[list[dict], str]], max_steps: int = 600, lr: float = 5e-3,
             check_every: int = 25, seed: int = 0) -> dict:
    """Train the model in `model_dir` until greedy decoding returns every answer; save in place."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    prompts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m, _ in examples]
    rows, labels = [], []
    for prompt, (_, answer) in zip(prompts, examples):
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"] + [end]
        rows.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else end
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    label_ids = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    optim = torch.optim.AdamW(model.parameters(), lr=lr)
    start = time.time()
    step, exact = 0, 0
    for step in range(1, max_steps + 1):
        model.train()
        loss = model(input_ids=input_ids, attention_mask=attention, labels=label_ids).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
        if step % check_every == 0 or step == max_steps:
            exact = _count_exact(model, tok, prompts, [a for _, a in examples], end)
            log.info("step %d loss %.4f exact %d/%d", step, loss.item(), exact, len(examples))
            if exact == len(examples):
                break
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return {"steps": step, "loss": float(loss.item()), "exact": exact, "examples": len(examples),
            "seconds": time.time() - start}


def _count_exact(model, tok, prompts: list[str], answers: list[str], end: int) -> int:
    import torch

    model.eval()
    exact = 0
    with torch.no_grad():
        for prompt, answer in zip(prompts, answers):
            ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            n_answer = len(tok(answer, add_special_tokens=False)["input_ids"]) + 1
            out = model.generate(ids, max_new_tokens=n_answer + 2, do_sample=False, eos_token_id=end,
                                 pad_token_id=end)
            text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            exact += text == answer
    return exact
