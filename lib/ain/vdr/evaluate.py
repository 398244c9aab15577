"""The `vdr_eval` stage: one array task per leaderboard model.

Task i loads `vdr_eval.models[i]` ("@vdr_train" is this run's fine-tune) and runs sentence-
transformers' InformationRetrievalEvaluator on each split: the split's N queries against the
corpus Tom Aarsen's training_visual_document_retrieval.py builds and the blog reports (dev: 999
queries x 4,995 documents): documents are positions, 0..N-1 the rows' positives, then N..2N-1 their
negative_0, and so on to negative_3, 5 x N in all; query i's only relevant document is i. An image
that appears at two positions (one query's positive is another's negative) is two documents, and
only the copy at the query's own position counts. `vdr_eval.corpus: dedup` instead keeps every
distinct image once (by image id). Metrics: NDCG@10, MRR@10, Recall@1/5/10, Accuracy@1/5/10,
MAP@100, at every Matryoshka dimension the model's width allows.

Embeddings are computed once per split at full width and truncated for the smaller dimensions
(identical to `encode(truncate_dim=d)`: the model normalises before truncation and the cosine
score re-normalises), so 7 dimensions cost one encoding pass, not seven.

Output: `results-<i>.json`, written atomically; the marker repeats the headline numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ain.atomic import atomic_write_json
from ain.stages import TaskContext
from ain.vdr.config import FINETUNED, LeaderboardModel, VdrEvalConfig, VdrTrainConfig
from ain.vdr.prepare import DATASET_DIR

HEADLINE = ("ndcg@10", "mrr@10", "recall@1", "recall@5", "recall@10", "accuracy@1", "accuracy@10", "map@100")


NEGATIVE_COLUMNS = ["negative_0", "negative_1", "negative_2", "negative_3"]


def retrieval_split(ds, corpus_mode: str = "positional") -> tuple[dict[Any, str], dict[Any, Any], dict[Any, set]]:
    """(queries, corpus, relevant docs) of one split of the prepared dataset (see the module doc)."""
    if corpus_mode == "positional":
        return positional_split(ds)
    if corpus_mode != "dedup":
        raise ValueError(f"vdr_eval.corpus={corpus_mode!r}: positional or dedup")
    queries: dict[str, str] = {}
    corpus: dict[str, Any] = {}
    relevant: dict[str, set[str]] = {}
    for row in ds:
        meta = row["metadata"]
        qid = meta["query_id"]
        queries[qid] = row["query"]
        relevant[qid] = {meta["image_id"]}
        corpus.setdefault(meta["image_id"], row["image"])
        for k, nid in enumerate(meta["negative_ids"]):
            corpus.setdefault(nid, row[f"negative_{k}"])
    return queries, corpus, relevant


def positional_split(ds) -> tuple[dict[int, str], dict[int, Any], dict[int, set[int]]]:
    """Tom Aarsen's construction: query i -> document i (its positive); negative_k of row i is document
    N * (k + 1) + i; 5 x N documents; relevant[i] == {i}."""
    n = len(ds)
    queries = {i: q for i, q in enumerate(ds["query"])}
    corpus: dict[int, Any] = {i: img for i, img in enumerate(ds["image"])}
    for k, col in enumerate(NEGATIVE_COLUMNS):
        for i, img in enumerate(ds[col]):
            corpus[n * (k + 1) + i] = img
    return queries, corpus, {i: {i} for i in range(n)}


def _evaluator_class():
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator  # noqa: PLC0415

    class TruncatingIREvaluator(InformationRetrievalEvaluator):
        """Encodes each input set once at full width (shared `cache`), truncates per dimension."""

        def __init__(self, *args, cache: dict, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._cache = cache

        def embed_inputs(self, model, sentences, encode_fn_name=None, prompt_name=None, prompt=None, **kwargs):
            key = (encode_fn_name, prompt_name, prompt, len(sentences))
            if key not in self._cache:
                dim, self.truncate_dim = self.truncate_dim, None
                try:
                    self._cache[key] = super().embed_inputs(model, sentences, encode_fn_name, prompt_name, prompt,
                                                            **kwargs)
                finally:
                    self.truncate_dim = dim
            full = self._cache[key]
            return full[:, :self.truncate_dim] if self.truncate_dim else full

    return TruncatingIREvaluator


class ModelLoadError(RuntimeError):
    """The model could not be loaded (as opposed to failing during evaluation)."""


def evaluate_model(model_path: str, dataset_dir: Path, splits: list[str], dims: list[int], batch_size: int,
                   query_prompt: str | None = None, document_prompt: str | None = None,
                   log=None, trust_remote_code: bool = False, corpus_mode: str = "positional",
                   processor_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """{split: {dim: {metric: value}}, "width": full dimension, "corpus": sizes}."""
    import torch  # noqa: PLC0415
    from datasets import load_from_disk  # noqa: PLC0415
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415

    cuda = torch.cuda.is_available()
    # bf16 weights on GPUs (2-8B models, inference only); fp32 on CPU, where bf16 is slow.
    try:
        model = SentenceTransformer(model_path, device="cuda" if cuda else "cpu", trust_remote_code=trust_remote_code,
                                    model_kwargs={"dtype": torch.bfloat16 if cuda else torch.float32},
                                    processor_kwargs=dict(processor_kwargs or {}) or None)
    except Exception as exc:  # noqa: BLE001 (any loader failure means "could not load")
        raise ModelLoadError(f"{model_path}: cannot load as a sentence-transformers model: "
                             f"{type(exc).__name__}: {exc}") from exc
    width = model.get_sentence_embedding_dimension()
    use_dims = sorted({d for d in dims if d <= width} | {width}, reverse=True)
    data = load_from_disk(str(dataset_dir))
    evaluator_cls = _evaluator_class()
    out: dict[str, Any] = {"width": width, "dims": use_dims, "splits": {}, "sizes": {}, "corpus": corpus_mode}
    for split in splits:
        if split not in data:
            raise ValueError(f"{dataset_dir}: no split {split!r} (has {list(data)})")
        queries, corpus, relevant = retrieval_split(data[split], corpus_mode)
        cache: dict = {}
        per_dim = {}
        for dim in use_dims:
            ev = evaluator_cls(queries, corpus, relevant, name=f"{split}_{dim}", truncate_dim=dim,
                               batch_size=batch_size, corpus_chunk_size=max(len(corpus), 1),
                               mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 5, 10],
                               precision_recall_at_k=[1, 5, 10], map_at_k=[100], show_progress_bar=False,
                               query_prompt=query_prompt, corpus_prompt=document_prompt, cache=cache)
            res = ev(model)
            prefix = f"{split}_{dim}_cosine_"
            per_dim[str(dim)] = {m: float(res[prefix + m]) for m in HEADLINE if prefix + m in res}
        out["splits"][split] = per_dim
        out["sizes"][split] = {"queries": len(queries), "corpus": len(corpus)}
        if log:
            log.info("%s %s: NDCG@10 %.4f at %d dims (%d queries x %d docs)", model_path, split,
                     per_dim[str(width)]["ndcg@10"], width, len(queries), len(corpus))
    return out


def model_path(ctx: TaskContext, entry: LeaderboardModel) -> str:
    if entry.path == FINETUNED:
        from ain.vdr.train import FINAL_DIR  # noqa: PLC0415

        final = ctx.upstream("vdr_train").out / FINAL_DIR
        if not final.is_dir():
            raise RuntimeError(f"{FINETUNED}: no fine-tuned model at {final}; run the vdr_train stage first")
        return str(final)
    return entry.path


def run_vdr_eval_task(ctx: TaskContext) -> dict[str, Any]:
    cfg: VdrEvalConfig = ctx.stage_cfg
    train_cfg: VdrTrainConfig = ctx.cfg.vdr_train
    entry = cfg.models[ctx.index]
    prompts = entry.path == FINETUNED and cfg.use_train_prompts  # base models were trained without ours
    record = {"index": ctx.index, "name": entry.name, "path": entry.path, "params": entry.params,
              "blog_dev_ndcg10": entry.blog_dev_ndcg10, "blog_test_ndcg10": entry.blog_test_ndcg10}
    try:
        result = evaluate_model(model_path(ctx, entry), ctx.upstream("vdr_prepare").out / DATASET_DIR, cfg.splits,
                                cfg.matryoshka_dims or train_cfg.matryoshka_dims, cfg.batch_size,
                                query_prompt=train_cfg.query_prompt if prompts else None,
                                document_prompt=train_cfg.document_prompt if prompts else None, log=ctx.log,
                                trust_remote_code=entry.trust_remote_code, corpus_mode=cfg.corpus,
                                processor_kwargs=entry.processor_kwargs)
    except ModelLoadError as exc:
        if cfg.load_errors == "fail" or entry.path == FINETUNED:  # our own model must load
            raise
        ctx.log.warning("%s (recorded; vdr_eval.load_errors=record)", exc)
        atomic_write_json(ctx.paths.out / f"results-{ctx.index:03d}.json",
                          {**record, "error": str(exc), "width": None, "dims": [], "splits": {}, "sizes": {}})
        return {"items": 0, "model": entry.name, "error": str(exc)}
    record.update(result)
    atomic_write_json(ctx.paths.out / f"results-{ctx.index:03d}.json", record)
    width = str(result["width"])
    return {"items": sum(s["queries"] for s in result["sizes"].values()), "model": entry.name,
            **{f"{s}_ndcg@10": result["splits"][s][width]["ndcg@10"] for s in result["splits"]}}
