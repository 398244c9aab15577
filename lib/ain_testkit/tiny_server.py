"""A tiny random-init chat model (Qwen2 architecture) built on the spot, for CPU tests.

Why: tests must exercise the real serving path (`transformers serve`, later vLLM on a cluster)
without downloading weights. `build_tiny_chat_model` writes a complete Hugging Face model
directory -- config, weights, generation config, tokenizer with a ChatML chat template -- that
`AutoModelForCausalLM` / `AutoTokenizer` / `transformers serve <dir>` load offline.

The tokenizer is a byte-level BPE trained on `texts`; pass Arabic and English lines so both
scripts get merges (any text still encodes, byte-level, but with more tokens). Its special
tokens are `<|im_start|>`, `<|im_end|>` (the end-of-turn / eos token) and `<|endoftext|>`
(padding), as in Qwen2 chat models. The weights are random (fixed by `seed`), so answers are
gibberish until the model is trained, e.g. by `ain_testkit.tiny_translator.memorise`, which
reuses this builder to make a translator that memorises a table.

Same `texts`, `seed` and sizes give the same files (tokenizer training and weight init are
deterministic on CPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]

# ChatML, without a default system message (what the caller sends is exactly what is rendered).
# `content` may be a string or a list of OpenAI content parts; only text parts are rendered.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """Byte-level BPE trained on `texts`, wrapped as a transformers fast tokenizer with ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    if not texts:
        raise ValueError("train_tokenizer: texts is empty; pass a few Arabic and English lines")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # The chat template's own text (role names, newlines) is in every prompt: train on it too.
    tok.train_from_iterator(texts + ["system\nuser\nassistant\n"], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=ENDOFTEXT,
                                   unk_token=None, bos_token=None, chat_template=CHATML_TEMPLATE,
                                   model_max_length=4096)


def build_tiny_chat_model(out_dir: Path | str, texts: Iterable[str], seed: int = 0, *, hidden_size: int = 64,
                          num_layers: int = 2, num_heads: int = 1, intermediate_size: int = 128,
                          vocab_size: int = 1024, max_position_embeddings: int = 4096,
                          tie_word_embeddings: bool = False) -> Path:
    """Write a random-init Qwen2ForCausalLM and its tokenizer to `out_dir`; return the path.

    `texts`: lines the tokenizer is trained on (include both Arabic and English).
    `vocab_size` is an upper bound: the real vocabulary is what BPE learns from `texts`.
    One head of 64 (hidden 64): vLLM's CPU attention supports head sizes of 32, 64, 128 and more,
    and a head of 16 kills its engine at the first request; one head keeps the model as small
    (and as quick to train) as two of 32.
    `tie_word_embeddings` is off by default: a random model with tied embeddings just repeats
    its last input token (here a newline, which servers strip to an empty answer), while an
    untied random head emits visible tokens.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(texts, vocab_size=vocab_size)
    eos, pad = tok.convert_tokens_to_ids(IM_END), tok.convert_tokens_to_ids(ENDOFTEXT)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads,
                         num_key_value_heads=num_heads, max_position_embeddings=max_position_embeddings,
                         tie_word_embeddings=tie_word_embeddings, bos_token_id=None, eos_token_id=eos, pad_token_id=pad)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, bos_token_id=None)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
