"""The `export` stage: the last training checkpoint -> a Hugging Face model directory.

    stages/export/out/model/   config.json, model*.safetensors, generation_config.json,
                               processor (tokenizer, image processor, chat template)

DeepSpeed checkpoints hold each rank's ZeRO partition of the fp32 master weights. DeepSpeed's
`get_fp32_state_dict_from_zero_checkpoint` merges them in one CPU process (no GPUs, no process
group); the merged state dict is loaded into a model built from the base model's config and
saved with `save_pretrained` (safetensors, sharded). `save_pretrained` rather than DeepSpeed's
`zero_to_fp32 --safe_serialization`: the latter writes tied embeddings twice and safetensors
refuses shared tensors. Memory: the fp32 state dict (4 bytes x parameters: ~33 GB for
Qwen2-VL-7B) plus the model in the export dtype.

The directory appears atomically (written under a temp name, then renamed), so an interrupted
export leaves nothing that `from_pretrained` could half-load.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ain.atomic import publish_dir
from ain.stages import TaskContext
from ain.train.checkpoint import LATEST, latest_tag
from ain.train.config import TrainConfig

log = logging.getLogger(__name__)

DTYPES = ("bfloat16", "float16", "float32")


def adopted_tag(ckpt_dir: Path) -> str:
    """The checkpoint `latest` names (ain.train.checkpoint), which must exist."""
    tag = latest_tag(ckpt_dir)
    if tag is None:
        raise FileNotFoundError(f"no checkpoint to export: {Path(ckpt_dir) / LATEST} does not exist (has training run?)")
    if not (Path(ckpt_dir) / tag).is_dir():
        raise FileNotFoundError(f"{Path(ckpt_dir) / LATEST} names {tag!r}, but {Path(ckpt_dir) / tag} is missing")
    return tag


def export_checkpoint(train_cfg: TrainConfig, ckpt_dir: Path, out_dir: Path, dtype: str = "bfloat16") -> dict[str, Any]:
    """Write `out_dir` (a from_pretrained-loadable model + processor) from ckpt_dir/latest."""
    if dtype not in DTYPES:
        raise ValueError(f"export.dtype {dtype!r}: use one of {DTYPES}")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # merging needs no accelerator
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoProcessor, Qwen2VLForConditionalGeneration

    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    tag = adopted_tag(ckpt_dir)
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    config = AutoConfig.from_pretrained(train_cfg.model)
    model = Qwen2VLForConditionalGeneration._from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    tied |= {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    really_missing = [k for k in missing if k not in tied]
    if really_missing or unexpected:
        raise RuntimeError(f"checkpoint {ckpt_dir / tag} does not match {train_cfg.model}: "
                           f"missing {really_missing[:5]}, unexpected {list(unexpected)[:5]}")
    model.tie_weights()
    model = model.to(getattr(torch, dtype))
    model.config.use_cache = True  # training turned the cache off; generation wants it
    del state

    info = {"checkpoint": str(ckpt_dir / tag), "tag": tag, "dtype": dtype, "base_model": train_cfg.model,
            "parameters": sum(p.numel() for p in model.parameters())}
    with publish_dir(out_dir) as staging:  # replaces a previous export of an older checkpoint
        model.save_pretrained(staging, safe_serialization=True, max_shard_size="5GB")
        AutoProcessor.from_pretrained(train_cfg.model).save_pretrained(staging)
        (staging / "ain_export.json").write_text(json.dumps(info, indent=1) + "\n")
    log.info("exported %s (%s, %d parameters) to %s", ckpt_dir / tag, dtype, info["parameters"], out_dir)
    return info


def run_export_task(ctx: TaskContext) -> dict[str, Any]:
    train_paths = ctx.upstream("train")
    if train_paths.read_marker(0) is None:
        raise RuntimeError(f"export needs a finished train stage: no marker {train_paths.marker(0)}")
    info = export_checkpoint(ctx.cfg.train, train_paths.out / "ckpt", ctx.paths.out / "model", ctx.cfg.export.dtype)
    return {"items": 1, **info}
