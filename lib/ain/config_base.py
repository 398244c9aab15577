"""The pieces of the configuration schema that every stage's config module shares.

They live apart from `ain.config` so that stage packages (`ain.eval`, `ain.vdr`) can define their
own config dataclasses next to their code without a circular import: `ain.config` imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# need(ok, key, message): how a sub-config's `check` reports a mistake to `ain.config.validate`.
Need = Callable[[bool, str, str], None]


class ConfigError(ValueError):
    """A user mistake in the configuration; the message names the key and the fix."""


@dataclass
class Resources:
    """What one array task of a stage asks Slurm for."""

    nodes: int = 1
    """Nodes per task (more than 1 only for multi-node training)."""
    tasks_per_node: int = 1
    """Processes per node (one per GPU for training)."""
    cpus_per_task: int = 1
    """CPU cores per process."""
    gpus_per_node: int = 0
    """GPUs per node (0 for CPU-only stages)."""
    mem_gb: float = 4.0
    """Memory per node in GB (0: let the cluster decide)."""
    time_min: int = 60
    """Wall-clock limit per task in minutes; USR2 arrives cluster.signal_delay_s before it."""
