"""Per-sample lineage (ain.lineage, jobs/trace.py) on a small run built here: ingest, translate,
verify and safety rows as those stages write them, then the real mix (with its per-sample
decisions) and pack stages, and two ranks' sample ids as training writes them. Traces must equal
the stage outputs; an indexed lookup must equal a scan for every id; a stale index must be noticed."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import ain.lineage as lineage
from ain.config import RunConfig
from ain.curate.mix import content_key, run_mix_task
from ain.data.pack import run_pack_task
from ain.lineage import Lineage, LineageError, build_index, format_trace, top_level_string, trace
from ain.rundir import RunDir
from ain.stages import TaskContext

ROOT = Path(__file__).resolve().parents[2]
LOG = logging.getLogger("test_lineage")


def dumps(row) -> str:
    return json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n"  # as ResumableJsonl writes


def png(colour) -> tuple[str, bytes]:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, "PNG")
    data = buf.getvalue()
    return f"{hashlib.sha256(data).hexdigest()}.png", data


def sample(sid, text, answer, images=(), language="en", authentic=True, domain="general"):
    source, row = sid.rsplit("-", 1)
    content = ("<image>\n" * len(images)) + text
    return {"authentic": authentic, "domain": domain, "id": sid, "images": list(images), "language": language,
            "origin": {"file": f"/data/{source}.jsonl", "id": f"src-{row}", "row": int(row)}, "source": source,
            "turns": [{"content": content, "role": "user"}, {"content": answer, "role": "assistant"}]}


def attempt(number, s, back_answer=None, temperature=0.0):
    turns = [{"ar": f"عربي {t['content']}", "back": (back_answer if back_answer and i == 1 else t["content"]),
              "copied": False, "en": t["content"], "role": t["role"], "spans": [], "truncated": False, "turn": i}
             for i, t in enumerate(s["turns"])]
    return {"attempt": number, "error": None, "temperature": temperature, "turns": turns}


def scores(passed):
    turn = {"bleu2": 90.0, "bleu4": 80.0 if passed else 20.0, "labse": 0.9, "meteor": 90.0, "rouge1": 90.0,
            "rouge_l": 90.0}
    reasons = [] if passed else ["turn 1: bleu4 20.00 < 60.00"]
    return {"min": dict(turn), "passed": passed, "reasons": reasons,
            "turns": [{**turn, "bleu4": 80.0, "passed": True, "turn": 0}, {**turn, "passed": passed, "turn": 1}]}


def verdict(rating="Safe", code="NA", category="NA: None applying", rationale="Nothing unsafe."):
    return {"category": category, "code": code, "rating": rating, "rationale": rationale, "status": "judged"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A run with every stage's outputs (see the module docstring) and its index."""
    tmp = tmp_path_factory.mktemp("lineage")
    cfg = RunConfig(stages=["ingest", "translate", "verify", "safety", "mix", "pack"], runs_root=str(tmp), name="r")
    for section in ("ingest", "translate", "verify", "safety", "pack"):
        getattr(cfg, section).num_tasks = 1
    cfg.pack.max_samples_per_shard = 2
    cfg.mix.authentic_arabic_share = None
    cfg.safety.vision_judge.model = "judge/vision-7b"
    cfg.safety.text_judge.model = "judge/text-8b"
    run = RunDir(tmp / "r")
    run.freeze(cfg, argv=["test"])
    for stage in (*cfg.stages, "train"):
        run.stage(stage).create()
    red, red_bytes = png("red")
    blue, blue_bytes = png("blue")
    for name, data in ((red, red_bytes), (blue, blue_bytes)):
        (run.stage("ingest").out / "images" / name[:2]).mkdir(parents=True, exist_ok=True)
        (run.stage("ingest").out / "images" / name[:2] / name).write_bytes(data)

    en = [sample("en-0", "What is shown?", "A red square.", [red]),
          sample("en-1", "Name a colour.", "Blue."),
          sample("en-2", "Name a colour.", "Blue."),                       # duplicate of en-1
          sample("en-3", "Is it round?", "No, it is square.", [red])]      # translation rejected
    ar = [sample("ar-0", "ما هذا؟", "مربع أزرق.", [blue], language="ar")]   # unsafe image
    quarantined = {"file": "/data/en.jsonl", "kind": "bad_image", "raw": '{"image": "x.png"}',
                   "reason": "image 1: not a decodable image", "row": 9, "source": "en"}
    files = {
        ("ingest", "samples-00000.jsonl"): [*en, *ar],
        ("ingest", "quarantine-00000.jsonl"): [quarantined],
        ("translate", "translations-00000.jsonl"): [{"attempts": [attempt(0, s, "Green." if s["id"] == "en-3" else None)],
                                                     "id": s["id"], "sample": s} for s in en],
        ("translate", "skipped-00000.jsonl"): [],
    }
    score_rows, passed, rejected = [], [], []
    for s in en:
        if s["id"] != "en-3":
            score_rows.append({"attempt": 0, "id": s["id"], "temperature": 0.0, **scores(True)})
            passed.append({**s, "attempts": 1, "authentic": False, "id": f"{s['id']}-ar", "language": "ar",
                           "translation_of": s["id"], "verify": scores(True)["min"],
                           "turns": [{"content": f"عربي {t['content']}", "role": t["role"]} for t in s["turns"]]})
            continue
        attempts = []
        for k, temperature in enumerate((0.0, 0.4, 0.8)):
            score_rows.append({"attempt": k, "id": s["id"], "temperature": temperature, **scores(False)})
            a = attempt(k, s, "Green.", temperature)
            attempts.append({"attempt": k, "error": None, "scores": scores(False), "temperature": temperature,
                             "turns": [{x: t[x] for x in ("turn", "en", "ar", "back", "spans")} for t in a["turns"]]})
        rejected.append({"attempts": attempts, "id": s["id"], "reasons": ["turn 1: bleu4 20.00 < 60.00"]})
    files[("verify", "passed-00000.jsonl")] = passed
    files[("verify", "rejected-00000.jsonl")] = rejected
    files[("verify", "scores-00000.jsonl")] = score_rows
    files[("safety", "images-00000.jsonl")] = [
        {"image": red, "judge": "vision", **verdict()},
        {"image": blue, "judge": "vision", **verdict("Unsafe", "O2", "O2: Violence, Harm, or Cruelty", "Violence.")}]
    files[("safety", "texts-00000.jsonl")] = [
        {"language": s["language"], "role": t["role"], "sample_id": s["id"], "turn": i, **verdict()}
        for s in [*en, *ar, *passed] for i, t in enumerate(s["turns"])]
    for (stage, name), rows in files.items():
        (run.stage(stage).out / name).write_text("".join(dumps(r) for r in rows), encoding="utf-8")
    for stage in ("ingest", "translate", "verify", "safety"):
        run.stage(stage).write_marker(0, {"items": 1})

    for stage in ("mix", "pack"):
        ctx = TaskContext(cfg=cfg, run=run, stage=stage, index=0, num_tasks=1, log=LOG)
        marker = (run_mix_task if stage == "mix" else run_pack_task)(ctx)
        run.stage(stage).write_marker(0, marker)
    mixed = [json.loads(line)["id"] for line in open(run.stage("mix").out / "mixed-00000.jsonl")]
    for rank in (0, 1):  # as ain.train.telemetry.TrainLog writes them: two steps per rank, one epoch
        ids = mixed[rank::2]
        (run.stage("train").out / f"samples-rank{rank}.jsonl").write_text(
            "".join(json.dumps({"step": step + 1, "ids": ids[step * 2:step * 2 + 2]}) + "\n" for step in range(2)))
    summary = build_index(run, workers=1)
    return {"run": run, "cfg": cfg, "files": files, "mixed": mixed, "summary": summary, "red": red, "blue": blue}


def rows(run, stage, pattern):
    return [json.loads(line) for path in sorted(run.stage(stage).out.glob(pattern)) for line in open(path)]


# ------------------------------------------------------------------------------- key extraction
@pytest.mark.parametrize("row, expected", [
    ({"id": "a-1", "origin": {"id": "x"}}, "a-1"),
    ({"attempts": [{"id": "nested"}], "id": "top"}, "top"),                     # a nested key comes first
    ({"a": "{[\"id\": \"fake\"", "id": "real"}, "real"),                         # brackets and quotes in a string
    ({"a": {"b": [{"id": "deep"}]}, "c": "\\", "id": "real"}, "real"),
    ({"origin": {"id": "only-nested"}}, None),
    ({"id": "with \"quote\""}, None),                                          # escapes: the caller parses
    ({"id": 7}, None),                                                          # not a string
])
def test_top_level_string_finds_only_the_top_level_key(row, expected):
    assert top_level_string(dumps(row).encode(), "id") == expected


def test_top_level_string_needs_an_object_line():
    assert top_level_string(b'[{"id": "x"}]', "id") is None and top_level_string(b' {"id": "x"}', "id") == "x"


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(st.sampled_from(["id", "a", "z", "turns"]), children, max_size=3),
                           max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["id", "attempts", "b", "origin", "zz"]), json_values, min_size=1))
def test_top_level_string_agrees_with_json(row):
    line = dumps(row).encode()
    value = row.get("id")
    got = top_level_string(line, "id")
    if isinstance(value, str) and "\\" not in json.dumps(value, ensure_ascii=False)[1:-1]:
        assert got == value
    else:
        assert got is None


@pytest.mark.parametrize("chunk", [1 << 25, 7, 64])
def test_index_build_keys_equal_parsing_every_line(tmp_path, monkeypatch, chunk):
    """The build's fast pass (one regex over a chunk) against json.loads of every line, on lines
    that defeat a naive search: a nested key first, brackets and quotes inside strings, escapes,
    compact separators, blank lines, rows without the key; chunks shorter than a line."""
    monkeypatch.setattr(lineage, "CHUNK", chunk)
    rows = [{"id": "a-1", "origin": {"id": "x"}}, {"attempts": [{"id": "nested"}], "id": "top"},
            {"a": '{["id": "fake"', "id": "real"}, {"origin": {"id": "only-nested"}, "zz": 1},
            {"id": 'with "quote"'}, {"x": 1}, {"b": "\\", "id": "z-9"}, {"id": "عربي-1"}]
    text = "".join(dumps(r) for r in rows[:3]) + "\n" + json.dumps({"id": "compact"}, separators=(",", ":")) + "\n" \
        + "".join(dumps(r) for r in rows[3:]) + '{"id": "unterminated'
    path = tmp_path / "mixed-00000.jsonl"
    path.write_text(text, encoding="utf-8")
    expected, offset = [], 0
    for line in path.read_bytes().split(b"\n")[:-1]:
        if line.strip() and isinstance(json.loads(line).get("id"), str):
            expected.append((offset, json.loads(line)["id"]))
        offset += len(line) + 1
    assert list(lineage.iter_keys(lineage.KIND["mixed"], path, path.stat().st_size)) == expected
    assert [k for _, k in expected] == ["a-1", "top", "real", "compact", 'with "quote"', "z-9", "عربي-1"]


# ------------------------------------------------------------------------------------- mix decisions
def test_mix_records_a_decision_for_every_candidate(built):
    run = built["run"]
    decisions = {d["id"]: d for d in rows(run, "mix", "decisions-*.jsonl")}
    candidates = [s["id"] for s in rows(run, "ingest", "samples-*.jsonl")] + \
                 [s["id"] for s in rows(run, "verify", "passed-*.jsonl")]
    assert list(decisions) == candidates
    assert {i for i, d in decisions.items() if d["kept"]} == set(built["mixed"])
    assert all(decisions[i]["position"] == p for p, i in enumerate(built["mixed"]))
    assert decisions["ar-0"] == {"id": "ar-0", "kept": False, "reason": "unsafe_image", "category": "O2",
                                 "duplicate_of": None, "position": None}
    assert decisions["en-2"]["reason"] == "duplicate" and decisions["en-2"]["duplicate_of"] == "en-1"
    assert decisions["en-2-ar"]["duplicate_of"] == "en-1-ar"
    assert content_key(next(s for s in rows(run, "ingest", "samples-*.jsonl") if s["id"] == "en-1")) == \
        content_key(next(s for s in rows(run, "ingest", "samples-*.jsonl") if s["id"] == "en-2"))


# ------------------------------------------------------------------------------------------- traces
def test_trace_of_a_packed_sample_and_its_translation_from_either_id(built):
    run = built["run"]
    t = trace(run, "en-0")
    assert trace(run, "en-0-ar")["ids"] == t["ids"] == {"sample": "en-0", "translation": "en-0-ar"}
    sample = next(s for s in rows(run, "ingest", "samples-*.jsonl") if s["id"] == "en-0")
    assert t["ingest"] == {"status": "ingested", "source": "en", "file": "/data/en.jsonl", "row": 0,
                           "source_id": "src-0", "sample": sample}
    assert t["translate"]["row"] == built["files"][("translate", "translations-00000.jsonl")][0]
    assert t["verify"]["status"] == "passed"
    assert t["verify"]["passed"] == next(r for r in rows(run, "verify", "passed-*.jsonl") if r["id"] == "en-0-ar")
    assert t["verify"]["scores"] == [r for r in rows(run, "verify", "scores-*.jsonl") if r["id"] == "en-0"]
    assert t["safety"]["images"] == [{"image": built["red"], "judge_model": "judge/vision-7b",
                                      "verdict": rows(run, "safety", "images-*.jsonl")[0]}]
    assert t["safety"]["judges"]["text"] == "judge/text-8b"
    for sid in ("en-0", "en-0-ar"):
        assert t["safety"]["texts"][sid] == [r for r in rows(run, "safety", "texts-*.jsonl") if r["sample_id"] == sid]
        decision = next(d for d in rows(run, "mix", "decisions-*.jsonl") if d["id"] == sid)
        assert t["mix"][sid] == decision
        # the shard from the tar itself: members, order, manifest line
        pack = t["pack"][sid]
        manifest = next(m for m in rows(run, "pack", "manifest-*.jsonl") if m["shard"] == pack["shard"])
        assert pack["manifest"] == {k: v for k, v in manifest.items() if k != "lengths"}
        with tarfile.open(run.stage("pack").out / pack["shard"]) as tar:
            names = tar.getnames()
        keys = list(dict.fromkeys(n.split(".", 1)[0] for n in names))
        assert pack["members"] == [n for n in names if n.split(".", 1)[0] == sid] and pack["verified"]
        assert pack["index_in_shard"] == keys.index(sid)
        steps = [(r, json.loads(line)["step"]) for r in (0, 1)
                 for line in open(run.stage("train").out / f"samples-rank{r}.jsonl") if sid in json.loads(line)["ids"]]
        assert [(s["rank"], s["step"]) for s in t["train"][sid]] == steps and len(steps) == 1
    assert t["lookup"]["indexed"]["ingest"] and not t["lookup"]["stale"]
    text = format_trace(t)
    assert "en-0-ar" in text and built["red"][:16] in text and t["pack"]["en-0"]["shard"] in text


def test_trace_of_a_rejected_translation_names_every_attempt_and_failing_metric(built):
    run = built["run"]
    t = trace(run, "en-3-ar")  # the translation that never passed: traces its original
    assert t["ids"] == {"sample": "en-3", "translation": None}
    v = t["verify"]
    assert v["status"] == "rejected" and v["rejected"] == built["files"][("verify", "rejected-00000.jsonl")][0]
    assert [a["attempt"] for a in v["attempts"]] == [0, 1, 2] and [a["temperature"] for a in v["attempts"]] == [0.0, 0.4, 0.8]
    for a, r in zip(v["attempts"], v["rejected"]["attempts"]):
        assert a["turns"] == r["turns"] and a["turns"][1]["back"] == "Green."
        assert a["failing"] == [{"turn": 1, "metric": "bleu4", "reason": "turn 1: bleu4 20.00 < 60.00"}]
        assert a["passed"] is False and a["scores"] == r["scores"]["turns"]
    assert t["mix"]["en-3"]["kept"] and "en-3-ar" not in t["mix"]
    assert "bleu4 20.00 <- FAIL" in format_trace(t)


def test_trace_of_dropped_duplicate_and_quarantined_rows(built):
    run = built["run"]
    unsafe = trace(run, "ar-0")
    assert unsafe["safety"]["status"] == "unsafe" and unsafe["safety"]["images"][0]["verdict"]["code"] == "O2"
    assert unsafe["mix"]["ar-0"]["reason"] == "unsafe_image" and unsafe["pack"] == {} and unsafe["train"] == {}
    assert unsafe["translate"]["status"] == "not translated (language ar)"
    dup = trace(run, "en-2")
    assert dup["mix"]["en-2"]["duplicate_of"] == "en-1" and "en-2" not in dup["pack"]
    assert "duplicate of en-1" in format_trace(dup)
    bad = trace(run, "en-9")
    assert bad["ingest"] == {"status": "quarantined", "source": "en", "file": "/data/en.jsonl", "row": 9,
                             "kind": "bad_image", "reason": "image 1: not a decodable image", "raw": '{"image": "x.png"}',
                             "quarantine": built["files"][("ingest", "quarantine-00000.jsonl")][0]}


def test_shard_and_key_queries_and_unknown_ids(built):
    run = built["run"]
    shard = trace(run, "en-0")["pack"]["en-0"]["shard"]
    assert trace(run, f"runs/x/stages/pack/out/{shard}/en-0.json")["pack"]["en-0"]["shard"] == shard
    assert trace(run, f"{shard[:-4]}/en-0")["ids"]["sample"] == "en-0"
    other = next(m["shard"] for m in rows(run, "pack", "manifest-*.jsonl") if m["shard"] != shard)
    with pytest.raises(LineageError, match=f"not in shard {other}: it is in {shard}"):
        trace(run, f"{other}/en-0")
    with pytest.raises(LineageError, match="no stage of .* has a row for it"):
        trace(run, "nope-1")


# ---------------------------------------------------------------------------------------- the index
def every_key(run):
    keys = {s["id"] for s in rows(run, "ingest", "samples-*.jsonl")} | {"en-9"}
    return sorted(keys | {f"{k}-ar" for k in keys})


def test_indexed_lookup_equals_a_scan_for_every_id_and_reads_no_file_whole(built, monkeypatch):
    run = built["run"]
    scanned = {k: trace(run, k, use_index=False) for k in every_key(run)}
    monkeypatch.setattr(lineage, "scan_file", lambda *a: pytest.fail("a fresh index must not scan"))
    for key, expected in scanned.items():
        got = trace(run, key)
        assert all(got["lookup"]["indexed"].values()) and not expected["lookup"]["indexed"].get("ingest")
        for t in (got, expected):
            t.pop("lookup")
        assert got == expected, key
    assert built["summary"]["pack"]["entries"] == len(built["mixed"])


def test_collisions_in_a_bucket_never_give_a_wrong_row(built, monkeypatch):
    """Every key in one bucket (bits 0) and hashes that collide: rows are checked against the key."""
    run = built["run"]
    monkeypatch.setattr(lineage, "TARGET_BUCKET", 10**9)
    colliding = RunDir(run.root)
    build_index(colliding, force=True, workers=1)
    assert json.loads((run.root / "lineage" / "mix" / "meta.json").read_text())["bits"] == 0
    first = trace(colliding, "en-1")
    assert first["mix"]["en-1"]["id"] == "en-1" and first["mix"]["en-1-ar"]["id"] == "en-1-ar"
    build_index(run, force=True, workers=1)


def test_a_stale_index_scans_what_changed_and_a_rebuild_refreshes_only_that(built):
    run = built["run"]
    path = run.stage("train").out / "samples-rank0.jsonl"
    before = path.read_text()
    try:
        with open(path, "a") as f:  # training went on after the report indexed the run
            f.write(json.dumps({"step": 3, "ids": ["en-0"]}) + "\n")
        t = trace(run, "en-0")
        assert t["lookup"]["stale"] == {"train": ["stages/train/out/samples-rank0.jsonl"]}
        assert 3 in [s["step"] for s in t["train"]["en-0"]]
        assert "refresh with jobs/trace.py --build-index" in format_trace(t)
        summary = build_index(run, workers=1)
        assert [s for s, v in summary.items() if v["rebuilt"]] == ["train"]
        t = trace(run, "en-0")
        assert not t["lookup"]["stale"] and 3 in [s["step"] for s in t["train"]["en-0"]]
    finally:
        path.write_text(before)
        build_index(run, workers=1)


def test_parallel_build_gives_the_same_index(built, tmp_path):
    run = built["run"]
    one = {p.relative_to(run.root / "lineage"): p.read_bytes() for p in (run.root / "lineage").rglob("*.u64")}
    build_index(run, force=True, workers=2)
    two = {p.relative_to(run.root / "lineage"): p.read_bytes() for p in (run.root / "lineage").rglob("*.u64")}
    assert one == two


def test_lineage_reads_no_config_class(built):
    """Lineage sits below the components: it reads config.yaml as data, not through ain.config."""
    assert Lineage(built["run"]).config["safety"]["vision_judge"]["model"] == "judge/vision-7b"


# ------------------------------------------------------------------------------------------- the CLI
def test_jobs_trace_prints_text_and_json(built):
    run = built["run"]

    def cli(*args):
        return subprocess.run([sys.executable, "jobs/trace.py", str(run.root), *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)

    proc = cli("en-1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("sample en-1 (translation en-1-ar)") and "duplicate" not in proc.stdout.split("mix")[0]
    proc = cli("en-2", "--json")
    t = json.loads(proc.stdout)
    expected = trace(run, "en-2")
    for x in (t, expected):
        x.pop("lookup")
    assert t == expected
    proc = cli("nope-3")
    assert proc.returncode == 1 and "no stage of" in proc.stderr
    proc = cli("--build-index")
    assert proc.returncode == 0 and "ingest: 2 files" in proc.stdout and "unchanged" in proc.stdout


def test_a_pack_that_does_not_follow_the_mix_is_not_indexed_and_still_traced(built, tmp_path):
    """A mix re-run after pack: the pack index is refused (named), the report would not fail, and
    a trace falls back to scanning (its shard check against the tar still holds)."""
    run = RunDir(tmp_path / "copy")
    shutil.copytree(built["run"].root, run.root)
    mixed = run.stage("mix").out / "mixed-00000.jsonl"
    lines = mixed.read_text().splitlines(keepends=True)
    mixed.write_text("".join(reversed(lines)))
    summary = build_index(run, workers=1)
    assert "does not match the current mix" in summary["pack"]["error"] and summary["pack"]["entries"] == 0
    t = trace(run, "en-0")
    assert not t["lookup"]["indexed"]["pack"] and t["lookup"]["indexed"]["ingest"]
