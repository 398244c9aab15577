"""The translate stage's pipeline: samples start as others finish (no window waits for its
slowest sample), rows are written and committed in input order only, and a task interrupted
mid-pipeline resumes exactly at its last commit (nothing lost, duplicated or reordered).

Most tests drive `translate_rows` (the stage's loop) through a `Translator` on a stand-in client
whose per-sample delays are chosen by the test, so completions come back out of order on
purpose; one runs the real `ChatClient` against a real HTTP server (tests/serve_helpers.py) for
the request bound."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re

import pytest

from ain.atomic import ResumableJsonl, iter_jsonl, read_json
from ain.config import load_config
from ain.config_base import ConfigError
from ain.curate.config import TranslateConfig
from ain.curate.protect import MARKER_RE
from ain.curate.translate import translate_rows
from ain.curate.translator import Translator
from ain.serve.client import ChatClient, ChatResult, EndpointUnavailable
from ain.stages import ordered_pipeline
from tests.serve_helpers import FakeChatServer

LOG = logging.getLogger("test_translate_pipeline")
NAMES = ("alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


# the generic helper -------------------------------------------------------------------------------
def run_pipeline(delays: list[float], *, in_flight: int, commit_every: int, max_pending: int = 0):
    """ordered_pipeline over items 0..n-1, item i taking delays[i] seconds; what it did, in order."""
    events: list[tuple] = []
    stats = {"running": 0, "max_running": 0, "started": 0, "emitted": 0, "max_pending": 0}
    finished: list[int] = []

    async def work(i: int) -> int:
        stats["running"] += 1
        stats["started"] += 1
        stats["max_running"] = max(stats["max_running"], stats["running"])
        stats["max_pending"] = max(stats["max_pending"], stats["started"] - stats["emitted"])
        try:
            await asyncio.sleep(delays[i])
        finally:
            stats["running"] -= 1
        finished.append(i)
        return i * i

    def emit(i: int, result: int) -> None:
        assert result == i * i
        stats["emitted"] += 1
        events.append(("emit", i))

    def commit(n: int) -> None:
        events.append(("commit", n))

    total = asyncio.run(ordered_pipeline(range(len(delays)), work, emit, commit, commit_every=commit_every,
                                         in_flight=in_flight, max_pending=max_pending))
    return total, events, stats, finished


def test_out_of_order_completions_are_emitted_and_committed_in_input_order():
    delays = [0.01 * ((7 * i) % 11) for i in range(20)]            # a scrambled finishing order
    total, events, _, finished = run_pipeline(delays, in_flight=8, commit_every=6, max_pending=20)
    assert finished != sorted(finished)                              # completions really were out of order
    assert total == 20
    assert [i for kind, i in events if kind == "emit"] == list(range(20))
    assert [n for kind, n in events if kind == "commit"] == [6, 12, 18, 20]  # every 6, and the rest at the end
    emitted = 0
    for kind, value in events:                                       # commit(n) only after exactly n emits
        emitted += kind == "emit"
        if kind == "commit":
            assert value == emitted


def test_in_flight_and_pending_are_bounded_and_a_slow_head_does_not_stop_the_others():
    delays = [0.4] + [0.01] * 29                                     # the first item is the slowest
    _, events, stats, finished = run_pipeline(delays, in_flight=4, commit_every=5, max_pending=12)
    assert stats["max_running"] == 4                                 # reached, never exceeded
    assert stats["max_pending"] == 12                                # the others went on up to the bound
    assert finished[:11] == list(range(1, 12)) and finished[11] == 0  # 11 finished while the head ran
    assert [i for kind, i in events if kind == "emit"] == list(range(30))


def test_an_exception_cancels_the_rest_and_commits_nothing_after_it():
    started, cancelled = [], []

    async def work(i: int) -> int:
        started.append(i)
        try:
            await asyncio.sleep(0.2 if i == 3 else 0.01 if i != 5 else 10)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        if i == 3:
            raise RuntimeError("endpoint gone")
        return i

    emitted, commits = [], []
    with pytest.raises(RuntimeError, match="endpoint gone"):
        asyncio.run(ordered_pipeline(range(10), work, lambda i, r: emitted.append(i), commits.append,
                                     commit_every=2, in_flight=4, max_pending=6))
    assert emitted == [0, 1, 2] and commits == [2]                   # item 2 written, not committed
    assert 5 in cancelled                                            # nothing left running


# the translate stage's loop -----------------------------------------------------------------------
def samples(n: int = 20) -> list[dict]:
    out = []
    for i in range(n):
        name = NAMES[i]
        turns = [{"role": "user", "content": f"<image>\nWhat is {name} doing in the picture?"},
                 {"role": "assistant", "content": f"The {name} is standing near 3 windows."}]
        if i == 6:                                                   # nothing to translate: skipped
            turns = [{"role": "user", "content": "<image>\n"}, {"role": "assistant", "content": "42"}]
        out.append({"id": f"s{i:03d}-{name}", "language": "en", "turns": turns})
    return out


class EchoClient:
    """Stands in for ChatClient.chat: "translates" by echoing the text after the prompt's blank
    line after a delay chosen per sample (by its name), so the test decides the finishing
    order. `kilo` loses its markers (a failed first attempt); `fail` names a sample whose request
    raises EndpointUnavailable after `fail_after` seconds (or hangs, with fail_after=None)."""

    def __init__(self, delays: dict[str, float], fail: str | None = None, fail_after: float | None = 0.0) -> None:
        self.delays, self.fail, self.fail_after = delays, fail, fail_after
        self.finished: list[str] = []
        self.in_flight = self.max_in_flight = 0

    async def chat(self, messages, *, temperature=None, top_p=None, max_tokens=None, **kw) -> ChatResult:
        text = messages[-1]["content"].split("\n\n", 1)[1]
        name = next(n for n in NAMES if re.search(rf"\b{n}\b", text))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if name == self.fail:
                if self.fail_after is None:
                    await asyncio.Event().wait()                     # never answers
                await asyncio.sleep(self.fail_after)
                raise EndpointUnavailable("down", "connection refused", 7)
            await asyncio.sleep(self.delays.get(name, 0.0))
        finally:
            self.in_flight -= 1
        self.finished.append(name)
        return ChatResult(text=MARKER_RE.sub("", text) if name == "kilo" else text, finish_reason="stop")


def translate_cfg(**kw) -> TranslateConfig:
    cfg = TranslateConfig(**kw)
    cfg.translator.max_tokens = 256
    return cfg


def outputs(tmp_path) -> ResumableJsonl:
    return ResumableJsonl({"translations": tmp_path / "translations-00000.jsonl",
                           "skipped": tmp_path / "skipped-00000.jsonl"}, tmp_path / "state-00000.json")


def run_task(tmp_path, client, cfg: TranslateConfig, items: list[dict], timeout: float | None = None):
    """One (re)start of a translate task: resume `outputs`, skip the committed samples, translate
    the rest, publish. Returns the marker's fields (as run_resumable does)."""
    out = outputs(tmp_path)
    rows = itertools.islice(iter(items), out.position, None)
    try:
        asyncio.run(asyncio.wait_for(translate_rows(Translator(client, cfg), rows, out, 0.0, log=LOG), timeout))
        files = out.finish()
    finally:
        out.close()
    return {"items": out.position, "resumed_from": out.resumed_from, "files": files, **out.counters}


def scrambled(n: int = 20) -> dict[str, float]:
    return {NAMES[i]: 0.005 * ((7 * i) % 11) for i in range(n)}


def test_stage_rows_are_in_input_order_whatever_the_finishing_order(tmp_path):
    items = samples()
    client = EchoClient(scrambled())
    marker = run_task(tmp_path, client, translate_cfg(commit_every=4, in_flight_samples=6), items)
    finished_order = list(dict.fromkeys(client.finished))
    assert finished_order != [s["id"].split("-")[1] for s in items if s["id"] != "s006-golf"]  # out of order
    rows = list(iter_jsonl(tmp_path / "translations-00000.jsonl"))
    assert [r["id"] for r in rows] == [s["id"] for i, s in enumerate(items) if i != 6]
    assert list(iter_jsonl(tmp_path / "skipped-00000.jsonl")) == [
        {"id": "s006-golf", "reason": "empty: no translatable text in any turn"}]
    # counters and marker fields exactly as the window loop produced them
    assert marker["items"] == 20 and marker["resumed_from"] == 0
    assert {k: marker[k] for k in ("translated", "skipped", "skipped_empty", "first_attempt_errors")} == {
        "translated": 19, "skipped": 1, "skipped_empty": 1, "first_attempt_errors": 1}
    kilo = next(r for r in rows if r["id"].endswith("kilo"))
    assert kilo["attempts"][0]["error"].startswith("markers")
    alpha = rows[0]
    assert alpha["sample"] == items[0] and alpha["attempts"][0]["attempt"] == 0
    assert [t["back"] for t in alpha["attempts"][0]["turns"]] == [t["en"] for t in alpha["attempts"][0]["turns"]]
    assert marker["files"]["translations"]["rows"] == 19


@pytest.mark.parametrize("interruption", ["endpoint_error", "killed_while_waiting"])
def test_interrupted_mid_pipeline_resumes_exactly(tmp_path, interruption):
    items = samples()
    cfg = translate_cfg(commit_every=5, in_flight_samples=4, max_pending_samples=10)
    reference = run_task(tmp_path / "reference", EchoClient(scrambled()), cfg, items)

    # Sample 11 (lima) fails (or never answers) long after samples 0-10 and some later ones have
    # finished: 0-9 are committed, 10 is written but not committed, 12.. are finished but waiting.
    run = tmp_path / "run"
    failing = EchoClient(scrambled(), fail="lima", fail_after=0.5 if interruption == "endpoint_error" else None)
    expected = EndpointUnavailable if interruption == "endpoint_error" else (asyncio.TimeoutError, TimeoutError)
    with pytest.raises(expected):
        run_task(run, failing, cfg, items, timeout=None if interruption == "endpoint_error" else 0.6)
    assert read_json(run / "state-00000.json")["position"] == 10
    assert {"mike", "november"} <= set(failing.finished)            # later samples had finished
    partial = (run / "translations-00000.jsonl.partial").read_text().splitlines()
    assert len(partial) == 10                                        # rows 0-10 but for the skipped golf
    assert not (run / "translations-00000.jsonl").exists()

    marker = run_task(run, EchoClient(scrambled()), cfg, items)     # the requeued task
    assert marker["resumed_from"] == 10 and marker["items"] == 20
    ids = [r["id"] for r in iter_jsonl(run / "translations-00000.jsonl")]
    assert ids == [s["id"] for i, s in enumerate(items) if i != 6]   # none lost, none twice, same order
    for name in ("translations", "skipped"):                         # byte for byte the uninterrupted run
        assert (run / f"{name}-00000.jsonl").read_bytes() == (tmp_path / "reference" / f"{name}-00000.jsonl").read_bytes()
    assert {k: v for k, v in marker.items() if k not in ("resumed_from", "files")} == \
        {k: v for k, v in reference.items() if k not in ("resumed_from", "files")}
    assert marker["files"]["translations"]["sha256"] == reference["files"]["translations"]["sha256"]


def test_requests_in_flight_are_bounded_by_max_concurrency_and_reach_it(tmp_path):
    """The real ChatClient against a real HTTP server: 8 samples in flight want up to 16 requests
    (two turns each); the client's max_concurrency (5) caps what reaches the server."""
    items = [{"id": f"t{i:02d}", "language": "en",
              "turns": [{"role": "user", "content": f"What is {NAMES[i]} doing?"},
                        {"role": "assistant", "content": f"The {NAMES[i]} is reading."}]} for i in range(24)]
    cfg = translate_cfg(commit_every=4, in_flight_samples=8)
    cfg.translator.max_concurrency = 5
    running = {"now": 0, "max": 0}

    class CountingTranslator(Translator):
        async def attempt(self, turns, number, temperature):
            running["now"] += 1
            running["max"] = max(running["max"], running["now"])
            try:
                return await super().attempt(turns, number, temperature)
            finally:
                running["now"] -= 1

    with FakeChatServer(delay_s=0.05, default_content="ok") as server:
        client = ChatClient(server.base_url, "fake", max_concurrency=cfg.translator.max_concurrency,
                            request_timeout_s=10, max_retries=0)
        out = outputs(tmp_path)

        async def main() -> None:
            try:
                await translate_rows(CountingTranslator(client, cfg), iter(items), out, 0.0, log=LOG)
            finally:
                await client.aclose()

        try:
            asyncio.run(main())
            out.finish()
        finally:
            out.close()
    assert running["max"] == 8                                       # samples in flight: reached, not exceeded
    assert server.max_in_flight == 5 and server.hits == 24 * 2 * 2   # requests: capped at max_concurrency
    assert [r["id"] for r in iter_jsonl(tmp_path / "translations-00000.jsonl")] == [s["id"] for s in items]


# settings ---------------------------------------------------------------------------------------
def test_the_ain_recipe_keeps_a_256_batch_full(chdir_root):
    cfg = load_config(["recipe=ain", "cluster=slurm"], check_paths=False).translate
    assert cfg.translator.max_concurrency == 512                     # 2 x the server batch of 256
    assert cfg.samples_in_flight() >= cfg.translator.max_concurrency  # each has >= 1 request to send
    assert cfg.pending_samples() >= cfg.samples_in_flight()
    assert cfg.commit_every == 256


def test_defaults_resolve_from_the_translator():
    cfg = TranslateConfig()
    assert cfg.samples_in_flight() == cfg.translator.max_concurrency
    assert cfg.pending_samples() == 4 * cfg.samples_in_flight()
    cfg.in_flight_samples, cfg.max_pending_samples = 7, 9
    assert (cfg.samples_in_flight(), cfg.pending_samples()) == (7, 9)


@pytest.mark.parametrize("override, key", [
    ("translate.in_flight_samples=-1", "translate.in_flight_samples"),
    ("translate.max_pending_samples=3", "translate.max_pending_samples"),   # below the 4 in flight (smoke)
])
def test_pipeline_settings_are_checked(chdir_root, override, key):
    with pytest.raises(ConfigError) as err:
        load_config(["recipe=smoke", "stages=[ingest,translate]", override], check_paths=False)
    assert key in str(err.value)
