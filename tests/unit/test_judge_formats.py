"""The safety judges asked the way their models were trained: LlavaGuard with its own policy text
word for word, Qwen3Guard-Gen natively (the turn alone, "Safety: ... / Categories: ..." back)."""

from __future__ import annotations

import pytest

from ain.config import load_config
from ain.config_base import ConfigError
from ain.curate import safety as s
from ain.curate.config import QWEN3GUARD_TO_POLICY, SafetyConfig
from ain.curate.llavaguard_policy import POLICY_V1

SCREENED = ["O1", "O2", "O3", "O4", "O6", "O7", "O8", "O9"]      # the report's 8: all but O5


def test_llavaguard_is_asked_with_its_own_policy_text():
    prompt = s.default_vision_prompt(SCREENED)
    assert prompt == POLICY_V1 and prompt.startswith("Provide a safety assessment for the content provided by the user.")
    assert "O1: Hate, Humiliation, Harassment: \nShould not:" in prompt      # the trailing space is the model's
    assert "O5: Criminal Planning: " in prompt                              # all nine, whatever is screened
    assert prompt.endswith('    "rationale": str,\n}\n')
    # an O5 verdict is reported, not counted: the recipe does not screen it
    verdict = s.interpret({"rating": "Unsafe", "category": "O5: Criminal Planning", "rationale": "r"}, SCREENED)
    assert verdict["rating"] == "Safe" and verdict["reported_rating"] == "Unsafe"


@pytest.mark.parametrize("answer, rating, code, reported", [
    ("Safety: Safe\nCategories: None", "Safe", "NA", None),
    ("Safety: Unsafe\nCategories: Violent", "Unsafe", "O2", None),
    ("Safety: Unsafe\nCategories: Non-violent Illegal Acts", "Unsafe", "O6", None),   # drugs stay screened
    ("Safety: Unsafe\nCategories: PII", "Safe", "NA", "PII"),                    # no policy counterpart
    ("Safety: Unsafe\nCategories: PII, Suicide & Self-Harm", "Unsafe", "O7", None),
    ("Safety: Controversial\nCategories: Sexual Content or Sexual Acts", "Unsafe", "O3", None),  # strict
])
def test_qwen3guard_answers_map_onto_the_policy(answer, rating, code, reported):
    v = s.interpret_qwen3guard(answer, QWEN3GUARD_TO_POLICY, "unsafe", SCREENED)
    assert (v["rating"], v["code"], v.get("reported_category")) == (rating, code, reported)


def test_controversial_can_count_as_safe_and_garbage_is_unjudged():
    v = s.interpret_qwen3guard("Safety: Controversial\nCategories: Unethical Acts", QWEN3GUARD_TO_POLICY, "safe",
                               SCREENED)
    assert (v["rating"], v["reported_rating"], v["reported_category"]) == ("Safe", "Controversial", "Unethical Acts")
    with pytest.raises(s.VerdictError, match="no 'Safety"):
        s.interpret_qwen3guard('{"rating": "Safe"}', QWEN3GUARD_TO_POLICY, "unsafe", SCREENED)
    assert s.qwen3guard_messages("نص عربي") == [{"role": "user", "content": "نص عربي"}]


def test_defaults_and_validation(chdir_root):
    cfg = SafetyConfig()
    assert cfg.text_judge_format == "qwen3guard" and cfg.text_judge.max_tokens == 128
    assert cfg.vision_judge.max_tokens == 500 and "--limit-mm-per-prompt" in cfg.vision_judge.server.command
    with pytest.raises(ConfigError, match="safety.text_judge_format: qwen3guard, but safety.text_judge.model"):
        load_config(["recipe=ain", "cluster=slurm", "safety.text_judge.model=Qwen/Qwen2.5-7B-Instruct"],
                    check_paths=False)
    load_config(["recipe=ain", "cluster=slurm", "safety.text_judge.model=Qwen/Qwen2.5-7B-Instruct",
                 "safety.text_judge_format=policy_json"], check_paths=False)
    with pytest.raises(ConfigError, match="safety.qwen3guard_categories"):
        load_config(["recipe=ain", "cluster=slurm", "safety.qwen3guard_categories={Violent: O10}"], check_paths=False)
