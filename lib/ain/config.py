"""Typed configuration: dataclasses are the schema, YAML files and the command line are overrides.

Composition order (later wins), all merged in OmegaConf struct mode so an unknown key fails:

    RunConfig defaults  <-  configs/recipe/<recipe>.yaml  <-  configs/cluster/<cluster>.yaml
                        <-  key=value overrides from the command line

`load_config` returns a plain `RunConfig` (never a DictConfig) that has passed `validate`, so
every mistake a queue wait would otherwise reveal is reported on the login node, naming the key.

Each field is documented by the string literal under it; `describe_fields` reads those strings
for `--help`.
"""

from __future__ import annotations

import ast
import inspect
import os
import textwrap
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ain.config_base import ConfigError, JudgeConfig, Resources, ServerConfig  # noqa: F401 (re-exported)
from ain.eval.config import EvalConfig, EvalReportConfig
from ain.vdr.config import VdrEvalConfig, VdrPrepareConfig, VdrReportConfig, VdrTrainConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIGS_DIR = PROJECT_ROOT / "configs"

# Stages in pipeline order. A recipe lists the subset it runs; each listed stage depends on the
# previous listed one. Stages not implemented yet are refused by validation with a clear message.
PIPELINE_ORDER = ("canary", "ingest", "translate", "verify", "safety", "mix", "pack", "report", "train", "export",
                  "eval", "eval_report", "vdr_prepare", "vdr_train", "vdr_eval", "vdr_report")


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
    max_requeues: int = 3
    """Times one task may be requeued after preemption or time limit before it is failed."""
    extra_sbatch: dict[str, str] = field(default_factory=dict)
    """Extra sbatch options, name -> value (e.g. {reservation: big, exclusive: ""})."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run in each job before the task (module load ..., source venv/bin/activate)."""
    poll_s: float = 2.0
    """Seconds between polls while waiting on jobs (local executor, --wait)."""


@dataclass
class CanaryConfig:
    """A cheap stage that exercises the scheduler path end to end: arrays, throttles,
    dependencies, requeue and resume. `jobs/check_cluster.py` runs it to vet a cluster profile."""

    num_tasks: int = 2
    """Array size."""
    items_per_task: int = 5
    """Items each task writes; its output must list each exactly once, whatever happened."""
    seconds_per_item: float = 0.1
    """Sleep per item (simulated work)."""
    commit_every: int = 1
    """Items between progress commits (resume granularity)."""
    resources: Resources = field(default_factory=lambda: Resources(mem_gb=0.5, time_min=10))


@dataclass
class IngestSource:
    """One input of the ingest stage."""

    path: str = ""
    """File, directory (Hugging Face dataset saved to disk), or hub id (format=hub)."""
    format: str = "auto"
    """auto (from the path), jsonl, json, parquet, hf_disk or hub."""
    style: str = "auto"
    """Conversation layout: auto, native (turns), llava (conversations/from/value) or sharegpt
    (messages/role/content)."""
    name: Optional[str] = None
    """Source name recorded on every sample (default: the file or dataset name)."""
    language: Optional[str] = None
    """en or ar for every row; None: the row's own `language` field, else detected from the script."""
    domain: Optional[str] = None
    """Domain for every row; None: the row's own `domain` field, else 'general'."""
    authentic: Optional[bool] = None
    """True when the text was written in its language (not translated); None: the row's field,
    else True."""
    image_root: Optional[str] = None
    """Directory that relative image paths resolve against (default: the file's directory)."""
    split: str = "train"
    """Split to read from a dataset dict (hf_disk, hub)."""


@dataclass
class IngestConfig:
    sources: list[IngestSource] = field(default_factory=list)
    """Inputs, read in this order; rows are dealt round-robin to the tasks."""
    num_tasks: int = 2
    """Array size; each task reads a deterministic 1/num_tasks of every source."""
    commit_every: int = 64
    """Rows between progress commits (resume granularity)."""
    max_image_bytes: int = 64 * 1024 * 1024
    """Images larger than this are quarantined."""
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=1, mem_gb=4, time_min=120))


TRANSLATE_TO_AR_PROMPT = (
    "Translate the following English text into Modern Standard Arabic. Keep every marker of the "
    "form ⟦n⟧ exactly as it is. Answer with the translation only.\n\n{text}")
TRANSLATE_TO_EN_PROMPT = (
    "Translate the following Arabic text into English. Keep every marker of the form ⟦n⟧ exactly "
    "as it is. Answer with the translation only.\n\n{text}")


@dataclass
class TranslateConfig:
    """English samples -> Arabic, and back to English for verification."""

    translator: JudgeConfig = field(default_factory=lambda: JudgeConfig(model="Qwen/Qwen2.5-72B-Instruct"))
    """The translator model and its endpoint."""
    to_ar_prompt: str = TRANSLATE_TO_AR_PROMPT
    """User message for EN->AR; {text} is the English segment with protected spans masked."""
    to_en_prompt: str = TRANSLATE_TO_EN_PROMPT
    """User message for AR->EN (back-translation)."""
    max_chars: int = 6000
    """Longer text segments are handled by `over_long`."""
    over_long: str = "skip"
    """skip (sample dropped and counted) or truncate (segment cut at max_chars, counted)."""
    num_tasks: int = 2
    """Array size; each task takes a deterministic share of the ingested English samples."""
    commit_every: int = 16
    """Samples between progress commits."""
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=2, mem_gb=16, time_min=240))


@dataclass
class VerifyConfig:
    """The report's translation gate (REFERENCE.md §1), with re-translation of failures."""

    labse_model: str = "sentence-transformers/LaBSE"
    """sentence-transformers model for cosine(EN original, AR translation)."""
    labse_batch_size: int = 64
    """Sentences per LaBSE batch."""
    min_labse: float = 0.80
    """Minimum cosine similarity."""
    min_bleu4: float = 60.0
    """Minimum sentence BLEU-4 (0-100) of the back-translation against the original."""
    min_meteor: float = 80.0
    """Minimum METEOR (0-100)."""
    min_rouge_l: float = 80.0
    """Minimum ROUGE-L F1 (0-100)."""
    exact_match_passes: bool = True
    """A back-translation equal to the original after normalising case, spaces and punctuation
    passes the overlap metrics (short turns: a one-word exact match scores METEOR 0.5)."""
    max_retranslations: int = 2
    """Re-translation attempts for a failing sample before it is rejected."""
    retry_temperatures: list[float] = field(default_factory=lambda: [0.4, 0.8])
    """Sampling temperature of re-translation attempt k (the last value repeats)."""
    num_tasks: int = 2
    """Array size."""
    commit_every: int = 64
    """Samples between progress commits."""
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=2, mem_gb=16, time_min=240))


LLAVAGUARD_CATEGORIES = {
    "O1": "Hate, Humiliation, Harassment",
    "O2": "Violence, Harm, or Cruelty",
    "O3": "Sexual Content",
    "O4": "Nudity Content",
    "O5": "Criminal Planning",
    "O6": "Weapons or Substance Abuse",
    "O7": "Self-Harm",
    "O8": "Animal Cruelty",
    "O9": "Disasters or Emergencies",
}


@dataclass
class SafetyConfig:
    """LlavaGuard-policy screening of every unique image and every text turn (REFERENCE.md §2)."""

    vision_judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(
        model="AIML-TUDA/LlavaGuard-v1.2-7B-OV-hf", max_tokens=256))
    """Judge for images (a vision-language model served with vLLM)."""
    text_judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(model="Qwen/Qwen3Guard-Gen-8B", max_tokens=256))
    """Judge for text turns, English and Arabic (needs a multilingual model)."""
    categories: list[str] = field(default_factory=lambda: ["O1", "O2", "O3", "O4", "O6", "O7", "O8", "O9"])
    """LlavaGuard categories screened (the report's 8: all but O5 Criminal Planning)."""
    vision_prompt: str = ""
    """Policy prompt for images; empty: the LlavaGuard policy built from `categories`."""
    text_prompt: str = ""
    """Policy prompt for a text turn ({text} is the turn); empty: built from `categories`."""
    unjudged_policy: str = "drop"
    """What an answer that stays invalid after retries means: drop (and count) or keep (and count)."""
    num_tasks: int = 2
    """Array size; images are dealt by content hash, texts by sample, so each is judged once."""
    commit_every: int = 32
    """Items between progress commits."""
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=2, mem_gb=16, time_min=240))


@dataclass
class MixConfig:
    """Curated samples -> the training mix (one task: dedup and quotas need the global view)."""

    authentic_arabic_share: Optional[float] = 0.35
    """Target share of authentic (not translated) samples among Arabic ones; the larger group is
    downsampled to meet it. null: keep what there is."""
    arabic_share: Optional[float] = None
    """Target share of Arabic samples among all; null: keep what there is."""
    domain_caps: dict[str, int] = field(default_factory=dict)
    """Most samples per domain, e.g. {medical: 50000}."""
    dedup: bool = True
    """Drop exact duplicates (same turns text and same images)."""
    num_tasks: int = 1
    """Always 1."""
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=2, mem_gb=32, time_min=120))


@dataclass
class PackConfig:
    """The mix -> WebDataset tar shards with a manifest that training reads."""

    target_shard_mb: float = 512.0
    """A shard is closed once it holds this many MB."""
    max_samples_per_shard: int = 20000
    """... or this many samples."""
    num_tasks: int = 2
    """Array size; task i packs a contiguous slice of the mix into its own shards."""
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=2, mem_gb=8, time_min=120))


@dataclass
class ReportConfig:
    """The curation report: report/curation.md, PNG plots and the same numbers as JSON."""

    num_tasks: int = 1
    """Always 1."""
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=1, mem_gb=4, time_min=30))


@dataclass
class TrainConfig:
    """Full fine-tune of Qwen2-VL with DeepSpeed (REFERENCE.md §3: LLaMA-Factory's Qwen2-VL full SFT)."""

    model: str = "Qwen/Qwen2-VL-7B-Instruct"
    """Hub id or local directory of the base model (Qwen2VLForConditionalGeneration + processor)."""
    attn_implementation: str = "sdpa"
    """sdpa, eager or flash_attention_2 (needs the gpu extra; the cluster recipe sets it)."""
    freeze_vision: bool = False
    """Keep the vision tower frozen (the report fine-tunes everything)."""
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
    packing_buffer: int = 64
    """Samples looked ahead when choosing the best-fitting one for the current row."""
    micro_batch_size: int = 1
    """Rows per GPU per step."""
    grad_accum: int = 2
    """Micro-steps per optimizer step."""
    global_batch_size: int = 0
    """Rows per optimizer step over all GPUs; 0: derived (micro x accum x world); else checked."""
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
    """DeepSpeed ZeRO stage (2 or 3)."""
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
    num_tasks: int = 1
    """Always 1: one multi-node job."""
    resources: Resources = field(default_factory=lambda: Resources(
        nodes=8, tasks_per_node=8, cpus_per_task=10, gpus_per_node=8, mem_gb=0, time_min=2880))

    def task_depends_on(self, cfg: "RunConfig") -> list[str | None]:
        """Training needs the packed shards, not the curation report: it waits for pack, and the
        report job runs beside it (a failed plot never holds up 64 GPUs). See ain.stages.plan."""
        earlier = cfg.stages[:cfg.stages.index("train")]
        upstream = "pack" if "pack" in earlier else (earlier[-1] if earlier else None)
        return [upstream] * self.num_tasks


@dataclass
class ExportConfig:
    """Consolidate the last training checkpoint into a Hugging Face model directory (safetensors,
    processor, chat template) that `from_pretrained` loads."""

    dtype: str = "bfloat16"
    """Weights' dtype in the exported model (bfloat16, float16 or float32)."""
    num_tasks: int = 1
    """Always 1."""
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=8, mem_gb=256, time_min=120))


@dataclass
class RunConfig:
    """Top level: one run of one recipe on one cluster."""

    recipe: str = "smoke"
    """Recipe name (configs/recipe/<recipe>.yaml)."""
    name: str = ""
    """Run name; the run directory is <runs_root>/<name>. Default: the recipe name, so re-running
    the same command continues the same run."""
    runs_root: str = "runs"
    """Directory holding run directories (on the shared filesystem on a cluster)."""
    seed: int = 0
    """Seed recorded for every randomised step."""
    stages: list[str] = field(default_factory=lambda: ["ingest"])
    """Stages to run, in pipeline order; each waits for the previous one (afterok)."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    canary: CanaryConfig = field(default_factory=CanaryConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    translate: TranslateConfig = field(default_factory=TranslateConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    pack: PackConfig = field(default_factory=PackConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    eval_report: EvalReportConfig = field(default_factory=EvalReportConfig)
    vdr_prepare: VdrPrepareConfig = field(default_factory=VdrPrepareConfig)
    vdr_train: VdrTrainConfig = field(default_factory=VdrTrainConfig)
    vdr_eval: VdrEvalConfig = field(default_factory=VdrEvalConfig)
    vdr_report: VdrReportConfig = field(default_factory=VdrReportConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_root) / self.name


def split_overrides(argv: list[str]) -> tuple[str, str, list[str]]:
    """Pull `recipe=` and `cluster=` (which choose files) out of the key=value list."""
    recipe, cluster, rest = "smoke", "local", []
    for arg in argv:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r} is not key=value (e.g. recipe=smoke ingest.num_tasks=4)")
        key, value = arg.split("=", 1)
        if key == "recipe":
            recipe = value
        elif key == "cluster":
            cluster = value
        else:
            rest.append(arg)
    return recipe, cluster, rest


def _yaml(kind: str, name: str, configs_dir: Path) -> Any:
    path = configs_dir / kind / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (configs_dir / kind).glob("*.yaml"))
        raise ConfigError(f"{kind}={name}: no file {path}; known: {', '.join(known)}")
    try:
        return OmegaConf.load(path)
    except Exception as exc:  # YAML syntax errors carry line numbers
        raise ConfigError(f"{path}: cannot parse: {exc}") from exc


def _merge(base: Any, other: Any, what: str) -> Any:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"{what}: key '{key}': {exc.msg if hasattr(exc, 'msg') else exc}".rstrip()) from exc


def load_config(argv: list[str], configs_dir: Path = CONFIGS_DIR, check_paths: bool = True) -> RunConfig:
    """Compose defaults <- recipe <- cluster <- overrides, then validate."""
    recipe, cluster, overrides = split_overrides(argv)
    merged = OmegaConf.structured(RunConfig)
    merged = _merge(merged, _yaml("recipe", recipe, configs_dir), f"configs/recipe/{recipe}.yaml")
    merged = _merge(merged, {"cluster": _yaml("cluster", cluster, configs_dir)}, f"configs/cluster/{cluster}.yaml")
    merged = _merge(merged, {"recipe": recipe, "cluster": {"name": cluster}}, "selection")
    try:
        cli = OmegaConf.from_dotlist(overrides)
    except Exception as exc:
        raise ConfigError(f"command line: {exc}") from exc
    merged = _merge(merged, cli, "command line")
    cfg: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    if not cfg.name:
        cfg.name = cfg.recipe
    _absolute_input_paths(cfg)
    for stage in cfg.stages:  # derived fields of listed stages (eval.num_tasks from the benchmark registry)
        resolve = getattr(getattr(cfg, stage, None), "resolve", None)
        if callable(resolve):
            resolve(cfg)
    validate(cfg, check_paths=check_paths)
    return cfg


def _absolute_input_paths(cfg: RunConfig) -> None:
    """Relative input paths mean "from where the command was typed"; jobs run elsewhere."""
    for src in cfg.ingest.sources:
        if src.format != "hub" and src.path and not os.path.isabs(src.path):
            src.path = os.path.abspath(src.path)
        if src.image_root and not os.path.isabs(src.image_root):
            src.image_root = os.path.abspath(src.image_root)
    # Model names are hub ids unless they exist here as directories.
    for holder, attr in ((cfg.translate.translator, "model"), (cfg.verify, "labse_model"),
                         (cfg.safety.vision_judge, "model"), (cfg.safety.text_judge, "model"),
                         (cfg.train, "model")):
        value = getattr(holder, attr)
        if value and not os.path.isabs(value) and os.path.isdir(value):
            setattr(holder, attr, os.path.abspath(value))


def validate(cfg: RunConfig, check_paths: bool = True) -> None:
    """Checks a queue wait would otherwise reveal. Raises ConfigError naming the key."""
    errors: list[str] = []

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            errors.append(f"{key}: {message}")

    need(bool(cfg.name) and "/" not in cfg.name and not cfg.name.startswith("."), "name",
         f"{cfg.name!r} must be a plain directory name")
    unknown = [s for s in cfg.stages if s not in PIPELINE_ORDER]
    need(not unknown, "stages", f"unknown stage(s) {unknown}; the pipeline is {list(PIPELINE_ORDER)}")
    need(len(set(cfg.stages)) == len(cfg.stages), "stages", "a stage is listed twice")
    order = [PIPELINE_ORDER.index(s) for s in cfg.stages if s in PIPELINE_ORDER]
    need(order == sorted(order), "stages", f"must follow pipeline order {list(PIPELINE_ORDER)}")
    need(bool(cfg.stages), "stages", "empty: list at least one stage")

    c = cfg.cluster
    need(c.executor in ("auto", "slurm", "local"), "cluster.executor", "must be auto, slurm or local")
    need(c.array_parallelism >= 1, "cluster.array_parallelism", "must be >= 1")
    need(c.signal_delay_s >= 0, "cluster.signal_delay_s", "must be >= 0")
    need(c.max_requeues >= 0, "cluster.max_requeues", "must be >= 0")
    for opt in c.extra_sbatch:
        need(opt.replace("-", "_").replace("_", "").isalnum(), f"cluster.extra_sbatch.{opt}",
             "option names are letters, digits, - and _ (no leading --)")

    for stage in cfg.stages:
        sub = getattr(cfg, stage, None)
        if sub is None:
            continue
        need(sub.num_tasks >= 1, f"{stage}.num_tasks", "must be >= 1")
        if callable(getattr(sub, "check", None)):  # stage packages validate their own sections
            sub.check(cfg, need, check_paths)
        r = sub.resources
        key = f"{stage}.resources"
        need(1 <= r.nodes <= c.max_nodes, f"{key}.nodes",
             f"{r.nodes} requested, cluster '{c.name}' allows 1..{c.max_nodes} (cluster.max_nodes)")
        need(r.tasks_per_node >= 1, f"{key}.tasks_per_node", "must be >= 1")
        need(0 <= r.gpus_per_node <= c.max_gpus_per_node, f"{key}.gpus_per_node",
             f"{r.gpus_per_node} requested, cluster '{c.name}' has {c.max_gpus_per_node} per node")
        need(1 <= r.cpus_per_task * r.tasks_per_node <= c.max_cpus_per_node, f"{key}.cpus_per_task",
             f"{r.cpus_per_task} x {r.tasks_per_node} tasks > {c.max_cpus_per_node} cores per node")
        need(r.mem_gb >= 0, f"{key}.mem_gb", "must be >= 0")
        need(1 <= r.time_min <= c.max_time_min, f"{key}.time_min",
             f"{r.time_min} not in 1..{c.max_time_min} (cluster.max_time_min)")
        need(c.signal_delay_s < r.time_min * 60, f"{key}.time_min",
             f"USR2 would come {c.signal_delay_s}s before a {r.time_min}-minute limit: raise time_min "
             "or lower cluster.signal_delay_s")

    if "ingest" in cfg.stages:
        need(bool(cfg.ingest.sources), "ingest.sources", "no inputs: list at least one source")
        need(cfg.ingest.commit_every >= 1, "ingest.commit_every", "must be >= 1")
        for i, src in enumerate(cfg.ingest.sources):
            key = f"ingest.sources[{i}]"
            need(src.format in ("auto", "jsonl", "json", "parquet", "hf_disk", "hub"), f"{key}.format",
                 f"{src.format!r}: use auto, jsonl, json, parquet, hf_disk or hub")
            need(src.style in ("auto", "native", "llava", "sharegpt"), f"{key}.style",
                 f"{src.style!r}: use auto, native, llava or sharegpt")
            need(src.language in (None, "en", "ar"), f"{key}.language", "en, ar or null")
            if check_paths and src.format != "hub":
                need(bool(src.path) and Path(src.path).exists(), f"{key}.path",
                     f"{src.path!r} does not exist (relative paths resolve from {os.getcwd()})")
            if check_paths and src.image_root:
                need(Path(src.image_root).is_dir(), f"{key}.image_root", f"{src.image_root!r} is not a directory")
        if check_paths and not errors:
            from ain.data.ingest import prepare_sources  # noqa: PLC0415 (keeps config import-light)
            from ain.data.readers import SourceError  # noqa: PLC0415

            try:
                prepare_sources(cfg.ingest.sources)
            except SourceError as exc:
                errors.append(f"ingest.sources: {exc}")
    if "translate" in cfg.stages or "verify" in cfg.stages:
        _validate_judge(cfg.translate.translator, "translate.translator", need, check_paths)
        need(cfg.translate.over_long in ("skip", "truncate"), "translate.over_long", "skip or truncate")
        need(cfg.translate.max_chars >= 1, "translate.max_chars", "must be >= 1")
        need(cfg.translate.commit_every >= 1, "translate.commit_every", "must be >= 1")
        for key in ("to_ar_prompt", "to_en_prompt"):
            need("{text}" in getattr(cfg.translate, key), f"translate.{key}", "must contain {text}")
    if "verify" in cfg.stages:
        v = cfg.verify
        need(v.max_retranslations >= 0, "verify.max_retranslations", "must be >= 0")
        need(bool(v.retry_temperatures) or v.max_retranslations == 0, "verify.retry_temperatures",
             "needs at least one temperature when max_retranslations > 0")
        need(-1.0 <= v.min_labse <= 1.0, "verify.min_labse", "a cosine similarity in [-1, 1]")
        for key in ("min_bleu4", "min_meteor", "min_rouge_l"):
            need(0 <= getattr(v, key) <= 100, f"verify.{key}", "a score on the 0-100 scale")
        need(v.labse_batch_size >= 1, "verify.labse_batch_size", "must be >= 1")
        if check_paths:
            need(_model_exists_or_hub_id(v.labse_model), "verify.labse_model",
                 f"{v.labse_model!r}: no such local directory")
        need(v.commit_every >= 1, "verify.commit_every", "must be >= 1")
    if "safety" in cfg.stages:
        _validate_judge(cfg.safety.vision_judge, "safety.vision_judge", need, check_paths)
        _validate_judge(cfg.safety.text_judge, "safety.text_judge", need, check_paths)
        bad = [c for c in cfg.safety.categories if c not in LLAVAGUARD_CATEGORIES]
        need(not bad, "safety.categories", f"unknown {bad}; LlavaGuard has {sorted(LLAVAGUARD_CATEGORIES)}")
        need(cfg.safety.unjudged_policy in ("drop", "keep"), "safety.unjudged_policy", "drop or keep")
        need(cfg.safety.commit_every >= 1, "safety.commit_every", "must be >= 1")
    if "mix" in cfg.stages:
        m = cfg.mix
        need(m.num_tasks == 1, "mix.num_tasks", "must be 1 (deduplication and quotas need every sample)")
        for key in ("authentic_arabic_share", "arabic_share"):
            value = getattr(m, key)
            need(value is None or 0.0 <= value <= 1.0, f"mix.{key}", "a share in [0, 1] or null")
        need(all(v >= 0 for v in m.domain_caps.values()), "mix.domain_caps", "caps must be >= 0")
    if "pack" in cfg.stages:
        need(cfg.pack.target_shard_mb > 0, "pack.target_shard_mb", "must be > 0")
        need(cfg.pack.max_samples_per_shard >= 1, "pack.max_samples_per_shard", "must be >= 1")
    if "report" in cfg.stages:
        need(cfg.report.num_tasks == 1, "report.num_tasks", "must be 1")
    if "train" in cfg.stages:
        t = cfg.train
        need(t.num_tasks == 1, "train.num_tasks", "must be 1 (one multi-node job)")
        need(t.micro_batch_size == 1, "train.micro_batch_size", "must be 1: a packed row is a batch of 1 (raise grad_accum)")
        need(t.zero_stage in (2, 3), "train.zero_stage", "2 or 3")
        need(t.attn_implementation in ("sdpa", "eager", "flash_attention_2"), "train.attn_implementation",
             "sdpa, eager or flash_attention_2")
        need(0 < t.min_pixels <= t.max_pixels, "train.min_pixels", "must be > 0 and <= train.max_pixels")
        if check_paths:
            need(_model_exists_or_hub_id(t.model), "train.model", f"{t.model!r}: no such local directory")
        world = t.resources.nodes * t.resources.tasks_per_node
        expected = t.micro_batch_size * t.grad_accum * world
        need(t.global_batch_size in (0, expected), "train.global_batch_size",
             f"{t.global_batch_size} != micro {t.micro_batch_size} x accum {t.grad_accum} x world {world} = {expected}")
    if "canary" in cfg.stages:
        need(cfg.canary.items_per_task >= 1, "canary.items_per_task", "must be >= 1")
        need(cfg.canary.commit_every >= 1, "canary.commit_every", "must be >= 1")

    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))


def safety_judges_share_endpoint(safety: SafetyConfig) -> bool:
    """One endpoint serves both safety roles when they name the same model and server."""
    return (safety.vision_judge.model, safety.vision_judge.server) == (safety.text_judge.model, safety.text_judge.server)


def judges(cfg: RunConfig, run_root: Optional[Path] = None) -> dict[str, tuple[JudgeConfig, list[str]]]:
    """Judge name -> (its config, the listed stages that call it). One shared server per judge.
    With `run_root`, also the model under evaluation when eval.backend is endpoint (its default
    model path is inside the run directory)."""
    safety = [s for s in cfg.stages if s == "safety"]
    users = {"translator": (cfg.translate.translator, [s for s in cfg.stages if s in ("translate", "verify")]),
             "vision_judge": (cfg.safety.vision_judge, safety)}
    if not safety_judges_share_endpoint(cfg.safety):
        users["text_judge"] = (cfg.safety.text_judge, safety)
    evaluating = [s for s in cfg.stages if s == "eval"]
    if cfg.eval.judge.model:  # the LLM judge of CAMEL-Bench's open-ended sets
        users["eval_judge"] = (cfg.eval.judge, evaluating)
    if cfg.eval.backend == "endpoint" and run_root is not None:
        users["eval_model"] = (cfg.eval.model_endpoint(run_root), evaluating)
    return {name: (judge, stages) for name, (judge, stages) in users.items() if stages}


def _model_exists_or_hub_id(name: str) -> bool:
    """A name that looks like a path ('/...', './...', '.cache/...') must exist."""
    return not name.startswith((".", "/", "~")) or os.path.isdir(os.path.expanduser(name))


def _validate_judge(judge: JudgeConfig, key: str, need, check_paths: bool) -> None:
    srv = judge.server
    need(bool(judge.model), f"{key}.model", "empty: name a hub id or a local model directory")
    if check_paths:
        need(_model_exists_or_hub_id(judge.model), f"{key}.model", f"{judge.model!r}: no such local directory")
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


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_yaml(text: str) -> RunConfig:
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.create(text))
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


def _field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass (attribute docstrings)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe_fields(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every field, recursively: the text of `--help`."""
    rows: list[tuple[str, str, str]] = []
    docs = _field_docs(cls)
    defaults = cls()
    for f in fields(cls):
        value = getattr(defaults, f.name)
        if is_dataclass(value):
            rows.extend(describe_fields(type(value), f"{prefix}{f.name}."))
        else:
            rows.append((f"{prefix}{f.name}", repr(value), docs.get(f.name, "")))
    return rows
