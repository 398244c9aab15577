"""The pieces of the configuration schema that every stage's config module shares.

They live apart from `ain.config` so that stage packages (`ain.eval`, `ain.vdr`) can define their
own config dataclasses next to their code without a circular import: `ain.config` imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

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


@dataclass
class ServerConfig:
    """How a judge endpoint comes to exist (DESIGN.md "Judges and servers")."""

    mode: str = "per_task"
    """per_task: each array task starts `command` on its own GPUs and stops it at the end;
    shared: one server job for the whole stage, its address written to the run directory;
    external: `url` is an existing OpenAI-compatible endpoint."""
    command: list[str] = field(default_factory=lambda: [
        "vllm", "serve", "{model}", "--host", "{host}", "--port", "{port}",
        "--tensor-parallel-size", "{tensor_parallel_size}", "--max-model-len", "8192"])
    """Server command as an argument list; {model}, {host}, {port}, {tensor_parallel_size} are
    filled in. Tests use `transformers serve` on a tiny local model through the same code."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for the server process (e.g. HF_HUB_OFFLINE: "1")."""
    host: str = "127.0.0.1"
    """Interface the server binds (per_task: loopback; shared: 0.0.0.0 so other nodes reach it)."""
    tensor_parallel_size: int = 1
    """GPUs one server uses (vLLM --tensor-parallel-size)."""
    health_path: str = "/health"
    """GET path that answers 200 once the server can take requests."""
    startup_timeout_s: float = 1200.0
    """Seconds to wait for health before failing with the server's log tail."""
    url: Optional[str] = None
    """external mode: base URL including /v1 (e.g. https://api.openai.com/v1)."""
    api_key_env: Optional[str] = None
    """Name of the environment variable holding the API key (never the key itself; never logged)."""
    shared_resources: Resources = field(default_factory=lambda: Resources(
        cpus_per_task=8, gpus_per_node=1, mem_gb=64, time_min=720))
    """shared mode: what the one long-lived server job asks for (GPUs >= tensor_parallel_size)."""


@dataclass
class JudgeConfig:
    """A model behind an OpenAI-compatible endpoint, and how to talk to it."""

    model: str = ""
    """Hub id or local path; sent as the request's `model` and filled into {model}."""
    server: ServerConfig = field(default_factory=ServerConfig)
    max_concurrency: int = 32
    """Requests in flight per task."""
    request_timeout_s: float = 300.0
    """Per-request timeout."""
    max_retries: int = 6
    """Retries per request on 429/5xx/timeouts/connection errors and invalid structured answers."""
    backoff_base_s: float = 0.5
    """First retry delay; doubles each retry, with full jitter, up to backoff_max_s."""
    backoff_max_s: float = 30.0
    """Longest retry delay."""
    temperature: float = 0.0
    """Sampling temperature of first attempts (0: greedy)."""
    top_p: float = 1.0
    """Nucleus sampling."""
    max_tokens: int = 1024
    """Most tokens per answer (always sent: some servers default to far more)."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    """Server-specific request keys (vLLM: guided decoding, top_k); empty for portable servers."""
