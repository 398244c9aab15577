"""The safety stage's logic without a server: prompts, answer validation, the per-sample
decision the mix stage applies, and the assignment of work units to tasks."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json

import jsonschema
import pytest

from ain.config import RunConfig
from ain.config_base import ServerConfig
from ain.curate.config import LLAVAGUARD_CATEGORIES, SafetyConfig
from ain.curate.safety import (
    NA_CATEGORY,
    VerdictError,
    category_code,
    category_label,
    default_text_prompt,
    default_vision_prompt,
    image_data_url,
    image_task,
    input_files,
    interpret,
    iter_units,
    judge_text,
    load_verdicts,
    same_endpoint,
    sample_safety,
    text_messages,
    text_prompt,
    verdict_schema,
    vision_messages,
    vision_prompt,
)
from ain.rundir import RunDir

REPORT_CATEGORIES = ["O1", "O2", "O3", "O4", "O6", "O7", "O8", "O9"]


# prompts -----------------------------------------------------------------------------------------
# The vision prompt is LlavaGuard's own policy text, all nine categories (tests/unit/test_judge_formats.py).
@pytest.mark.parametrize("make", [default_text_prompt])
def test_default_prompts_list_exactly_the_screened_categories(make):
    prompt = make(REPORT_CATEGORIES)
    for code in REPORT_CATEGORIES:
        assert f"{code}: {LLAVAGUARD_CATEGORIES[code]}:\nShould not:" in prompt
        assert f'"{code}: {LLAVAGUARD_CATEGORIES[code]}"' in prompt  # in the JSON template
    assert "O5" not in prompt and "Criminal Planning" not in prompt
    assert f'"{NA_CATEGORY}"' in prompt and 'str<"Unsafe"|"Safe">' in prompt
    assert '"rationale": str' in prompt
    only_two = make(["O2", "O6"])
    assert "O1:" not in only_two and "O2: Violence" in only_two and "O6: Weapons" in only_two
    with pytest.raises(ValueError, match="O10"):
        make(["O2", "O10"])


def test_text_prompt_has_one_slot_and_the_config_can_replace_both_prompts():
    prompt = default_text_prompt(REPORT_CATEGORIES)
    assert prompt.count("{text}") == 1 and "{text}" not in default_vision_prompt(REPORT_CATEGORIES)
    messages = text_messages(prompt, "ما لون السماء؟")
    assert messages == [{"role": "user", "content": prompt.replace("{text}", "ما لون السماء؟")}]
    cfg = SafetyConfig()
    assert vision_prompt(cfg) == default_vision_prompt(cfg.categories)
    assert text_prompt(cfg) == default_text_prompt(cfg.categories)
    cfg.vision_prompt, cfg.text_prompt = "Judge this image.", "Judge: {text}"
    assert vision_prompt(cfg) == "Judge this image." and text_prompt(cfg) == "Judge: {text}"


def test_vision_request_carries_the_image_as_a_data_url():
    data = b"\xff\xd8\xff\xe0 not really a jpeg"
    name = hashlib.sha256(data).hexdigest() + ".jpg"
    url = image_data_url(name, data)
    assert url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == data
    assert image_data_url("ab.png", b"x").startswith("data:image/png;base64,")
    (message,) = vision_messages("POLICY", url)
    assert message["role"] == "user"
    assert message["content"] == [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "POLICY"}]


def test_judge_text_drops_placeholders_and_letterless_turns():
    assert judge_text("<image>\nWhat colour is the square?") == "What colour is the square?"
    assert judge_text("الصورة الأولى: <image>\nما الفرق؟") == "الصورة الأولى: \nما الفرق؟"
    for nothing in ("<image>", "<image>\n<image>", "42", " ? ", ""):
        assert judge_text(nothing) is None


# answers -----------------------------------------------------------------------------------------
def test_schema_accepts_llavaguard_answers_and_rejects_others():
    validator = jsonschema.Draft202012Validator(verdict_schema())
    jsonschema.Draft202012Validator.check_schema(verdict_schema())
    good = [{"rating": "Safe", "category": "NA: None applying", "rationale": "ok"},
            {"rating": "Unsafe", "category": "O2: Violence, Harm, or Cruelty", "rationale": "..."},
            {"rating": "Unsafe", "category": "O6"},  # rationale optional
            {"rating": "Unsafe", "category": "O5: Criminal Planning", "rationale": ""}]
    bad = [{"rating": "unsafe", "category": "O2"}, {"rating": "Safe"}, {"category": "NA"},
           {"rating": "Safe", "category": "None"}, {"rating": "Safe", "category": "O10: x"},
           {"rating": "Unsafe", "category": "S1: Violent Crimes"}, {"rating": "Safe", "category": 3}]
    assert all(validator.is_valid(a) for a in good)
    assert not any(validator.is_valid(a) for a in bad)


def test_interpret_counts_unsafe_only_in_screened_categories():
    v = interpret({"rating": "Unsafe", "category": "O2: Violence, Harm, or Cruelty", "rationale": "r"},
                  REPORT_CATEGORIES)
    assert v == {"rating": "Unsafe", "category": "O2: Violence, Harm, or Cruelty", "code": "O2", "rationale": "r"}
    short = interpret({"rating": "Unsafe", "category": "O6"}, REPORT_CATEGORIES)
    assert short["category"] == "O6: Weapons or Substance Abuse" and short["rationale"] == ""
    safe = interpret({"rating": "Safe", "category": "NA: None applying", "rationale": "fine"}, REPORT_CATEGORIES)
    assert safe["rating"] == "Safe" and safe["code"] == "NA" and "reported_rating" not in safe
    # Safe with a category named (LlavaGuard does this): still Safe.
    assert interpret({"rating": "Safe", "category": "O2: Violence, Harm, or Cruelty"}, REPORT_CATEGORIES)["rating"] == "Safe"
    # O5 is not screened by the report: an Unsafe O5 answer counts as Safe, what was said is kept.
    unscreened = interpret({"rating": "Unsafe", "category": "O5: Criminal Planning", "rationale": "r"},
                           REPORT_CATEGORIES)
    assert unscreened["rating"] == "Safe" and unscreened["code"] == "O5"
    assert unscreened["reported_rating"] == "Unsafe" and unscreened["reported_category"] == "O5: Criminal Planning"
    assert interpret({"rating": "Unsafe", "category": "O5"}, ["O5"])["rating"] == "Unsafe"


@pytest.mark.parametrize("answer", [
    {"rating": "Unsafe", "category": "NA: None applying"},  # contradictory
    {"rating": "Unsafe", "category": "Violence"},
    {"rating": "Maybe", "category": "NA"},
    {"rating": "Safe", "category": None},
    ["Safe"],
    None,
])
def test_interpret_refuses_answers_without_a_verdict(answer):
    with pytest.raises(VerdictError):
        interpret(answer, REPORT_CATEGORIES)


def test_category_codes_and_labels():
    assert category_code("O9: Disasters or Emergencies") == "O9"
    assert category_code(" O3 ") == "O3" and category_code("NA: None applying") == "NA"
    assert category_code("O10") is None and category_code("O3x") is None and category_code(7) is None
    assert category_label("NA") == NA_CATEGORY and category_label("O8") == "O8: Animal Cruelty"


# per-sample decision -----------------------------------------------------------------------------
def verdict(rating="Safe", code="NA", status="judged"):
    if status != "judged":
        return {"rating": None, "category": None, "code": None, "status": status, "raw": ["?"]}
    return {"rating": rating, "category": category_label(code), "code": code, "status": status}


SAMPLE = {"id": "s1", "images": ["a.png", "b.png"],
          "turns": [{"role": "user", "content": "<image><image>\nWhat is shown?"},
                    {"role": "assistant", "content": "42"},  # no letters: never judged
                    {"role": "assistant", "content": "Two squares."}]}


def decide(images, texts, policy="drop"):
    return sample_safety(SAMPLE, images, texts, policy)


def test_sample_safety_decisions():
    safe_images = {"a.png": verdict(), "b.png": verdict()}
    safe_texts = {("s1", 0): verdict(), ("s1", 2): verdict()}
    assert decide(safe_images, safe_texts) == (True, None, None)
    assert decide({**safe_images, "b.png": verdict("Unsafe", "O2")}, safe_texts) == (False, "unsafe_image", "O2")
    assert decide(safe_images, {**safe_texts, ("s1", 2): verdict("Unsafe", "O6")}) == (False, "unsafe_text", "O6")
    # An unscreened Unsafe is recorded as Safe by the stage: kept.
    unscreened = {**verdict(), "code": "O5", "category": category_label("O5"), "reported_rating": "Unsafe"}
    assert decide(safe_images, {**safe_texts, ("s1", 0): unscreened}) == (True, None, None)
    # A sample with no images and no letters needs no verdict at all.
    assert sample_safety({"id": "x", "images": [], "turns": [{"role": "user", "content": "1 + 1"}]}, {}, {}) == \
        (True, None, None)


def test_unjudged_follows_the_policy_and_never_counts_as_safe():
    safe_images = {"a.png": verdict(), "b.png": verdict()}
    safe_texts = {("s1", 0): verdict(), ("s1", 2): verdict()}
    for images, texts in [({**safe_images, "a.png": verdict(status="unjudged")}, safe_texts),
                          (safe_images, {**safe_texts, ("s1", 2): verdict(status="unjudged")}),
                          ({"a.png": verdict()}, safe_texts),           # missing image verdict
                          (safe_images, {("s1", 0): verdict()})]:      # missing turn verdict
        assert decide(images, texts, "drop") == (False, "unjudged", None)
        assert decide(images, texts, "keep") == (True, "unjudged", None)
    # Unsafe wins over unjudged, whatever the order.
    images = {"a.png": verdict(status="unjudged"), "b.png": verdict()}
    texts = {("s1", 0): verdict(), ("s1", 2): verdict("Unsafe", "O7")}
    assert decide(images, texts, "keep") == (False, "unsafe_text", "O7")
    with pytest.raises(ValueError):
        decide(safe_images, safe_texts, "maybe")


# work units --------------------------------------------------------------------------------------
def name_of(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest() + ".png"


def synthetic_samples(n: int = 40) -> list[dict]:
    samples = []
    for i in range(n):
        images = [name_of(i % 7), name_of((i * 3) % 11 + 100)] if i % 4 else []
        turns = [{"role": "user", "content": "<image>" * len(images) + f"\nQuestion {i}?"},
                 {"role": "assistant", "content": "7" if i % 5 == 0 else f"Answer {i}."}]
        samples.append({"id": f"s{i}", "images": images, "turns": turns, "language": "en" if i % 2 else "ar"})
    return samples


def test_image_task_is_the_content_hash_modulo_tasks():
    name = "0000000a" + "0" * 56 + ".png"
    assert [image_task(name, n) for n in (1, 2, 3, 4)] == [0, 0, 1, 2]
    assert image_task("ffffffff" + "0" * 56 + ".jpg", 7) == 0xFFFFFFFF % 7


@pytest.mark.parametrize("num_tasks", [1, 2, 3, 5])
def test_units_partition_the_work_and_are_deterministic(num_tasks):
    samples = synthetic_samples()
    per_task = [list(iter_units(iter(samples), i, num_tasks)) for i in range(num_tasks)]
    assert per_task == [list(iter_units(iter(samples), i, num_tasks)) for i in range(num_tasks)]  # same order again
    images = [u["image"] for units in per_task for u in units if u["kind"] == "image"]
    assert sorted(images) == sorted({n for s in samples for n in s["images"]})  # each unique image once
    for i, units in enumerate(per_task):
        assert all(image_task(u["image"], num_tasks) == i for u in units if u["kind"] == "image")
        assert all(int(u["sample_id"][1:]) % num_tasks == i for u in units if u["kind"] == "text")
    texts = [(u["sample_id"], u["turn"]) for units in per_task for u in units if u["kind"] == "text"]
    expected = [(s["id"], t) for s in samples for t, turn in enumerate(s["turns"]) if judge_text(turn["content"])]
    assert sorted(texts) == sorted(expected) and len(texts) == len(set(texts))
    assert ("s0", 1) not in texts  # "7": no letters
    unit = next(u for units in per_task for u in units if u["kind"] == "text" and u["sample_id"] == "s4")
    assert unit["text"] == "Question 4?" and unit["role"] == "user" and unit["language"] == "ar"


def test_a_resumed_task_skips_exactly_its_consumed_units():
    samples = synthetic_samples()
    units = list(iter_units(iter(samples), 1, 3))
    for position in (0, 1, 7, len(units)):
        it = iter_units(iter(samples), 1, 3)
        for _ in range(position):
            next(it)
        assert list(it) == units[position:]


def test_same_endpoint_only_for_equal_model_and_server():
    cfg = SafetyConfig()
    assert not same_endpoint(cfg)  # LlavaGuard and Qwen3Guard by default
    cfg.text_judge.model = cfg.vision_judge.model
    cfg.text_judge.server = dataclasses.replace(cfg.vision_judge.server)  # LlavaGuard's server settings too
    assert same_endpoint(cfg)
    cfg.text_judge.max_tokens = 17  # client settings may differ
    assert same_endpoint(cfg)
    cfg.text_judge.server = ServerConfig(mode="external", url="http://judge:8000/v1")
    assert not same_endpoint(cfg)


def test_incomplete_upstream_or_safety_stage_is_refused(tmp_path):
    cfg = RunConfig(name="r", runs_root=str(tmp_path), stages=["ingest", "translate", "verify", "safety"])
    run = RunDir(cfg.run_dir)
    run.freeze(cfg, argv=["test"])
    for name in cfg.stages:
        run.stage(name).create()
    with pytest.raises(RuntimeError, match="needs ingest to be complete"):
        input_files(run, cfg)
    for i in range(cfg.ingest.num_tasks):
        run.stage("ingest").write_marker(i, {"ok": True})
    (run.stage("ingest").out / "samples-00000.jsonl").write_text("")
    with pytest.raises(RuntimeError, match="needs verify to be complete"):
        input_files(run, cfg)
    cfg.stages = ["ingest", "safety"]  # no verify in the recipe: ingest's samples only
    assert [p.name for p in input_files(run, cfg)] == ["samples-00000.jsonl"]
    with pytest.raises(RuntimeError, match="safety stage is not complete"):
        load_verdicts(run)


def test_load_verdicts_reads_every_task(tmp_path):
    cfg = RunConfig(name="r", runs_root=str(tmp_path), stages=["ingest", "safety"])
    cfg.safety.num_tasks = 2
    run = RunDir(cfg.run_dir)
    run.freeze(cfg, argv=["test"])
    paths = run.stage("safety").create()
    for i in range(2):
        paths.write_marker(i, {"ok": True})
        (paths.out / f"images-{i:05d}.jsonl").write_text(json.dumps({"image": f"{i}.png", **verdict()}) + "\n")
        (paths.out / f"texts-{i:05d}.jsonl").write_text(
            json.dumps({"sample_id": f"s{i}", "turn": 0, **verdict("Unsafe", "O6")}) + "\n")
    images, texts = load_verdicts(run)
    assert sorted(images) == ["0.png", "1.png"] and texts[("s1", 0)]["code"] == "O6"
