"""ain.train.collate on a tiny random-init Qwen2-VL: labels, image sizing, packing arithmetic, and
the key property of packing: each sample's per-token losses in a packed row equal those of the
sample run alone (and a plain 2D mask on the same row, the negative control, breaks that)."""

from __future__ import annotations

import io
import os
import random
from collections import Counter
from types import SimpleNamespace

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from PIL import Image  # noqa: E402

from ain.train.collate import (  # noqa: E402
    IGNORE_INDEX,
    TOO_LONG,
    collate_packed,
    collate_padded,
    encode_sample,
    pack_rows,
    packing_efficiency,
    rope_positions,
    try_encode,
)

TEXTS = ["What colour is the square?", "The square is red.", "ما لون المربع؟", "المربع أحمر.",
         "Describe the picture in detail.", "A blue rectangle on a plain background, nothing else.",
         "Is there a circle? No, there is only a green shape.", "صف الصورة بالتفصيل."] * 4

SAMPLES = [
    {"id": "s0", "turns": [{"role": "user", "content": "<image>\nWhat colour is the square?"},
                           {"role": "assistant", "content": "The square is red."}]},
    {"id": "s1", "turns": [{"role": "system", "content": "You answer briefly."},
                           {"role": "user", "content": "صف الصورة بالتفصيل. <image>"},
                           {"role": "assistant", "content": "المربع أحمر."},
                           {"role": "user", "content": "Is there a circle?"},
                           {"role": "assistant", "content": "No, there is only a green shape."}]},
    {"id": "s2", "turns": [{"role": "user", "content": "Describe the picture in detail."},
                           {"role": "assistant", "content": "A blue rectangle on a plain background, nothing else."}]},
    {"id": "s3", "turns": [{"role": "user", "content": "<image> and <image>: ما لون المربع؟"},
                           {"role": "assistant", "content": "The square is red."}]},
]
IMAGE_SPECS = [[("red", 100, 60)], [("green", 140, 140)], [], [("blue", 56, 56), ("yellow", 90, 200)]]


def png(colour: str, w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, "PNG")
    return buf.getvalue()


def cfg(max_length: int = 2048, min_pixels: int = 56 * 56, max_pixels: int = 112 * 112):
    return SimpleNamespace(max_length=max_length, min_pixels=min_pixels, max_pixels=max_pixels)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from ain_testkit.tiny_judge import build_model_dir

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tiny_qwen2vl")
    build_model_dir(out, TEXTS, [], seed=0)
    processor = AutoProcessor.from_pretrained(out)
    model = Qwen2VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    return model, processor


@pytest.fixture(scope="module")
def encoded(tiny):
    model, processor = tiny
    encs = [encode_sample(processor, s, [png(*spec) for spec in specs], cfg())
            for s, specs in zip(SAMPLES, IMAGE_SPECS)]
    assert all(e is not None for e in encs)
    return encs


def token_losses(logits, labels):
    """Per-token CE of shifted logits, (L-1,), 0 where the label is ignored."""
    return torch.nn.functional.cross_entropy(logits[0, :-1].float(), labels[0, 1:], reduction="none",
                                             ignore_index=IGNORE_INDEX)


def test_labels_are_the_assistant_answers(tiny, encoded):
    _, processor = tiny
    tok = processor.tokenizer
    for sample, enc in zip(SAMPLES, encoded):
        answers = [t["content"] for t in sample["turns"] if t["role"] == "assistant"]
        labelled = enc.labels != IGNORE_INDEX
        assert torch.equal(enc.labels[labelled], enc.input_ids[labelled])
        # contiguous labelled spans, one per assistant turn, each the answer + <|im_end|>
        spans, start = [], None
        for i, flag in enumerate(labelled.tolist() + [False]):
            if flag and start is None:
                start = i
            elif not flag and start is not None:
                spans.append(enc.input_ids[start:i].tolist())
                start = None
        assert [tok.decode(s) for s in spans] == [a + "<|im_end|>" for a in answers]
        assert enc.mm_token_type_ids.shape == enc.input_ids.shape


def test_images_follow_placeholders_and_pixel_limits(tiny, encoded):
    _, processor = tiny
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for enc, specs in zip(encoded, IMAGE_SPECS):
        n_pad = int((enc.input_ids == image_pad).sum())
        assert int((enc.mm_token_type_ids == 1).sum()) == n_pad
        if not specs:
            assert enc.pixel_values is None and enc.image_grid_thw is None and n_pad == 0
            continue
        assert enc.image_grid_thw.shape == (len(specs), 3)
        assert n_pad == int(enc.image_grid_thw.prod(-1).sum()) // 4  # merge 2x2
        for t, h, w in enc.image_grid_thw.tolist():  # noqa: B007
            assert 56 * 56 <= h * 14 * w * 14 <= 112 * 112
    # a smaller max_pixels shrinks the image; a larger one keeps more patches
    small = encode_sample(processor, SAMPLES[1], [png("green", 140, 140)], cfg(max_pixels=56 * 56))
    big = encode_sample(processor, SAMPLES[1], [png("green", 140, 140)], cfg(max_pixels=224 * 224))
    assert small.image_grid_thw.tolist() == [[1, 4, 4]]
    assert big.image_grid_thw.tolist() == [[1, 10, 10]]


def test_packed_losses_equal_each_sample_alone(tiny, encoded):
    model, _ = tiny
    positions = [rope_positions(model, e) for e in encoded]
    alone = []
    with torch.no_grad():
        for enc in encoded:
            inputs = enc.model_inputs()
            labels = inputs.pop("labels")
            alone.append(token_losses(model(**inputs).logits, labels))
        batch = collate_packed(encoded, positions)
        assert batch["position_ids"].shape == (4, 1, sum(e.length for e in encoded))
        assert batch["attention_mask"] is None and batch["use_cache"] is False
        labels = batch.pop("labels")
        packed = token_losses(model(**batch).logits, labels)
        # negative control: the same row with a plain all-ones 2D mask mixes attention across samples
        control = token_losses(model(**{**batch, "attention_mask": torch.ones_like(batch["input_ids"])}).logits,
                               labels)
        # second control: the cache left on (its default on this config) also switches boundaries off
        assert model.config.get_text_config().use_cache is not False
        cached = token_losses(model(**{k: v for k, v in batch.items() if k != "use_cache"}).logits, labels)
    assert float((cached - packed).abs().max()) > 1e-2
    diffs, control_diffs, offset = [], [], 0
    for enc, own in zip(encoded, alone):
        n = enc.length
        # packed position offset+t predicts token offset+t+1: the sample's own shifted losses, plus
        # (except for the last sample) one boundary position whose label is -100
        seg = packed[offset:offset + n - 1]
        diffs.append(float((seg - own).abs().max()))
        control_diffs.append(float((control[offset:offset + n - 1] - own).abs().max()))
        if offset + n - 1 < packed.shape[0]:
            assert packed[offset + n - 1] == 0.0  # nothing predicted across the boundary
        offset += n
    max_diff = max(diffs)
    print(f"\npacked vs alone: max |diff| per sample {diffs}; max {max_diff:.3g}; "
          f"negative control (2D all-ones mask) {max(control_diffs):.3g}")
    assert max_diff <= 1e-4
    assert max(control_diffs) > 1e-2
    # the whole-row loss is the token-weighted mean of the samples' losses
    n_tok = [int((e.labels[1:] != IGNORE_INDEX).sum()) for e in encoded]
    mean_alone = sum(float(a.sum()) for a in alone) / sum(n_tok)
    assert abs(float(packed.sum()) / sum(n_tok) - mean_alone) < 1e-4


def test_packed_model_loss_and_padded_baseline(tiny, encoded):
    model, processor = tiny
    positions = [rope_positions(model, e) for e in encoded]
    with torch.no_grad():
        packed = model(**collate_packed(encoded, positions)).loss
        padded = collate_padded(encoded, pad_token_id=processor.tokenizer.pad_token_id)
        assert padded["input_ids"].shape == (len(encoded), max(e.length for e in encoded))
        per_row = []
        for enc in encoded:
            out = model(**enc.model_inputs())
            per_row.append((float(out.loss), int((enc.labels[1:] != IGNORE_INDEX).sum())))
        padded_loss = model(**padded).loss
    token_mean = sum(l * n for l, n in per_row) / sum(n for _, n in per_row)  # noqa: E741
    assert abs(float(packed) - token_mean) < 1e-4
    assert abs(float(padded_loss) - token_mean) < 1e-4


def test_text_only_rope_positions_are_plain(tiny, encoded):
    model, _ = tiny
    for enc in encoded:  # from the config alone (DataLoader workers) = from the model
        assert torch.equal(rope_positions(model.config, enc), rope_positions(model, enc))
        assert torch.equal(rope_positions(model.model, enc), rope_positions(model, enc))
    pos = rope_positions(model, encoded[2])
    assert torch.equal(pos, torch.arange(encoded[2].length).expand(3, -1))


def test_over_long_sample_is_dropped_with_reason(tiny):
    _, processor = tiny
    skipped = Counter()
    long_sample = {"id": "long", "turns": [{"role": "user", "content": "<image>\n" + "Describe. " * 50},
                                           {"role": "assistant", "content": "The square is red."}]}
    assert encode_sample(processor, long_sample, [png("red", 100, 60)], cfg(max_length=64), skipped=skipped) is None
    assert skipped == Counter({TOO_LONG: 1})
    assert try_encode(processor, long_sample, [png("red", 100, 60)], cfg(max_length=64)) == (None, TOO_LONG)
    assert encode_sample(processor, long_sample, [png("red", 100, 60)], cfg(max_length=4096)) is not None
    # placeholder/image mismatch and undecodable bytes are counted too
    encode_sample(processor, long_sample, [], cfg(), skipped=skipped)
    encode_sample(processor, long_sample, [b"not an image"], cfg(), skipped=skipped)
    assert skipped == Counter({TOO_LONG: 1, "image_count_mismatch": 1, "bad_image": 1})


def next_fit(lengths, max_length):
    """Plain greedy in input order: append while it fits, else start a new row."""
    rows, row, used = [], [], 0
    for i, n in enumerate(lengths):
        if row and used + n > max_length:
            rows.append(row)
            row, used = [], 0
        row.append(i)
        used += n
    return rows + ([row] if row else [])


def first_fit(lengths, max_length, decreasing=False):
    """Greedy first fit over all open rows, in input order or longest first (FFD)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if decreasing else range(len(lengths))
    rows = []
    for i in order:
        for row in rows:
            if row[0] + lengths[i] <= max_length:
                row[0] += lengths[i]
                row[1].append(i)
                break
        else:
            rows.append([lengths[i], [i]])
    return [r[1] for r in rows]


def test_pack_rows_best_fit_beats_greedy():
    max_length = 2048
    fills = {}
    for seed in range(5):
        rng = random.Random(seed)
        lengths = [rng.randint(200, 1500) for _ in range(64)]
        rows = pack_rows(lengths, max_length, buffer=64)
        assert sorted(i for r in rows for i in r) == list(range(64))
        assert all(sum(lengths[i] for i in r) <= max_length for r in rows)
        assert all(r == sorted(r) for r in rows) and [r[0] for r in rows] == sorted(r[0] for r in rows)
        assert pack_rows(lengths, max_length, buffer=64) == rows  # deterministic
        assert pack_rows(lengths, max_length, buffer=1) == next_fit(lengths, max_length)

        def fill(n_rows):
            return round(sum(lengths) / (n_rows * max_length), 4)  # noqa: B023

        best = packing_efficiency(lengths, max_length, 64)
        assert round(best, 4) == fill(len(rows))
        pairs = [lengths[i:i + 2] for i in range(0, 64, 2)]
        fills[seed] = {"next_fit": fill(len(next_fit(lengths, max_length))),
                       "first_fit": fill(len(first_fit(lengths, max_length))),
                       "ffd": fill(len(first_fit(lengths, max_length, decreasing=True))),
                       "best_fit_b64": fill(len(rows)), "best_fit_b16": fill(len(pack_rows(lengths, max_length, 16))),
                       "padded_pairs": round(sum(lengths) / sum(2 * max(p) for p in pairs), 4)}
        f = fills[seed]
        assert f["best_fit_b64"] >= f["first_fit"] >= f["next_fit"] and f["best_fit_b16"] >= f["next_fit"]
        assert f["best_fit_b64"] >= f["ffd"] - 0.04
    print("\nfill ratios per seed (64 lengths in [200, 1500], rows of 2048):")
    for seed, f in fills.items():
        print(f"  seed {seed}: {f}")
    f0 = fills[0]  # the numbers quoted in packing_efficiency's docstring
    assert f0 == {"next_fit": 0.7505, "first_fit": 0.9256, "ffd": 0.9575, "best_fit_b64": 0.9575,
                  "best_fit_b16": 0.9256, "padded_pairs": 0.7837}
    with pytest.raises(ValueError):
        pack_rows([100, 3000], max_length, 8)
    assert pack_rows([], max_length, 8) == []
