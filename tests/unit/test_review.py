"""The review site and the human audit of the safety judges, on the small run of test_lineage:
Wilson intervals against hand-computed values, the stratified sheet, bad sheets named by row,
the rates in curation.md/json; the site escapes untrusted text, marks Arabic right to left,
paginates with a note of what it left out, and every link resolves inside review/."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

import ain.curate.review as review
from ain.curate.report import (
    AuditSheetError,
    audit_rates,
    read_audit_sheet,
    record_audit,
    wilson_interval,
    write_audit_sheet,
    write_report,
)
from ain.lineage import build_index
from tests.unit.test_lineage import built, dumps  # noqa: F401 (the module-scoped run fixture)

HOSTILE = '<script>alert("x")</script><img src="http://example.com/x.png">'


@pytest.fixture(scope="module")
def audited(built):  # noqa: F811
    """The small run plus an unsafe text turn and a rejected translation with hostile text."""
    run = built["run"]
    with open(run.stage("safety").out / "texts-00000.jsonl", "a", encoding="utf-8") as f:
        f.write(dumps({"category": "O6: Weapons or Substance Abuse", "code": "O6", "language": "en", "rating": "Unsafe",
                       "rationale": "=HYPERLINK(\"http://evil\")", "role": "assistant", "sample_id": "en-1",
                       "status": "judged", "turn": 1}))
    with open(run.stage("verify").out / "rejected-00000.jsonl", "a", encoding="utf-8") as f:
        f.write(dumps({"attempts": [{"attempt": 0, "error": None, "scores": {"min": {}, "passed": False,
                                                                         "reasons": ["turn 0: labse 0.10 < 0.80"],
                                                                         "turns": [{"labse": 0.1, "passed": False,
                                                                                    "turn": 0}]},
                                     "temperature": 0.0, "turns": [{"turn": 0, "en": HOSTILE, "ar": "نص " + HOSTILE,
                                                                    "back": HOSTILE, "spans": []}]}],
                       "id": "en-7", "reasons": ["turn 0: labse 0.10 < 0.80"]}))
    build_index(run, workers=1)
    return built


# ---------------------------------------------------------------------------------------- Wilson
@pytest.mark.parametrize("k, n, low, high", [
    # by hand: p = k/n, z = 1.96; center = (p + z^2/2n) / (1 + z^2/n); half = z/(1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2)
    (0, 10, 0.0, 0.2775),      # center = half = 0.19207 / 1.38415 = 0.13877
    (5, 10, 0.2366, 0.7634),   # half = 1.41601 * sqrt(0.025 + 0.0096036) = 0.26341
    (1, 4, 0.0456, 0.6994),    # center 0.73018 / 1.96037 = 0.37247, half 0.99980 * 0.32695 = 0.32689
    (10, 10, 0.7225, 1.0),
    (0, 0, 0.0, 1.0),          # nothing reviewed: nothing known
])
def test_wilson_interval_hand_computed(k, n, low, high):
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_refuses_impossible_counts():
    with pytest.raises(ValueError, match="k=5 is not within 0..n=4"):
        wilson_interval(5, 4)


# ------------------------------------------------------------------------------------- audit sheet
def read_sheet(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_audit_sheet_is_stratified_with_an_empty_verdict_column(audited, tmp_path):
    run, cfg = audited["run"], audited["cfg"]
    result = write_audit_sheet(run, cfg, tmp_path / "sheet.csv", per_stratum=3)
    sheet = read_sheet(tmp_path / "sheet.csv")
    strata = {r["stratum"] for r in sheet}
    assert strata == {"image/flagged/O2", "image/unflagged", "text/flagged/O6", "text/unflagged"}
    assert result["strata"]["text/unflagged"][0] == 3 and result["strata"]["image/flagged/O2"] == (1, 1)
    assert all(r["verdict"] == "" for r in sheet) and len(sheet) == result["rows"] == 3 + 1 + 1 + 1
    flagged_text = next(r for r in sheet if r["stratum"] == "text/flagged/O6")
    assert flagged_text["item_id"] == "text:en-1:1" and flagged_text["content"] == "Blue."
    assert flagged_text["rationale"].startswith("'=HYPERLINK")  # a formula stays text in a spreadsheet
    image = next(r for r in sheet if r["stratum"] == "image/flagged/O2")
    assert image["item_id"] == f"image:{audited['blue']}" and (run.root / image["image_file"]).exists()
    again = write_audit_sheet(run, cfg, tmp_path / "again.csv", per_stratum=3)
    assert again["strata"] == result["strata"] and read_sheet(tmp_path / "again.csv") == sheet  # seeded


def write_sheet(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_bad_sheets_name_each_problem_by_row(audited, tmp_path):
    run = audited["run"]
    red, blue = (f"image:{audited[k]}" for k in ("red", "blue"))
    with pytest.raises(AuditSheetError, match=r"missing column\(s\) verdict \(the header row has: item_id, notes\)"):
        read_audit_sheet(run, write_sheet(tmp_path / "a.csv", ["item_id", "notes"], [[red, ""]]))
    bad = write_sheet(tmp_path / "b.csv", ["item_id", "verdict", "reviewer_category"], [
        [red, "safe", ""],                 # row 2: fine
        ["image:nothere.png", "safe", ""],  # row 3
        [blue, "", ""],                    # row 4
        ["text:en-0:0", "maybe", ""],      # row 5
        [red, "unsafe", ""],               # row 6: repeated
        ["text:en-0:1", "unsafe", "O12"],  # row 7
        ["", "safe", ""],                  # row 8
    ])
    with pytest.raises(AuditSheetError) as err:
        read_audit_sheet(run, bad)
    message = str(err.value)
    assert "6 problem(s)" in message
    for expected in ("row 3: unknown item id 'image:nothere.png'", f"row 4: empty verdict for '{blue}'",
                     "row 5: verdict 'maybe' for 'text:en-0:0' is not safe or unsafe",
                     f"row 6: item '{red}' again (first on row 2)", "row 7: reviewer_category 'O12' is not one of",
                     "row 8: empty item_id"):
        assert expected in message
    multi = write_sheet(tmp_path / "m.csv", ["item_id", "verdict", "notes"], [
        [red, "safe", "first line\nsecond line"],   # row 2, lines 2-3
        [],                                          # row 3: blank, skipped
        [blue, "perhaps", ""],                       # row 4, line 5
    ])
    with pytest.raises(AuditSheetError, match=r"1 problem\(s\):\n  row 4 \(line 5 of the file\): verdict 'perhaps'"):
        read_audit_sheet(run, multi)
    with pytest.raises(AuditSheetError, match="no reviewed row"):
        read_audit_sheet(run, write_sheet(tmp_path / "c.csv", ["item_id", "verdict"], []))


def test_reviewed_sheet_gives_per_category_rates_in_the_report(audited, tmp_path):
    run, cfg = audited["run"], audited["cfg"]
    sheet = write_sheet(tmp_path / "done.csv", ["item_id", "verdict", "reviewer_category"], [
        [f"image:{audited['blue']}", "Safe", ""],       # flagged O2, reviewers: safe -> a false positive
        [f"image:{audited['red']}", "unsafe", "o3"],    # not flagged, reviewers: unsafe O3 -> a false negative
        ["text:en-1:1", "unsafe", ""],                 # flagged O6, confirmed
        ["text:en-0:0", "safe", ""], ["text:en-0:1", "safe", ""], ["text:en-3:0", "unsafe", "O1"],
    ])
    items = read_audit_sheet(run, sheet)
    rates = {(r["kind"], r["category"]): r for r in audit_rates(items)}
    assert rates[("image", "O2")]["false_positive"] == {"k": 1, "n": 1, "rate": 1.0, "ci95": [0.2065, 1.0]}
    assert rates[("image", "O3")]["false_negative"] == {"k": 1, "n": 1, "rate": 1.0, "ci95": [0.2065, 1.0]}
    assert rates[("image", "O3")]["false_positive"] is None  # nothing flagged O3 was reviewed
    assert rates[("text", "O6")]["false_positive"]["k"] == 0 and rates[("text", "all")]["false_negative"]["n"] == 3
    assert rates[("text", "O1")]["false_negative"] == {"k": 1, "n": 3, "rate": pytest.approx(1 / 3),
                                                       "ci95": [0.0615, 0.7923]}
    record_audit(run, cfg, sheet)
    md = (run.root / "report" / "curation.md").read_text()
    assert "## Safety audit (human review)" in md and "Wilson score interval" in md
    assert "| image | O2 Violence, Harm, or Cruelty | 100.0% (1/1; 20.6-100.0%) | 0.0% (0/1; 0.0-79.3%) |" in md
    assert "| image | O3 Sexual Content | - | 100.0% (1/1; 20.6-100.0%) |" in md
    data = json.loads((run.root / "report" / "curation.json").read_text())
    assert data["audit"]["reviewed"] == 6
    write_report(run, cfg, review=False)  # a later report keeps the audit
    assert "## Safety audit" in (run.root / "report" / "curation.md").read_text()


# ------------------------------------------------------------------------------------- review site
def site_pages(review_dir: Path) -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in review_dir.rglob("*.html")}


def test_review_site_escapes_links_and_marks_arabic(audited):
    run, cfg = audited["run"], audited["cfg"]
    result = write_report(run, cfg)
    review_dir = run.root / "report" / "review"
    pages = site_pages(review_dir)
    assert (review_dir / "index.html") in pages and result["review"]["traces"] >= 5
    for path, text in pages.items():
        assert "<script" not in text.lower(), path
        for src in re.findall(r'src="([^"]*)"', text):
            assert src.startswith("data:image/"), (path, src[:40])
        assert not re.search(r"<(?!/?(?:!DOCTYPE|html|head|meta|title|style|body|nav|a|h[1-3]|p|div|span|table|tr|td|th|"
                             r"details|summary|img|b|code|ul|li|br|pre)[ >/])", text), path  # only our own tags
        for href in re.findall(r'href="([^"]*)"', text):
            assert "://" not in href and (path.parent / href).resolve().exists(), (path, href)
        assert "Content-Security-Policy" in text and "default-src 'none'" in text
    rejected = pages[review_dir / "rejected-1.html"]
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in rejected
    assert '<div dir="rtl" lang="ar">نص &lt;script&gt;' in rejected
    assert '<span class="fail">labse 0.10' in rejected and 'href="trace/en-7.html"' in rejected
    assert "en-3" in rejected and '<span class="fail">bleu4 20.00 (min 60.0)</span>' in rejected
    unsafe = pages[review_dir / "unsafe-images-1.html"]
    assert 'class="item unsafe"' in unsafe and "O2: Violence" in unsafe and 'href="trace/ar-0.html"' in unsafe
    assert 'Blue.' in pages[review_dir / "unsafe-texts-1.html"]
    trace_json = json.loads((review_dir / "trace" / "en-0.json").read_text())
    assert trace_json["ids"] == {"sample": "en-0", "translation": "en-0-ar"}
    assert '<div dir="rtl" lang="ar">عربي' in pages[review_dir / "trace" / "en-0.html"]
    assert any('dir="rtl" lang="ar"' in text for p, text in pages.items() if p.name.startswith("gallery-"))


def test_review_site_stays_bounded_and_says_what_it_left_out(audited, monkeypatch):
    run, cfg = audited["run"], audited["cfg"]
    monkeypatch.setattr(review, "ITEMS_PER_PAGE", 1)
    monkeypatch.setattr(review, "MAX_PAGES", 1)
    monkeypatch.setattr(review, "GALLERY_PER_DOMAIN", 1)
    write_report(run, cfg)
    review_dir = run.root / "report" / "review"
    assert sorted(p.name for p in review_dir.glob("rejected-*.html")) == ["rejected-1.html"]
    assert "2 items; the first 1 are shown, 1 left out (at most 1 pages of 1)" in \
        (review_dir / "rejected-1.html").read_text()
    index = (review_dir / "index.html").read_text()
    assert '<a href="rejected-1.html">Rejected translations</a></td><td>2</td><td>1</td>' in index


def test_pages_helper():
    chunks, left, total = review.pages(iter(range(7)), 2, 3)
    assert chunks == [[0, 1], [2, 3], [4, 5]] and left == 1 and total == 7
    assert review.pages(iter(()), 2, 3) == ([], 0, 0)
