"""The mix: safety-free paths here (safety verdicts are tested with the safety stage):
dedup, the authentic-Arabic and Arabic shares, domain caps, determinism, warnings."""

from __future__ import annotations

import json
import logging

import pytest

from ain.config import RunConfig
from ain.curate.config import MixConfig
from ain.curate.mix import run_mix_task, share_split
from ain.rundir import RunDir
from ain.stages import TaskContext


@pytest.mark.parametrize("a, b, target, expected", [
    (10, 90, 0.35, (10, 19)),     # too few authentic: translated shrinks to 10*0.65/0.35 = 18.6 -> 19
    (70, 30, 0.35, (16, 30)),     # too many authentic: 30*0.35/0.65 = 16.2 -> 16
    (35, 65, 0.35, (35, 65)),     # already on target
    (5, 5, 0.0, (0, 5)),
    (5, 5, 1.0, (5, 0)),
])
def test_share_split_hand_computed(a, b, target, expected):
    assert share_split(a, b, target) == expected


def sample(i, language="en", authentic=True, domain="general", text=None):
    return {"id": f"s-{i}", "images": [], "turns": [{"role": "user", "content": text or f"q{i}"},
                                                    {"role": "assistant", "content": "a"}],
            "language": language, "source": "t", "domain": domain, "authentic": authentic, "origin": {}}


def mix_run(tmp_path, ingest_rows, translated_rows, **mix):
    cfg = RunConfig(stages=["ingest", "verify", "mix"], mix=MixConfig(**mix))
    cfg.ingest.num_tasks = cfg.verify.num_tasks = 1
    run = RunDir(tmp_path / "r")
    for stage, name, rows in (("ingest", "samples-00000.jsonl", ingest_rows),
                              ("verify", "passed-00000.jsonl", translated_rows)):
        paths = run.stage(stage).create()
        (paths.out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.write_marker(0, {"items": len(rows)})
    run.stage("mix").create()
    ctx = TaskContext(cfg=cfg, run=run, stage="mix", index=0, num_tasks=1, log=logging.getLogger("t"))
    marker = run_mix_task(ctx)
    mixed = [json.loads(line) for line in open(run.stage("mix").out / "mixed-00000.jsonl")]
    report = json.loads((run.stage("mix").out / "mix_report.json").read_text())
    return marker, mixed, report


def test_dedup_and_authentic_share(tmp_path):
    english = [sample(i) for i in range(20)] + [sample(99, text="q3")]         # s-99 duplicates s-3
    authentic = [sample(100 + i, "ar", True) for i in range(10)]
    translated = [sample(200 + i, "ar", False) for i in range(40)]
    marker, mixed, report = mix_run(tmp_path, english + authentic, translated, authentic_arabic_share=0.35)
    assert marker["dropped_duplicate"] == 1 and "s-99" not in {s["id"] for s in mixed}
    ar = [s for s in mixed if s["language"] == "ar"]
    assert sum(s["authentic"] for s in ar) == 10 and len(ar) == 10 + 19
    assert report["realised"]["authentic_arabic_share"] == pytest.approx(10 / 29)
    assert marker["dropped_authentic_arabic_share"] == 40 - 19 and marker["mixed"] == len(mixed) == 20 + 29


def test_same_seed_same_mix_and_caps(tmp_path):
    rows = [sample(i, domain="medical" if i % 2 else "general") for i in range(30)]
    _, first, _ = mix_run(tmp_path / "a", rows, [], authentic_arabic_share=None, domain_caps={"medical": 5})
    _, second, _ = mix_run(tmp_path / "b", rows, [], authentic_arabic_share=None, domain_caps={"medical": 5})
    assert [s["id"] for s in first] == [s["id"] for s in second]
    assert sum(s["domain"] == "medical" for s in first) == 5 and len(first) == 20
    assert [s["id"] for s in first] != [s["id"] for s in rows[:20]]   # shuffled


def test_unmeetable_target_warns_and_keeps_data(tmp_path):
    marker, mixed, report = mix_run(tmp_path, [sample(i) for i in range(5)], [sample(50, "ar", False)],
                                    authentic_arabic_share=0.35)
    assert marker["warnings"] == 1 and "authentic_arabic_share" in report["warnings"][0]
    assert len(mixed) == 6


def test_report_has_the_shares_of_every_domain(tmp_path):
    english = [sample(i) for i in range(6)]                                        # general, en
    authentic = [sample(100 + i, "ar", True, "medical") for i in range(2)]
    translated = ([sample(200 + i, "ar", False) for i in range(3)]                  # general, ar
                  + [sample(300 + i, "ar", False, "medical") for i in range(2)])
    _, mixed, report = mix_run(tmp_path, english + authentic, translated, authentic_arabic_share=None)
    assert len(mixed) == 13
    # general: 6 en + 3 translated ar; medical: 2 authentic + 2 translated ar
    assert report["realised"]["by_domain"] == {
        "general": {"samples": 9, "arabic_share": pytest.approx(3 / 9), "authentic_arabic_share": 0.0},
        "medical": {"samples": 4, "arabic_share": 1.0, "authentic_arabic_share": 0.5}}
