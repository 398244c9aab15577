"""Which attention kernel a training rank uses, decided when the model loads, never a crash.

    choice = choose_attention(cfg.attn_implementation, bf16=cfg.bf16)   # in the job, per rank
    choice.implementation   # what from_pretrained gets: flash_attention_2, sdpa or eager
    choice.fallback         # why flash_attention_2 was not used ("" when it was, or not asked)

`train.attn_implementation: flash_attention_2` is a wish: the rank uses it when the `flash_attn`
package imports (a wheel built against another torch fails here with an undefined symbol), its
GPU has compute capability >= 8.0 (Ampere and later: FlashAttention-2's README, "Ampere, Ada, or
Hopper GPUs"; a V100 is 7.0) and training runs in bf16 (the kernels take fp16/bf16 only); else
it uses sdpa, logs a warning and the choice goes into every metrics.jsonl row
(`attn_implementation`, `attn_fallback`), so a job that waited a day in the queue trains
rather than dies in `from_pretrained`. sdpa and eager are used as asked. Both sdpa and
flash_attention_2 keep packed samples apart through the position ids (ain.train.collate).

`plan_attention(cfg)` is the same decision as the dry run states it on the login node, which has
no GPU to probe (ain.train.estimate).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Callable, Optional

log = logging.getLogger(__name__)

FLASH = "flash_attention_2"
FALLBACK = "sdpa"
MIN_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class AttentionChoice:
    requested: str
    implementation: str
    fallback: str = ""  # why the requested kernel is not used; "" when it is

    def record(self) -> dict[str, str]:
        """The fields every metrics.jsonl row carries."""
        row = {"attn_implementation": self.implementation}
        if self.fallback:
            row["attn_fallback"] = self.fallback
        return row


def _import_flash_attn() -> Optional[str]:
    """None when flash_attn imports, else why not."""
    try:
        import flash_attn  # noqa: F401, PLC0415 (only to probe it, inside the job)
    except Exception as exc:  # ImportError, an OSError or undefined symbol from a mismatched build
        return f"flash_attn does not import ({type(exc).__name__}: {exc})"
    return None


def _device_capability() -> Optional[tuple[int, int]]:
    """This rank's GPU's compute capability; None without CUDA."""
    import torch  # noqa: PLC0415 (torch only inside the job)

    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability())  # type: ignore[return-value]


def choose_attention(requested: str, *, bf16: bool = True,
                     capability: Callable[[], Optional[tuple[int, int]]] = _device_capability,
                     import_flash: Callable[[], Optional[str]] = _import_flash_attn) -> AttentionChoice:
    """The kernel this rank loads the model with (see the module docstring). `capability` and
    `import_flash` are the probes (replaceable in tests)."""
    if requested != FLASH:
        return AttentionChoice(requested, requested)
    cap = capability()
    if cap is None:
        reason = "no CUDA device"
    elif tuple(cap) < MIN_CAPABILITY:
        reason = f"GPU compute capability {cap[0]}.{cap[1]} < {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}"
    elif not bf16:
        reason = "train.bf16 is false (flash attention takes fp16/bf16 only)"
    else:
        reason = import_flash() or ""
    if not reason:
        return AttentionChoice(requested, FLASH)
    log.warning("train.attn_implementation=%s is not usable here (%s): using %s", FLASH, reason, FALLBACK)
    return AttentionChoice(requested, FALLBACK, reason)


def plan_attention(requested: str, bf16: bool = True) -> str:
    """The dry run's sentence: what each training rank will try, from the login node (no GPU
    probe; whether flash_attn is installed here is only a hint about the jobs' environment)."""
    if requested != FLASH:
        return f"train attention: {requested} (as configured)"
    if not bf16:
        return f"train attention: {FALLBACK} ({FLASH} needs bf16; train.bf16 is false)"
    here = "installed" if importlib.util.find_spec("flash_attn") is not None else "NOT installed"
    return (f"train attention: {FLASH} on each rank whose GPU has compute capability >= "
            f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} and where flash_attn imports (it is {here} in this "
            f"environment), else {FALLBACK} with a warning (metrics.jsonl attn_implementation)")
