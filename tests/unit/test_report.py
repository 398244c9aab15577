"""The curation report is built from markers and outputs alone: numbers match them, plots exist."""

from __future__ import annotations

import json

from ain.config import RunConfig
from ain.curate.report import write_report
from ain.rundir import RunDir


def test_report_numbers_come_from_the_markers(tmp_path):
    cfg = RunConfig(stages=["ingest", "verify"])
    cfg.ingest.num_tasks = cfg.verify.num_tasks = 1
    run = RunDir(tmp_path / "r")
    run.stage("ingest").create().write_marker(0, {"ingested": 7, "quarantined": 3, "counters": {
        "quarantined_malformed_json": 2, "quarantined_missing_image": 1}})
    verify = run.stage("verify").create()
    verify.write_marker(0, {"passed": 5, "rejected": 2, "rejected_bleu4": 2, "passed_first_try": 4,
                            "passed_after_retranslation": 1, "retranslations": 5})
    (verify.out / "scores-00000.jsonl").write_text("".join(
        json.dumps({"turns": [{"labse": 0.9, "bleu4": b, "meteor": 90.0, "rouge_l": 85.0}]}) + "\n"
        for b in (10.0, 70.0, 95.0)))
    result = write_report(run, cfg)
    md = (run.root / "report" / "curation.md").read_text()
    assert "| ingest | 10 | 7 | malformed_json: 2, missing_image: 1 |" in md
    assert "| verify | 7 | 5 | bleu4: 2 |" in md
    assert "| BLEU-4 (back-translation) | 60.0 | 3 | 1 |" in md
    data = json.loads((run.root / "report" / "curation.json").read_text())
    assert data["scores"]["bleu4"] == [10.0, 70.0, 95.0]
    assert result["plots"] == ["funnel.png", "verify_scores.png"]
    for name in result["plots"]:
        assert (run.root / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
