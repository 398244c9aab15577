"""A tiny random-weight BERT sentence-transformers model: the LaBSE stand-in for tests, the
smoke recipe and benchmarks (LaBSE cannot be downloaded here).

`build_tiny_embedder(out_dir, texts)` writes a directory that `SentenceTransformer(out_dir)` (and
so `ain.curate.metrics.Embedder`) loads offline: a 2-layer, 32-wide BERT with random weights
(seeded), mean pooling, and a WordPiece tokeniser whose vocabulary is the words of `texts` plus
their characters (as word-initial and "##" pieces, so unseen words still tokenise) — English and
Arabic alike. Builds in well under a second.

Random weights make the cosines UNINFORMATIVE: any two texts score about 0.9 (mean pooling of
random features shares a large common component), translation or not. Tests using it must set
thresholds around the values it actually gives, never the recipe's 0.80.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocabulary(texts: Iterable[str]) -> list[str]:
    from tokenizers.normalizers import BertNormalizer  # noqa: PLC0415
    from tokenizers.pre_tokenizers import BertPreTokenizer  # noqa: PLC0415

    norm = BertNormalizer(lowercase=True, strip_accents=False, clean_text=True, handle_chinese_chars=True)
    pre = BertPreTokenizer()
    words: dict[str, None] = {}
    chars: dict[str, None] = {}
    for text in texts:
        for word, _ in pre.pre_tokenize_str(norm.normalize_str(text)):
            words[word] = None
            for ch in word:
                chars[ch] = None
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()":
        chars[ch] = None
    vocab = dict.fromkeys(SPECIAL_TOKENS)
    vocab.update(dict.fromkeys(sorted(chars)))
    vocab.update(dict.fromkeys(f"##{c}" for c in sorted(chars)))
    vocab.update(dict.fromkeys(sorted(words)))
    return list(vocab)


def build_tiny_embedder(out_dir: str | Path, texts: Iterable[str], seed: int = 0, hidden_size: int = 32,
                        num_layers: int = 2, max_seq_length: int = 128) -> Path:
    """Write a tiny random BERT sentence-transformers model to `out_dir`; return its path.

    Deterministic: the same texts and seed give the same tokenizer and weights."""
    import torch  # noqa: PLC0415
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415
    from tokenizers import Tokenizer  # noqa: PLC0415
    from tokenizers.models import WordPiece  # noqa: PLC0415
    from tokenizers.normalizers import BertNormalizer  # noqa: PLC0415
    from tokenizers.pre_tokenizers import BertPreTokenizer  # noqa: PLC0415
    from tokenizers.processors import TemplateProcessing  # noqa: PLC0415
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast  # noqa: PLC0415

    try:  # sentence-transformers >= 6 moved the modules; `models` is the older (deprecated) path
        from sentence_transformers.base.modules.transformer import Transformer  # noqa: PLC0415
        from sentence_transformers.sentence_transformer.modules.pooling import Pooling  # noqa: PLC0415
    except ImportError:  # pragma: no cover - sentence-transformers < 6
        from sentence_transformers.models import Pooling, Transformer  # noqa: PLC0415

    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    hf_dir = Path(tempfile.mkdtemp(prefix=".tiny-embedder-", dir=out))  # the plain HF model, then removed
    try:
        vocab = {tok: i for i, tok in enumerate(_vocabulary(texts))}
        tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = BertNormalizer(lowercase=True, strip_accents=False, clean_text=True, handle_chinese_chars=True)
        tok.pre_tokenizer = BertPreTokenizer()
        tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                       sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_seq_length)
        fast.save_pretrained(hf_dir)

        config = BertConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=num_layers,
                            num_attention_heads=2, intermediate_size=2 * hidden_size,
                            max_position_embeddings=max_seq_length, pad_token_id=vocab["[PAD]"])
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = BertModel(config)
        finally:
            torch.random.set_rng_state(state)
        model.save_pretrained(hf_dir)

        st = SentenceTransformer(modules=[Transformer(str(hf_dir), max_seq_length=max_seq_length),
                                          Pooling(hidden_size, pooling_mode="mean")], device="cpu")
        st.save(str(out))
        (out / "TINY_EMBEDDER.json").write_text(json.dumps(
            {"note": "random weights: cosines are uninformative (about 0.9 for any pair)", "seed": seed,
             "vocab_size": len(vocab), "hidden_size": hidden_size, "num_layers": num_layers}, indent=1) + "\n")
    finally:
        shutil.rmtree(hf_dir, ignore_errors=True)
        if bars:
            hf_logging.enable_progress_bar()
    return out
