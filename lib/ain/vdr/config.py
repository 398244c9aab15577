"""Configuration of the embedding track's stages (`vdr_prepare`, `vdr_train`, `vdr_eval`, `vdr_report`).

Defaults are the blog's recipe (seeds/arabic_vdr_embedding_blog.txt, REFERENCE.md section 7);
configs/recipe/vdr_ar.yaml only names the cluster-facing choices, vdr_smoke.yaml shrinks it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Optional

from ain.config_base import Need, Resources

if TYPE_CHECKING:
    from ain.config import RunConfig

# `path` of a leaderboard entry that means "this run's own fine-tune" (vdr_train's final model).
FINETUNED = "@vdr_train"
BLOG_DIMS = [2048, 1536, 1024, 512, 256, 128, 64]


@dataclass
class VdrPrepareConfig:
    """PEARL -> (query, image, 4 hard negatives) dataset with stratified splits."""

    source: str = "UBC-NLP/PEARL-FULL"
    """Hub dataset id, or a local parquet file or directory of parquet files (PEARL-FULL's columns)."""
    source_format: str = "auto"
    """auto (a local path if it exists, else hub), hub or parquet."""
    hub_glob: str = "**/*.parquet"
    """Hub sources: the parquet files to read, relative to the dataset repository."""
    query_column: str = "question"
    """Column holding the Arabic question (the query)."""
    image_column: str = "image"
    """Column holding the image (Hugging Face parquet encoding: struct of bytes and path, or bytes).
    Read only in the second pass, only for row groups holding an image that is used."""
    category_column: str = "category"
    """Column holding the category (Architecture, Clothes, ...): the stratification key."""
    country_column: str = "country"
    """Column holding the country (the same-country negative rule)."""
    caption_column: str = "augmented_caption"
    """Column identifying an image: rows with the same caption show the same image (deduplication)."""
    num_queries: int = 50000
    """Queries sampled, stratified by category (blog: 50,000)."""
    dev_queries: int = 999
    """Dev split size (blog: 999 of 50,000); the train split gets the rest."""
    test_queries: int = 999
    """Test split size (blog: 999 of 50,000)."""
    bad_rows: str = "error"
    """A row with an empty query, category, country or caption: error (ValueError naming file and row)
    or skip (counted in the dataset card)."""
    fetch_threads: int = 8
    """Parquet files read at once in the image pass (I/O bound: hub range reads wait on the network)."""
    # Not a setting: sampling, deduplication, negatives and splits need the global view of the
    # metadata (about 500 MB for PEARL-FULL); the image pass reads only the row groups it needs.
    num_tasks: ClassVar[int] = 1
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=4, mem_gb=32, time_min=240))
    """What each task asks Slurm for."""

    def resolve(self, cfg: "RunConfig") -> None:
        self.source = _absolute_if_local(self.source)

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        need(self.source_format in ("auto", "hub", "parquet"), "vdr_prepare.source_format", "auto, hub or parquet")
        need(bool(self.source), "vdr_prepare.source", "empty: name a hub dataset id or a parquet path")
        if check_paths and self.source_format == "parquet":
            need(os.path.exists(self.source), "vdr_prepare.source", f"{self.source!r} does not exist")
        need(self.bad_rows in ("error", "skip"), "vdr_prepare.bad_rows", "error or skip")
        need(self.fetch_threads >= 1, "vdr_prepare.fetch_threads", "must be >= 1")
        need(self.num_queries >= 3, "vdr_prepare.num_queries", "must be >= 3")
        need(self.dev_queries >= 1 and self.test_queries >= 1, "vdr_prepare.dev_queries",
             "dev_queries and test_queries must be >= 1")
        need(self.dev_queries + self.test_queries < self.num_queries, "vdr_prepare.num_queries",
             f"{self.num_queries} leaves no training queries after dev {self.dev_queries} + test {self.test_queries}")
        cols = [self.query_column, self.image_column, self.category_column, self.country_column, self.caption_column]
        need(len(set(cols)) == len(cols), "vdr_prepare.*_column", f"columns must be distinct: {cols}")


@dataclass
class HardNegativeMiningConfig:
    """Optional self-mined hard negatives (the blog's v3, which lost 11% without a guard against
    false negatives). Off by default; when on, the train split's metadata negatives are replaced by
    the top-scoring images of a miner model, after excluding false-negative candidates."""

    enabled: bool = False
    """Mine negatives before training (the metadata negatives stay for dev and test)."""
    model: str = ""
    """Miner model (hub id or local directory); empty: the model being fine-tuned, before training."""
    margin: float = 0.05
    """Guard: a candidate whose score is within this margin of the positive's (or above it) is treated
    as a possible false negative and skipped."""
    exclude_same_caption: bool = True
    """Guard: never mine the positive's own image or an image with the same caption."""
    batch_size: int = 16
    """Encoding batch size of the miner."""


@dataclass
class VdrTrainConfig:
    """sentence-transformers fine-tune with CachedMNRL inside MatryoshkaLoss, one node of GPUs."""

    model: str = "Qwen/Qwen3-VL-Embedding-2B"
    """Base model: hub id or local sentence-transformers directory."""
    loss: str = "cached_mnrl"
    """cached_mnrl (CachedMultipleNegativesRankingLoss, the blog) or mnrl (plain, for comparisons)."""
    mini_batch_size: int = 2
    """CachedMNRL mini-batch: memory grows with this, not with batch_size (blog: 2)."""
    matryoshka_dims: list[int] = field(default_factory=lambda: list(BLOG_DIMS))
    """MatryoshkaLoss dimensions, largest first (blog: 2048 .. 64); each must be <= the model's width."""
    batch_size: int = 64
    """Per-device train batch size (blog: 64): the in-batch negatives of one GPU."""
    lr: float = 2.0e-5
    """Peak learning rate (blog: 2e-5; 1e-5 for continued training)."""
    warmup_ratio: float = 0.1
    """Share of steps with linear warmup (blog: 0.1)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    epochs: float = 3.0
    """Passes over the train split (blog v2: 3)."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: epochs decide); for smoke runs."""
    bf16: bool = True
    """bf16 autocast with fp32 master weights (blog: bf16=True)."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass (blog: with mini_batch 2, ~22 GB peak on 32 GB)."""
    batch_sampler: str = "no_duplicates"
    """no_duplicates (blog: no value, text or image, twice in a batch, where it would be a false in-batch
    negative); no_duplicates_hashed (the same, with value hashes computed once instead of re-decoding
    images at every check: faster on large image datasets); batch_sampler (plain)."""
    save_steps: int = 500
    """Optimizer steps between checkpoints (also saved on USR2 at the next step boundary). Keep it
    fixed across resumes (the blog saw mismatch warnings otherwise)."""
    save_total_limit: int = 1
    """Checkpoints kept (blog: 1; each is model + optimizer + scheduler)."""
    logging_steps: int = 10
    """Optimizer steps between loss logs."""
    dataloader_workers: int = 2
    """Data-loader workers per rank (image decoding)."""
    query_prompt: Optional[str] = None
    """Instruction prefixed to queries at training and evaluation (the blog's suggested next step, e.g.
    "Given the question, retrieve the document image that answers it."); null: none (the blog's v2)."""
    document_prompt: Optional[str] = None
    """Instruction prefixed to documents; null: none."""
    mining: HardNegativeMiningConfig = field(default_factory=HardNegativeMiningConfig)
    """Optional self-mined hard negatives with a false-negative guard."""
    num_tasks: ClassVar[int] = 1  # not a setting: one data-parallel job (tasks_per_node ranks, one per GPU)
    resources: Resources = field(default_factory=lambda: Resources(
        nodes=1, tasks_per_node=4, cpus_per_task=8, gpus_per_node=4, mem_gb=0, time_min=1440))
    """What each task asks Slurm for."""

    def resolve(self, cfg: "RunConfig") -> None:
        self.model = _absolute_if_local(self.model)
        self.mining.model = _absolute_if_local(self.mining.model)

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        need(self.resources.nodes == 1, "vdr_train.resources.nodes",
             "must be 1: the track trains on one node of several GPUs (raise tasks_per_node)")
        r = self.resources
        need(r.gpus_per_node in (0, r.tasks_per_node), "vdr_train.resources.gpus_per_node",
             f"{r.gpus_per_node} GPUs for {r.tasks_per_node} processes: use one process per GPU (or 0 GPUs on CPU)")
        need(self.loss in ("cached_mnrl", "mnrl"), "vdr_train.loss", "cached_mnrl or mnrl")
        need(self.batch_sampler in ("no_duplicates", "no_duplicates_hashed", "batch_sampler"),
             "vdr_train.batch_sampler", "no_duplicates, no_duplicates_hashed or batch_sampler")
        need(self.mini_batch_size >= 1, "vdr_train.mini_batch_size", "must be >= 1")
        need(self.batch_size >= 2, "vdr_train.batch_size", "must be >= 2 (in-batch negatives)")
        need(bool(self.matryoshka_dims) and all(d >= 1 for d in self.matryoshka_dims)
             and self.matryoshka_dims == sorted(self.matryoshka_dims, reverse=True)
             and len(set(self.matryoshka_dims)) == len(self.matryoshka_dims),
             "vdr_train.matryoshka_dims", "distinct positive dimensions, largest first")
        need(self.lr > 0, "vdr_train.lr", "must be > 0")
        need(0 <= self.warmup_ratio < 1, "vdr_train.warmup_ratio", "in [0, 1)")
        need(self.epochs > 0 or self.max_steps > 0, "vdr_train.epochs", "epochs > 0 or max_steps > 0")
        need(self.save_steps >= 1, "vdr_train.save_steps", "must be >= 1")
        need(self.save_total_limit >= 1, "vdr_train.save_total_limit",
             "must be >= 1: resuming after preemption needs a checkpoint")
        if check_paths:
            need(_hub_id_or_dir(self.model), "vdr_train.model", f"{self.model!r}: no such local directory")
            if self.mining.enabled and self.mining.model:
                need(_hub_id_or_dir(self.mining.model), "vdr_train.mining.model",
                     f"{self.mining.model!r}: no such local directory")
        need(0 <= self.mining.margin < 2, "vdr_train.mining.margin", "a cosine margin in [0, 2)")


@dataclass
class LeaderboardModel:
    """One row of the leaderboard: a model to evaluate, with the blog's published numbers beside it."""

    name: str = ""
    """Display name."""
    path: str = ""
    """Hub id or local directory; "@vdr_train" means this run's fine-tune."""
    params: str = ""
    """Parameter count as published (display only)."""
    blog_dev_ndcg10: Optional[float] = None
    """The blog's dev NDCG@10 for this model (null: not published)."""
    blog_test_ndcg10: Optional[float] = None
    """The blog's test NDCG@10 (published for the fine-tune only)."""
    trust_remote_code: bool = False
    """Allow the model repository's own code (some hub embedders need it); off unless you trust it."""


def blog_leaderboard() -> list[LeaderboardModel]:
    """The blog's table (section 4): the base models it names and its fine-tune."""
    return [
        LeaderboardModel("Ours: fine-tuned Qwen3-VL-Embedding-2B", FINETUNED, "2.2B", 0.1238, 0.1309),
        LeaderboardModel("Qwen3-VL-Embedding-8B", "Qwen/Qwen3-VL-Embedding-8B", "8B", 0.0657),
        LeaderboardModel("tomaarsen/Qwen3-VL-Embedding-2B-vdr", "tomaarsen/Qwen3-VL-Embedding-2B-vdr", "2.2B", 0.0534),
        LeaderboardModel("Qwen3-VL-Embedding-2B (base)", "Qwen/Qwen3-VL-Embedding-2B", "2.2B", 0.0407),
        LeaderboardModel("nvidia/llama-nemotron-embed-vl-1b-v2", "nvidia/llama-nemotron-embed-vl-1b-v2", "1B", 0.0376),
        LeaderboardModel("llamaindex/vdr-2b-multi-v1", "llamaindex/vdr-2b-multi-v1", "2.2B", 0.0347),
        LeaderboardModel("BidirLM/BidirLM-Omni-2.5B-Embedding", "BidirLM/BidirLM-Omni-2.5B-Embedding", "2.5B", 0.0318),
        LeaderboardModel("BAAI/BGE-VL-large", "BAAI/BGE-VL-large", "0.5B", 0.0026),
    ]


@dataclass
class VdrEvalConfig:
    """Leaderboard: one task per model (the blog's base models and this run's fine-tune)."""

    models: list[LeaderboardModel] = field(default_factory=blog_leaderboard)
    """Models to compare; task i evaluates models[i]."""
    splits: list[str] = field(default_factory=lambda: ["dev", "test"])
    """Splits evaluated (queries x their positives and hard negatives as the corpus)."""
    batch_size: int = 8
    """Encoding batch size."""
    matryoshka_dims: list[int] = field(default_factory=list)
    """Dimensions evaluated; empty: vdr_train.matryoshka_dims (those a model's width allows)."""
    load_errors: str = "record"
    """A model that cannot be loaded (no sentence-transformers config, missing remote code, gated): record
    (its row shows the error, the other models and the report go on) or fail (the task fails)."""
    use_train_prompts: bool = True
    """Encode with vdr_train.query_prompt / document_prompt (only for the fine-tune; base models get none)."""
    num_tasks: int = 0
    """Derived at load time: one task per model."""
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=8, gpus_per_node=1, mem_gb=64,
                                                                   time_min=240))
    """What each task asks Slurm for."""

    def resolve(self, cfg: "RunConfig") -> None:
        self.num_tasks = len(self.models)
        for m in self.models:
            m.path = _absolute_if_local(m.path)

    def task_depends_on(self, cfg: "RunConfig") -> list[str | None]:
        """Per task, the stage it waits for (ain.stages.plan): the fine-tune waits for vdr_train;
        the base models need only the prepared dataset, so they are evaluated while training runs."""
        data = "vdr_prepare" if "vdr_prepare" in cfg.stages else None
        own = "vdr_train" if "vdr_train" in cfg.stages else data
        return [own if m.path == FINETUNED else data for m in self.models]

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        need(bool(self.models), "vdr_eval.models", "empty: list at least one model")
        need(self.num_tasks == len(self.models), "vdr_eval.num_tasks", "derived: one task per model")
        for i, m in enumerate(self.models):
            need(bool(m.name) and bool(m.path), f"vdr_eval.models[{i}]", "needs a name and a path")
            if check_paths and m.path != FINETUNED:
                need(_hub_id_or_dir(m.path), f"vdr_eval.models[{i}].path", f"{m.path!r}: no such local directory")
        need(len({m.name for m in self.models}) == len(self.models), "vdr_eval.models", "names must be distinct")
        bad = [s for s in self.splits if s not in ("train", "dev", "test")]
        need(bool(self.splits) and not bad, "vdr_eval.splits", f"train, dev or test; got {self.splits}")
        need(self.batch_size >= 1, "vdr_eval.batch_size", "must be >= 1")
        need(self.load_errors in ("record", "fail"), "vdr_eval.load_errors", "record or fail")
        if any(m.path == FINETUNED for m in self.models) and "vdr_eval" in cfg.stages:
            need("vdr_train" in cfg.stages or os.path.isdir(cfg.run_dir / "stages" / "vdr_train" / "done"),
                 "vdr_eval.models", f"{FINETUNED} needs the vdr_train stage in this run")


@dataclass
class VdrReportConfig:
    """The NDCG@10 table and plot, with the blog's published numbers beside ours."""

    split: str = "dev"
    """Split whose NDCG@10 ranks the leaderboard (the blog ranks by dev)."""
    num_tasks: ClassVar[int] = 1  # not a setting: one report
    resources: Resources = field(default_factory=lambda: Resources(cpus_per_task=1, mem_gb=4, time_min=30))
    """What each task asks Slurm for."""

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        need(self.split in cfg.vdr_eval.splits, "vdr_report.split",
             f"must be one of vdr_eval.splits {cfg.vdr_eval.splits}")


def _hub_id_or_dir(name: str) -> bool:
    """A name that looks like a path ('/...', './...', '.cache/...') must exist."""
    return not name.startswith((".", "/", "~")) or os.path.isdir(os.path.expanduser(name))


def _absolute_if_local(name: str) -> str:
    """Relative paths mean "from where the command was typed"; jobs run elsewhere. Names that are
    not existing paths stay as they are (hub ids)."""
    if name and not os.path.isabs(name) and name != FINETUNED and os.path.exists(name):
        return os.path.abspath(name)
    return name
