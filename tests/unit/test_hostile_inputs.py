"""Hostile and odd inputs, by class, through the ingest task (the function Slurm runs) and its parts:
each is read correctly, quarantined with its reason, or refused naming the file. One rule per class:

1. what training needs of a sample is checked at ingest (Qwen2-VL's resize rules, pixel budget,
   the token budget where it can be known)
2. a source must not vanish behind a green stage (compression, line endings, mostly-unreadable
   sources, per-source counts in status)
3. an image path is read only when its real path is under an allowed root
5. image placeholders: only "<image>", only in user turns; per-layout handling of a missing one
6. a source that cannot be parsed at all names its file, in the failure record and status
7. caps on row bytes, turn length and decoded pixels (checked before decoding)
8. EXIF orientation normalised; invisible-only turns, duplicate keys, truncated animations refused
"""

from __future__ import annotations

import builtins
import bz2
import gzip
import io
import json
import logging
import lzma
import os
import random
import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

import ain.data.ingest as ingest
from ain.atomic import iter_jsonl
from ain.config import RunConfig
from ain.data.config import IngestConfig, IngestSource
from ain.data.images import ImageRules, ImageStore, check_image, trainable_size
from ain.data.normalize import normalize_row
from ain.data.readers import SourceError, iter_rows
from ain.data.schema import BadRow
from ain.rundir import RunDir
from ain.slurm.status import StageStatus, add_sources, collect, render
from ain.slurm.task import StageTask
from ain.stages import TaskContext
from ain.train.config import TrainConfig
from tests.stage_helpers import jsonl_row_starts

LOG = logging.getLogger("test_hostile_inputs")
QUESTION = {"from": "human", "value": "<image>\nWhat is this?"}
ANSWER = {"from": "gpt", "value": "A shape."}


def png(size=(8, 8), mode="RGB", colour="red") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG")
    return buf.getvalue()


def llava(image: str | None = "img.png", answer: str = "A shape.", question: str = "<image>\nWhat is this?") -> dict:
    row = {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        row["image"] = image
    return row


def text_row(i: int) -> dict:
    return {"conversations": [{"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": f"answer {i}"}]}


def jsonl(rows: list[dict], eol: bytes = b"\n") -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + eol for r in rows)


def run_ingest(root: Path, sources: list[IngestSource] | Path, num_tasks: int = 1, train: TrainConfig | None = None,
               **ingest_kwargs) -> tuple[list[dict], list[dict], list[dict]]:
    if isinstance(sources, Path):
        sources = [IngestSource(path=str(sources))]
    cfg = RunConfig(stages=["ingest"], ingest=IngestConfig(sources=sources, num_tasks=num_tasks, **ingest_kwargs),
                    **({"train": train} if train else {}))
    run = RunDir(root)
    run.stage("ingest").create()
    stats = [ingest.run_ingest_task(TaskContext(cfg=cfg, run=run, stage="ingest", index=i, num_tasks=num_tasks,
                                                log=LOG)) for i in range(num_tasks)]
    out = run.stage("ingest").out
    samples = [r for p in sorted(out.glob("samples-*.jsonl")) for r in iter_jsonl(p)]
    quarantine = [r for p in sorted(out.glob("quarantine-*.jsonl")) for r in iter_jsonl(p)]
    return samples, quarantine, stats


def one_row(tmp_path: Path, row: dict | bytes, files: dict[str, bytes] | None = None, **kwargs) -> tuple[list, list]:
    """A source of one good row, the row under test, one good row: (samples, quarantine)."""
    src = tmp_path / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "good.png").write_bytes(png())
    for name, data in (files or {}).items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    line = row if isinstance(row, bytes) else json.dumps(row).encode() + b"\n"
    good = json.dumps(llava("good.png")).encode() + b"\n"
    (src / "rows.jsonl").write_bytes(good + line + good)
    samples, quarantine, _ = run_ingest(tmp_path / "run", src / "rows.jsonl", **kwargs)
    return samples, quarantine


def quarantined(tmp_path: Path, row: dict | bytes, kind: str, fragment: str, files=None, **kwargs) -> dict:
    samples, quarantine = one_row(tmp_path, row, files, **kwargs)
    assert len(samples) == 2, quarantine
    second_line = jsonl_row_starts((tmp_path / "src" / "rows.jsonl").read_bytes())[1]
    assert [q["row"] for q in quarantine] == [second_line], quarantine
    assert quarantine[0]["kind"] == kind, quarantine[0]
    assert fragment in quarantine[0]["reason"], quarantine[0]
    return quarantine[0]


# ====================================================================== 1. what training needs
@pytest.mark.parametrize("size", [(4000, 19), (19, 4000), (1, 250), (250, 1), (100000, 1), (201, 1)])
def test_image_over_the_processors_aspect_ratio_is_quarantined(tmp_path, size):
    q = quarantined(tmp_path, llava("wide.png"), "image_untrainable", "aspect ratio",
                    files={"wide.png": png(size, "L")})
    assert f"{size[0]}x{size[1]}" in q["reason"] and "over 200" in q["reason"]


def test_trainable_size_is_the_processors_smart_resize():
    """Line for line: wherever transformers' smart_resize answers within the budget, so does
    trainable_size, with the same size; wherever it raises or misses the budget, it refuses."""
    smart_resize = pytest.importorskip("transformers.models.qwen2_vl.image_processing_qwen2_vl").smart_resize
    rng = random.Random(0)
    sizes = [(rng.randint(1, 3000), rng.randint(1, 3000)) for _ in range(1500)]
    sizes += [(rng.randint(1, 30), rng.randint(1, 6000)) for _ in range(500)] + [(1, 200), (200, 1), (1, 201)]
    for min_pixels, max_pixels in ((3136, 262144), (3136, 12544), (56 * 56, 28 * 28 * 1280)):
        rules = ImageRules(min_pixels=min_pixels, max_pixels=max_pixels)
        for w, h in sizes:
            try:
                want = smart_resize(h, w, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
            except ValueError:
                want = None
            if want is not None and not (min(want) >= 28 and min_pixels <= want[0] * want[1] <= max_pixels):
                want = None
            try:
                got = trainable_size(w, h, rules)
            except BadRow as exc:
                assert exc.kind == "image_untrainable"
                got = None
            assert got == want, (w, h, min_pixels, max_pixels)


def test_image_whose_resize_misses_the_pixel_budget_is_quarantined(tmp_path):
    # 1x100 is allowed by the ratio, but at smoke's budget (max 12544 pixels) the processor's
    # resize must give it 28x560 = 15680 pixels: more visual tokens than the budget allows.
    q = quarantined(tmp_path, llava("thin.png"), "image_untrainable", "pixel budget",
                    files={"thin.png": png((1, 100), "L")}, train=TrainConfig(min_pixels=3136, max_pixels=12544))
    assert "[3136, 12544]" in q["reason"]
    # the same image at the default budget is fine
    samples, quarantine = one_row(tmp_path / "default", llava("thin.png"), files={"thin.png": png((1, 100), "L")})
    assert len(samples) == 3 and quarantine == []


def test_sample_whose_image_tokens_alone_exceed_the_token_budget_is_quarantined(tmp_path):
    big = png((512, 512))  # 18 x 18 = 324 visual tokens at the default budget
    q = quarantined(tmp_path, llava("big.png"), "too_long", "over the token budget 300",
                    files={"big.png": big}, train=TrainConfig(max_length=300))
    assert "512x512: 324" in q["reason"]
    # ingest.max_length, when set, wins over train.max_length; 0 turns the check off
    samples, _ = one_row(tmp_path / "own", llava("big.png"), files={"big.png": big},
                         train=TrainConfig(max_length=300), max_length=0)
    assert len(samples) == 3
    samples, quarantine = one_row(tmp_path / "multi", {**llava(None, question="<image><image><image>"),
                                                       "images": ["big.png"] * 3},
                                  files={"big.png": big}, max_length=900)
    assert [q["kind"] for q in quarantine] == ["too_long"]


def test_ingest_limits_come_from_the_train_section_unless_set():
    cfg = RunConfig(train=TrainConfig(min_pixels=100, max_pixels=20000, max_length=77))
    limits = IngestConfig().limits(cfg)
    assert (limits.min_pixels, limits.max_pixels, limits.max_length) == (100, 20000, 77)
    own = IngestConfig(max_pixels=5000, max_length=0).limits(cfg)
    assert (own.min_pixels, own.max_pixels, own.max_length) == (100, 5000, 0)


# =================================================================== 2. a source must not vanish
ROWS = [text_row(i) for i in range(300)]


@pytest.mark.parametrize("name, pack", [
    ("gzip_named_jsonl.jsonl", gzip.compress),
    ("bzip2.jsonl", bz2.compress),
    ("xz.jsonl", lzma.compress),
    ("rows.jsonl.gz", gzip.compress),
])
def test_compressed_source_is_read_whatever_its_name(tmp_path, name, pack):
    path = tmp_path / name
    path.write_bytes(pack(jsonl(ROWS)))
    samples, quarantine, _ = run_ingest(tmp_path / "run", path)
    assert len(samples) == 300 and quarantine == []
    assert samples[0]["source"] == ("rows" if name == "rows.jsonl.gz" else Path(name).stem)


@pytest.mark.parametrize("magic, what", [(b"\x28\xb5\x2f\xfd", "zstd"), (b"PK\x03\x04", "zip archive")])
def test_compression_that_cannot_be_read_is_refused_naming_the_file(tmp_path, magic, what):
    path = tmp_path / "data.jsonl"
    path.write_bytes(magic + os.urandom(200))
    with pytest.raises(SourceError, match=what) as info:
        run_ingest(tmp_path / "run", path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("eol", [b"\r", b"\r\n", b"\n"], ids=["cr", "crlf", "lf"])
def test_every_line_ending_splits_rows(tmp_path, eol):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(jsonl(ROWS, eol))
    samples, quarantine, _ = run_ingest(tmp_path / "run", path, num_tasks=2)
    assert len(samples) == 300 and quarantine == []
    assert sorted(s["origin"]["row"] for s in samples) == jsonl_row_starts(path.read_bytes())


def test_mixed_line_endings_keep_row_numbers(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(jsonl(ROWS[:2], b"\r") + b"\r\n" + jsonl(ROWS[2:4], b"\r\n") + jsonl(ROWS[4:5], b"\n"))
    rows = list(iter_rows(IngestSource(path=str(path))))
    starts = jsonl_row_starts(path.read_bytes())  # the blank line (a CR, then a CRLF) is skipped
    assert len(starts) == 5 and [r.index for r in rows] == starts
    assert [r.load()["conversations"][0]["value"] for r in rows] == [f"question {i}" for i in range(5)]


def test_mostly_unreadable_source_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "utf16.jsonl"  # a UTF-16 export: every line is bytes a UTF-8 reader cannot use
    path.write_bytes("".join(json.dumps(r) + "\n" for r in ROWS).encode("utf-16"))
    with pytest.raises(SourceError) as info:
        run_ingest(tmp_path / "run", path)
    message = str(info.value)
    assert str(path) in message and "max_bad_row_share=0.5" in message and "not_utf8" in message
    assert not list(RunDir(tmp_path / "run").stage("ingest").out.glob("samples-*.jsonl"))  # nothing published
    # The same file with the check off: every row quarantined, and the source is reported empty.
    samples, quarantine, stats = run_ingest(tmp_path / "off", path, max_bad_row_share=1.0)
    assert samples == [] and len(quarantine) == 301  # UTF-16's "\n\x00": the last "line" is a lone NUL
    assert stats[0]["sources"]["utf16"]["samples"] == 0 and stats[0]["sources"]["utf16"]["unreadable"] == 301


def test_a_few_bad_rows_do_not_refuse_a_source(tmp_path):
    lines = [json.dumps(r).encode() for r in ROWS[:30]]
    for i in range(0, 30, 3):  # 10 of 30 unreadable: under the default share
        lines[i] = lines[i][:-5]
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    samples, quarantine, stats = run_ingest(tmp_path / "run", path, num_tasks=2)
    assert len(samples) == 20 and len(quarantine) == 10
    assert sum(st["sources"]["rows"]["unreadable"] for st in stats) == 10
    # Fewer rows than MIN_ROWS_FOR_SHARE are too few to judge a file by: quarantined, not refused.
    small = tmp_path / "small.jsonl"
    small.write_bytes(b"not json\n" * 5 + json.dumps(ROWS[0]).encode() + b"\n")
    samples, quarantine, _ = run_ingest(tmp_path / "small", small)
    assert len(samples) == 1 and len(quarantine) == 5


def test_blank_only_and_empty_compressed_files_are_refused(tmp_path):
    for name, data in (("blank.jsonl", b"\n\r\n  \n"), ("empty.jsonl.gz", gzip.compress(b""))):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(SourceError, match="no rows") as info:
            list(iter_rows(IngestSource(path=str(path))))
        assert name in str(info.value)


def test_marker_counts_per_source_and_status_warns_about_a_source_without_samples(tmp_path):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_bytes(jsonl(ROWS[:6]))
    bad.write_bytes(jsonl([{"conversations": []}] * 4))  # readable, but every row quarantined
    _, _, stats = run_ingest(tmp_path / "run", [IngestSource(path=str(good)), IngestSource(path=str(bad))],
                             num_tasks=2)
    status = StageStatus("ingest", 2, done=2)
    for st in stats:
        add_sources(status.sources, st["sources"])
    assert status.sources["good"]["rows"] == 6 and status.sources["good"]["samples"] == 6
    assert status.sources["bad"] == {"kinds": {"empty_conversation": 4}, "file": str(bad), "rows": 4, "samples": 0,
                                     "quarantined": 4, "unreadable": 0}
    assert status.empty_sources == ["bad"]
    console = Console(record=True, width=250)
    console.print(render(RunDir(tmp_path / "run"), [status]))
    text = console.export_text()
    assert "per source" in text and f"source bad ({bad}) gave no sample from its 4 rows" in text
    assert "empty_conversation 4" in text
    status.done = 1  # not finished: no warning yet
    assert status.empty_sources == []


# ========================================================================= 3. path containment
@pytest.fixture
def opened(monkeypatch):
    """Every path os.open / open is asked for while the test runs."""
    seen: list[str] = []
    real_os_open, real_open = os.open, builtins.open

    def spy_os_open(path, *args, **kwargs):
        seen.append(os.fspath(path))
        return real_os_open(path, *args, **kwargs)

    def spy_open(file, *args, **kwargs):
        if isinstance(file, (str, Path)):
            seen.append(os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy_os_open)
    monkeypatch.setattr(builtins, "open", spy_open)
    return seen


def _escape(store: ImageStore, spec, root: Path) -> BadRow:
    with pytest.raises(BadRow) as info:
        store.add(spec, root)
    assert info.value.kind == "image_escape", info.value.reason
    assert "image path escapes image_root" in info.value.reason
    return info.value


@pytest.mark.parametrize("spec", ["/etc/shadow", "/proc/self/environ", "file:///etc/shadow",
                                  "file://localhost/proc/self/environ", {"bytes": None, "path": "/etc/passwd"},
                                  "../outside/secret.png", "sub/../../outside/secret.png", "OUTSIDE_ABS",
                                  "OUTSIDE_URL"])
def test_paths_outside_the_roots_are_never_opened(tmp_path, opened, spec):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(png())
    spec = {"OUTSIDE_ABS": str(outside / "secret.png"), "OUTSIDE_URL": (outside / "secret.png").as_uri()}.get(
        spec, spec) if isinstance(spec, str) else spec
    _escape(ImageStore(tmp_path / "store"), spec, root)
    assert not [p for p in opened if "shadow" in p or "environ" in p or "passwd" in p or "secret" in p], opened


def test_symlinks_are_followed_before_the_containment_check(tmp_path, opened):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "inner").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.png").write_bytes(png(colour="blue"))
    (root / "inner" / "ok.png").write_bytes(png(colour="green"))
    (root / "leak.png").symlink_to(outside / "secret.png")          # a file link pointing out
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)  # a directory link pointing out
    (root / "inside_link.png").symlink_to(root / "inner" / "ok.png")  # a link that stays inside
    (root / "shadow.png").symlink_to("/etc/shadow")
    store = ImageStore(tmp_path / "store")
    for spec in ("leak.png", "linked_dir/secret.png", "shadow.png", str(root / "leak.png"), (root / "leak.png").as_uri()):
        reason = _escape(store, spec, root).reason
        assert "resolves to" in reason
    assert not [p for p in opened if "secret" in p or "shadow" in p], opened
    assert store.add("inside_link.png", root) == store.add("inner/ok.png", root)
    # A symlinked image folder is accepted once its target is listed in ingest.image_roots.
    allowed = ImageStore(tmp_path / "store", image_roots=[outside])
    assert allowed.add("linked_dir/secret.png", root) == allowed.add("leak.png", root)


def test_relative_path_without_an_image_root_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.png").write_bytes(png())
    _escape(ImageStore(tmp_path / "store"), "a.png", None)  # once read from the working directory


def test_containment_through_the_ingest_task(tmp_path):
    q = quarantined(tmp_path, llava("/etc/passwd"), "image_escape", "outside")
    assert "/etc/passwd" in q["reason"]


# ==================================================================================== 5. <image>
def norm(row, style="auto"):
    calls = []

    def images(specs):
        calls.append(specs)
        return [f"{k:064x}.png" for k in range(len(specs))]

    try:
        return normalize_row(row, src=IngestSource(path="x.jsonl", style=style), source="s", file="x.jsonl",
                             row_index=0, add_images=images)
    finally:
        norm.calls = calls


def refused(row, kind, fragment, style="auto"):
    with pytest.raises(BadRow) as info:
        norm(row, style)
    assert info.value.kind == kind, info.value.reason
    assert fragment in info.value.reason, info.value.reason
    assert norm.calls == []


@pytest.mark.parametrize("row", [
    {"conversations": [{"from": "human", "value": "What?"}, {"from": "gpt", "value": "<image>\nThis."}], "image": "a.png"},
    {"messages": [{"role": "user", "content": "What?"}, {"role": "assistant", "content": "<image> this"}], "images": ["a.png"]},
    {"messages": [{"role": "user", "content": "What?"},
                  {"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "this"}]}],
     "images": ["a.png"]},
    {"turns": [{"role": "user", "content": "What?"}, {"role": "assistant", "content": "<image>"}], "images": ["a.png"]},
    {"turns": [{"role": "system", "content": "<image>"}, {"role": "user", "content": "What?"},
               {"role": "assistant", "content": "This."}], "images": ["a.png"]},
], ids=["llava_answer", "sharegpt_answer", "sharegpt_image_part_in_answer", "native_answer", "native_system"])
def test_placeholder_outside_a_user_turn_is_quarantined(row):
    refused(row, "misplaced_image", "outside a user turn")


@pytest.mark.parametrize("text", ["<Image>", "<IMAGE>", "< image >", "<image/>", "<image />", "</image>", "<iMaGe>"])
@pytest.mark.parametrize("layout", ["llava", "sharegpt", "native"])
def test_placeholder_lookalikes_are_quarantined_not_kept_as_text(text, layout):
    q = f"{text}\nWhat is this?"
    row = {"llava": {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": "x"}], "image": "a.png"},
           "sharegpt": {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "x"}],
                        "images": ["a.png"]},
           "native": {"turns": [{"role": "user", "content": q}, {"role": "assistant", "content": "x"}],
                      "images": ["a.png"]}}[layout]
    refused(row, "bad_placeholder", repr(text))


@pytest.mark.parametrize("token", ["<|im_end|>", "<|im_start|>", "<|image_pad|>", "<|vision_start|>", "<|endoftext|>"])
def test_chat_control_tokens_in_text_are_quarantined(token):
    refused({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": f"ok {token} more"}]},
            "special_token", token)


def test_missing_placeholder_is_added_for_llava_only():
    s = norm({"conversations": [{"from": "human", "value": "What?"}, {"from": "gpt", "value": "x"}], "image": "a.png"})
    assert s.turns[0]["content"] == "<image>\nWhat?"
    refused({"messages": [{"role": "user", "content": "What?"}, {"role": "assistant", "content": "x"}],
             "images": ["a.png"]}, "image_mismatch", "sharegpt rows need one <image> per image")
    refused({"turns": [{"role": "user", "content": "What?"}, {"role": "assistant", "content": "x"}],
             "images": ["a.png"]}, "image_mismatch", "native rows need one <image> per image")
    # Grounding tokens are text Qwen2-VL is trained on, not structure: kept.
    s = norm({"conversations": [{"from": "human", "value": "Where?"},
                                {"from": "gpt", "value": "<|box_start|>(1,2),(3,4)<|box_end|>"}]})
    assert "<|box_start|>" in s.turns[1]["content"]


# ========================================================== 6. parse failures name the file
def _deep(n: int) -> str:
    return "[" * n + "]" * n


@pytest.mark.parametrize("case, text, reason", [
    ("huge_int", '[{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}], "n": '
     + "9" * 5000 + "}]", "number too long"),
    ("deep", '[{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}], "n": '
     + _deep(100_000) + "}]", "nested too deeply"),
])
def test_unparseable_json_document_is_refused_naming_the_file(tmp_path, case, text, reason):
    path = tmp_path / f"{case}.json"
    path.write_text(text)
    with pytest.raises(SourceError, match=reason) as info:
        run_ingest(tmp_path / "run", path)
    assert str(path) in str(info.value)


def test_failure_record_and_status_name_the_file_and_the_reason(tmp_path):
    path = tmp_path / "huge_int.json"
    path.write_text('[{"n": ' + "9" * 5000 + "}]")
    cfg = RunConfig(stages=["ingest"], ingest=IngestConfig(sources=[IngestSource(path=str(path))], num_tasks=1))
    run = RunDir(tmp_path / "run")
    run.freeze(cfg, argv=["test"])
    run.stage("ingest").create()
    with pytest.raises(SourceError):
        StageTask(str(run.root), "ingest")(0)
    record = json.loads(run.stage("ingest").failure(0).read_text())
    assert record["error"].startswith("SourceError: ingest source ") and str(path) in record["error"]
    assert "number too long" in record["error"]
    [status] = collect(run, use_queue=False)
    assert status.state == "failed" and str(path) in status.problems[0].record["error"]
    console = Console(record=True, width=400)
    console.print(render(run, [status]))
    text = console.export_text()
    assert str(path) in text and "number too long" in text


@pytest.mark.parametrize("line, reason", [
    (b'{"conversations": [], "n": ' + b"9" * 5000 + b"}\n", "number too long"),
    (_deep(100_000).encode() + b"\n", "nested too deeply"),
])
def test_unparseable_json_line_is_quarantined_with_its_reason(tmp_path, line, reason):
    quarantined(tmp_path, line, "unparseable_json", reason)


# ====================================================================================== 7. caps
def test_over_long_line_is_quarantined_without_being_held_in_memory(tmp_path):
    path = tmp_path / "rows.jsonl"
    with open(path, "wb") as f:
        f.write(json.dumps(ROWS[0]).encode() + b"\n")
        f.write(b'{"conversations": [{"from": "human", "value": "' + b"x" * (40 << 20) + b'"}]}\n')
        f.write(json.dumps(ROWS[1]).encode() + b"\n")
    tracemalloc.start()
    try:
        rows = [(r.index, r.error.kind if r.error else None) for r in
                iter_rows(IngestSource(path=str(path)), max_row_bytes=1 << 20)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    starts = jsonl_row_starts(path.read_bytes())
    assert rows == [(starts[0], None), (starts[1], "row_too_large"), (starts[2], None)]
    assert peak < 8 << 20, peak  # a 40 MB line, read with about 2 MB
    samples, quarantine, _ = run_ingest(tmp_path / "run", path, max_row_bytes=1 << 20)
    assert len(samples) == 2 and [q["kind"] for q in quarantine] == ["row_too_large"]
    assert "over ingest.max_row_bytes=1048576" in quarantine[0]["reason"] and len(quarantine[0]["raw"]) <= 500


def test_over_long_turn_is_quarantined(tmp_path):
    quarantined(tmp_path, llava(None, answer="y" * 2001, question="q"), "turn_too_long",
                "turn 2: 2001 characters, over ingest.max_turn_chars=2000", max_turn_chars=2000)


def _png_header_only_big(width: int, height: int) -> bytes:
    """A valid bilevel PNG of width x height pixels (all black): small on disk, huge decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_image_over_the_pixel_cap_is_refused_from_its_header(tmp_path, monkeypatch):
    data = _png_header_only_big(13000, 13000)  # 169 Mpixel: PIL only warns; ~20 KB on disk
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size) or real_load(self))
    with pytest.raises(BadRow) as info:
        check_image(data)
    assert info.value.kind == "image_too_large" and "13000x13000 = 169000000 pixels" in info.value.reason
    assert "max_image_pixels=50000000; not decoded" in info.value.reason
    assert decoded == []
    q = quarantined(tmp_path, llava("big.png"), "image_too_large", "not decoded", files={"big.png": data})
    assert "max_image_pixels" in q["reason"]


def test_animation_frames_count_against_the_pixel_cap(tmp_path):
    frames = [Image.new("L", (100, 100), i * 20) for i in range(10)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(BadRow, match="10 frames of 100x100") as info:
        check_image(buf.getvalue(), ImageRules(max_pixels_decoded=50_000))
    assert info.value.kind == "image_too_large"
    assert check_image(buf.getvalue()).ext == "gif"


# ========================================================================= 8. silent mis-reads
def _oriented_jpeg(orientation: int) -> bytes:
    im = Image.new("RGB", (40, 20), "red")
    im.paste((0, 0, 255), (20, 0, 40, 20))  # right half blue
    exif = im.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def test_exif_orientation_is_applied_when_storing(tmp_path):
    store = ImageStore(tmp_path / "store")
    name = store.add(_oriented_jpeg(6))  # "rotate 90 degrees clockwise to display": a portrait photo
    assert name.endswith(".png")
    with Image.open(store.path_of(name)) as im:
        assert im.size == (20, 40)
        assert 0x0112 not in im.getexif()
        top, bottom = im.convert("RGB").getpixel((10, 5)), im.convert("RGB").getpixel((10, 35))
        assert top[0] > 200 and bottom[2] > 200  # red above blue: turned upright
    plain = _oriented_jpeg(1)  # "normal": the original bytes are stored as they are
    assert store.path_of(store.add(plain)).read_bytes() == plain


@pytest.mark.parametrize("answer", ["\u200b", "\u200b\u200c\u200d\u2060\ufeff", " \u200e\u200f ", "\u3164", "\u00ad\u034f",
                                    "\ufe0f"])
def test_answer_of_invisible_characters_only_is_quarantined(tmp_path, answer):
    row = llava(None, answer=answer, question="Say something.")
    with pytest.raises(BadRow) as info:
        norm(row)
    assert info.value.kind == "empty_turn" and "turn 2: empty content" in info.value.reason
    if answer.strip():
        assert "invisible characters" in info.value.reason


def test_text_with_invisible_characters_inside_is_kept():
    s = norm(llava(None, answer="می\u200cخواهم", question="\u200bHello"))
    assert s.turns[1]["content"] == "می\u200cخواهم"


@pytest.mark.parametrize("line, key", [
    (b'{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}], "image": "x.png", '
     b'"image": "good.png"}\n', "image"),
    (b'{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b", "value": "c"}]}\n', "value"),
])
def test_duplicate_keys_refuse_the_row_naming_the_key(tmp_path, line, key):
    q = quarantined(tmp_path, line, "duplicate_key", f"key {key!r} appears twice")
    assert q["raw"]


def test_duplicate_keys_in_a_json_document_refuse_only_their_row(tmp_path):
    good = json.dumps(ROWS[0])
    path = tmp_path / "rows.json"
    path.write_text("[" + good + ', {"conversations": [{"from": "human", "value": "a", "from": "gpt"}]}, ' + good + "]")
    samples, quarantine, _ = run_ingest(tmp_path / "run", path)
    assert len(samples) == 2 and [(q["row"], q["kind"]) for q in quarantine] == [(1, "duplicate_key")]
    assert "'from' appears twice" in quarantine[0]["reason"]


def _animated_gif() -> bytes:
    rng = random.Random(0)
    frames = [Image.frombytes("P", (64, 64), rng.randbytes(64 * 64)) for _ in range(4)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def test_truncated_animated_gif_is_refused_even_with_an_intact_first_frame():
    data = _animated_gif()
    cut = data[: len(data) * 4 // 5]
    with Image.open(io.BytesIO(cut)) as im:
        im.load()  # the first frame decodes: checking it alone would accept the file
        im.verify()
    with pytest.raises(BadRow) as info:
        check_image(cut)
    assert info.value.kind == "bad_image" and "image does not decode" in info.value.reason
    assert check_image(data).ext == "gif"  # the whole animation is fine and stored as it is


def test_training_skips_and_counts_a_sample_the_processor_refuses():
    """Class 1, training side: a sample that reaches training although the processor cannot encode
    it (an image of aspect ratio over 200 from an older ingest) is skipped with a reason, never fatal."""
    from collections import Counter
    from pathlib import Path

    from ain.train.collate import UNENCODABLE, encode_sample
    from ain.train.config import TrainConfig

    model = Path(__file__).resolve().parents[2] / ".cache/tiny/judge"
    if not model.exists():
        pytest.skip("run `make models` first")
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model)
    buf = io.BytesIO()
    Image.new("RGB", (4000, 19), (200, 30, 30)).save(buf, format="PNG")
    sample = {"id": "s1", "turns": [{"role": "user", "content": "<image>\nWhat is this?"},
                                    {"role": "assistant", "content": "A stripe."}], "images": ["x.png"]}
    skipped: Counter = Counter()
    cfg = TrainConfig(min_pixels=56 * 56, max_pixels=112 * 112)
    assert encode_sample(processor, sample, [buf.getvalue()], cfg, skipped) is None
    assert skipped == Counter({UNENCODABLE: 1})
