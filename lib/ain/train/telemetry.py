"""What the training job records: per-step metrics (rank 0), the sample ids each rank trained on,
TensorBoard scalars, and the model-FLOPs estimate behind MFU.

Files, in the train stage's output directory:

    metrics.jsonl            one line per optimizer step (rank 0): step, loss, lr, grad_norm,
                             tokens, tokens_per_s, samples_per_s, mfu, mem_gb, time
    samples-rank<r>.jsonl    one line per optimizer step per rank: step, the sample ids in order
    tb/                      TensorBoard event files (rank 0), when tensorboard is installed

A resumed job first cuts both JSONL files back to the checkpoint's step (a crash after the last
checkpoint leaves lines for steps that are trained again), so the files always describe exactly
the steps that produced the saved weights: an interrupted-and-resumed run's files equal an
uninterrupted run's.

MFU (model FLOPs utilisation) = model FLOPs per second / (GPUs x peak FLOPs per GPU). Model FLOPs
of one packed row (forward + backward = 3 x forward, multiply-add = 2 FLOPs):

    6 * N_text * T                       dense layers of the language model, T tokens in the row
  + 6 * N_vision * P                     vision tower, P = image patches in the row (pixel_values rows)
  + 2 * N_frozen * P                     ... its frozen parameters: forward only (nothing before them
                                         needs a gradient, so backward stops there: the recipe's
                                         frozen tower and projector cost a third of a trained one)
  + 6 * L * d * sum_i s_i^2              attention scores and values of the language model, per
                                         packed sample i of s_i tokens (attention stays within a
                                         sample; causal masking halves the 12 L d s^2 of full attention)

N_text counts the language model's parameters without the input embedding (a lookup, not a
matmul) and with the LM head; N_vision the vision tower's trainable ones and N_frozen its frozen
ones (the tower's own attention over patches is small
against 6 * N_vision * P at 512x512 images and is left out). Recomputation from gradient
checkpointing is not counted: this is MFU, not hardware FLOPs utilisation.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from pathlib import Path
from typing import Any, Optional, Sequence

log = logging.getLogger(__name__)


def count_parameters(model) -> tuple[int, int, int]:
    """(N_text, N_vision, N_frozen) of a Qwen2-VL model as the MFU formula uses them: the vision
    tower's (and projector's, `visual.merger`) trainable and frozen parameters apart."""
    n_vision = n_frozen = n_embed = n_all = 0
    for name, p in model.named_parameters():
        n = p.numel() if p.numel() > 0 else int(getattr(p, "ds_numel", 0))  # ZeRO-3 partitions params
        n_all += n
        if ".visual." in f".{name}":
            if p.requires_grad:
                n_vision += n
            else:
                n_frozen += n
        elif name.endswith("embed_tokens.weight"):
            n_embed += n
    return n_all - n_vision - n_frozen - n_embed, n_vision, n_frozen


def row_flops(n_text: int, n_vision: int, layers: int, hidden: int, sample_lengths: Sequence[int],
              patches: int, n_frozen_vision: int = 0) -> float:
    """Model FLOPs (forward + backward) of one packed row; see the module docstring."""
    tokens = sum(sample_lengths)
    attention = 6.0 * layers * hidden * sum(s * s for s in sample_lengths)
    return 6.0 * n_text * tokens + (6.0 * n_vision + 2.0 * n_frozen_vision) * patches + attention


def memory_gb() -> float:
    """Peak accelerator memory of this process (GPU), else its peak resident set size (CPU)."""
    try:
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 1e9
    except ImportError:  # pragma: no cover
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def _cut_jsonl(path: Path, last_step: int) -> None:
    """Keep the lines with step <= last_step (atomic rewrite); drop a torn last line."""
    if not path.exists():
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a torn line can only be the last one
            if int(row.get("step", 0)) <= last_step:
                kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


class TrainLog:
    """Per-step records of one rank (see the module docstring)."""

    def __init__(self, log_dir: Path, rank: int, resumed_step: int, *, world_size: int, peak_flops: float,
                 log_every: int = 10, tensorboard: bool = True, fields: Optional[dict[str, Any]] = None) -> None:
        """`fields`: added to every metrics row (facts of the whole run, e.g. the attention kernel)."""
        self.log_dir = Path(log_dir)
        self.fields = dict(fields or {})
        self.rank = rank
        self.world_size = world_size
        self.peak_flops = peak_flops
        self.log_every = max(1, log_every)
        self.metrics_path = self.log_dir / "metrics.jsonl"
        self.samples_path = self.log_dir / f"samples-rank{rank}.jsonl"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            _cut_jsonl(self.metrics_path, resumed_step)
        _cut_jsonl(self.samples_path, resumed_step)
        self._metrics = open(self.metrics_path, "a", encoding="utf-8") if rank == 0 else None
        self._samples = open(self.samples_path, "a", encoding="utf-8")
        self._tb = self._open_tensorboard(resumed_step) if (tensorboard and rank == 0) else None
        self._t = time.time()

    def _open_tensorboard(self, resumed_step: int) -> Optional[Any]:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
        except ImportError:
            log.info("tensorboard not installed: metrics go to %s only", self.metrics_path)
            return None
        # purge_step drops events after the checkpoint when a resumed run writes the same steps again
        return SummaryWriter(str(self.log_dir / "tb"), purge_step=resumed_step + 1 if resumed_step else None)

    def step(self, step: int, *, loss: float, lr: float, grad_norm: Optional[float], tokens: int, samples: int,
             flops: float, sample_ids: Sequence[str], total_steps: int = 0) -> dict[str, Any]:
        """Record one optimizer step. `tokens`, `samples` and `flops` are this rank's; the job-wide
        rates assume the ranks run in lock step (they do: every step ends in collectives)."""
        now = time.time()
        seconds, self._t = max(now - self._t, 1e-9), now
        self._samples.write(json.dumps({"step": step, "ids": list(sample_ids)}) + "\n")
        self._samples.flush()
        row = {"step": step, "loss": round(loss, 6), "lr": lr,
               "grad_norm": None if grad_norm is None else round(float(grad_norm), 6),
               "tokens": tokens * self.world_size, "tokens_per_s": round(tokens * self.world_size / seconds, 2),
               "samples_per_s": round(samples * self.world_size / seconds, 3),
               # 4 significant digits, not 6 decimals: a small model's MFU (1e-7) must not read 0
               "mfu": float(f"{flops / seconds / self.peak_flops:.4g}") if self.peak_flops > 0 else None,
               "mem_gb": round(memory_gb(), 3), "seconds": round(seconds, 3), "time": round(now, 3),
               "total_steps": total_steps, **self.fields}
        if self._metrics is not None:
            self._metrics.write(json.dumps(row) + "\n")
            self._metrics.flush()
            if self._tb is not None:
                for key in ("loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s", "mfu", "mem_gb"):
                    if row[key] is not None:
                        self._tb.add_scalar(f"train/{key}", row[key], step)
            if step == 1 or step % self.log_every == 0:
                log.info("step %d loss %.4f lr %.3g grad_norm %s tokens/s %.0f samples/s %.2f mfu %s mem %.2f GB",
                         step, loss, lr, row["grad_norm"], row["tokens_per_s"], row["samples_per_s"], row["mfu"],
                         row["mem_gb"])
        return row

    def close(self) -> None:
        for f in (self._metrics, self._samples):
            if f is not None:
                f.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(log_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl as rows (for status and reports); a torn last line is ignored."""
    path = Path(log_dir) / "metrics.jsonl"
    rows: list[dict[str, Any]] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def training_progress(out_dir: Path) -> dict[str, Any] | None:
    """The train stage's latest step from metrics.jsonl, with an ETA from the recent step times."""
    rows = read_metrics(out_dir)
    if not rows:
        return None
    last = rows[-1]
    recent = sorted(r.get("seconds", 0.0) for r in rows[-20:])
    total = int(last.get("total_steps") or 0)
    eta = (total - last["step"]) * recent[len(recent) // 2] if total > last["step"] else None
    return {"step": last["step"], "total_steps": total, "loss": last.get("loss"), "lr": last.get("lr"),
            "tokens_per_s": last.get("tokens_per_s"), "mfu": last.get("mfu"), "eta_s": eta}
