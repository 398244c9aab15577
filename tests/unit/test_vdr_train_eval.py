"""vdr_train / vdr_eval / vdr_report in-process on the tiny Qwen3-VL embedder: the blog's loss stack
trains, a stop flag saves and stops, a second call resumes from that checkpoint to the end;
the truncating evaluator equals sentence-transformers' own truncate_dim; the report ranks and
prints the blog's numbers beside ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ain.vdr import evaluate, report, train
from ain.vdr.config import VdrPrepareConfig, VdrTrainConfig
from ain.vdr.prepare import DATASET_DIR, prepare
from ain_testkit.pearl_fixture import write_pearl_fixture
from ain_testkit.tiny_vdr_embedder import ensure_tiny_vdr_embedder

ROOT = Path(__file__).resolve().parents[2]
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = ensure_tiny_vdr_embedder(ROOT / ".cache/tiny/vdr_embedder")
    base = tmp_path_factory.mktemp("vdr")
    pearl = write_pearl_fixture(base / "pearl")
    prepare(VdrPrepareConfig(source=str(pearl), num_queries=60, dev_queries=8, test_queries=8), base / "prep")
    return model, base / "prep" / DATASET_DIR, base


def _cfg(model, **kw) -> VdrTrainConfig:
    base = dict(model=str(model), matryoshka_dims=[64, 32, 16], batch_size=8, mini_batch_size=4, lr=1e-3, epochs=1,
                max_steps=6, bf16=False, gradient_checkpointing=True, save_steps=2, logging_steps=1,
                dataloader_workers=0, query_prompt="Given the question, retrieve the document image that answers it.")
    base.update(kw)
    return VdrTrainConfig(**base)


def test_stop_flag_saves_then_resume_finishes(setup):
    model, data, base = setup
    out = base / "train"
    first = train.train_embedder(_cfg(model), data, out, stop_flag=lambda: True)
    assert first["stopped_early"] and first["steps"] == 1          # saved at the first step boundary
    assert train.last_checkpoint(out / "ckpt").name == "checkpoint-1" and not (out / train.FINAL_DIR).exists()
    second = train.train_embedder(_cfg(model), data, out)
    assert not second["stopped_early"] and second["resumed_from_step"] == 1 and second["steps"] == 6
    history = json.loads((out / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4, 5, 6]  # each step once across the resume
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(out / train.FINAL_DIR), device="cpu")
    assert st.encode_query(["سؤال"]).shape == (1, 64)
    # Tom Aarsen's processor bounds (28*28 .. 600*600 pixels) reached the processor and are saved with it
    saved = json.loads((out / train.FINAL_DIR / "processor_config.json").read_text())["image_processor"]["size"]
    assert saved == {"shortest_edge": 784, "longest_edge": 360000}
    assert (second["global_batch"], second["per_device_batch"], second["world_size"]) == (8, 8, 1)
    # a finished run asked again answers from its result, without training
    assert train.train_embedder(_cfg(model), data, out)["steps"] == 6


def test_matryoshka_dims_wider_than_the_model_are_refused(setup):
    model, data, base = setup
    with pytest.raises(ValueError, match=r"matryoshka_dims \[128\] exceed the model's embedding width 64"):
        train.train_embedder(_cfg(model, matryoshka_dims=[128, 64]), data, base / "wide")


def test_truncating_evaluator_equals_truncate_dim_and_report(setup, tmp_path):
    from datasets import load_from_disk
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    model, data, _ = setup
    res = evaluate.evaluate_model(str(model), data, ["dev"], [64, 32, 16], batch_size=16)
    q, c, rel = evaluate.retrieval_split(load_from_disk(str(data))["dev"])
    assert len(q) == 8 and all(len(v) == 1 and next(iter(v)) in c for v in rel.values())
    # the blog's corpus: 1 positive + 4 negatives per query, by position (its dev: 999 x 4,995)
    assert res["sizes"]["dev"] == {"queries": 8, "corpus": 40} and res["corpus"] == "positional"
    assert rel == {i: {i} for i in range(8)}
    plain = InformationRetrievalEvaluator(q, c, rel, name="x", truncate_dim=16, ndcg_at_k=[10], mrr_at_k=[10],
                                          show_progress_bar=False)(SentenceTransformer(str(model), device="cpu"))
    assert res["splits"]["dev"]["16"]["ndcg@10"] == pytest.approx(plain["x_cosine_ndcg@10"], abs=1e-6)
    assert res["splits"]["dev"]["16"]["mrr@10"] == pytest.approx(plain["x_cosine_mrr@10"], abs=1e-6)

    eval_out = tmp_path / "eval"
    eval_out.mkdir()
    for i, (name, ndcg, blog) in enumerate([("weak", 0.1, 0.04), ("strong", 0.5, 0.12)]):
        fake = json.loads(json.dumps(res))
        fake["splits"]["dev"]["64"]["ndcg@10"] = ndcg
        (eval_out / f"results-{i:03d}.json").write_text(json.dumps(
            {"name": name, "params": "1B", "blog_dev_ndcg10": blog, "blog_test_ndcg10": None, **fake}))
    (eval_out / "results-002.json").write_text(json.dumps(
        {"name": "gated", "params": "8B", "blog_dev_ndcg10": 0.0657, "blog_test_ndcg10": None, "error": "401 gated",
         "width": None, "dims": [], "splits": {}, "sizes": {}}))
    out = report.write_report(eval_out, tmp_path / "report", "dev")
    assert [r["name"] for r in out["rows"]] == ["strong", "weak", "gated"]
    md = (tmp_path / "report" / "vdr_leaderboard.md").read_text()
    assert "| 1 | strong | 1B | 0.5000 | 0.1200 |" in md and "Qwen3-VL-Embedding-8B | 8B | 0.0657" in md
    assert "| 3 | gated (not loaded: 401 gated) | 8B | — | 0.0657 |" in md
    assert (tmp_path / "report" / "vdr_matryoshka.png").stat().st_size > 1000


def test_loss_gathers_across_devices_only_with_several_ranks(setup):
    """With 2 ranks each device holds 64 / 2 rows, and the loss gathers the other rank's embeddings so
    every query still meets the global batch's negatives; one rank has nothing to gather."""
    from sentence_transformers import SentenceTransformer

    model, _, _ = setup
    st = SentenceTransformer(str(model), device="cpu")
    for loss_name in ("cached_mnrl", "mnrl"):
        cfg = _cfg(model, loss=loss_name)
        assert train.build_loss(st, cfg, world_size=2).loss.gather_across_devices
        assert not train.build_loss(st, cfg, world_size=1).loss.gather_across_devices
        assert not train.build_loss(st, _cfg(model, loss=loss_name, gather_across_devices=False),
                                    world_size=2).loss.gather_across_devices
    assert train.build_loss(st, _cfg(model), world_size=2).loss.mini_batch_size == 4


def test_unloadable_model_is_a_clear_load_error(tmp_path, setup):
    _, data, _ = setup
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(evaluate.ModelLoadError, match="notamodel: cannot load as a sentence-transformers model"):
        evaluate.evaluate_model(str(tmp_path / "notamodel"), data, ["dev"], [64], 4)
