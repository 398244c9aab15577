"""Configuration of the evaluation stages (`eval`, `eval_report`).

The benchmark registry itself (datasets, domains, prompt builders, scorers, published numbers) is
YAML under `eval.registry_dir` (configs/eval/), loaded by `ain.eval.registry`; these dataclasses
only choose what to run and how.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Optional

from ain import PROJECT_ROOT
from ain.config_base import JudgeConfig, Need, Resources, vllm_command
from ain.hub import HubAsset, hub_model
from ain.rundir import RunDir
from ain.serve.placement import check_gpus

if TYPE_CHECKING:
    from ain.config import RunConfig


FAMILIES = ("camel_bench", "arabic_mmlu", "english")


def _judge(model: str, max_tokens: int) -> JudgeConfig:
    return JudgeConfig(model=model, max_tokens=max_tokens, max_concurrency=8)


# Qwen2-VL-7B's context (max_position_embeddings): the largest English prompt (MMMU, up to 7
# images at their own resolution) must fit; 8192, the judges' default, does not.
EVAL_MODEL_LEN = 32768


def _model_under_evaluation() -> JudgeConfig:
    judge = _judge("", 2000)
    judge.server.command = vllm_command(EVAL_MODEL_LEN)
    return judge


def vllm_image_flags(command: list[str], max_images: int) -> list[str]:
    """A `vllm serve` command with `--limit-mm-per-prompt` set (vLLM accepts ONE image per prompt
    unless told otherwise): the largest image count of any registered dataset. Other commands
    (transformers serve) and commands that already set it are returned unchanged."""
    if not any("vllm" in part for part in command[:3]) or "--limit-mm-per-prompt" in command:
        return command
    return [*command, "--limit-mm-per-prompt", json.dumps({"image": max_images})]


@dataclass
class EvalConfig:
    """Benchmarks of one checkpoint: one array task per evaluation unit (a CAMEL-Bench domain or one
    of its datasets, ArabicMMLU, an English benchmark)."""

    OPERATIONAL: ClassVar[tuple[str, ...]] = ("commit_every", "items_per_gpu_s")
    """Fields that change how it runs, not what it computes: left out of fingerprints (ain.fingerprint)."""

    checkpoint: str = ""
    """Model to evaluate: a hub id or local directory; empty: this run's export stage output
    (stages/export/out/model)."""
    benchmarks: list[str] = field(default_factory=lambda: ["camel_bench", "arabic_mmlu", "english"])
    """Benchmark families to run: camel_bench, arabic_mmlu, english (see configs/eval/)."""
    datasets: list[str] = field(default_factory=list)
    """Only these datasets of the selected families (registry names, e.g. mme, khatt, mmbench_en);
    empty: all of them."""
    registry_dir: str = "configs/eval"
    """Directory of the benchmark registry YAML files (relative: from the project root)."""
    data_root: str = ""
    """Local mirror of the benchmark data: <data_root>/<dataset>.{parquet,jsonl,json,arrow} or a
    save_to_disk folder <data_root>/<dataset>/ with the hub's columns; empty: load from the hub."""
    max_items_per_dataset: int = 0
    """Evaluate only the first N items of each dataset (0: all); for smoke runs."""
    backend: str = "hf"
    """hf: transformers generate in this task (batched, bf16, sdpa/flash-attention); endpoint: an
    OpenAI-compatible server (vLLM on a cluster) started/found as `endpoint` says."""
    batch_size: int = 8
    """Items per generate() call (hf backend) / requests in flight (endpoint backend)."""
    dtype: str = "bfloat16"
    """hf backend weights and compute dtype: bfloat16, float16 or float32."""
    attn_implementation: str = "sdpa"
    """hf backend attention: sdpa, eager or flash_attention_2."""
    max_new_tokens: int = 0
    """Generation limit; 0: each family's registry value (CAMEL-Bench's runner uses 2000)."""
    commit_every: int = 16
    """Predictions between progress commits (a preempted task resumes after the last commit)."""
    mmlu_prompt_language: str = "en"
    """ArabicMMLU prompt: en (AIN and the ArabicMMLU paper's main setting) or ar."""
    mmlu_letters: str = "en"
    """ArabicMMLU option letters: en (A-E) or ar (أ ب ج د و)."""
    seed: int = 42
    """Seed of MMMU's random fallback when no option can be parsed (official: 42)."""
    ocr_cer_unit: str = "utf8_bytes"
    """CAMEL-Bench OCR sets: utf8_bytes (the official fastcer: fast_edit_distance counts edits between
    UTF-8 bytes, capped; comparable with the published numbers) or characters (a character-level
    CER; not comparable)."""
    camel_grouping: str = "ain"
    """CAMEL-Bench domains: ain (AIN's Table 1: the multi-image sets mutliimagemmt and muribench in
    "General Video & Multi-Image") or camel_bench (the CAMEL-Bench paper's Table 2: they are in MM
    understanding, video holds only the two video sets)."""
    endpoint: JudgeConfig = field(default_factory=_model_under_evaluation)
    """endpoint backend: how to reach the model under evaluation (`model` empty: the checkpoint);
    server.command is vLLM on a cluster, `transformers serve` in tests."""
    judge: JudgeConfig = field(default_factory=lambda: _judge("", 16))
    """LLM judge for the open-ended sets (vqav2, mtvqa, mathvista, geochat), and the fallback of the
    registry's `judge_fallback` sets (MMBench choice matcher, MathVista answer extractor) for the
    replies their rules cannot read; model empty: the open-ended sets keep their predictions and
    are reported as not scored, unreadable MMBench/MathVista replies are scored wrong (counted)."""
    items_per_gpu_s: float = 2.0
    """Planning only (the dry run's estimate, ain.eval.estimate): items answered (and judged) per
    second per GPU. Assumed, not measured here."""
    num_tasks: int = 0
    """Derived at load time: the number of evaluation units the registry yields for `benchmarks`."""
    resources: Resources = field(default_factory=lambda: Resources(
        nodes=1, tasks_per_node=1, cpus_per_task=8, gpus_per_node=1, mem_gb=64, time_min=240))

    def registry_path(self) -> Path:
        path = Path(self.registry_dir)
        return path if path.is_absolute() else PROJECT_ROOT / path

    def model_endpoint(self, run_root: "Path | str") -> JudgeConfig:
        """The endpoint backend's server settings with the model under evaluation filled in
        (the checkpoint, else this run's export), for the eval tasks and a shared server alike."""
        model = self.endpoint.model or self.checkpoint or str(RunDir(run_root).stage("export").out / "model")
        return dataclasses.replace(self.endpoint, model=model)

    def judges(self, cfg: "RunConfig", run_root: Optional[Path]) -> dict[str, JudgeConfig]:
        """The LLM judge of CAMEL-Bench's open-ended sets, and with `run_root` the model under
        evaluation when the backend is an endpoint (its default path is inside the run)."""
        out = {"eval_judge": self.judge} if self.judge.model else {}
        if self.backend == "endpoint" and run_root is not None:
            out["eval_model"] = self.model_endpoint(run_root)
        return out

    def hub_assets(self, cfg: "RunConfig") -> list[HubAsset]:
        """The checkpoint (if a hub id), the judge's and endpoint's models, and, without a local
        mirror, every selected benchmark dataset."""
        from ain.eval.registry import RegistryError, eval_units  # noqa: PLC0415

        out = [*hub_model(self.checkpoint, "eval.checkpoint")]
        for key, judge in (("eval.judge", self.judge), ("eval.endpoint", self.endpoint)):
            if judge.model and judge.server.mode != "external":
                out += hub_model(judge.model, f"{key}.model")
        if not self.data_root:
            try:
                out += [a for unit in eval_units(self) for s in unit.datasets
                        for a in hub_model(s.hub, f"eval registry {s.name}", kind="dataset")]
            except (RegistryError, ValueError):
                pass  # check() reports a broken registry
        return out

    def resolve(self, cfg: "RunConfig") -> None:
        """Fill derived fields (called by load_config before validation): absolute local paths
        and the number of units. A broken registry leaves num_tasks 0 for `check` to report."""
        for attr in ("data_root", "checkpoint"):
            value = getattr(self, attr)
            if value and not os.path.isabs(value) and os.path.exists(value):
                setattr(self, attr, os.path.abspath(value))
        for judge in (self.endpoint, self.judge):
            if judge.model and not os.path.isabs(judge.model) and os.path.isdir(judge.model):
                judge.model = os.path.abspath(judge.model)
        if "eval" not in cfg.stages and "eval_report" not in cfg.stages:
            self.num_tasks = max(self.num_tasks, 1)
            return
        from ain.eval.registry import RegistryError, eval_units, largest_image_count, load_registry  # noqa: PLC0415

        try:
            registry = load_registry(self.registry_path(), self.camel_grouping)
            self.num_tasks = len(eval_units(self, registry))
            self.endpoint.server.command = vllm_image_flags(self.endpoint.server.command,
                                                            largest_image_count(registry))
        except (RegistryError, ValueError):
            self.num_tasks = 0

    def input_files(self, cfg: "RunConfig") -> list[str]:
        """The local checkpoint and benchmark mirror it reads (their identity is in its fingerprint);
        this run's export is an upstream stage, hub ids are pinned by revision at launch."""
        return [p for p in (self.checkpoint, self.data_root) if p and os.path.exists(p)]

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        """Report mistakes with need(ok, key, message)."""
        from ain.eval.registry import RegistryError, eval_units, load_registry  # noqa: PLC0415

        bad = [b for b in self.benchmarks if b not in FAMILIES]
        need(not bad, "eval.benchmarks", f"unknown {bad}; known: {list(FAMILIES)}")
        need(bool(self.benchmarks), "eval.benchmarks", "empty: list at least one family")
        need(self.backend in ("hf", "endpoint"), "eval.backend", "hf or endpoint")
        need(self.ocr_cer_unit in ("utf8_bytes", "characters"), "eval.ocr_cer_unit", "utf8_bytes or characters")
        need(self.camel_grouping in ("ain", "camel_bench"), "eval.camel_grouping", "ain or camel_bench")
        need(self.dtype in ("bfloat16", "float16", "float32"), "eval.dtype", "bfloat16, float16 or float32")
        need(self.attn_implementation in ("sdpa", "eager", "flash_attention_2"), "eval.attn_implementation",
             "sdpa, eager or flash_attention_2")
        need(self.batch_size >= 1, "eval.batch_size", "must be >= 1")
        need(self.commit_every >= 1, "eval.commit_every", "must be >= 1")
        need(self.items_per_gpu_s > 0, "eval.items_per_gpu_s", "a throughput: must be > 0")
        need(self.max_new_tokens >= 0, "eval.max_new_tokens", "must be >= 0 (0: the registry's value)")
        need(self.max_items_per_dataset >= 0, "eval.max_items_per_dataset", "must be >= 0")
        need(self.mmlu_prompt_language in ("en", "ar"), "eval.mmlu_prompt_language", "en or ar")
        need(self.mmlu_letters in ("en", "ar"), "eval.mmlu_letters", "en or ar")
        try:
            registry = load_registry(self.registry_path(), self.camel_grouping)
            units = eval_units(self, registry)
        except (RegistryError, ValueError) as exc:
            need(False, "eval.registry_dir", str(exc))
            return
        known = {d.name for d in registry.datasets.values() if d.family in self.benchmarks}
        unknown = [d for d in self.datasets if d not in known]
        need(not unknown, "eval.datasets", f"{unknown} not in the selected families {self.benchmarks}")
        need(bool(units), "eval.datasets", "selects no dataset of the selected families")
        if "eval" not in cfg.stages:
            return
        if check_paths:
            if self.checkpoint:
                need(not self.checkpoint.startswith((".", "/", "~")) or os.path.isdir(self.checkpoint),
                     "eval.checkpoint", f"{self.checkpoint!r}: no such local directory")
            else:
                need("export" in cfg.stages or (cfg.run_dir / "stages/export/out/model").is_dir(),
                     "eval.checkpoint", "empty and this run has no export stage output: give checkpoint=<dir or hub id>")
            if self.data_root:
                need(os.path.isdir(self.data_root), "eval.data_root", f"{self.data_root!r} is not a directory")
        if self.backend == "endpoint":
            need(self.endpoint.server.mode in ("per_task", "shared", "external"), "eval.endpoint.server.mode",
                 "per_task, shared or external")
            need(self.endpoint.max_tokens >= 1, "eval.endpoint.max_tokens", "must be >= 1")
        judges = {"eval.judge": self.judge} if self.judge.model else {}
        if self.backend == "endpoint":
            judges["eval.endpoint"] = self.model_endpoint(cfg.run_dir)
        check_gpus("eval", self.resources, judges, need, cfg.cluster.max_gpus_per_node,
                   in_process=1 if self.backend == "hf" else 0, in_process_what="the model under evaluation (eval.backend=hf)")


@dataclass
class EvalReportConfig:
    """Aggregation: the results table of this checkpoint beside the published numbers."""

    domain_average: str = "micro"
    """How a CAMEL-Bench domain score is formed from its datasets (the paper does not say): micro
    (scored items pooled) or macro (unweighted mean of its datasets' scores). The total is
    always AIN's: the unweighted mean of the 8 domain scores."""
    compare_with: list[str] = field(default_factory=lambda: ["AIN-7B", "Qwen2-VL-7B", "GPT-4o"])
    """Published rows (configs/eval/published.yaml) shown beside this checkpoint."""
    label: str = "this checkpoint"
    """Name of this checkpoint's row in the tables and plots."""
    num_tasks: ClassVar[int] = 1  # not a setting: one report
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=1, mem_gb=4, time_min=30))

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        need(self.domain_average in ("micro", "macro"), "eval_report.domain_average", "micro or macro")
