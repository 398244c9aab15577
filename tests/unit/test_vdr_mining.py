"""Self-mined hard negatives: the false-negative guard holds for every mined image, and the train
split is rewritten with the mined images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ain.vdr import mining
from ain.vdr.config import VdrPrepareConfig, VdrTrainConfig
from ain.vdr.prepare import DATASET_DIR, prepare
from ain_testkit.pearl_fixture import write_pearl_fixture
from ain_testkit.tiny_vdr_embedder import ensure_tiny_vdr_embedder

ROOT = Path(__file__).resolve().parents[2]
torch.set_num_threads(1)


@pytest.mark.parametrize("margin", [0.0, 0.02])
def test_mined_negatives_respect_the_guard(tmp_path, margin):
    from datasets import load_from_disk
    from sentence_transformers import SentenceTransformer

    model_dir = ensure_tiny_vdr_embedder(ROOT / ".cache/tiny/vdr_embedder")
    pearl = write_pearl_fixture(tmp_path / "pearl")
    prepare(VdrPrepareConfig(source=str(pearl), num_queries=60, dev_queries=8, test_queries=8), tmp_path / "prep")
    cfg = VdrTrainConfig(model=str(model_dir))
    cfg.mining.enabled, cfg.mining.margin = True, margin
    path = mining.ensure_mined_negatives(cfg, tmp_path / "prep" / DATASET_DIR, tmp_path)
    result = __import__("json").loads(path.read_text())
    train = load_from_disk(str(tmp_path / "prep" / DATASET_DIR))["train"]
    model = SentenceTransformer(str(model_dir), device="cpu")
    order, images, captions = mining.pool_of(train)
    scores = model.similarity(model.encode_query(train["query"], convert_to_tensor=True),
                              model.encode_document([images[i] for i in order], convert_to_tensor=True))
    col = {iid: j for j, iid in enumerate(order)}
    mined_total = 0
    for qi, meta in enumerate(train["metadata"]):
        negs = result["negatives"][meta["query_id"]]
        assert len(negs) == len(set(negs)) == 4 and meta["image_id"] not in negs
        pos_score = float(scores[qi, col[meta["image_id"]]])
        for nid in negs:
            if nid in meta["negative_ids"]:
                continue  # a metadata negative kept to top up
            mined_total += 1
            assert captions[nid].lower() != meta["caption"].lower()
            assert float(scores[qi, col[nid]]) < pos_score - margin + 1e-5
    assert mined_total > 0
    if margin > 0:
        assert result["counts"]["excluded_margin"] > 0

    swapped = mining.apply_mined_negatives(train, path)
    row = swapped[0]
    assert row["metadata"]["negative_ids"] == result["negatives"][row["metadata"]["query_id"]]
    assert row["negative_0"].size == (32, 32)


def test_training_on_mined_negatives(tmp_path):
    from ain.vdr import train

    model_dir = ensure_tiny_vdr_embedder(ROOT / ".cache/tiny/vdr_embedder")
    pearl = write_pearl_fixture(tmp_path / "pearl")
    prepare(VdrPrepareConfig(source=str(pearl), num_queries=60, dev_queries=8, test_queries=8), tmp_path / "prep")
    cfg = VdrTrainConfig(model=str(model_dir), matryoshka_dims=[64, 32], batch_size=4, mini_batch_size=2, max_steps=2,
                         bf16=False, gradient_checkpointing=False, dataloader_workers=0, logging_steps=1)
    cfg.mining.enabled = True
    mined = mining.ensure_mined_negatives(cfg, tmp_path / "prep" / DATASET_DIR, tmp_path / "out")
    assert mining.ensure_mined_negatives(cfg, tmp_path / "prep" / DATASET_DIR, tmp_path / "out", rank=1) == mined
    result = train.train_embedder(cfg, tmp_path / "prep" / DATASET_DIR, tmp_path / "out", mined_negatives=mined)
    assert result["steps"] == 2 and (tmp_path / "out" / train.FINAL_DIR).is_dir()
