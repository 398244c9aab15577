"""Scorers against hand-computed cases (the official CAMEL-Bench / MMMU / ChartQA / MMBench rules)."""

from __future__ import annotations

import random

import pytest

from ain.eval import scoring as s


@pytest.mark.parametrize("pred, gold, ok", [
    ("أ", "أ", True),                      # Arabic letter
    ("ب. أخضر", "ب", True),                # only the first character counts
    ("B", "ب", True),                      # Latin -> Arabic map on the prediction
    ("ب", "B", True),                      # ... and on the gold
    ("E", "ه", True),                      # E -> ه
    ("(B) green", "ب", True),              # "(X)..." -> X
    ("(ب)", "ب", True),
    ("ا", "أ", True),                      # bare alef -> hamza alef
    ("ابيض", "أ", True),                   # an alef-initial reply counts as option أ (the quirk)
    ("أحمر", "ب", False),
    ("C", "ب", False),
    ("Because", "ب", True),                # "B"ecause -> ب: first-letter rule, kept on purpose
    ("", "أ", False),                      # empty reply: wrong (the official code would raise)
    ("  د  ", "(د)", True),
])
def test_camel_mcq_first_letter_rule(pred, gold, ok):
    assert s.mcq(pred, gold) is ok


def test_camel_exact_substring_digit_rules():
    assert s.exact(" قطة ", "قطة") and not s.exact("قطة سوداء", "قطة")
    assert s.mme("صح", "نعم") and s.mme("نعم، هذا صحيح", "نعم") and not s.mme("لا", "نعم")
    assert s.pope("نعم يوجد", " نعم ") and not s.pope("لا", "نعم")
    assert s.countbench("3", "٣") and s.countbench("١٢", "12") and not s.countbench("3 تفاحات", "3")
    assert s.diagrams_mmmu("ب. لأن", "ب") and not s.diagrams_mmmu("", "ب")
    assert s.diagrams_mmmu("الجواب 42 متر", "٤٢") and not s.diagrams_mmmu("43", "42")
    assert s.scienceqa("ب", "1") and s.scienceqa("B", "1") and not s.scienceqa("أ", "1")


def test_vizwiz_list_gold_and_the_character_quirk():
    assert s.vizwiz("قطة", "['قطة', 'هر']")
    assert s.vizwiz("إنه هر صغير", "['قطة', 'هر']")
    assert not s.vizwiz("كلب", "['قطة', 'هر']")
    # A plain-string gold is iterated character by character by the official loop.
    assert s.vizwiz("ط", "قطة")     # ط is one of its characters
    assert not s.vizwiz("ب", "قطة")


@pytest.mark.parametrize("threshold, pred, gold, ok", [
    # edit distance 1 over max length 10 = 0.1
    (0.2, "abcdefghij", "abcdefghiX", True),
    # distance 3 / 10 = 0.3: equal to the threshold passes, just above fails
    (0.3, "abcdefghij", "abcdefgXYZ", True),
    (0.3, "abcdefghij", "abcdefXYZW", False),   # 4 / 10 = 0.4
    (0.4, "abcdefghij", "abcdefXYZW", True),
    (0.5, "abcde", "abcdefghij", True),          # 5 deletions / max(5, 10) = 0.5
    (0.4, "abcde", "abcdefghij", False),
    # Arabic: fast_edit_distance counts UTF-8 bytes; " بكم" is 1 + 3 x 2 = 7 bytes: 7 / 9 = 0.78
    (0.8, "مرحبا بكم", "مرحبا", True),
    (0.5, "مرحبا بكم", "مرحبا", False),
    (0.2, "  كتاب ", "كتاب", True),              # stripped first
])
def test_ocr_cer_on_both_sides_of_each_threshold(threshold, pred, gold, ok):
    assert s.cer(pred, gold, {}, s.ScoreContext(threshold=threshold)) is ok


@pytest.mark.parametrize("threshold, pred, gold, ok", [
    (0.5, "مرحبا بكم", "مرحبا", True),           # 4 characters / 9 = 0.44
    (0.3, "مرحبا بكم", "مرحبا", False),
])
def test_ocr_character_cer_is_an_option(threshold, pred, gold, ok):
    assert s.cer(pred, gold, {}, s.ScoreContext(threshold=threshold, cer_unit="characters")) is ok


def test_cer_value_uses_the_longer_string():
    assert s.cer_value("ab", "abcd") == pytest.approx(0.5)
    assert s.cer_value("abcd", "ab") == pytest.approx(0.5)
    assert s.cer_value("", "") == 0.0


@pytest.mark.parametrize("pred, gold, ok", [
    ("105", "100", True),          # exactly 5%: inclusive
    ("95", "100", True),
    ("105.01", "100", False),
    ("94.9", "100", False),
    ("45%", "0.45", True),         # percent -> fraction
    ("Yes", "yes", True),          # non-numeric: exact, case-insensitive
    ("2019 ", "2019", True),
    ("blue", "red", False),
    ("0", "0", True),              # zero target: exact match path
])
def test_chartqa_relaxed_accuracy_boundary(pred, gold, ok):
    assert s.relaxed(pred, gold) is ok


def test_mmmu_multiple_choice_extraction():
    letters, options = ["A", "B", "C", "D"], ["3", "4", "5", "six"]
    index2ans = dict(zip(letters, options))
    rng = random.Random(42)
    assert s.parse_multi_choice_response("(B)", letters, index2ans, rng) == "B"
    assert s.parse_multi_choice_response("The answer is C.", letters, index2ans, rng) == "C"
    # several bracketed candidates: the last one wins
    assert s.parse_multi_choice_response("Not (A) but (D)", letters, index2ans, rng) == "D"
    # long reply with no letter: option text
    assert s.parse_multi_choice_response("I think the count is clearly six in total", letters, index2ans, rng) == "D"
    # nothing parses: seeded random choice, reproducible
    expected = random.Random(42).choice(letters)
    assert s.parse_multi_choice_response("no idea", letters, index2ans, random.Random(42)) == expected
    meta = {"type": "mc", "letters": letters, "options": options}
    assert s.mmmu("(B) 4", "B", meta, s.ScoreContext())


def test_mmmu_open_extraction():
    assert s.parse_open_response("So the answer is 3.") and 3.0 in s.parse_open_response("So the answer is 3.")
    assert s.mmmu("Therefore the result is 1,000", "1000", {"type": "open"})
    assert s.mmmu("the final answer is paris", "['Paris', 'paris, france']", {"type": "open"})
    assert not s.mmmu("the answer is 4", "3", {"type": "open"})


def test_mmbench_option_inference_and_circular_group_with_one_failure():
    letters, options = ["A", "B", "C"], ["red", "green", "blue"]
    assert s.can_infer("B", letters, options) == "B"
    assert s.can_infer("The answer is (C).", letters, options) == "C"
    assert s.can_infer("it is green", letters, options) == "B"
    assert s.can_infer("A or B", letters, options) is None
    rows = [{"id": f"q1@{k}", "group": "q1", "correct": True, "meta": {}} for k in range(3)]
    rows += [{"id": f"q2@{k}", "group": "q2", "correct": k != 1, "meta": {}} for k in range(4)]
    out = s.circular(rows)
    assert out["groups"] == 2 and out["groups_correct"] == 1 and out["score"] == pytest.approx(50.0)
    assert out["vanilla_accuracy"] == pytest.approx(600 / 7)


def test_mme_score_acc_plus_and_yes_no_parsing():
    assert s.yes_no_parse("Yes, it is.") == "yes" and s.yes_no_parse("No.") == "no"
    assert s.yes_no_parse("maybe") == "other"
    rows = [{"id": "1", "correct": True, "meta": {"category": "color", "group": "a"}},
            {"id": "2", "correct": False, "meta": {"category": "color", "group": "a"}},
            {"id": "3", "correct": True, "meta": {"category": "color", "group": "b"}},
            {"id": "4", "correct": True, "meta": {"category": "color", "group": "b"}},
            {"id": "5", "correct": True, "meta": {"category": "code_reasoning", "group": "c"}},
            {"id": "6", "correct": True, "meta": {"category": "code_reasoning", "group": "c"}}]
    out = s.mme_score(rows)
    assert out["score"] == pytest.approx(75.0 + 50.0)   # acc 3/4 + acc+ 1/2 images
    assert out["cognition"] == pytest.approx(200.0)


def test_arabic_mmlu_macro_over_categories_and_withheld_status():
    rows = [{"id": str(i), "correct": c, "meta": {"category": cat}}
            for i, (c, cat) in enumerate([(True, "Math"), (False, "Math"), (True, "Law"), (True, "Law"), (True, "Law"),
                                           (False, "Law")])]
    out = s.summarize(rows, "category_macro", {"t1": "Math", "t2": "Law"})
    assert out["score"] == pytest.approx((50.0 + 75.0) / 2)      # macro, not the micro 66.7
    assert out["micro_accuracy"] == pytest.approx(400 / 6)
    withheld = [{"id": str(i), "correct": None, "reason": s.WITHHELD, "meta": {}} for i in range(3)]
    out = s.summarize(withheld, "accuracy")
    assert out["status"] == "answers withheld: not scored" and out["score"] is None
    assert out["unscored"] == {s.WITHHELD: 3}
