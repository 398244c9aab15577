"""A tiny random-init Qwen3-VL embedder for sentence-transformers: the stand-in for
Qwen/Qwen3-VL-Embedding-2B in tests, the `vdr_smoke` recipe and the memory benchmark (no weights
can be downloaded here).

Same architecture family and the same sentence-transformers module stack as the real model
(Transformer over `Qwen3VLModel` -> last-token Pooling -> Normalize), about 0.2M parameters:
text hidden 64, 2 layers, head_dim 16 (M-RoPE sections [4, 2, 2], interleaved); vision depth 1,
hidden 32, patch 16, out_hidden 64, deepstack at layer 0. The modules are saved explicitly: a
plain Hugging Face folder without `modules.json` would silently load with MEAN pooling and no
Normalize, i.e. a different model from the one the recipe trains.

`ensure_tiny_vdr_embedder(out_dir)` builds it once; a stamp file (hash of the build inputs) lets
later calls return at once, so tests and `make` can call it freely.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ain_testkit.pearl_fixture import CATEGORIES, COUNTRIES

STAMP_FILE = "ain_vdr_build_stamp.json"
BUILD_VERSION = 1  # bump when the architecture or tokenizer recipe below changes
EMBED_DIM = 64  # the tiny model's embedding width: the smoke recipe's largest Matryoshka dim


def _tokenizer_texts() -> list[str]:
    """What the tiny BPE is trained on: the fixture vocabulary (Arabic and English) and prompts."""
    from ain_testkit.pearl_fixture import query_text  # noqa: PLC0415

    lines = [query_text(cat, country, k, j) for cat in CATEGORIES for country in COUNTRIES for k in range(3)
             for j in range(4)]
    lines += ["Given the question, retrieve the document image that answers it.",
              "Represent the user's input.", "system\nuser\nassistant\n"]
    return lines


def build_stamp(seed: int = 0) -> str:
    return hashlib.sha256(json.dumps({"v": BUILD_VERSION, "seed": seed, "texts": _tokenizer_texts()},
                                     ensure_ascii=False).encode()).hexdigest()


def ensure_tiny_vdr_embedder(out_dir: str | Path, seed: int = 0, force: bool = False) -> Path:
    """Build the tiny embedder into `out_dir` unless a build with the same stamp is there."""
    out = Path(out_dir)
    stamp = out / STAMP_FILE
    if not force and stamp.exists() and json.loads(stamp.read_text()).get("stamp") == build_stamp(seed):
        return out
    return build_tiny_vdr_embedder(out, seed=seed)


def build_tiny_vdr_embedder(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny sentence-transformers model to `out_dir` atomically (temp dir + rename)."""
    import torch  # noqa: PLC0415
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415
    from sentence_transformers.base.modules.normalize import Normalize  # noqa: PLC0415
    from sentence_transformers.base.modules.transformer import Transformer  # noqa: PLC0415
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling  # noqa: PLC0415
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLModel, Qwen3VLProcessor, Qwen3VLVideoProcessor  # noqa: PLC0415

    from ain_testkit.tiny_judge import (  # noqa: PLC0415
        CHAT_TEMPLATE,
        ENDOFTEXT,
        IMAGE_PAD,
        SPECIAL_TOKENS,
        VIDEO_PAD,
        VISION_END,
        VISION_START,
        build_tokenizer,
    )

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        hf_dir = tmp / "hf"
        tok = build_tokenizer(_tokenizer_texts(), pieces=[], vocab_size=512)
        ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        config = Qwen3VLConfig(
            text_config={"vocab_size": len(tok), "hidden_size": EMBED_DIM, "intermediate_size": 128,
                         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                         "max_position_embeddings": 4096,
                         "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2],
                                             "mrope_interleaved": True},
                         "pad_token_id": ids[ENDOFTEXT], "tie_word_embeddings": False},
            vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 16,
                           "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": EMBED_DIM,
                           "num_position_embeddings": 64, "deepstack_visual_indexes": [0]},
            image_token_id=ids[IMAGE_PAD], video_token_id=ids[VIDEO_PAD], vision_start_token_id=ids[VISION_START],
            vision_end_token_id=ids[VISION_END], tie_word_embeddings=False)
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = Qwen3VLModel(config).to(torch.float32)
        finally:
            torch.random.set_rng_state(state)
        # 32x32 fixture images -> 2x2 patches of 16 -> one merged visual token; cap larger inputs.
        pixels = {"shortest_edge": 32 * 32, "longest_edge": 64 * 64}
        processor = Qwen3VLProcessor(
            image_processor=Qwen2VLImageProcessor(size=pixels, patch_size=16, merge_size=2, temporal_patch_size=2),
            tokenizer=tok,
            video_processor=Qwen3VLVideoProcessor(size=pixels, patch_size=16, merge_size=2, temporal_patch_size=2),
            chat_template=CHAT_TEMPLATE)
        model.save_pretrained(hf_dir)
        processor.save_pretrained(hf_dir)
        transformer = Transformer(str(hf_dir), transformer_task="feature-extraction",
                                  processing_kwargs={"chat_template": {"add_generation_prompt": True}})
        st = SentenceTransformer(modules=[transformer, Pooling(EMBED_DIM, pooling_mode="lasttoken"), Normalize()],
                                 device="cpu")
        final = tmp / "model"
        st.save(str(final))
        (final / STAMP_FILE).write_text(json.dumps({"stamp": build_stamp(seed), "seed": seed,
                                                    "note": "random weights; tiny stand-in for Qwen3-VL-Embedding-2B"},
                                                   indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(final, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
