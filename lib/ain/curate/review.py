"""The review site: static pages over a run's curation that a person opens from the filesystem.

`write_review_site` (called by the report stage and `jobs/report.py`) writes
`runs/<name>/report/review/`:

    index.html              what is here, the funnel, links to every section
    rejected-<k>.html       rejected translations: English / Arabic / back-translation side by side per
                            turn of every attempt, the scores, the failing metrics marked
    unsafe-images-<k>.html  images the vision judge flagged: thumbnail (blurred until hovered),
                            category, rationale, the samples that use it
    safe-images.html        a seeded random sample of the images judged safe, for audit
    unsafe-texts-<k>.html   text turns the text judge flagged, with the turn and its verdict
    gallery-<domain>.html   kept samples of each domain (the first of the shuffled mix: a random sample)
    plots.html              the report's plots
    trace/<id>.html, .json  the lineage trace (ain.lineage) of every sample shown

Bounded for any run size: ITEMS_PER_PAGE items per page and at most MAX_PAGES pages per section;
a section says how many items it left out. Self-contained: no script, no external resource;
images are small JPEG thumbnails in data: URIs and every page carries a Content-Security-Policy
that forbids loading anything else, so the folder can be copied off the cluster and opened from
the filesystem with no network request. Every sample-derived text is untrusted and goes through
html.escape; Arabic text is marked dir="rtl" lang="ar".
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any, Iterator, Optional

from ain.atomic import atomic_write_text
from ain.lineage import Lineage, LineageError
from ain.rundir import RunDir, private_mkdir

ITEMS_PER_PAGE = 50
MAX_PAGES = 10
MAX_DOMAINS = 40
USERS_PER_IMAGE = 3
SAFE_SAMPLE = 60
GALLERY_PER_DOMAIN = 24
THUMB_PX = 128
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:80em;color:#222}
nav a{margin-right:1em} table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.3em .5em;vertical-align:top;text-align:start}
.item{border:1px solid #ddd;border-radius:6px;padding:.6em;margin:.8em 0}
.fail{background:#ffcdd2;font-weight:bold} .pass{background:#e8f5e9}
.unsafe img{filter:blur(12px)} .unsafe img:hover{filter:none}
.note{color:#666;font-style:italic} .grid{display:flex;flex-wrap:wrap;gap:.8em}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em;width:18em}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:.5em}
[dir=rtl]{font-size:1.1em} .turn{margin:.4em 0}
"""
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_IMAGE_NAME = re.compile(rb"[0-9a-f]{64}\.[a-z]+")


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def trace_file(sample_id: str) -> str:
    """The trace page's name inside review/trace/ (ids are [A-Za-z0-9_-]; anything else is hashed)."""
    if _SAFE_NAME.match(sample_id):
        return sample_id
    return "x-" + hashlib.sha256(sample_id.encode()).hexdigest()[:24]


def text_block(text: Any, language: Optional[str]) -> str:
    """Untrusted text, escaped, with its direction: Arabic right to left."""
    if language == "ar":
        return f'<div dir="rtl" lang="ar">{esc(text)}</div>'
    return f'<div dir="ltr" lang="{esc(language or "en")}">{esc(text)}</div>'


def page(title: str, body: str, depth: int = 0) -> str:
    up = "../" * depth
    nav = (f'<nav><a href="{up}index.html">index</a><a href="{up}rejected-1.html">rejected translations</a>'
           f'<a href="{up}unsafe-images-1.html">unsafe images</a><a href="{up}safe-images.html">safe images (audit)</a>'
           f'<a href="{up}unsafe-texts-1.html">unsafe texts</a><a href="{up}plots.html">plots</a></nav>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="referrer" content="no-referrer"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head><body>{nav}<h1>{esc(title)}</h1>\n{body}\n</body></html>\n")


def thumbnail(path: Path, px: int = THUMB_PX) -> Optional[str]:
    """A data: URI of a small JPEG of the image, or None when it cannot be read."""
    from PIL import Image  # noqa: PLC0415 (Pillow is a dependency; imported where thumbnails are made)

    try:
        with Image.open(path) as im:
            im.thumbnail((px, px))
            buf = io.BytesIO()
            im.convert("RGB").save(buf, "JPEG", quality=70)
    except Exception:  # a missing or broken file: the page says so instead
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_tag(run: RunDir, name: str) -> str:
    uri = thumbnail(run.stage("ingest").out / "images" / name[:2] / name)
    if uri is None:
        return f'<span class="note">image {esc(name[:16])}... not readable</span>'
    return f'<img src="{uri}" alt="image {esc(name[:16])}" width="{THUMB_PX}">'


def pages(items: Iterator[Any], per_page: int, max_pages: int) -> tuple[list[list[Any]], int, int]:
    """(pages of at most `per_page` items, at most `max_pages` of them, items left out, total)."""
    out: list[list[Any]] = []
    total = 0
    for item in items:
        if total < per_page * max_pages:
            if total % per_page == 0:
                out.append([])
            out[-1].append(item)
        total += 1
    return out, total - sum(map(len, out)), total


def pager(prefix: str, k: int, n: int) -> str:
    if n <= 1:
        return ""
    links = [f'<a href="{prefix}-{i}.html">{i}</a>' if i != k else f"<b>{i}</b>" for i in range(1, n + 1)]
    return "<p>page " + " ".join(links) + "</p>"


def left_out_note(left: int, total: int, per_page: int, max_pages: int) -> str:
    return (f'<p class="note">{total} items; the first {total - left} are shown, {left} left out '
            f"(at most {max_pages} pages of {per_page}).</p>" if left else f'<p class="note">{total} items.</p>')


class Site:
    """Writes the pages of one run's review site; `traces` are the ids whose trace pages to write."""

    def __init__(self, run: RunDir, out: Path, seed: int, per_page: Optional[int] = None,
                 max_pages: Optional[int] = None):
        self.run, self.out, self.seed = run, out, seed
        self.per_page, self.max_pages = per_page or ITEMS_PER_PAGE, max_pages or MAX_PAGES
        self.lineage = Lineage(run)
        self.traced: dict[str, Optional[str]] = {}   # id -> trace file name (None: no trace)
        self.sections: list[dict[str, Any]] = []

    def link(self, sample_id: str, depth: int = 0) -> str:
        """A link to the sample's trace page (written when the site is finished)."""
        if sample_id not in self.traced:
            self.traced[sample_id] = trace_file(sample_id)
        return f'<a href="{"../" * depth}trace/{esc(self.traced[sample_id])}.html">{esc(sample_id)}</a>'

    def write(self, name: str, title: str, body: str, depth: int = 0) -> None:
        atomic_write_text(self.out / name, page(title, body, depth))

    def section(self, prefix: str, title: str, items: Iterator[Any], render, total: Optional[int] = None) -> None:
        """A paginated section: prefix-1.html, prefix-2.html, ... (always at least page 1); `total`
        when `items` holds only the first of them."""
        chunks, left, counted = pages(items, self.per_page, self.max_pages)
        total = counted if total is None else total
        left += total - counted
        chunks = chunks or [[]]
        for k, chunk in enumerate(chunks, 1):
            body = left_out_note(left, total, self.per_page, self.max_pages) + pager(prefix, k, len(chunks))
            body += "\n".join(render(item) for item in chunk) or '<p class="note">nothing here.</p>'
            body += pager(prefix, k, len(chunks))
            self.write(f"{prefix}-{k}.html", f"{title} ({k}/{len(chunks)})", body)
        self.sections.append({"file": f"{prefix}-1.html", "title": title, "total": total, "left_out": left,
                              "pages": len(chunks)})

    # ------------------------------------------------------------------------------ sections
    def rejected(self, thresholds: dict[str, float]) -> None:
        def render(row: dict[str, Any]) -> str:
            parts = [f'<div class="item"><h3>{self.link(row["id"])}</h3><p>{esc("; ".join(row.get("reasons", [])))}</p>']
            attempts = row.get("attempts", [])
            for n, a in enumerate(attempts):
                inner = self._attempt(a, thresholds)
                if n == len(attempts) - 1:
                    parts.append(inner)
                else:
                    parts.append(f"<details><summary>attempt {esc(a.get('attempt'))}</summary>{inner}</details>")
            return "".join(parts) + "</div>"

        self.section("rejected", "Rejected translations", self.run.stage("verify").rows("rejected-*.jsonl"), render)

    def _attempt(self, a: dict[str, Any], thresholds: dict[str, float]) -> str:
        scores = {s.get("turn"): s for s in (a.get("scores") or {}).get("turns", [])}
        failing = {(f["turn"], f["metric"]) for f in _failing((a.get("scores") or {}).get("reasons", []))}
        head = (f"<p>attempt {esc(a.get('attempt'))}, temperature {esc(a.get('temperature'))}"
                + (f', <span class="fail">error: {esc(a["error"])}</span>' if a.get("error") else "") + "</p>")
        rows = ["<tr><th>turn</th><th>English</th><th>Arabic</th><th>back-translation</th><th>scores</th></tr>"]
        for t in a.get("turns", []):
            turn = t.get("turn")
            cells = []
            for metric, value in (scores.get(turn) or {}).items():
                if metric in ("turn", "passed") or not isinstance(value, (int, float)):
                    continue
                bad = (turn, metric) in failing
                limit = f" (min {thresholds[metric]})" if metric in thresholds else ""
                cells.append(f'<span class="{"fail" if bad else "pass"}">{esc(metric)} {value:.2f}{esc(limit)}</span>')
            rows.append(f"<tr><td>{esc(turn)}</td><td>{text_block(t.get('en'), 'en')}</td>"
                        f"<td>{text_block(t.get('ar'), 'ar')}</td><td>{text_block(t.get('back'), 'en')}</td>"
                        f"<td>{'<br>'.join(cells)}</td></tr>")
        return head + "<table>" + "".join(rows) + "</table>"

    def images(self) -> None:
        unsafe, safe = [], []
        rng = random.Random(self.seed)
        seen_safe = 0
        cap = self.per_page * self.max_pages
        unsafe_total = 0
        for row in self.run.stage("safety").rows("images-*.jsonl"):
            if row.get("rating") == "Unsafe":
                unsafe_total += 1
                if len(unsafe) < cap:  # the rest is only counted
                    unsafe.append(row)
            elif row.get("rating") == "Safe":  # reservoir sample of the safe ones
                seen_safe += 1
                if len(safe) < SAFE_SAMPLE:
                    safe.append(row)
                elif (j := rng.randrange(seen_safe)) < SAFE_SAMPLE:
                    safe[j] = row
        users = samples_with_images(self.run, {r["image"] for r in unsafe + safe}, USERS_PER_IMAGE)

        def render(row: dict[str, Any], css: str = "unsafe") -> str:
            ids = users.get(row["image"], [])
            return (f'<div class="item {css}">{image_tag(self.run, row["image"])}'
                    f"<p>{esc(row.get('rating'))}: {esc(row.get('category'))} (judge {esc(row.get('judge'))})</p>"
                    f"{text_block(row.get('rationale'), None)}"
                    f"<p>image {esc(row['image'])}; used by {' '.join(self.link(i) for i in ids) or 'no sample found'}"
                    "</p></div>")

        self.section("unsafe-images", "Images judged unsafe", iter(unsafe), render, total=unsafe_total)
        body = (f'<p class="note">A random sample (seed {self.seed}) of {len(safe)} of the {seen_safe} images '
                "judged safe: check that none should have been flagged.</p>")
        body += "\n".join(render(r, "safe") for r in safe)
        self.write("safe-images.html", "Images judged safe: audit sample", body)
        self.sections.append({"file": "safe-images.html", "title": "Images judged safe (audit sample)",
                              "total": seen_safe, "left_out": seen_safe - len(safe), "pages": 1})

    def texts(self) -> None:
        def unsafe_rows() -> Iterator[dict[str, Any]]:
            for path in sorted(self.run.stage("safety").out.glob("texts-*.jsonl")):
                with open(path, "rb") as f:
                    for line in f:
                        if b'"Unsafe"' in line:  # most turns are safe: parse only these
                            row = json.loads(line)
                            if row.get("rating") == "Unsafe":
                                yield row

        def render(row: dict[str, Any]) -> str:
            text = turn_text(self.lineage, row["sample_id"], row.get("turn"))
            return (f'<div class="item"><h3>{self.link(row["sample_id"])} turn {esc(row.get("turn"))} '
                    f"({esc(row.get('role'))})</h3>{text_block(text, row.get('language'))}"
                    f"<p>{esc(row.get('rating'))}: {esc(row.get('category'))}</p>"
                    f"<pre>{esc(row.get('rationale'))}</pre></div>")

        self.section("unsafe-texts", "Text turns judged unsafe", unsafe_rows(), render)

    def gallery(self) -> list[str]:
        by_domain: dict[str, list[dict[str, Any]]] = {}
        totals: dict[str, int] = {}
        for s in self.run.stage("mix").rows("mixed-*.jsonl"):
            domain = str(s.get("domain"))
            totals[domain] = totals.get(domain, 0) + 1
            if len(by_domain.setdefault(domain, [])) < GALLERY_PER_DOMAIN:
                by_domain[domain].append(s)
        files = []
        shown = sorted(by_domain, key=lambda d: (-totals[d], d))[:MAX_DOMAINS]
        if len(by_domain) > len(shown):
            self.sections.append({"file": "index.html", "title": f"(galleries of {len(by_domain) - len(shown)} smaller "
                                  f"domains left out: at most {MAX_DOMAINS})", "total": len(by_domain) - len(shown),
                                  "left_out": len(by_domain) - len(shown), "pages": 0})
        for domain in sorted(shown):
            cards = []
            for s in by_domain[domain]:
                image = image_tag(self.run, s["images"][0]) if s.get("images") else ""
                turns = "".join(f'<div class="turn"><b>{esc(t.get("role"))}</b>{text_block(t.get("content"), s.get("language"))}</div>'
                                for t in s.get("turns", [])[:2])
                cards.append(f'<div class="card">{image}<p>{self.link(s["id"])} ({esc(s.get("language"))}, '
                             f"{esc(s.get('source'))})</p>{turns}</div>")
            name = f"gallery-{trace_file(domain)}.html"
            body = (f'<p class="note">{len(by_domain[domain])} of the {totals[domain]} kept samples of this domain '
                    "(the first in the shuffled mix).</p>" f'<div class="grid">{"".join(cards)}</div>')
            self.write(name, f"Kept samples: {domain}", body)
            files.append(name)
            self.sections.append({"file": name, "title": f"Gallery: {domain}", "total": totals[domain],
                                  "left_out": totals[domain] - len(by_domain[domain]), "pages": 1})
        return files

    def plots(self, report_dir: Path, plots: list[str]) -> None:
        body = []
        for name in plots:
            data = (report_dir / name).read_bytes()
            uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            body.append(f'<h2>{esc(name)}</h2><img src="{uri}" alt="{esc(name)}" style="max-width:100%">')
        self.write("plots.html", "Curation plots", "\n".join(body) or '<p class="note">no plots.</p>')

    def traces(self) -> int:
        """The trace page (and JSON) of every sample a page links to."""
        directory = private_mkdir(self.out / "trace")
        written = 0
        for sample_id, name in self.traced.items():
            try:
                t = self.lineage.trace(sample_id)
            except LineageError as exc:
                t = {"query": sample_id, "error": str(exc)}
            atomic_write_text(directory / f"{name}.json", json.dumps(t, ensure_ascii=False, indent=1) + "\n")
            self.write(f"trace/{name}.html", f"Trace of {sample_id}",
                       render_trace(t, f"{name}.json", self._trace_images(t)), depth=1)
            written += 1
        return written

    def _trace_images(self, t: dict[str, Any]) -> str:
        """Thumbnails of the traced sample's images, blurred until hovered where a judge flagged one."""
        verdicts = {im["image"]: im.get("verdict") or {} for im in (t.get("safety") or {}).get("images", [])}
        names = ((t.get("ingest") or {}).get("sample") or {}).get("images") or list(verdicts)
        return "".join(f'<div class="{"unsafe" if verdicts.get(n, {}).get("rating") == "Unsafe" else "safe"}">'
                       f"{image_tag(self.run, n)}</div>" for n in names)

    def index(self, data: dict[str, Any]) -> None:
        rows = ["<tr><th>section</th><th>items</th><th>shown</th></tr>"]
        for s in self.sections:
            rows.append(f'<tr><td><a href="{esc(s["file"])}">{esc(s["title"])}</a></td><td>{s["total"]}</td>'
                        f"<td>{s['total'] - s['left_out']}</td></tr>")
        funnel = ["<tr><th>stage</th><th>in</th><th>out</th><th>dropped</th></tr>"]
        for f in data.get("funnel", []):
            dropped = ", ".join(f"{k}: {v}" for k, v in sorted(f.get("dropped", {}).items()) if v) or "-"
            funnel.append(f"<tr><td>{esc(f['stage'])}</td><td>{esc(f['in'])}</td><td>{esc(f['out'])}</td>"
                          f"<td>{esc(dropped)}</td></tr>")
        body = (f"<p>Run <code>{esc(data.get('run'))}</code>. Every item links to its trace (the sample's history "
                "through the stages). Opened from the filesystem; nothing is loaded from the network.</p>"
                f"<h2>Sections</h2><table>{''.join(rows)}</table><p><a href=\"plots.html\">Curation plots</a></p>"
                f"<h2>Funnel</h2><table>{''.join(funnel)}</table>")
        self.write("index.html", "Curation review", body)


def turn_text(lineage: Lineage, sample_id: str, turn: Any) -> Optional[str]:
    """The text of one turn of a sample (ingested, or a translation that passed), found by lookup."""
    try:
        t = lineage.trace(sample_id)
    except LineageError:
        return None
    sample = (t["verify"].get("passed") if sample_id.endswith("-ar") else None) or t["ingest"].get("sample") or {}
    turns = sample.get("turns", [])
    return turns[turn]["content"] if isinstance(turn, int) and 0 <= turn < len(turns) else None


def _failing(reasons: list[str]) -> list[dict[str, Any]]:
    out = []
    for reason in reasons or []:
        m = re.match(r"^turn (\d+): (\S+)", reason)
        out.append({"turn": int(m.group(1)), "metric": m.group(2)} if m else {"turn": None, "metric": "error"})
    return out


def samples_with_images(run: RunDir, names: set[str], per_image: int = 5) -> dict[str, list[str]]:
    """image name -> the first ids (ingest, then translations) of samples that use it."""
    out: dict[str, list[str]] = {}
    if not names:
        return out
    wanted = {n.encode() for n in names}
    for stage, pattern in (("ingest", "samples-*.jsonl"), ("verify", "passed-*.jsonl")):
        for path in sorted(run.stage(stage).out.glob(pattern)):
            with open(path, "rb") as f:
                for line in f:
                    hits = wanted.intersection(_IMAGE_NAME.findall(line))
                    if not hits:
                        continue
                    row = json.loads(line)
                    for name in hits:
                        users = out.setdefault(name.decode(), [])
                        if len(users) < per_image and row["id"] not in users:
                            users.append(row["id"])
    return out


def _steps(steps: list[dict[str, Any]]) -> str:
    return ", ".join(f"step {s['step']} (rank {s['rank']})" for s in steps)


def render_trace(t: dict[str, Any], json_name: str, images: str = "") -> str:
    """A trace (ain.lineage.trace) as an HTML body: the facts per stage (`images`: the sample's
    thumbnails, as HTML), and a link to the full JSON."""
    if "error" in t:
        return f"<p>{esc(t['error'])}</p>"
    parts = [f"<p>ids: {esc(t['ids']['sample'])}" + (f", translation {esc(t['ids']['translation'])}"
                                                     if t["ids"].get("translation") else "")
             + f' &middot; <a href="{esc(json_name)}">JSON</a></p>']
    ing = t["ingest"]
    parts.append(f"<h2>ingest: {esc(ing['status'])}</h2>")
    if ing.get("file") is not None:
        parts.append(f"<p>source {esc(ing.get('source'))}: {esc(ing.get('file'))} row {esc(ing.get('row'))}"
                     + (f" (source id {esc(ing.get('source_id'))})" if ing.get("source_id") else "") + "</p>")
    if ing.get("reason"):
        parts.append(f"<p>{esc(ing.get('kind'))}: {esc(ing['reason'])}</p><pre>{esc(ing.get('raw'))}</pre>")
    sample = ing.get("sample") or {}
    parts.append(images)
    for turn in sample.get("turns", []):
        parts.append(f'<div class="turn"><b>{esc(turn.get("role"))}</b>{text_block(turn.get("content"), sample.get("language"))}</div>')
    parts.append(f"<h2>translate: {esc(t['translate']['status'])}</h2>")
    ver = t["verify"]
    parts.append(f"<h2>verify: {esc(ver['status'])}</h2>")
    for a in ver.get("attempts", []):
        bad = {(f["turn"], f["metric"]) for f in a.get("failing", [])}
        scores = {s.get("turn"): s for s in a.get("scores", [])}
        rows = ["<tr><th>turn</th><th>English</th><th>Arabic</th><th>back-translation</th><th>scores</th></tr>"]
        for turn in a.get("turns") or []:
            n = turn.get("turn")
            cells = [f'<span class="{"fail" if (n, k) in bad else "pass"}">{esc(k)} {v:.2f}</span>'
                     for k, v in (scores.get(n) or {}).items() if k not in ("turn", "passed") and isinstance(v, (int, float))]
            rows.append(f"<tr><td>{esc(n)}</td><td>{text_block(turn.get('en'), 'en')}</td>"
                        f"<td>{text_block(turn.get('ar'), 'ar')}</td><td>{text_block(turn.get('back'), 'en')}</td>"
                        f"<td>{'<br>'.join(cells)}</td></tr>")
        verdict = "passed" if a.get("passed") else "failed" if a.get("passed") is False else "not scored"
        parts.append(f"<h3>attempt {esc(a['attempt'])} (temperature {esc(a.get('temperature'))}): {verdict}</h3>"
                     + (f"<p>{esc('; '.join(a.get('reasons', [])))}</p>" if a.get("reasons") else "")
                     + f"<table>{''.join(rows)}</table>")
    if ver.get("passed"):
        parts.append("<h3>translated sample</h3>" + "".join(
            f'<div class="turn"><b>{esc(turn.get("role"))}</b>{text_block(turn.get("content"), "ar")}</div>'
            for turn in ver["passed"].get("turns", [])))
    saf = t["safety"]
    parts.append(f"<h2>safety: {esc(saf['status'])}</h2>")
    if saf.get("judges"):
        parts.append(f"<p>vision judge {esc(saf['judges']['vision'])}; text judge {esc(saf['judges']['text'])} "
                     f"({esc(saf['judges']['text_format'])})</p>")
    rows = ["<tr><th>item</th><th>rating</th><th>category</th><th>rationale</th></tr>"]
    for im in saf.get("images", []):
        v = im.get("verdict") or {}
        rows.append(f"<tr><td>image {esc(im['image'][:16])}...</td><td>{esc(v.get('rating') or v.get('status'))}</td>"
                    f"<td>{esc(v.get('category'))}</td><td>{esc(v.get('rationale'))}</td></tr>")
    for sid, texts in saf.get("texts", {}).items():
        for r in texts:
            rows.append(f"<tr><td>{esc(sid)} turn {esc(r.get('turn'))}</td><td>{esc(r.get('rating') or r.get('status'))}"
                        f"</td><td>{esc(r.get('category'))}</td><td>{esc(r.get('rationale'))}</td></tr>")
    parts.append(f"<table>{''.join(rows)}</table>")
    parts.append("<h2>mix</h2><ul>" + "".join(
        f"<li>{esc(sid)}: {'kept' if d.get('kept') else 'dropped'} {esc(d.get('reason') or '')} "
        f"{esc(d.get('category') or '')}"
        + (f" duplicate of {esc(d['duplicate_of'])}" if d.get("duplicate_of") else "")
        + (f" at position {esc(d['position'])}" if d.get("position") is not None else "") + "</li>"
        for sid, d in t["mix"].items()) + "</ul>")
    parts.append("<h2>pack</h2><ul>" + "".join(
        f"<li>{esc(sid)}: {esc(p['shard'])} #{esc(p.get('index_in_shard'))}: {esc(', '.join(p.get('members', [])))}</li>"
        for sid, p in t["pack"].items()) + "</ul>")
    parts.append("<h2>train</h2><ul>" + "".join(
        f"<li>{esc(sid)}: {esc(_steps(steps))}</li>" for sid, steps in t["train"].items()) + "</ul>")
    parts.append(f'<p>Every field of every row: <a href="{esc(json_name)}">{esc(json_name)}</a>.</p>')
    return "\n".join(parts)


def write_review_site(run: RunDir, report_dir: Path, data: dict[str, Any], plots: list[str], seed: int = 0,
                      thresholds: Optional[dict[str, float]] = None, per_page: Optional[int] = None,
                      max_pages: Optional[int] = None) -> dict[str, Any]:
    """Write report_dir/review/ (see the module docstring); returns what it wrote."""
    out = report_dir / "review"
    if out.exists():
        shutil.rmtree(out)  # a page left from an earlier report must not link to a trace that is gone
    private_mkdir(out)
    site = Site(run, out, seed, per_page, max_pages)
    stages = set(data.get("stages", []))
    if "verify" in stages:
        site.rejected(thresholds or {})
    else:
        site.section("rejected", "Rejected translations", iter(()), str)
    if "safety" in stages and run.stage("safety").out.is_dir():
        site.images()
        site.texts()
    else:
        site.section("unsafe-images", "Images judged unsafe", iter(()), str)
        site.write("safe-images.html", "Images judged safe: audit sample", '<p class="note">no safety stage.</p>')
        site.section("unsafe-texts", "Text turns judged unsafe", iter(()), str)
    if "mix" in stages and run.stage("mix").out.is_dir():
        site.gallery()
    site.plots(report_dir, plots)
    traces = site.traces()
    site.index(data)
    return {"dir": str(out), "sections": site.sections, "traces": traces}
