"""Lineage and the review site on a real smoke run (ingest -> translate -> verify -> safety -> mix ->
pack -> report on the local executor, tiny models behind real servers; run once for the module,
about 3.5 minutes on 2 cores).

Traces of a packed sample, a rejected translation, an unsafe-image drop, a duplicate and a
quarantined row must equal the stage outputs field by field. Then the review site the report
stage wrote is opened in a real headless Chromium (Debian's `chromium`, driven over the DevTools
protocol on a pipe: no extra Python package): index.html loads from file://, every link on every
page points at a file inside review/ and the linked pages load, the Arabic text is laid out right
to left (computed style), and the browser sends no request that is not file: or data:. Without
chromium the browser test skips with the reason, unless AIN_REQUIRE_BROWSER=1 (CI installs it:
scripts/install_system_deps.sh).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from ain.curate.mix import content_key
from ain.lineage import trace
from ain.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]
STAGES = "stages=[ingest,translate,verify,safety,mix,pack,report]"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunDir:
    root = tmp_path_factory.mktemp("review")
    proc = subprocess.run([sys.executable, "jobs/submit_train.py", "recipe=smoke", "cluster=local",
                           "cluster.executor=local", STAGES, f"runs_root={root}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return RunDir(root / "smoke")


def rows(run: RunDir, stage: str, pattern: str) -> list[dict]:
    return [json.loads(line) for p in sorted(run.stage(stage).out.glob(pattern)) for line in open(p, encoding="utf-8")
            if line.strip()]


def by_id(items: list[dict], key: str = "id") -> dict[str, dict]:
    return {r[key]: r for r in items}


def check_common(run: RunDir, t: dict, sid: str) -> None:
    """What every ingested sample's trace must say, field by field against the files."""
    samples = by_id(rows(run, "ingest", "samples-*.jsonl"))
    base = t["ids"]["sample"]
    assert t["ingest"]["sample"] == samples[base]
    assert (t["ingest"]["file"], t["ingest"]["row"]) == (samples[base]["origin"]["file"], samples[base]["origin"]["row"])
    decisions = by_id(rows(run, "mix", "decisions-*.jsonl"))
    texts = rows(run, "safety", "texts-*.jsonl")
    images = by_id(rows(run, "safety", "images-*.jsonl"), "image")
    for i in filter(None, (base, t["ids"]["translation"])):
        assert t["mix"][i] == decisions[i]
        assert t["safety"]["texts"].get(i, []) == sorted((r for r in texts if r["sample_id"] == i), key=lambda r: r["turn"])
    assert [im["verdict"] for im in t["safety"]["images"]] == [images[n] for n in samples[base]["images"]]
    assert t["lookup"]["indexed"] and all(t["lookup"]["indexed"].values()) and not t["lookup"]["stale"]


def test_report_stage_built_the_index_and_the_site(run):
    assert (run.root / "lineage" / "ingest" / "meta.json").exists()
    assert (run.root / "report" / "review" / "index.html").exists()
    marker = run.stage("report").read_marker(0)
    assert marker["traces"] > 10 and marker["indexed_entries"] > 100


def test_trace_of_a_packed_sample_matches_the_shard(run):
    mixed = rows(run, "mix", "mixed-*.jsonl")
    manifests = rows(run, "pack", "manifest-*.jsonl")
    sid = next(s["id"] for s in mixed if s["id"].endswith("-ar") and s["images"])  # a translation with an image
    t = trace(run, sid)
    check_common(run, t, sid)
    assert t["verify"]["passed"] == by_id(rows(run, "verify", "passed-*.jsonl"))[sid]
    assert t["translate"]["row"] == by_id(rows(run, "translate", "translations-*.jsonl"))[t["ids"]["sample"]]
    pack = t["pack"][sid]
    entry = next(m for m in manifests if m["shard"] == pack["shard"])
    assert pack["manifest"] == {k: v for k, v in entry.items() if k != "lengths"}
    with tarfile.open(run.stage("pack").out / pack["shard"]) as tar:
        names = tar.getnames()
        member = json.load(tar.extractfile(f"{sid}.json"))
    sample = next(s for s in mixed if s["id"] == sid)
    assert pack["members"] == [n for n in names if n.split(".", 1)[0] == sid]
    assert pack["members"] == [f"{sid}.json", *(f"{sid}.{i}.{n.rsplit('.', 1)[1]}" for i, n in enumerate(sample["images"]))]
    assert pack["index_in_shard"] == list(dict.fromkeys(n.split(".", 1)[0] for n in names)).index(sid)
    assert member == sample and t["mix"][sid]["position"] == [s["id"] for s in mixed].index(sid)
    assert trace(run, f"{pack['shard']}/{sid}")["pack"][sid] == pack


def test_trace_of_a_rejected_translation(run):
    rejected = rows(run, "verify", "rejected-*.jsonl")
    row = next(r for r in rejected if "bleu4" in " ".join(r["reasons"]))
    t = trace(run, row["id"] + "-ar")  # the id the translation would have had
    check_common(run, t, row["id"])
    v = t["verify"]
    assert v["status"] == "rejected" and v["rejected"] == row and t["ids"]["translation"] is None
    assert v["scores"] == [r for r in rows(run, "verify", "scores-*.jsonl") if r["id"] == row["id"]]
    assert len(v["attempts"]) == run.load_config().verify.max_retranslations + 1
    for a, r in zip(v["attempts"], row["attempts"]):
        assert a["turns"] == r["turns"] and a["temperature"] == r["temperature"] and a["passed"] is False
        assert [f["reason"] for f in a["failing"]] == r["scores"]["reasons"]
        assert {f["metric"] for f in a["failing"]} >= {"bleu4"}


def test_trace_of_an_unsafe_image_drop_and_of_a_duplicate(run):
    decisions = rows(run, "mix", "decisions-*.jsonl")
    dropped = next(d for d in decisions if d["reason"] == "unsafe_image")
    t = trace(run, dropped["id"])
    check_common(run, t, dropped["id"])
    flagged = [im["verdict"] for im in t["safety"]["images"] if im["verdict"]["rating"] == "Unsafe"]
    assert flagged and flagged[0]["code"] == dropped["category"] and t["mix"][dropped["id"]] == dropped
    assert dropped["id"] not in t["pack"]
    assert t["safety"]["images"][0]["judge_model"] == run.load_config().safety.vision_judge.model

    dup = next(d for d in decisions if d["reason"] == "duplicate")
    t = trace(run, dup["id"])
    check_common(run, t, dup["id"])
    assert t["mix"][dup["id"]]["duplicate_of"] == dup["duplicate_of"] and dup["id"] not in t["pack"]
    candidates = by_id(rows(run, "ingest", "samples-*.jsonl") + rows(run, "verify", "passed-*.jsonl"))
    assert content_key(candidates[dup["id"]]) == content_key(candidates[dup["duplicate_of"]])


def test_trace_of_a_quarantined_row_and_the_cli(run):
    quarantine = rows(run, "ingest", "quarantine-*.jsonl")
    q = next(r for r in quarantine if r["kind"] == "missing_image")
    t = trace(run, f"{q['source']}-{q['row']}")
    assert t["ingest"]["quarantine"] == q and t["ingest"]["status"] == "quarantined"
    sid = rows(run, "mix", "mixed-*.jsonl")[0]["id"]
    proc = subprocess.run([sys.executable, "jobs/trace.py", str(run.root), sid, "--json", "--raw"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    raw = got["ingest"].pop("raw")
    expected = trace(run, sid)
    for x in (got, expected):
        x.pop("lookup")
    assert got == expected
    assert isinstance(raw, dict) and raw  # the source row, re-read with ingest's readers


# ------------------------------------------------------------------------------------------ browser
def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


class DevTools:
    """Chromium's DevTools protocol over --remote-debugging-pipe (fd 3: commands in, fd 4: out),
    NUL-separated JSON messages; one page target, attached in flattened mode."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds() -> None:  # move the pipe ends to 3 and 4 in the child, whatever numbers they had
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--disable-default-apps", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=False,
            preexec_fn=fds)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._next = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Network.enable", "Page.enable", "Runtime.enable"):
            self.call(domain, session=True)

    def _read(self, timeout: float = 30.0) -> dict:
        deadline = time.time() + timeout
        while b"\0" not in self._buf:
            if time.time() > deadline:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        message, self._buf = self._buf.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: bool = False) -> dict:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        deadline = time.time() + timeout
        while time.time() < deadline:
            event = self._read(deadline - time.time())
            if event.get("method") == method:
                return event
            self.events.append(event)
        raise TimeoutError(method)

    def open(self, url: str) -> None:
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        result = self.call("Page.navigate", {"url": url}, session=True)
        assert not result.get("errorText"), (url, result)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = chromium_binary()
    if binary is None:
        message = "no chromium on this machine (apt-get install chromium; scripts/install_system_deps.sh does)"
        if os.environ.get("AIN_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " (AIN_REQUIRE_BROWSER=1)")
        pytest.skip(message)
    devtools = DevTools(binary, tmp_path_factory.mktemp("chromium-profile"))
    yield devtools
    devtools.close()


PAGE_FACTS = """JSON.stringify({
  title: document.title,
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  arabic: [...document.querySelectorAll('[lang=ar]')].map(e => [e.getAttribute('dir'), getComputedStyle(e).direction]),
  sources: [...document.querySelectorAll('[src]')].map(e => e.getAttribute('src').slice(0, 11)),
  scripts: document.scripts.length,
})"""


def test_review_site_in_a_headless_browser(browser, run):  # browser first: a skip costs no smoke run
    review = run.root / "report" / "review"
    index = (review / "index.html").resolve()
    seen, queue, opened = set(), [index.as_uri()], 0
    arabic_pages = 0
    while queue:
        url = queue.pop(0)
        if url in seen:
            continue
        seen.add(url)
        path = Path(url.removeprefix("file://"))
        assert path.is_file() and review.resolve() in path.parents, url  # every link stays inside review/
        if path.suffix != ".html":
            continue
        # open every section page and a trace page of each kind; check the others' files exist
        if path.parent == review.resolve() or opened < 60:
            browser.open(url)
            opened += 1
            facts = json.loads(browser.evaluate(PAGE_FACTS))
            assert facts["title"] and facts["scripts"] == 0, url
            assert all(s.startswith("data:image/") for s in facts["sources"]), (url, facts["sources"])
            for direction in facts["arabic"]:
                assert direction == ["rtl", "rtl"], (url, direction)
            arabic_pages += bool(facts["arabic"])
            queue += [link.split("#", 1)[0] for link in facts["links"]]
    assert opened >= 10 and arabic_pages >= 3
    assert any(u.endswith("/rejected-1.html") for u in seen) and any("/trace/" in u for u in seen)
    rejected = (review / "rejected-1.html").as_uri()
    browser.open(rejected)
    assert json.loads(browser.evaluate(PAGE_FACTS))["arabic"]  # Arabic translations, laid out rtl
    requested = browser.requested_urls()
    assert requested and any(u.startswith("file://") for u in requested)
    assert all(u.startswith(("file://", "data:")) for u in requested), [u for u in requested
                                                                      if not u.startswith(("file://", "data:"))]
