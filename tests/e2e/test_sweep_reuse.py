"""A LaBSE-threshold sweep re-uses verify's work (ain.curate.verify, fingerprint reuse keys):
translation runs once; the variants' verify tasks read the baseline's score cache and translator
response cache, so a looser threshold computes no score and sends no request, and a stricter
one sends only the requests, and computes only the scores, of attempts the baseline never made.

Real parts: the tiny translator behind `transformers serve`, the tiny LaBSE stand-in, the real
metrics libraries, submitit's local executor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ain.rundir import RunDir
from ain.sweep import launch_sweep, plan_sweep

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (ROOT / ".cache/tiny/translator").exists(), reason="run `make models` first")]


def _scores(run: RunDir) -> list[dict]:
    return list(run.stage("verify").rows("scores-*.jsonl"))


def _counters(run: RunDir) -> dict[str, int]:
    paths = run.stage("verify")
    total: dict[str, int] = {}
    for i in sorted(paths.done_indices()):
        for k, v in (paths.read_marker(i) or {}).items():
            if isinstance(v, int) and not isinstance(v, bool):
                total[k] = total.get(k, 0) + v
    return total


def test_threshold_variants_reuse_the_baselines_scores_and_retranslations(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    plan = plan_sweep(["recipe=smoke", "cluster=local", "cluster.executor=local", "stages=[ingest,translate,verify]",
                       f"runs_root={tmp_path}", "name=labse", "sweep.verify.min_labse=0.5,0.2,0.95"])
    base, loose, strict = plan.variants
    assert [v.own for v in plan.variants] == [["ingest", "translate", "verify"], ["verify"], ["verify"]]
    launch_sweep(plan, argv=["test"])
    runs = {v.name: RunDir(tmp_path / "labse" / v.name) for v in plan.variants}
    b, lo, st = (_counters(runs[v.name]) for v in (base, loose, strict))
    assert b["scores_computed"] > 0 and b.get("scores_reused", 0) == 0
    # looser: every attempt it makes, the baseline made (it retried the same samples at least as far)
    assert lo["scores_computed"] == 0 and lo["scores_reused"] > 0
    assert lo.get("translator_requests", 0) == 0 and lo.get("translator_requests_reused", 0) > 0
    assert lo["passed"] >= b["passed"] >= st["passed"]
    # stricter: only attempts the baseline never made are scored anew
    seen = {(r["id"], r["attempt"]) for r in _scores(runs[base.name])}
    new_turns = sum(len(r["turns"]) for r in _scores(runs[strict.name]) if (r["id"], r["attempt"]) not in seen)
    assert st["scores_reused"] > 0 and st["scores_computed"] <= new_turns
    # (a new attempt whose texts equal an earlier one's, e.g. a deterministic re-translation, is a
    # cache hit too: scores are keyed by content, not by attempt)
    assert new_turns > 0 and st.get("translator_requests", 0) > 0      # its own extra re-translations
    assert st.get("translator_requests_reused", 0) > 0                 # ... and the baseline's
    # the decisions are the variant's own: every kept sample meets its threshold
    for v in (loose, strict):
        for row in runs[v.name].stage("verify").rows("passed-*.jsonl"):
            assert row["verify"]["labse"] >= v.cfg.verify.min_labse
    assert json.loads((tmp_path / "labse" / "sweep.json").read_text())["variants"][1]["owners"]["translate"] == base.name
