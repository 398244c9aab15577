"""The `vdr_train` stage: sentence-transformers fine-tune of a multimodal embedder (the blog's recipe).

CachedMultipleNegativesRankingLoss (gradient caching: memory set by `mini_batch_size`, not by the
batch) inside MatryoshkaLoss, NO_DUPLICATES batches of (query, image, negative_0..n-1), bf16
autocast over fp32 weights, gradient checkpointing, save_total_limit checkpoints; the model's image
processor bounded by `min_pixels` / `max_pixels` (Tom Aarsen's script: 28*28 .. 600*600).

One job on one node: submitit starts `tasks_per_node` processes (one per GPU; the blog used one), each
exports the torch distributed variables from Slurm, and the Hugging Face Trainer under them runs DDP
(NCCL on GPUs, gloo on CPU), as torchrun would. `batch_size` is the global batch: each rank gets
batch_size / world_size rows and, with `gather_across_devices`, the loss gathers every rank's
embeddings so each query is scored against the whole global batch, as on the blog's single GPU. Preemption mirrors `ain.train.stage`: each rank's USR2
handler only sets a flag; at the next optimizer step the ranks agree on it (an all-reduce, since
USR2 reaches the ranks at slightly different steps), the Trainer saves a checkpoint on all ranks
and stops; rank 0 requeues the job; the requeued job resumes with `resume_from_checkpoint` from
the newest complete checkpoint (model, optimizer, scheduler, RNG and data position).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable

from ain.atomic import atomic_write_json, publish_dir
from ain.preemption import StopFlag, finish_distributed, requeue_or_fail
from ain.stages import TaskContext
from ain.vdr.config import VdrTrainConfig
from ain.vdr.prepare import DATASET_DIR

INPUT_COLUMNS = ["query", "image", "negative_0", "negative_1", "negative_2", "negative_3"]
FINAL_DIR = "final"
RESULT_FILE = "train_result.json"


def input_columns(cfg: VdrTrainConfig) -> list[str]:
    """The columns the loss sees: query, positive, then `train_negatives` hard negatives."""
    return INPUT_COLUMNS[:2 + cfg.train_negatives]


def last_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest `checkpoint-N` whose save finished (trainer_state.json is written last)."""
    if not ckpt_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir()
             if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / "trainer_state.json").exists()]
    return max(found)[1] if found else None


def build_loss(model, cfg: VdrTrainConfig, world_size: int = 1):
    from sentence_transformers.sentence_transformer.losses import (  # noqa: PLC0415
        CachedMultipleNegativesRankingLoss,
        MatryoshkaLoss,
        MultipleNegativesRankingLoss,
    )

    width = model.get_sentence_embedding_dimension()
    too_wide = [d for d in cfg.matryoshka_dims if d > width]
    if too_wide:
        raise ValueError(f"vdr_train.matryoshka_dims {too_wide} exceed the model's embedding width {width}")
    gather = cfg.gather_across_devices and world_size > 1  # the global batch's negatives on every rank
    base = (CachedMultipleNegativesRankingLoss(model, mini_batch_size=cfg.mini_batch_size, gather_across_devices=gather)
            if cfg.loss == "cached_mnrl" else MultipleNegativesRankingLoss(model, gather_across_devices=gather))
    return MatryoshkaLoss(model, base, matryoshka_dims=list(cfg.matryoshka_dims))


def prompts(cfg: VdrTrainConfig) -> dict[str, str] | None:
    """Column -> instruction: the query prompt for `query`, the document prompt for images."""
    out = {}
    if cfg.query_prompt:
        out["query"] = cfg.query_prompt
    if cfg.document_prompt:
        out.update({c: cfg.document_prompt for c in input_columns(cfg)[1:]})
    return out or None


def _stop_callback(stop_flag: Callable[[], bool]):
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415
    from transformers import TrainerCallback  # noqa: PLC0415

    class StopOnFlag(TrainerCallback):
        """Save and stop at the first step boundary after USR2, on every rank at the same step."""

        stopped = False

        def on_step_end(self, args, state, control, **kwargs):
            flag = torch.tensor([1.0 if stop_flag() else 0.0])
            if dist.is_available() and dist.is_initialized():
                if dist.get_backend() == "nccl":
                    flag = flag.cuda()
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # USR2 reaches ranks at different steps
            if flag.item() > 0:
                control.should_save = True
                control.should_training_stop = True
                StopOnFlag.stopped = True
            return control

    return StopOnFlag()


def training_arguments(cfg: VdrTrainConfig, ckpt_dir: Path, world_size: int, cuda: bool, seed: int = 0) -> dict:
    """SentenceTransformerTrainingArguments keyword arguments (without the sampler enum)."""
    return dict(
        output_dir=str(ckpt_dir), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_batch_size(world_size), learning_rate=cfg.lr,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a ratio (warmup_ratio is deprecated)
        weight_decay=cfg.weight_decay, bf16=cfg.bf16, gradient_checkpointing=cfg.gradient_checkpointing,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps, seed=seed, data_seed=seed, dataloader_num_workers=cfg.dataloader_workers,
        dataloader_drop_last=world_size > 1,  # an uneven last batch hangs DDP (and all_gather needs equal shapes)
        report_to="none", use_cpu=not cuda, ddp_backend="gloo" if world_size > 1 and not cuda else None,
        prompts=prompts(cfg), disable_tqdm=True)


def train_embedder(cfg: VdrTrainConfig, dataset_dir: Path, out_dir: Path, seed: int = 0,
          stop_flag: Callable[[], bool] = lambda: False, log=None, rank: int = 0,
          mined_negatives: Path | None = None) -> dict[str, Any]:
    """Fine-tune (or resume) and publish `out_dir/final`; returns the stats rank 0 records."""
    import torch  # noqa: PLC0415
    from datasets import load_from_disk  # noqa: PLC0415
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415
    from sentence_transformers.base.sampler import BatchSamplers  # noqa: PLC0415
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer  # noqa: PLC0415
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments  # noqa: PLC0415

    result_path = out_dir / RESULT_FILE
    if result_path.exists() and (out_dir / FINAL_DIR).is_dir():  # done before, marker lost: same answer
        return {**json.loads(result_path.read_text()), "stopped_early": False}

    cuda = torch.cuda.is_available()
    train_ds = load_from_disk(str(dataset_dir))["train"]
    if mined_negatives is not None:
        from ain.vdr.mining import apply_mined_negatives  # noqa: PLC0415

        train_ds = apply_mined_negatives(train_ds, mined_negatives)
    train_ds = train_ds.select_columns(input_columns(cfg))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg.per_device_batch_size(world)  # fail before loading the model if the global batch does not divide
    model = SentenceTransformer(cfg.model, device=f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu",
                                model_kwargs={"dtype": torch.float32},  # fp32 weights; bf16 is autocast only
                                processor_kwargs=cfg.processor_kwargs() or None)
    loss = build_loss(model, cfg, world)
    ckpt_dir = out_dir / "ckpt"
    args = SentenceTransformerTrainingArguments(
        **training_arguments(cfg, ckpt_dir, world, cuda, seed),
        batch_sampler=BatchSamplers(cfg.batch_sampler))  # config values are the enum's values
    callback = _stop_callback(stop_flag)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_ds, loss=loss,
                                         callbacks=[callback])
    resume = last_checkpoint(ckpt_dir)
    resumed_from = 0
    if resume is not None:
        resumed_from = json.loads((resume / "trainer_state.json").read_text()).get("global_step", 0)
        if log:
            log.info("resuming from %s (step %d)", resume, resumed_from)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    stats = {"steps": trainer.state.global_step, "resumed_from_step": resumed_from,
             "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
             "train_queries": len(train_ds), "world_size": world, "global_batch": cfg.batch_size,
             "per_device_batch": cfg.per_device_batch_size(world), "train_negatives": cfg.train_negatives}
    if type(callback).stopped:
        finish_distributed()
        return {**stats, "stopped_early": True}
    if rank == 0:  # publish the final model atomically, then the result that says it is complete
        with publish_dir(out_dir / FINAL_DIR) as staging:
            model.save(str(staging))
        atomic_write_json(out_dir / "log_history.json", trainer.state.log_history)
        atomic_write_json(result_path, stats)
    finish_distributed()  # the other ranks wait for rank 0's publish, then all tear down together
    return {**stats, "stopped_early": False}


def run_vdr_train_task(ctx: TaskContext) -> dict[str, Any]:
    import submitit  # noqa: PLC0415

    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    stop = StopFlag()  # only a flag: all ranks must save
    ctx.log.info("rank %d/%d (local %d), master %s:%s", env.rank, env.world_size, env.local_rank,
                 env.master_addr, env.master_port)
    cfg: VdrTrainConfig = ctx.stage_cfg
    out = ctx.paths.out
    mined = None
    if cfg.mining.enabled:
        from ain.vdr.mining import ensure_mined_negatives  # noqa: PLC0415

        mined = ensure_mined_negatives(cfg, ctx.upstream("vdr_prepare").out / DATASET_DIR, out, rank=env.rank,
                                       log=ctx.log)
    result = train_embedder(cfg, ctx.upstream("vdr_prepare").out / DATASET_DIR, out, seed=ctx.cfg.seed,
                            stop_flag=stop, log=ctx.log, rank=env.rank, mined_negatives=mined)
    if result["stopped_early"]:
        requeue_or_fail(result["steps"], out / "ckpt", ctx.cfg.cluster.max_requeues, env.rank, ctx.log)
    return {"items": result["train_queries"], "rank": env.rank, "model": str(out / FINAL_DIR),
            **{k: v for k, v in result.items() if k != "stopped_early"}}
