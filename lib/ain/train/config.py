"""Configuration of the training stages (`train`, `export`); each section owns its checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from ain.config_base import Need, Resources, absolute_if_local, model_exists_or_hub_id
from ain.hub import HubAsset, hub_model

if TYPE_CHECKING:
    from ain.config import RunConfig


@dataclass
class TrainConfig:
    """Full fine-tune of Qwen2-VL with DeepSpeed (REFERENCE.md §3: LLaMA-Factory's Qwen2-VL full SFT)."""

    OPERATIONAL: ClassVar[tuple[str, ...]] = ("gradient_checkpointing", "num_workers", "save_every_steps", "save_every_minutes", "keep_checkpoints", "log_every_steps", "peak_tflops_per_gpu", "expected_samples", "tokens_per_sample", "tokens_per_gpu_s")
    """Fields that change how it runs, not what it computes: left out of fingerprints (ain.fingerprint)."""

    model: str = "Qwen/Qwen2-VL-7B-Instruct"
    """Hub id or local directory of the base model (Qwen2VLForConditionalGeneration + processor)."""
    attn_implementation: str = "sdpa"
    """sdpa, eager or flash_attention_2 (the cluster recipe's). flash_attention_2 is used by each rank
    where flash_attn imports, the GPU has compute capability >= 8.0 and bf16 is on; elsewhere that
    rank falls back to sdpa with a warning, recorded in metrics.jsonl (ain.train.attention)."""
    freeze_vision_tower: bool = True
    """Keep the vision tower (visual.patch_embed, visual.blocks) frozen, as LLaMA-Factory's Qwen2-VL
    full-SFT example does (hiyouga/LLaMA-Factory examples/train_full/qwen2vl_full_sft.yaml: both
    freeze keys true in every version from dc65ecd, 2025-01-10, until the file became
    qwen2_5vl_full_sft.yaml in aa9ed4d, 2025-05-06, e.g. f5cd178, the first with image_max_pixels
    262144; FinetuningArguments defaults them to true as well)."""
    freeze_multi_modal_projector: bool = True
    """Keep the vision-language projector (visual.merger) frozen, as that example does
    (freeze_multi_modal_projector: true). Both false: every parameter is trained."""
    bf16: bool = True
    """bf16 weights and compute (fp32 master weights in the optimizer)."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass."""
    min_pixels: int = 56 * 56
    """Smallest image area after the processor's resize (visual tokens cover 28x28 pixels)."""
    max_pixels: int = 262144
    """Largest image area (report: 262,144 = 512x512, at most 334 visual tokens)."""
    max_length: int = 2048
    """Tokens per training row (cutoff); longer samples are dropped and counted."""
    packing: bool = True
    """Pack several samples into one row (attention kept within each sample)."""
    packing_buffer: int = 1024
    """Samples held for packing per rank (buffered best-fit decreasing over this window; the rows
    waiting to be handed out count too). 1,024 fills 99.6% of the row budget on uniform
    200-1,500-token samples (docs/PERFORMANCE.md); each held sample keeps its pixels in memory."""
    micro_batch_size: int = 1
    """Rows per GPU per micro-step (must be 1: a packed row is a batch of 1)."""
    grad_accum: int = 2
    """Micro-steps per optimizer step; 0: derived, global_batch_size / (micro_batch_size x GPUs),
    so the same recipe keeps its global batch on 1 node x 8 GPUs and on 8 x 8."""
    global_batch_size: int = 0
    """The global batch in PACKED ROWS (not samples) per optimizer step over all GPUs: each row
    holds up to max_length tokens, several samples. 0: micro x accum x GPUs; with grad_accum 0
    it sets grad_accum; otherwise it must equal micro x accum x GPUs."""
    lr: float = 1.0e-5
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_ratio: float = 0.1
    """Share of steps with linear warmup before the cosine decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    epochs: int = 1
    """Passes over the packed data (the report: 1)."""
    zero_stage: int = 3
    """DeepSpeed ZeRO stage (2 or 3). 3 also builds the model partitioned at load (deepspeed.zero.Init:
    no full copy per rank in CPU memory)."""
    num_workers: int = 2
    """Data-loader workers per rank."""
    save_every_steps: int = 500
    """Optimizer steps between checkpoints (also saved on USR2 at the next step boundary)."""
    save_every_minutes: float = 60.0
    """Also checkpoint when this many minutes have passed since the last save (0: off)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (the newest ones; 0 keeps all)."""
    log_every_steps: int = 10
    """Steps between metric lines in the log (metrics.jsonl gets every step)."""
    peak_tflops_per_gpu: float = 312.0
    """Peak dense TFLOP/s of one GPU at the training dtype, the MFU denominator (A100 bf16: 312)."""
    expected_samples: int = 3_600_000
    """Samples the dry run's GPU-hours estimate assumes before the pack stage has counted them (report: 3.6M)."""
    tokens_per_sample: int = 700
    """Mean tokens per sample for the estimate (an image at 512x512 alone is up to 334 visual tokens)."""
    tokens_per_gpu_s: float = 2500.0
    """Training throughput per GPU for the estimate until this run has measured its own (7B, ZeRO-3,
    A100: about 40% MFU at ~4.6e10 FLOPs per token)."""
    num_tasks: ClassVar[int] = 1  # not a setting: one job of nodes x tasks_per_node ranks
    resources: Resources = field(default_factory=lambda: Resources(
        nodes=8, tasks_per_node=8, cpus_per_task=10, gpus_per_node=8, mem_gb=0, time_min=2880))

    def task_depends_on(self, cfg: "RunConfig") -> list[str | None]:
        """Training needs the packed shards, not the curation report: it waits for pack, and the
        report job runs beside it (a failed plot never holds up 64 GPUs). See ain.stages.plan."""
        earlier = cfg.stages[:cfg.stages.index("train")]
        upstream = "pack" if "pack" in earlier else (earlier[-1] if earlier else None)
        return [upstream] * self.num_tasks

    def resolve(self, cfg: "RunConfig") -> None:
        self.model = absolute_if_local(self.model)

    def hub_assets(self, cfg: "RunConfig") -> list[HubAsset]:
        return hub_model(self.model, "train.model")

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        need(self.micro_batch_size == 1, "train.micro_batch_size",
             "must be 1: a packed row is a batch of 1 (raise grad_accum)")
        need(self.zero_stage in (2, 3), "train.zero_stage", "2 or 3")
        need(self.attn_implementation in ("sdpa", "eager", "flash_attention_2"), "train.attn_implementation",
             "sdpa, eager or flash_attention_2")
        need(0 < self.min_pixels <= self.max_pixels, "train.min_pixels", "must be > 0 and <= train.max_pixels")
        if check_paths:
            need(model_exists_or_hub_id(self.model), "train.model", f"{self.model!r}: no such local directory")
        world = self.world_size
        need(self.packing_buffer >= 1, "train.packing_buffer", "must be >= 1")
        if self.grad_accum == 0:
            per_step = self.micro_batch_size * world
            need(self.global_batch_size > 0 and self.global_batch_size % per_step == 0, "train.global_batch_size",
                 f"{self.global_batch_size} rows must be a positive multiple of micro {self.micro_batch_size} x "
                 f"{world} GPUs = {per_step} when train.grad_accum is 0 (derived)")
        else:
            expected = self.micro_batch_size * self.grad_accum * world
            need(self.grad_accum > 0, "train.grad_accum", "must be >= 0 (0: derived from train.global_batch_size)")
            need(self.global_batch_size in (0, expected), "train.global_batch_size",
                 f"{self.global_batch_size} != micro {self.micro_batch_size} x accum {self.grad_accum} x world {world} "
                 f"= {expected}")

    @property
    def world_size(self) -> int:
        """Ranks (one per GPU) of the configured topology: nodes x tasks_per_node."""
        return self.resources.nodes * self.resources.tasks_per_node

    def accum_for(self, world_size: int) -> int:
        """Micro-steps per optimizer step on `world_size` ranks: grad_accum, or when it is 0,
        global_batch_size / (micro_batch_size x world_size) (ValueError unless that divides)."""
        if self.grad_accum:
            return int(self.grad_accum)
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size <= 0 or self.global_batch_size % per_step:
            raise ValueError(f"train.grad_accum=0 derives from train.global_batch_size={self.global_batch_size} "
                             f"rows, which must be a positive multiple of micro {self.micro_batch_size} x "
                             f"{world_size} ranks = {per_step}")
        return self.global_batch_size // per_step


@dataclass
class ExportConfig:
    """Consolidate the last training checkpoint into a Hugging Face model directory (safetensors,
    processor, chat template) that `from_pretrained` loads."""

    dtype: str = "bfloat16"
    """Weights' dtype in the exported model (bfloat16, float16 or float32)."""
    num_tasks: ClassVar[int] = 1  # not a setting: one consolidation of one checkpoint
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=8, mem_gb=256, time_min=120))

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        need(self.dtype in ("bfloat16", "float16", "float32"), "export.dtype", "bfloat16, float16 or float32")
