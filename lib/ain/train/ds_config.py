"""The DeepSpeed JSON config, derived from TrainConfig (the one source of truth).

We call `deepspeed.initialize(config=...)` directly (no HF Trainer integration), so every value
is numeric: no "auto". Batch: train_batch_size = micro x accum x world (the report: 64 GPUs x 1
x 2 = 128); a non-zero `train.global_batch_size` must equal that product.

Optimizer: torch's AdamW (lr, betas (0.9, 0.999), eps 1e-8, weight_decay), `fused=True` on CUDA
and the plain implementation on CPU, handed to `deepspeed.initialize(optimizer=make_optimizer(
cfg, on_cpu))` as a client optimizer; the JSON has no "optimizer" block. With one, DeepSpeed 0.19.8
builds its FusedAdam on GPU (engine.get_optimizer_configuration: unless "torch_adam"), a CUDA
extension that every rank JIT-compiles at start-up (ninja, nvcc, a lock in TORCH_EXTENSIONS_DIR)
before the first step. torch.optim.AdamW is one of ZeRO's supported optimizers
(deepspeed/runtime/zero/utils.py ZERO_SUPPORTED_OPTIMIZERS), the WarmupCosineLR below is built
from the JSON around it, and DeepSpeed calls the factory after it has moved the model to the
device, so the fused kernels see CUDA tensors. Checkpoints hold torch AdamW's state (what the
CPU runs always used); one written with FusedAdam's does not load into it.

Schedule: DeepSpeed 0.19.8's `WarmupCosineLR` (deepspeed/runtime/lr_schedules.py), whose values
are RATIOS of the optimizer lr: linear warmup from 0 over ceil(warmup_ratio x total_steps) steps
then cosine to cos_min_ratio 0 at total_steps. DeepSpeed quirks (checked by
tests/unit/test_ds_config.py on deepspeed 0.19.8): it requires warmup_num_steps >= 1 (we pass at
least 1) and silently uses max(2, warmup_num_steps); `initialize` does not step the scheduler, so
optimizer step i (0-based) runs at the ratio of iteration i-1: steps 0 and 1 both at lr 0, step
i <= W at (i-1)/W x lr (HF's get_cosine_schedule_with_warmup: i/W), and from step W+1 on exactly
HF's cosine 0.5 x (1 + cos(pi x (i - W) / (T - W))) x lr. The scheduler's position is saved and
restored by save_checkpoint/load_checkpoint; do not step it by hand.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from ain.train.config import TrainConfig

ZERO_BUCKET = 500_000_000  # elements; DeepSpeed's own defaults, stated explicitly
STAGE3_PREFETCH = 50_000_000
STAGE3_PARAM_PERSISTENCE = 100_000


def derive_batch(cfg: TrainConfig, world_size: int) -> tuple[int, int, int]:
    """(micro, accum, global) rows; ValueError naming train.global_batch_size on a mismatch."""
    micro, accum = int(cfg.micro_batch_size), int(cfg.grad_accum)
    if micro < 1 or accum < 1 or world_size < 1:
        raise ValueError(f"train.micro_batch_size ({micro}), train.grad_accum ({accum}) and the world size "
                         f"({world_size}) must all be >= 1")
    product = micro * accum * world_size
    if cfg.global_batch_size and cfg.global_batch_size != product:
        raise ValueError(f"train.global_batch_size={cfg.global_batch_size} does not match "
                         f"train.micro_batch_size x train.grad_accum x world size = "
                         f"{micro} x {accum} x {world_size} = {product} "
                         "(set it to 0 to derive it, or change grad_accum)")
    return micro, accum, product


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """ceil(warmup_ratio x total_steps), at least 1 (DeepSpeed refuses 0)."""
    return max(1, math.ceil(cfg.warmup_ratio * total_steps))


def optimizer_kwargs(cfg: TrainConfig, on_cpu: bool) -> dict[str, Any]:
    """torch.optim.AdamW's arguments (besides the parameters): fused on CUDA, plain on CPU."""
    return {"lr": cfg.lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": cfg.weight_decay,
            "fused": not on_cpu}


def make_optimizer(cfg: TrainConfig, on_cpu: bool) -> Callable[[Any], Any]:
    """`deepspeed.initialize(optimizer=...)`: a factory DeepSpeed calls with the model parameters
    once the model is on its device."""
    kwargs = optimizer_kwargs(cfg, on_cpu)

    def build(params):
        import torch  # noqa: PLC0415 (torch only inside the job)

        return torch.optim.AdamW(params, **kwargs)

    return build


def deepspeed_config(cfg: TrainConfig, world_size: int, total_steps: int,
                     steps_per_print: int = 10) -> dict[str, Any]:
    """The dict for deepspeed.initialize(config=...). `total_steps`: optimizer steps of the run.
    No optimizer block: pass `make_optimizer(cfg, on_cpu)` as the optimizer."""
    if cfg.zero_stage not in (2, 3):
        raise ValueError(f"train.zero_stage must be 2 or 3, got {cfg.zero_stage}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    micro, accum, global_batch = derive_batch(cfg, world_size)
    zero: dict[str, Any] = {
        "stage": cfg.zero_stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_scatter": True,
        "reduce_bucket_size": ZERO_BUCKET,
    }
    if cfg.zero_stage == 2:
        zero["allgather_partitions"] = True
        zero["allgather_bucket_size"] = ZERO_BUCKET
    else:
        zero.update({
            "stage3_prefetch_bucket_size": STAGE3_PREFETCH,
            "stage3_param_persistence_threshold": STAGE3_PARAM_PERSISTENCE,
            "stage3_max_live_parameters": 1_000_000_000,
            "stage3_max_reuse_distance": 1_000_000_000,
            "stage3_gather_16bit_weights_on_model_save": True,
        })
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": global_batch,
        "gradient_clipping": cfg.max_grad_norm,
        "bf16": {"enabled": bool(cfg.bf16)},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "scheduler": {"type": "WarmupCosineLR", "params": {
            "total_num_steps": int(total_steps),
            "warmup_num_steps": warmup_steps(cfg, total_steps),
            "warmup_min_ratio": 0.0,
            "warmup_type": "linear",
            "cos_min_ratio": 0.0,
        }},
        "steps_per_print": steps_per_print,
        "wall_clock_breakdown": False,
    }
