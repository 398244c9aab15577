"""Configuration of the curation stages (`translate`, `verify`, `safety`, `mix`, `report`), the
prompts they send and the LlavaGuard taxonomy; each section owns its checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Optional

from ain.config_base import (
    JudgeConfig,
    Need,
    Resources,
    absolute_if_local,
    check_judge,
    model_exists_or_hub_id,
    vllm_command,
)
from ain.hub import HubAsset, hub_model, is_hub_id
from ain.serve.placement import check_gpus


def judge_assets(judges: dict[str, JudgeConfig]) -> list[HubAsset]:
    """The judges' models a server of ours loads (an external endpoint serves its own)."""
    return [a for key, j in judges.items() if j.server.mode != "external" for a in hub_model(j.model, f"{key}.model")]

if TYPE_CHECKING:
    from ain.config import RunConfig


TRANSLATE_TO_AR_PROMPT = (
    "Translate the following English text into Modern Standard Arabic. Keep every marker of the "
    "form ⟦n⟧ exactly as it is. Answer with the translation only.\n\n{text}")
TRANSLATE_TO_EN_PROMPT = (
    "Translate the following Arabic text into English. Keep every marker of the form ⟦n⟧ exactly "
    "as it is. Answer with the translation only.\n\n{text}")


@dataclass
class TranslateConfig:
    """English samples -> Arabic, and back to English for verification."""

    OPERATIONAL: ClassVar[tuple[str, ...]] = ("commit_every", "in_flight_samples", "max_pending_samples",
                                              "output_tokens_per_gpu_s", "arabic_tokens_per_english_token")
    """Fields that change how it runs, not what it computes: left out of fingerprints (ain.fingerprint)."""

    translator: JudgeConfig = field(default_factory=lambda: JudgeConfig(model="Qwen/Qwen2.5-72B-Instruct",
                                                                        max_tokens=6144))
    """The translator model and its endpoint; its max_tokens is the ceiling of the per-text budget
    (6,144 for max_chars 6,000: the server's --max-model-len must hold prompt + answer)."""
    to_ar_prompt: str = TRANSLATE_TO_AR_PROMPT
    """User message for EN->AR; {text} is the English segment with protected spans masked."""
    to_en_prompt: str = TRANSLATE_TO_EN_PROMPT
    """User message for AR->EN (back-translation)."""
    max_chars: int = 6000
    """Longer text segments are handled by `over_long`."""
    output_tokens_per_char: float = 1.0
    """Answer budget (max_tokens) per character of the text to translate: sized to the input, not a
    fixed number (Qwen's tokenizer spends about 0.3 tokens per English and 0.5 per Arabic character,
    so 1.0 leaves room). A reply cut at its budget (finish_reason "length") is asked again with twice
    the budget up to `translator.max_tokens`, then the attempt fails with reason `truncated`."""
    min_output_tokens: int = 64
    """The smallest answer budget (short turns)."""
    over_long: str = "skip"
    """skip (sample dropped and counted) or truncate (segment cut at max_chars, counted)."""
    num_tasks: int = 2
    """Array size; each task takes a deterministic share of the ingested English samples."""
    commit_every: int = 16
    """Samples between progress commits, counted along the input order: rows are written and
    committed in input order, so a resumed task starts exactly at its last commit. Not a window:
    samples start as others finish (in_flight_samples), whatever the commit points."""
    in_flight_samples: int = 0
    """Samples in translation at once; as any one finishes the next starts. 0: the translator's
    max_concurrency (each such sample has at least one request to send, so the client keeps
    max_concurrency requests in flight and the server's batch full)."""
    max_pending_samples: int = 0
    """Most samples started and not yet written: those in flight plus finished ones waiting for an
    earlier, slower one (bounds memory and what a restart redoes, from the response cache). When
    reached, no sample starts until the earliest finishes. 0: 4 x the samples in flight."""
    output_tokens_per_gpu_s: float = 500.0
    """Planning only (the dry run's estimate): tokens the translator's server generates per second
    per GPU at full batch. Assumed (a 72B model on 4 GPUs at ~2,000 tokens/s), not measured here:
    replace it with your cluster's figure; a finished task of the same fingerprint replaces the
    estimate with its measured time."""
    arabic_tokens_per_english_token: float = 1.5
    """Planning only: tokens of the Arabic translation per English token (about 0.5 tokens per
    Arabic character against 0.3 per English one with Qwen's tokenizer, at ~0.9 x the characters).
    Assumed: measure it on a finished translate stage of your data."""
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=2, mem_gb=16, time_min=240))

    def samples_in_flight(self) -> int:
        """`in_flight_samples`, 0 resolved to the translator's max_concurrency."""
        return self.in_flight_samples or self.translator.max_concurrency

    def pending_samples(self) -> int:
        """`max_pending_samples`, 0 resolved to 4 x samples_in_flight()."""
        return self.max_pending_samples or 4 * self.samples_in_flight()

    def resolve(self, cfg: "RunConfig") -> None:
        self.translator.model = absolute_if_local(self.translator.model)

    def judges(self, cfg: "RunConfig", run_root: Optional[Path]) -> dict[str, JudgeConfig]:
        return {"translator": self.translator}

    def hub_assets(self, cfg: "RunConfig") -> list[HubAsset]:
        return judge_assets({"translate.translator": self.translator})

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        check_judge(self.translator, "translate.translator", need, check_paths)
        check_gpus("translate", self.resources, {"translate.translator": self.translator}, need,
                   cfg.cluster.max_gpus_per_node)
        need(self.over_long in ("skip", "truncate"), "translate.over_long", "skip or truncate")
        need(self.max_chars >= 1, "translate.max_chars", "must be >= 1")
        need(self.output_tokens_per_char > 0, "translate.output_tokens_per_char", "must be > 0")
        need(1 <= self.min_output_tokens <= self.translator.max_tokens, "translate.min_output_tokens",
             f"must be in 1..translate.translator.max_tokens ({self.translator.max_tokens})")
        need(self.commit_every >= 1, "translate.commit_every", "must be >= 1")
        for key in ("output_tokens_per_gpu_s", "arabic_tokens_per_english_token"):
            need(getattr(self, key) > 0, f"translate.{key}", "must be > 0")
        need(self.in_flight_samples >= 0, "translate.in_flight_samples", "must be >= 0 (0: translator.max_concurrency)")
        need(self.max_pending_samples == 0 or self.max_pending_samples >= self.samples_in_flight(),
             "translate.max_pending_samples", f"must be 0 (4 x the samples in flight) or >= the samples in flight "
             f"({self.samples_in_flight()})")
        for key in ("to_ar_prompt", "to_en_prompt"):
            need("{text}" in getattr(self, key), f"translate.{key}", "must contain {text}")


@dataclass
class VerifyConfig:
    """The report's translation gate (REFERENCE.md §1), with re-translation of failures."""

    OPERATIONAL: ClassVar[tuple[str, ...]] = ("commit_every", "labse_batch_size", "samples_per_gpu_s")
    """Fields that change how it runs, not what it computes: left out of fingerprints (ain.fingerprint)."""
    DECISION_ONLY: ClassVar[tuple[str, ...]] = ("min_labse", "min_bleu4", "min_meteor", "min_rouge_l",
                                                "exact_match_passes", "max_retranslations")
    """Thresholds over work that does not depend on them: scores are keyed by the texts and the LaBSE
    model, re-translations by their request; a run differing only here reuses the other's (verify)."""

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
    samples_per_gpu_s: float = 10.0
    """Planning only (the dry run's estimate): samples verified per second per GPU of the task,
    re-translations of the failing ones included. Assumed, not measured here."""
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=2, mem_gb=16, time_min=240))

    def resolve(self, cfg: "RunConfig") -> None:
        self.labse_model = absolute_if_local(self.labse_model)
        if "translate" not in cfg.stages:  # verify re-translates through translate's translator
            cfg.translate.resolve(cfg)

    def judges(self, cfg: "RunConfig", run_root: Optional[Path]) -> dict[str, JudgeConfig]:
        return {"translator": cfg.translate.translator}  # failing samples are re-translated

    def hub_assets(self, cfg: "RunConfig") -> list[HubAsset]:
        return [*hub_model(self.labse_model, "verify.labse_model"),
                *judge_assets({"translate.translator": cfg.translate.translator})]

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        if "translate" not in cfg.stages:  # else translate's own check has reported it
            cfg.translate.check(cfg, need, check_paths)
        # failing samples are re-translated in this task: its translator server needs its own GPUs
        check_gpus("verify", self.resources, {"translate.translator": cfg.translate.translator}, need,
                   cfg.cluster.max_gpus_per_node, in_process=1, in_process_what="LaBSE (verify.labse_model)")
        need(self.max_retranslations >= 0, "verify.max_retranslations", "must be >= 0")
        need(bool(self.retry_temperatures) or self.max_retranslations == 0, "verify.retry_temperatures",
             "needs at least one temperature when max_retranslations > 0")
        need(-1.0 <= self.min_labse <= 1.0, "verify.min_labse", "a cosine similarity in [-1, 1]")
        for key in ("min_bleu4", "min_meteor", "min_rouge_l"):
            need(0 <= getattr(self, key) <= 100, f"verify.{key}", "a score on the 0-100 scale")
        need(self.labse_batch_size >= 1, "verify.labse_batch_size", "must be >= 1")
        if check_paths:
            need(model_exists_or_hub_id(self.labse_model), "verify.labse_model",
                 f"{self.labse_model!r}: no such local directory")
        need(self.commit_every >= 1, "verify.commit_every", "must be >= 1")
        need(self.samples_per_gpu_s > 0, "verify.samples_per_gpu_s", "a throughput: must be > 0")


def _llavaguard() -> JudgeConfig:
    judge = JudgeConfig(model="AIML-TUDA/LlavaGuard-v1.2-7B-OV-hf", max_tokens=500)
    judge.server.command = vllm_command(16384, "--limit-mm-per-prompt", '{"image": 1}')
    return judge


# Our mapping of Qwen3Guard-Gen's categories (QwenLM/Qwen3Guard README @ 6a52eca) onto LlavaGuard's
# policy codes: neither project publishes one. Categories absent here have no policy counterpart.
# "Non-violent Illegal Acts" covers drug production and trafficking (O6) as well as theft and hacking
# (O5, which the report does not screen): mapped to O6 so that drug content stays screened.
QWEN3GUARD_TO_POLICY = {"Violent": "O2", "Non-violent Illegal Acts": "O6", "Sexual Content or Sexual Acts": "O3",
                        "Suicide & Self-Harm": "O7", "Unethical Acts": "O1"}
QWEN3GUARD_CATEGORIES = ("Violent", "Non-violent Illegal Acts", "Sexual Content or Sexual Acts", "PII",
                         "Suicide & Self-Harm", "Unethical Acts", "Politically Sensitive Topics", "Copyright Violation",
                         "Jailbreak")

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

    OPERATIONAL: ClassVar[tuple[str, ...]] = ("commit_every", "images_per_gpu_s", "turns_per_gpu_s")
    """Fields that change how it runs, not what it computes: left out of fingerprints (ain.fingerprint)."""

    vision_judge: JudgeConfig = field(default_factory=_llavaguard)
    """Judge for images: LlavaGuard v1.2 (gated on the hub: accept its terms, set HF_TOKEN for
    jobs/prefetch.py), asked with its own policy text, max_tokens 500 as its authors serve it
    (ml-research/LlavaGuard README, SGLang), a context that holds its image tokens (LLaVA-OneVision
    anyres: up to ~7.3k) + the policy, one image per prompt."""
    text_judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(model="Qwen/Qwen3Guard-Gen-8B", max_tokens=128))
    """Judge for text turns, English and Arabic (Qwen3Guard-Gen: 119 languages; max_tokens 128 as
    its card). Called natively (`text_judge_format`)."""
    text_judge_format: str = "qwen3guard"
    """qwen3guard (default: the text judge is Qwen3Guard-Gen, trained on its own format: the turn as
    the user message, "Safety: ... / Categories: ..." back, mapped by `qwen3guard_categories`) or
    policy_json (the LlavaGuard JSON policy in `text_prompt`, for an instruct model)."""
    qwen3guard_categories: dict[str, str] = field(default_factory=lambda: dict(QWEN3GUARD_TO_POLICY))
    """Qwen3Guard category -> policy code it counts as (our mapping: no official one exists).
    Unmapped categories (PII, Politically Sensitive Topics, Copyright Violation, Jailbreak) are
    reported, not dropped."""
    controversial: str = "unsafe"
    """What Qwen3Guard's "Controversial" means: unsafe (as Qwen's own evaluation, strict) or safe."""
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
    images_per_gpu_s: float = 2.0
    """Planning only (the dry run's estimate): images the vision judge rates per second per GPU
    (LlavaGuard writes a rationale of up to 500 tokens). Assumed, not measured here."""
    turns_per_gpu_s: float = 20.0
    """Planning only: text turns the text judge rates per second per GPU. Assumed, not measured."""
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=2, mem_gb=16, time_min=240))

    def resolve(self, cfg: "RunConfig") -> None:
        for judge in (self.vision_judge, self.text_judge):
            judge.model = absolute_if_local(judge.model)

    def judges(self, cfg: "RunConfig", run_root: Optional[Path]) -> dict[str, JudgeConfig]:
        if self.judges_share_endpoint():
            return {"vision_judge": self.vision_judge}
        return {"vision_judge": self.vision_judge, "text_judge": self.text_judge}

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        check_judge(self.vision_judge, "safety.vision_judge", need, check_paths)
        check_judge(self.text_judge, "safety.text_judge", need, check_paths)
        check_gpus("safety", self.resources, {"safety.vision_judge": self.vision_judge,
                                              "safety.text_judge": self.text_judge}, need, cfg.cluster.max_gpus_per_node)
        bad = [c for c in self.categories if c not in LLAVAGUARD_CATEGORIES]
        need(not bad, "safety.categories", f"unknown {bad}; LlavaGuard has {sorted(LLAVAGUARD_CATEGORIES)}")
        need(self.unjudged_policy in ("drop", "keep"), "safety.unjudged_policy", "drop or keep")
        need(self.text_judge_format in ("qwen3guard", "policy_json"), "safety.text_judge_format",
             "qwen3guard or policy_json")
        need(self.controversial in ("unsafe", "safe"), "safety.controversial", "unsafe or safe")
        bad = {k: v for k, v in self.qwen3guard_categories.items()
               if k not in QWEN3GUARD_CATEGORIES or v not in LLAVAGUARD_CATEGORIES}
        need(not bad, "safety.qwen3guard_categories", f"{bad}: keys are Qwen3Guard categories "
             f"{list(QWEN3GUARD_CATEGORIES)}, values policy codes {sorted(LLAVAGUARD_CATEGORIES)}")
        if (self.text_judge_format == "qwen3guard" and is_hub_id(self.text_judge.model)
                and "qwen3guard" not in self.text_judge.model.lower()):
            need(False, "safety.text_judge_format", f"qwen3guard, but safety.text_judge.model is "
                 f"{self.text_judge.model!r}: an instruct model needs policy_json (it was not trained on "
                 "Qwen3Guard's format)")
        need(self.commit_every >= 1, "safety.commit_every", "must be >= 1")
        for key in ("images_per_gpu_s", "turns_per_gpu_s"):
            need(getattr(self, key) > 0, f"safety.{key}", "a throughput: must be > 0")

    def hub_assets(self, cfg: "RunConfig") -> list[HubAsset]:
        return judge_assets({"safety.vision_judge": self.vision_judge, "safety.text_judge": self.text_judge})

    def judges_share_endpoint(self) -> bool:
        """One endpoint serves both roles when they name the same model and server."""
        return (self.vision_judge.model, self.vision_judge.server) == (self.text_judge.model, self.text_judge.server)


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
    num_tasks: ClassVar[int] = 1  # not a setting: deduplication and quotas need every sample
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=2, mem_gb=32, time_min=120))

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        for key in ("authentic_arabic_share", "arabic_share"):
            value = getattr(self, key)
            need(value is None or 0.0 <= value <= 1.0, f"mix.{key}", "a share in [0, 1] or null")
        need(all(v >= 0 for v in self.domain_caps.values()), "mix.domain_caps", "caps must be >= 0")


@dataclass
class ReportConfig:
    """The curation report: report/curation.md, PNG plots and the same numbers as JSON."""

    num_tasks: ClassVar[int] = 1  # not a setting: one report over the whole run
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=1, mem_gb=4, time_min=30))
