"""Translation-gate metrics: reference values (docs/ENVIRONMENT notes), hand-computed ROUGE,
Arabic tokenisation, the gate at its thresholds, the exact-match rule, sample aggregation, and
the Embedder on a tiny random sentence-transformers model.

Needs WordNet installed (`bash scripts/install_wordnet.sh`); without it the METEOR tests fail
with the error message that names that script.
"""

from __future__ import annotations

import math

import pytest

from ain.curate import metrics
from ain.curate.config import VerifyConfig
from ain.curate.metrics import (
    GateDecision,
    RegexTokenizer,
    bleu,
    gate,
    meteor,
    normalize_for_overlap,
    overlap_scores,
    rouge,
    score_sample,
    word_tokenize,
)

REF = "the cat sat on the mat"
HYP = "the cat is sitting on the mat"
AR = "القطة جلست على الحصيرة"


# ---------------------------------------------------------------- reference values (0-100)

def test_reference_pair_matches_library_values():
    s = overlap_scores(HYP, REF)
    assert s["meteor"] == pytest.approx(79.34, abs=0.005)
    assert s["bleu4"] == pytest.approx(30.74, abs=0.005)
    assert s["bleu2"] == pytest.approx(59.76, abs=0.005)
    # unigram overlap 5 (the x2, cat, on, mat) of 7 hyp / 6 ref tokens; LCS is also 5:
    # F1 = 2*5 / (7+6) = 10/13
    assert s["rouge1"] == pytest.approx(100 * 10 / 13)
    assert s["rouge_l"] == pytest.approx(100 * 10 / 13)
    assert set(s) == set(metrics.OVERLAP_KEYS)


def test_single_metric_functions_agree_with_overlap_scores_on_normalised_text():
    assert bleu(HYP, REF) == pytest.approx(30.739, abs=1e-3)
    assert bleu(HYP, REF, order=2) == pytest.approx(59.761, abs=1e-3)
    assert meteor(HYP, REF) == pytest.approx(79.344, abs=1e-3)
    assert rouge(HYP, REF) == pytest.approx((76.923, 76.923), abs=1e-3)


def test_bleu2_from_bleu4_statistics_equals_direct_bleu2():
    from ain.curate.metrics import bleu_2_and_4

    for hyp, ref in [(HYP, REF), ("a red car", "a red car"), ("car", "a red car"), ("x y", "a b c"),
                     ("the cat", "the cat sat on the mat"), ("القطة على الحصيرة", AR)]:
        assert bleu_2_and_4(hyp, ref) == (bleu(hyp, ref, 2), bleu(hyp, ref, 4))


def test_exact_match_scores():
    s = overlap_scores(REF, REF)
    assert s["meteor"] == pytest.approx(99.77, abs=0.005)  # fragmentation penalty 0.5 * (1/6)^3
    for key in ("bleu2", "bleu4", "rouge1", "rouge_l"):
        assert s[key] == 100.0


def test_punctuation_is_harsh_unnormalised_and_ignored_by_overlap_scores():
    assert bleu("a red car .", "a red car") == pytest.approx(59.46, abs=0.005)
    s = overlap_scores("A red car.", "a red car")
    assert s["bleu4"] == 100.0 and s["rouge_l"] == 100.0
    # METEOR's fragmentation penalty on 3 matched words in 1 chunk: 1 - 0.5 * (1/3)^3
    assert s["meteor"] == pytest.approx(100 * (1 - 0.5 / 27))


def test_one_word_exact_match_gets_meteor_50():
    s = overlap_scores("Yes.", "yes")
    assert s["meteor"] == pytest.approx(50.0)
    assert s["bleu4"] == 100.0 and s["rouge_l"] == 100.0


def test_empty_segments():
    assert overlap_scores("...", "!") == {k: 100.0 for k in metrics.OVERLAP_KEYS}
    assert overlap_scores("", "the cat") == {k: 0.0 for k in metrics.OVERLAP_KEYS}


# ---------------------------------------------------------------- ROUGE by hand, Arabic

def test_rouge_l_longest_common_subsequence_by_hand():
    ref = "the quick brown fox jumps over the dog"   # 8 tokens
    hyp = "the brown quick fox jumps the dog"        # 7 tokens
    # LCS: the, quick (or brown), fox, jumps, the, dog = 6 -> P 6/7, R 6/8, F = 12/15
    # unigrams: all 7 hyp tokens occur in ref -> P 7/7, R 7/8, F = 14/15
    r1, rl = rouge(hyp, ref)
    assert rl == pytest.approx(80.0)
    assert r1 == pytest.approx(100 * 14 / 15)


def test_arabic_rouge_is_not_zero():
    assert rouge(AR, AR) == (100.0, 100.0)
    # hyp drops one word: LCS 3, P 3/3, R 3/4 -> F = 6/7
    r1, rl = rouge("القطة على الحصيرة", AR)
    assert rl == pytest.approx(100 * 6 / 7)
    assert r1 == pytest.approx(100 * 6 / 7)
    assert overlap_scores(AR + "؟", AR)["rouge_l"] == 100.0


def test_rouge_scorer_default_tokenizer_would_drop_arabic():
    """Why RegexTokenizer exists: rouge-score's own tokenizer keeps only [a-z0-9]."""
    from rouge_score.rouge_scorer import RougeScorer

    assert RougeScorer(["rougeL"]).score(AR, AR)["rougeL"].fmeasure == 0.0


def test_tokenizer_and_normalisation():
    text = "Don't stop, it's 3.5 km — 1,000 people! «القطةُ»، جلست؟"
    assert word_tokenize("Hello, world!") == ["Hello", ",", "world", "!"]
    assert "القطةُ" in word_tokenize(text)  # harakat stay inside the word
    assert RegexTokenizer().tokenize(text) == ["don't", "stop", "it's", "3.5", "km", "1,000", "people",
                                               "القطةُ", "جلست"]
    assert normalize_for_overlap(text) == "dont stop its 3.5 km 1,000 people القطةُ جلست"
    assert normalize_for_overlap("  The  CAT,\tsat. ") == "the cat sat"
    assert normalize_for_overlap("ＡＢＣ") == "abc"  # NFKC


def test_meteor_uses_wordnet_synonyms():
    # "auto" and "car" share a WordNet synset. (nltk looks synonyms up on the Porter-stemmed
    # leftovers, so "automobile" -> "automobil" finds none: a quirk of nltk, kept.)
    assert meteor("the auto is red", "the car is red") == pytest.approx(100 * (1 - 0.5 / 64))
    assert meteor("the banana is red", "the car is red") < 65


def test_cached_wordnet_gives_nltks_own_scores():
    from nltk.translate.meteor_score import meteor_score as nltk_meteor

    pairs = [(HYP, REF), ("the auto is red", "the car is red"), ("a big dog barked", "a large hound was barking"),
             ("they purchased the house", "they bought the home")]
    for hyp, ref in pairs:
        plain = 100 * nltk_meteor([word_tokenize(ref)], word_tokenize(hyp))
        assert meteor(hyp, ref) == pytest.approx(plain, abs=1e-12)


def test_missing_wordnet_error_names_install_script(monkeypatch):
    import nltk.corpus
    from nltk.corpus.reader import WordNetCorpusReader
    from nltk.corpus.util import LazyCorpusLoader

    monkeypatch.setattr(metrics, "_wordnet", None)
    monkeypatch.setattr(nltk.corpus, "wordnet", LazyCorpusLoader("no_such_wordnet_corpus", WordNetCorpusReader, None))
    with pytest.raises(RuntimeError, match="scripts/install_wordnet.sh"):
        meteor("a cat", "a cat")


def test_wordnet_is_loaded_once():
    meteor("a cat", "a cat")
    first = metrics.load_wordnet()
    meteor("a dog", "a hound")
    assert metrics.load_wordnet() is first


# ---------------------------------------------------------------- the gate

CFG = VerifyConfig()  # min_labse 0.80, min_bleu4 60, min_meteor 80, min_rouge_l 80
GOOD = {"labse": 0.95, "bleu2": 90.0, "bleu4": 85.0, "meteor": 92.0, "rouge1": 93.0, "rouge_l": 91.0}


@pytest.mark.parametrize("key,threshold", [("labse", 0.80), ("bleu4", 60.0), ("meteor", 80.0), ("rouge_l", 80.0)])
def test_gate_at_just_above_and_just_below_each_threshold(key, threshold):
    step = 0.001 if key == "labse" else 0.01
    at = gate({**GOOD, key: threshold}, CFG, exact_match=False)
    above = gate({**GOOD, key: threshold + step}, CFG, exact_match=False)
    below = gate({**GOOD, key: threshold - step}, CFG, exact_match=False)
    assert at.passed and at.reasons == []
    assert above.passed
    assert not below.passed
    assert len(below.reasons) == 1 and below.reasons[0].startswith(f"{key} ")
    assert isinstance(below, GateDecision) and below.scores[key] == threshold - step


def test_gate_reason_format():
    d = gate({**GOOD, "labse": 0.71, "meteor": 79.34}, CFG, exact_match=False)
    assert d.reasons == ["labse 0.71 < 0.80", "meteor 79.34 < 80.00"]
    # rounding would print "0.80 < 0.80": more digits instead
    assert gate({**GOOD, "labse": 0.7999}, CFG, exact_match=False).reasons == ["labse 0.7999 < 0.8000"]


def test_gate_nan_fails_and_missing_score_is_a_bug():
    assert not gate({**GOOD, "bleu4": math.nan}, CFG, exact_match=False).passed
    with pytest.raises(KeyError, match="rouge_l"):
        gate({k: v for k, v in GOOD.items() if k != "rouge_l"}, CFG, exact_match=False)


def test_gate_uses_configured_thresholds():
    cfg = VerifyConfig(min_labse=0.5, min_bleu4=10, min_meteor=10, min_rouge_l=10)
    assert gate({"labse": 0.6, "bleu4": 11, "meteor": 11, "rouge_l": 11}, cfg, exact_match=False).passed
    assert not gate({"labse": 0.4, "bleu4": 11, "meteor": 11, "rouge_l": 11}, cfg, exact_match=False).passed


def test_exact_match_rule_on_a_one_word_turn():
    en, back = "Yes.", "yes"
    exact = normalize_for_overlap(back) == normalize_for_overlap(en)
    assert exact
    scores = {"labse": 0.9, **overlap_scores(back, en)}  # METEOR 50
    assert gate(scores, CFG, exact_match=exact).passed
    strict = gate(scores, VerifyConfig(exact_match_passes=False), exact_match=exact)
    assert not strict.passed and strict.reasons == ["meteor 50.00 < 80.00"]
    # LaBSE still applies to an exact match
    low = gate({**scores, "labse": 0.5}, CFG, exact_match=exact)
    assert not low.passed and low.reasons == ["labse 0.50 < 0.80"]
    # not an exact match: the overlap thresholds apply
    assert not gate(scores, CFG, exact_match=False).passed


# ---------------------------------------------------------------- sample aggregation

def test_score_sample_min_over_segments_and_every_segment_gated():
    en = ["What is in the picture?", "Yes.", "The cat sat on the mat."]
    ar = ["ماذا يوجد في الصورة؟", "نعم.", "جلست القطة على الحصيرة."]
    back = ["What is in the picture?", "yes", "The cat is sitting on the mat."]
    out = score_sample(en, ar, back, [0.93, 0.88, 0.91], cfg=CFG)
    assert out["n_segments"] == 3 and len(out["segments"]) == 3
    seg = out["segments"]
    assert [s["exact_match"] for s in seg] == [True, True, False]
    assert [s["passed"] for s in seg] == [True, True, False]
    assert out["min"]["labse"] == pytest.approx(0.88)
    assert out["min"]["meteor"] == pytest.approx(50.0)        # raw minimum: the one-word turn
    assert out["min"]["bleu4"] == pytest.approx(30.74, abs=0.005)
    assert out["mean"]["labse"] == pytest.approx((0.93 + 0.88 + 0.91) / 3)
    assert not out["passed"]
    assert out["reasons"] == ["segment 2: bleu4 30.74 < 60.00", "segment 2: meteor 79.34 < 80.00",
                              "segment 2: rouge_l 76.92 < 80.00"]
    good = score_sample(en[:2], ar[:2], back[:2], [0.93, 0.88], cfg=CFG)
    assert good["passed"] and good["reasons"] == []


def test_score_sample_without_cfg_has_no_decision():
    out = score_sample([REF], [AR], [HYP], [0.9])
    assert "passed" not in out and "passed" not in out["segments"][0]
    assert out["min"]["rouge_l"] == pytest.approx(100 * 10 / 13)


def test_score_sample_edge_cases():
    with pytest.raises(ValueError, match="segment counts differ"):
        score_sample(["a", "b"], ["أ"], ["a", "b"], [0.9, 0.9])
    empty = score_sample([], [], [], [], cfg=CFG)
    assert empty["passed"] and empty["min"] == {} and empty["segments"] == []
    blank = score_sample([REF], ["  "], [REF], [0.99], cfg=CFG)
    assert not blank["passed"] and blank["reasons"] == ["segment 0: arabic empty"]


# ---------------------------------------------------------------- Embedder (tiny random model)

TEXTS = ["the cat sat on the mat", AR, "a red car", "سيارة حمراء", "What is in the picture?",
         "ماذا يوجد في الصورة؟", "A much longer sentence about a dog running across a green field at noon."]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from ain_testkit.tiny_embedder import build_tiny_embedder

    return build_tiny_embedder(tmp_path_factory.mktemp("tiny-embedder"), TEXTS, seed=0)


@pytest.fixture(scope="module")
def embedder(tiny_model):
    return metrics.Embedder(str(tiny_model), device="cpu")


def test_embedder_identical_texts_cosine_one(embedder):
    cos = embedder.cosine_pairs(TEXTS, TEXTS, batch_size=4)
    assert cos == pytest.approx([1.0] * len(TEXTS), abs=1e-5)


def test_embedder_outputs_are_normalised(embedder):
    import numpy as np

    emb = embedder.encode(TEXTS + ["words never seen xyzzy"], batch_size=3)
    assert emb.shape[0] == len(TEXTS) + 1
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_embedder_batched_equals_one_by_one(embedder):
    a, b = TEXTS, TEXTS[::-1]
    batched = embedder.cosine_pairs(a, b, batch_size=64)
    single = [embedder.cosine_pairs([x], [y], batch_size=1)[0] for x, y in zip(a, b)]
    assert batched == pytest.approx(single, abs=1e-5)
    assert all(-1.0 <= c <= 1.0 + 1e-6 for c in batched)


def test_embedder_edge_cases(embedder):
    assert embedder.cosine_pairs([], []) == []
    with pytest.raises(ValueError):
        embedder.cosine_pairs(["a"], [])


def test_tiny_embedder_is_deterministic(tiny_model, tmp_path, embedder):
    from ain_testkit.tiny_embedder import build_tiny_embedder

    again = metrics.Embedder(str(build_tiny_embedder(tmp_path / "again", TEXTS, seed=0)), device="cpu")
    assert again.cosine_pairs(TEXTS[:3], TEXTS[3:6]) == pytest.approx(embedder.cosine_pairs(TEXTS[:3], TEXTS[3:6]),
                                                                      abs=1e-6)


def test_embedder_load_error_is_clear(tmp_path):
    with pytest.raises(RuntimeError, match="verify.labse_model"):
        metrics.Embedder(str(tmp_path / "no-such-model"), device="cpu")
