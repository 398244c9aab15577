"""Configuration of the embedding track's stages (`vdr_prepare`, `vdr_train`, `vdr_eval`, `vdr_report`).

Defaults are the blog's recipe (seeds/arabic_vdr_embedding_blog.txt, REFERENCE.md section 7);
configs/recipe/vdr_ar.yaml only names the cluster-facing choices, vdr_smoke.yaml shrinks it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Optional

from ain.config_base import Need, Resources
from ain.hub import HubAsset, hub_model
from ain.rundir import RunDir

if TYPE_CHECKING:
    from ain.config import RunConfig

# `path` of a leaderboard entry that means "this run's own fine-tune" (vdr_train's final model).
FINETUNED = "@vdr_train"
BLOG_DIMS = [2048, 1536, 1024, 512, 256, 128, 64]


@dataclass
class VdrPrepareConfig:
    """PEARL -> (query, image, 4 hard negatives) dataset with stratified splits."""

    OPERATIONAL: ClassVar[tuple[str, ...]] = ("fetch_threads",)
    """Fields that change how it runs, not what it computes: left out of fingerprints (ain.fingerprint)."""

    source: str = "UBC-NLP/PEARL-FULL"
    """Where PEARL is: a local directory of PEARL-FULL's unzipped JSON part files and image folders
    (source_format json: the layout PEARL-FULL is distributed in, Google Drive zips, not parquet), a
    local parquet file or directory (PEARL's hub export: UBC-NLP/PEARL columns), or a hub dataset id
    whose repository holds parquet files."""
    source_format: str = "auto"
    """auto (a local directory with parquet files: parquet; else one with files matching json_glob:
    json; a name that is not a local path: hub), json, parquet or hub."""
    hub_glob: str = "**/*.parquet"
    """Hub sources: the parquet files to read, relative to the dataset repository."""
    json_glob: str = "**/pearl_part_*.json*"
    """JSON sources: the part files to read under `source` (PEARL-FULL's pearl_part_XX.zip, unzipped;
    each a JSON array of records, an object holding one such array or one record per key, or JSON lines)."""
    image_file_column: str = "image_id"
    """JSON sources: the record field naming the record's image file: a path relative to `source`, a
    file name found under it (the unzipped images_part_X folders), or a file name without its extension.
    PEARL-FULL's JSON field names are not published: set this to what the part files use."""
    query_column: str = "question"
    """Column holding the Arabic question (the query)."""
    image_column: str = "image"
    """Parquet sources: the column holding the image (Hugging Face parquet encoding: struct of bytes and
    path, or bytes). Read only in the second pass, only for row groups holding an image that is used."""
    category_column: str = "category"
    """Column holding the category (Architecture, Clothes, ...): a stratification key."""
    country_column: str = "country"
    """Column holding the country: a stratification key and the same-country negative rule."""
    caption_column: str = "augmented_caption"
    """Column identifying an image: rows with the same caption show the same image (deduplication)."""
    num_queries: int = 50000
    """Queries sampled, stratified by category and, within each category, by country (blog: 50,000,
    "stratified by category (so every topic and country is represented)")."""
    dev_queries: int = 999
    """Dev split size (blog: 999 of 50,000); the train split gets the rest."""
    test_queries: int = 999
    """Test split size (blog: 999 of 50,000)."""
    random_negative_from: str = "corpus"
    """Where negative_3 (the random rule) is drawn from: corpus (blog: "random from the full corpus": every
    unique image of the source, except the positive and any image another split uses, so no image is in
    two splits) or pool (the split's own share of the images, like the other rules)."""
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

    def hub_assets(self, cfg: "RunConfig") -> list[HubAsset]:
        return hub_model(self.source, "vdr_prepare.source", kind="dataset") if self.source_format in ("auto", "hub") else []

    def check(self, cfg: "RunConfig", need: Need, check_paths: bool) -> None:
        need(self.source_format in ("auto", "json", "parquet", "hub"), "vdr_prepare.source_format",
             "auto, json, parquet or hub")
        need(bool(self.source), "vdr_prepare.source",
             "empty: name a local PEARL-FULL directory (JSON parts + images), a parquet path or a hub dataset id")
        if check_paths and self.source_format in ("json", "parquet"):
            need(os.path.exists(self.source), "vdr_prepare.source", f"{self.source!r} does not exist")
        need(self.random_negative_from in ("corpus", "pool"), "vdr_prepare.random_negative_from", "corpus or pool")
        need(self.bad_rows in ("error", "skip"), "vdr_prepare.bad_rows", "error or skip")
        need(self.fetch_threads >= 1, "vdr_prepare.fetch_threads", "must be >= 1")
        need(self.num_queries >= 3, "vdr_prepare.num_queries", "must be >= 3")
        need(self.dev_queries >= 1 and self.test_queries >= 1, "vdr_prepare.dev_queries",
             "dev_queries and test_queries must be >= 1")
        need(self.dev_queries + self.test_queries < self.num_queries, "vdr_prepare.num_queries",
             f"{self.num_queries} leaves no training queries after dev {self.dev_queries} + test {self.test_queries}")
        cols = [self.query_column, self.category_column, self.country_column, self.caption_column]
        for image_col in (self.image_column, self.image_file_column):
            need(len(set(cols + [image_col])) == len(cols) + 1, "vdr_prepare.*_column",
                 f"columns must be distinct: {cols + [image_col]}")


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
    """sentence-transformers fine-tune with CachedMNRL inside MatryoshkaLoss: one GPU as in the blog, or
    the GPUs of one node with the same global batch (embeddings gathered across devices)."""

    OPERATIONAL: ClassVar[tuple[str, ...]] = ("gradient_checkpointing", "save_steps", "save_total_limit", "logging_steps", "dataloader_workers")
    """Fields that change how it runs, not what it computes: left out of fingerprints (ain.fingerprint)."""

    model: str = "Qwen/Qwen3-VL-Embedding-2B"
    """Base model: hub id or local sentence-transformers directory."""
    loss: str = "cached_mnrl"
    """cached_mnrl (CachedMultipleNegativesRankingLoss, the blog) or mnrl (plain, for comparisons)."""
    mini_batch_size: int = 2
    """CachedMNRL mini-batch: memory grows with this, not with batch_size (the Arabic blog: 2 on a 32 GB
    card; Tom Aarsen's script: 1)."""
    matryoshka_dims: list[int] = field(default_factory=lambda: list(BLOG_DIMS))
    """MatryoshkaLoss dimensions, largest first (blog: 2048 .. 64); each must be <= the model's width."""
    batch_size: int = 64
    """Global train batch size (blog: 64 on one GPU): the in-batch negatives of every query. With
    tasks_per_node ranks each device gets batch_size / tasks_per_node rows (must divide evenly)."""
    gather_across_devices: bool = True
    """With several ranks, gather every rank's embeddings before the loss (sentence-transformers'
    gather_across_devices), so each query still sees the whole global batch as negatives, as on the
    blog's one GPU. false: each rank's in-batch negatives are only its own batch_size / ranks rows."""
    train_negatives: int = 4
    """Hard-negative columns fed to the loss (negative_0 .. negative_{n-1}), 0 to 4. 4: every mined
    negative (the Arabic blog's dataset has 4 and its v3 replaced "the 4 metadata-based negatives");
    Tom Aarsen's script trains with 1 (negative_0) for memory."""
    min_pixels: Optional[int] = 28 * 28
    """Image processor lower bound on pixels per image (Tom Aarsen's script: 28*28); null: the model's own.
    Passed as processor_kwargs when loading the model, and saved with the fine-tune."""
    max_pixels: Optional[int] = 600 * 600
    """Image processor upper bound on pixels per image (Tom Aarsen's script: 600*600; larger images are
    downscaled); null: the model's own."""
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
        nodes=1, tasks_per_node=1, cpus_per_task=8, gpus_per_node=1, mem_gb=0, time_min=1440))
    """What each task asks Slurm for (blog: one GPU; raise tasks_per_node = gpus_per_node for data
    parallel on one node: the global batch stays batch_size)."""

    def per_device_batch_size(self, world_size: int) -> int:
        """Rows per device for the global `batch_size` over `world_size` ranks (ValueError if uneven)."""
        return per_device_batch_size(self.batch_size, world_size)

    def processor_kwargs(self) -> dict[str, int]:
        """What the model's processor is given (only the bounds that are set)."""
        return {k: v for k, v in (("min_pixels", self.min_pixels), ("max_pixels", self.max_pixels))
                if v is not None}

    def resolve(self, cfg: "RunConfig") -> None:
        self.model = _absolute_if_local(self.model)
        self.mining.model = _absolute_if_local(self.mining.model)

    def hub_assets(self, cfg: "RunConfig") -> list[HubAsset]:
        mining = hub_model(self.mining.model, "vdr_train.mining.model") if self.mining.enabled else []
        return [*hub_model(self.model, "vdr_train.model"), *mining]

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
        ranks = r.nodes * r.tasks_per_node
        need(ranks >= 1 and self.batch_size % ranks == 0, "vdr_train.batch_size",
             f"the global batch {self.batch_size} must divide evenly over {ranks} ranks "
             f"(vdr_train.resources.tasks_per_node): use a multiple of {ranks}")
        need(0 <= self.train_negatives <= 4, "vdr_train.train_negatives", "0 to 4 (negative_0 .. negative_3)")
        need(self.min_pixels is None or self.min_pixels >= 1, "vdr_train.min_pixels", "must be >= 1 or null")
        need(self.max_pixels is None or self.max_pixels >= (self.min_pixels or 1), "vdr_train.max_pixels",
             "must be >= min_pixels, or null")
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
    """Allow the model repository's own code (the blog's leaderboard: on for the models whose card loads
    them with trust_remote_code=True, see docs/VDR.md); off unless you trust it."""
    processor_kwargs: dict[str, int] = field(default_factory=dict)
    """Passed to the model's processor when loading (e.g. {min_pixels: 784, max_pixels: 360000} for a
    Qwen-VL processor); empty: the model's own settings. The fine-tune carries vdr_train's bounds in its
    saved processor config."""


def blog_leaderboard() -> list[LeaderboardModel]:
    """The blog's table (section 4): the base models it names and its fine-tune. trust_remote_code as each
    model card's sentence-transformers / transformers usage needs it (sources in docs/VDR.md)."""
    return [
        LeaderboardModel("Ours: fine-tuned Qwen3-VL-Embedding-2B", FINETUNED, "2.2B", 0.1238, 0.1309),
        LeaderboardModel("Qwen3-VL-Embedding-8B", "Qwen/Qwen3-VL-Embedding-8B", "8B", 0.0657),
        LeaderboardModel("tomaarsen/Qwen3-VL-Embedding-2B-vdr", "tomaarsen/Qwen3-VL-Embedding-2B-vdr", "2.2B", 0.0534),
        LeaderboardModel("Qwen3-VL-Embedding-2B (base)", "Qwen/Qwen3-VL-Embedding-2B", "2.2B", 0.0407),
        LeaderboardModel("nvidia/llama-nemotron-embed-vl-1b-v2", "nvidia/llama-nemotron-embed-vl-1b-v2", "1B", 0.0376,
                         trust_remote_code=True),
        LeaderboardModel("llamaindex/vdr-2b-multi-v1", "llamaindex/vdr-2b-multi-v1", "2.2B", 0.0347,
                         trust_remote_code=True),
        LeaderboardModel("BidirLM/BidirLM-Omni-2.5B-Embedding", "BidirLM/BidirLM-Omni-2.5B-Embedding", "2.5B", 0.0318,
                         trust_remote_code=True),
        LeaderboardModel("BAAI/BGE-VL-large", "BAAI/BGE-VL-large", "0.5B", 0.0026, trust_remote_code=True),
    ]


@dataclass
class VdrEvalConfig:
    """Leaderboard: one task per model (the blog's base models and this run's fine-tune)."""

    models: list[LeaderboardModel] = field(default_factory=blog_leaderboard)
    """Models to compare; task i evaluates models[i]."""
    splits: list[str] = field(default_factory=lambda: ["dev", "test"])
    """Splits evaluated (queries x their positives and hard negatives as the corpus)."""
    corpus: str = "positional"
    """How a split's corpus is built. positional (the blog and Tom Aarsen's script): one document per
    position, the N positives then negative_0 .. negative_3 of every row, 5 x N documents (dev: 999 x
    4,995), only the query's own positive relevant, an image that appears twice is two documents.
    dedup: every distinct image once (by image id); fewer documents, not comparable to the blog."""
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

    def hub_assets(self, cfg: "RunConfig") -> list[HubAsset]:
        return [a for i, m in enumerate(self.models) if m.path != FINETUNED
                for a in hub_model(m.path, f"vdr_eval.models[{i}].path")]

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
        need(self.corpus in ("positional", "dedup"), "vdr_eval.corpus", "positional or dedup")
        if any(m.path == FINETUNED for m in self.models) and "vdr_eval" in cfg.stages:
            need("vdr_train" in cfg.stages or RunDir(cfg.run_dir).stage("vdr_train").done.is_dir(),
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


def per_device_batch_size(global_batch: int, world_size: int) -> int:
    """`global_batch` rows split evenly over `world_size` ranks: 64 over 2 -> 32; 64 over 3 is an error."""
    if world_size < 1 or global_batch % world_size:
        raise ValueError(f"vdr_train.batch_size={global_batch} does not divide evenly over {world_size} ranks")
    return global_batch // world_size


def _hub_id_or_dir(name: str) -> bool:
    """A name that looks like a path ('/...', './...', '.cache/...') must exist."""
    return not name.startswith((".", "/", "~")) or os.path.isdir(os.path.expanduser(name))


def _absolute_if_local(name: str) -> str:
    """Relative paths mean "from where the command was typed"; jobs run elsewhere. Names that are
    not existing paths stay as they are (hub ids)."""
    if name and not os.path.isabs(name) and name != FINETUNED and os.path.exists(name):
        return os.path.abspath(name)
    return name
