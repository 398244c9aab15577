"""The benchmark registry (configs/eval), its units, prompt builders and the local-mirror loader."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ain.config import describe_fields, load_config
from ain.config_base import ConfigError
from ain.eval.config import EvalConfig
from ain.eval.data import DataError, iter_items
from ain.eval.registry import RegistryError, eval_units, load_registry

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests/fixtures/eval"
CAMEL_44 = ("mmmu mme gqa realworldqa vqav2 vizwiz pope countbench medicalMMMU medicalMMMUPro diagramsMMMU mmbench "
            "seed medicalmmt hallucinationmmt vqammt mutliimagemmt isidocvqa patddocvqa celebvqa countriesvqa foodvqa "
            "objectcoco blink examsv chartqa mtvqa mathvista infographicsvqa agrovqa diagramsvqa tablesvqa iconqa "
            "scienceqa ocrisi evarest historicalbooks khatt patsocr arabicocr culturevideovqa videomme geochat "
            "muribench").split()


@pytest.fixture(scope="module")
def registry():
    return load_registry(ROOT / "configs/eval")


def test_registry_covers_all_44_camel_datasets_in_8_domains(registry):
    camel = {n: d for n, d in registry.datasets.items() if d.family == "camel_bench"}
    assert len(CAMEL_44) == 44 and set(camel) == set(CAMEL_44)
    assert len(registry.domains) == 8
    assert {d.label for d in registry.domains} == {"VQA", "OCR", "Video", "RS", "CDT", "Agro", "Cult", "Med"}
    assert {n: camel[n].threshold for n in ("ocrisi", "evarest", "historicalbooks", "khatt", "patsocr", "arabicocr")} == \
        {"ocrisi": 0.3, "evarest": 0.5, "historicalbooks": 0.2, "khatt": 0.3, "patsocr": 0.5, "arabicocr": 0.4}
    assert camel["mme"].hub == "ahmedheakl/arabic_mme" and camel["mme"].split == "train"
    mmlu = registry.datasets["arabic_mmlu"]
    assert len(mmlu.tasks) == 40 and len(set(mmlu.tasks.values())) == 19
    english = {n for n, d in registry.datasets.items() if d.family == "english"}
    assert {"mmbench_en", "mmmu_en", "chartqa_en"} <= english


def test_units_split_large_domains_by_dataset(registry):
    units = eval_units(EvalConfig(camel_grouping="camel_bench"), load_registry(ROOT / "configs/eval", "camel_bench"))
    assert len(units) == 20 + 9 + 6 + 1 + 10            # VQA and OCR per dataset, 6 domains whole
    units = eval_units(EvalConfig(), registry)            # AIN's grouping: 2 multi-image sets leave VQA for Video
    names = [u.name for u in units]
    assert len(units) == 18 + 9 + 6 + 1 + 10
    assert "camel_bench/charts" in names and "camel_bench/ocr/khatt" in names and "arabic_mmlu/arabic_mmlu" in names
    cfg = EvalConfig(benchmarks=["camel_bench"], datasets=["mme", "khatt", "foodvqa", "celebvqa"])
    assert [u.name for u in eval_units(cfg, registry)] == [
        "camel_bench/mm_understanding/mme", "camel_bench/ocr/khatt", "camel_bench/cultural"]


def test_num_tasks_is_derived_and_bad_selections_are_reported(chdir_root):
    cfg = load_config(["recipe=eval_smoke"])
    assert cfg.eval.num_tasks == 15
    with pytest.raises(ConfigError, match="eval.datasets"):
        load_config(["recipe=eval_smoke", "eval.datasets=[mme,nonesuch]"])
    with pytest.raises(ConfigError, match="eval.benchmarks"):
        load_config(["recipe=eval_smoke", "eval.benchmarks=[camel]"])
    with pytest.raises(ConfigError, match="eval.checkpoint"):
        load_config(["recipe=eval_smoke", "eval.checkpoint=/no/such/model"])


def test_every_eval_field_is_documented():
    assert [k for k, _, doc in describe_fields() if k.startswith("eval") and not doc] == []


def test_registry_errors_name_file_and_key(tmp_path):
    shutil.copytree(ROOT / "configs/eval", tmp_path / "reg")
    path = tmp_path / "reg/camel_bench.yaml"
    path.write_text(path.read_text().replace("scorer: mme,", "scorer: nonesuch,"))
    with pytest.raises(RegistryError, match=r"camel_bench.yaml.*\[mme\]\.scorer.*nonesuch"):
        load_registry(tmp_path / "reg")
    path.write_text(path.read_text().replace("scorer: nonesuch,", "scorer: mme,").replace("threshold: 0.4, ", ""))
    with pytest.raises(RegistryError, match=r"arabicocr\]\.threshold"):
        load_registry(tmp_path / "reg")


def _items(registry, name, **opts):
    return list(iter_items(registry.datasets[name], str(FIXTURES), 0, opts))


def test_prompts_match_the_official_builders(registry):
    mmb = _items(registry, "mmbench")
    assert mmb[0].prompt == ("انظر إلى الصورة. ما لون الصورة؟ هناك عدة خيارات:\nأ. أحمر\nب. أخضر\nج. أزرق\nد. أصفر"
                             "\nأجب بحرف الخيار من الاختيارات المعطاة مباشرة.")
    assert mmb[1].prompt.startswith("ما لون الصورة؟ هناك عدة خيارات:\nأ. أحمر\nب. أخضر\nأجب")  # no hint, 2 options
    assert mmb[2].prompt.startswith("ما الشكل؟")                                                   # hint "nan"
    mmmu = _items(registry, "mmmu")                                          # list-string with Arabic commas
    assert "\nأ. أحمر\nب. أخضر\nج. أزرق\n\nأجب بحرف" in mmmu[0].prompt
    assert len(mmmu[0].raw_images) == 2 and len(mmmu[1].raw_images) == 1   # image_1..image_7 that are set
    assert mmmu[2].prompt.endswith("\n\nأجب عن السؤال باستخدام كلمة أو عبارة واحدة.")
    video = _items(registry, "videomme")
    assert len(video[0].raw_images) == 9 and len(video[1].raw_images) == 4                      # frames
    assert len(video[0].images(420, 5)) == 5                                                     # at most 5 sent
    assert max(video[0].images(420, 5)[0].size) == 420                                           # longer side 420
    food = _items(registry, "foodvqa")                                                           # jsonl + files
    assert food[0].prompt.startswith("سؤال:\nما اسم هذا الطبق؟\nأ. كبسة\nب. فلافل\nج. حمص")
    assert food[0].images(420, 5)[0].size == (420, 280)                                       # 48x32 -> 420 x int(420/48*32)
    chart = _items(registry, "chartqa")
    assert [it.gold for it in chart] == [None, None]                                             # withheld


def test_arabic_mmlu_prompts_tasks_and_few_shot_rows(registry):
    en = _items(registry, "arabic_mmlu", mmlu_prompt_language="en", mmlu_letters="en")
    assert len(en) == 6                                                                          # few-shot row dropped
    assert en[0].prompt == ("This is a Math question for primary school in Jordan. Select the correct answer!\n\n"
                            "Question: سؤال 0: ما الإجابة الصحيحة؟\nA. خيار 1\nB. خيار 2\nC. خيار 3\nD. خيار 4\n\nAnswer: ")
    assert en[0].meta["task"] == "Math (Primary School)" and en[0].meta["category"] == "Math"
    assert en[3].meta["task"] == "Arabic Language (General)" and en[3].meta["category"] == "Arabic Language"
    assert en[2].prompt.split("Question: ")[1].startswith("سياق قصير\n\n")                       # context first
    assert en[5].gold == "E" and en[5].meta["letters"] == ["A", "B", "C", "D", "E"]
    ar = _items(registry, "arabic_mmlu", mmlu_prompt_language="ar", mmlu_letters="ar")
    # util_prompt.py @ 84511e81 (current): "في الرياضيات", "للمرحلة ...", fifth letter ه
    assert ar[0].prompt.startswith("هذا سؤال في الرياضيات للمرحلة الابتدائية في الأردن. اختر الإجابة الصحيحة!\n\nسؤال: ")
    assert "\nأ- خيار 1\nب- خيار 2" in ar[0].prompt and ar[0].prompt.endswith("\n\nإجابة: ")
    assert ar[5].meta["letters"][4] == "ه"


def test_mmbench_en_rows_are_the_circular_copies_grouped_by_index(registry):
    """lmms-lab/MMBench already holds the shifted copies (index + k * 1e6): each row is asked once,
    never rotated again, and CircularEval groups rows by index % 1e6 (lmms-eval mmbench_evals.py)."""
    items = _items(registry, "mmbench_en")
    assert [it.id for it in items] == [f"mmbench_en/{i}" for i in range(6)]
    assert [it.meta["group"] for it in items] == ["0", "1", "0", "1", "0", "0"]
    by_group = {g: [it.gold for it in items if it.meta["group"] == g] for g in ("0", "1")}
    assert by_group == {"0": ["A", "D", "C", "B"], "1": ["B", "A"]}      # the gold letter follows "red" / "circle"
    assert items[2].prompt == ("What colour is the image? There are several options:\nA. green\nB. blue\nC. yellow\n"
                               "D. red\n\nAnswer with the option's letter from the given choices directly.")
    assert items[1].prompt.startswith("A plain picture. Which shape is shown? There are several options:\nA. square")


def test_bad_rows_name_file_row_and_reason(tmp_path, registry):
    (tmp_path / "foodvqa.jsonl").write_text('{"question": "q", "options": "not a list", "answer": "أ", "image": null}\n')
    with pytest.raises(DataError, match=r"foodvqa.jsonl: row 0: column 'options'"):
        list(iter_items(registry.datasets["foodvqa"], str(tmp_path)))
    (tmp_path / "arabic_mmlu.jsonl").write_text('{"Subject": "Astrology", "Level": null, "Group": "x", "Question": "q", '
                                                '"Option 1": "a", "Option 2": "b", "Answer Key": "A"}\n')
    with pytest.raises(DataError, match=r"arabic_mmlu.jsonl: row 0: .*Astrology"):
        list(iter_items(registry.datasets["arabic_mmlu"], str(tmp_path)))
    with pytest.raises(DataError, match="no mme"):
        list(iter_items(registry.datasets["mme"], str(tmp_path)))
