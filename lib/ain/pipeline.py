"""The registry of stages: one `StageSpec` per stage, in pipeline order.

Everything else derives from this tuple: the pipeline order that recipes must follow, the
sections of `RunConfig` (one per stage, named after it), the function each array task runs, the
judges each stage starts or calls, what a stage waits for, which stage is one multi-node job, and
the hooks the dry run and `jobs/status.py` call. Adding a stage is one module in its component
(its `run_*_task` function and its config section with `check`) plus one line here; see
docs/ARCHITECTURE.md "Adding a stage".

Run functions and hooks are named by import path, so planning on the login node never imports a
stage's heavy dependencies (torch, DeepSpeed, vLLM clients).
"""

from __future__ import annotations

from ain.curate.config import MixConfig, ReportConfig, SafetyConfig, TranslateConfig, VerifyConfig
from ain.data.config import IngestConfig, PackConfig
from ain.eval.config import EvalConfig, EvalReportConfig
from ain.slurm.canary import CanaryConfig
from ain.stages import StageSpec
from ain.train.config import ExportConfig, TrainConfig
from ain.train.gpu_check import GpuCheckConfig
from ain.vdr.config import VdrEvalConfig, VdrPrepareConfig, VdrReportConfig, VdrTrainConfig

CURATED = ("ingest", "translate", "verify", "safety", "mix", "pack")

STAGES: tuple[StageSpec, ...] = (
    StageSpec("canary", "ain.slurm.canary:run_canary_task", CanaryConfig),
    StageSpec("gpu_check", "ain.train.gpu_check:run_gpu_check_task", GpuCheckConfig, multi_node=True),
    StageSpec("ingest", "ain.data.ingest:run_ingest_task", IngestConfig, estimate="ain.data.survey:estimate_ingest"),
    StageSpec("translate", "ain.curate.translate:run_translate_task", TranslateConfig,
              judges=TranslateConfig.judges, reads=("ingest",), estimate="ain.curate.estimate:estimate_translate"),
    StageSpec("verify", "ain.curate.verify:run_verify_task", VerifyConfig, judges=VerifyConfig.judges,
              reads=("translate",), estimate="ain.curate.estimate:estimate_verify"),
    StageSpec("safety", "ain.curate.safety:run_safety_task", SafetyConfig, judges=SafetyConfig.judges,
              reads=("ingest", "translate", "verify"), estimate="ain.curate.estimate:estimate_safety"),
    StageSpec("mix", "ain.curate.mix:run_mix_task", MixConfig, reads=("ingest", "translate", "verify", "safety")),
    StageSpec("pack", "ain.data.pack:run_pack_task", PackConfig, reads=("ingest", "mix")),
    StageSpec("report", "ain.curate.report:run_curation_report_task", ReportConfig, reads=CURATED),
    StageSpec("train", "ain.train.stage:run_train_task", TrainConfig, multi_node=True, reads=("pack",),
              task_depends_on=TrainConfig.task_depends_on,
              progress="ain.train.telemetry:training_progress", estimate="ain.train.estimate:estimate_train"),
    StageSpec("export", "ain.train.export:run_export_task", ExportConfig, reads=("train",)),
    StageSpec("eval", "ain.eval.stage:run_eval_task", EvalConfig, judges=EvalConfig.judges, reads=("export",),
              estimate="ain.eval.estimate:estimate_eval"),
    StageSpec("eval_report", "ain.eval.report:run_eval_report_task", EvalReportConfig, reads=("eval",)),
    StageSpec("vdr_prepare", "ain.vdr.prepare:run_prepare_task", VdrPrepareConfig),
    StageSpec("vdr_train", "ain.vdr.train:run_vdr_train_task", VdrTrainConfig, reads=("vdr_prepare",)),
    StageSpec("vdr_eval", "ain.vdr.evaluate:run_vdr_eval_task", VdrEvalConfig,
              task_depends_on=VdrEvalConfig.task_depends_on, reads=("vdr_prepare", "vdr_train")),
    StageSpec("vdr_report", "ain.vdr.report:run_vdr_report_task", VdrReportConfig, reads=("vdr_eval",)),
)
