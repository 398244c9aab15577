"""The LLM fallbacks of the English track: MMBench's choice matcher and MathVista's answer extractor.

The judge is a real OpenAI-compatible HTTP server on 127.0.0.1 (http.server in a thread, the
chat-completions JSON), reached through the eval stage's own path: `eval.judge` with
server.mode=external -> ain.serve.server.endpoint -> ChatClient -> ResponseCache. Nothing is
mocked; the server answers according to the reply it finds in the prompt.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional, Union

import pytest

from ain.config import RunConfig
from ain.config_base import JudgeConfig, ServerConfig
from ain.eval import camel_judge
from ain.eval import scoring as s
from ain.eval.config import EvalConfig
from ain.eval.prompts import LATIN
from ain.eval.registry import EvalUnit, RegistryError, load_registry
from ain.eval.report import render_markdown
from ain.eval.stage import EXTRACT_MAX_TOKENS, score_predictions
from ain.rundir import RunDir
from ain.stages import TaskContext
from tests.serve_helpers import completion

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests/fixtures/eval"
COLOURS = ["red", "green", "blue", "yellow"]


class JudgeServer:
    """A judge endpoint: the answer to a request is `replies[key]` for the first key found in the
    prompt's last block (after the in-context examples), else `default`. An int answer is an HTTP
    status (e.g. 400: rejected). Every request body is kept in `requests`."""

    def __init__(self, replies: dict[str, Union[str, int]], default: str = "Z") -> None:
        self.replies, self.default = replies, default
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._send(200, b'{"status": "ok"}')

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.requests.append(body)
                answer = server.answer(body["messages"][-1]["content"])
                if isinstance(answer, int):
                    self._send(answer, json.dumps({"error": {"message": "rejected by the test"}}).encode())
                else:
                    self._send(200, json.dumps(completion(answer)).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def answer(self, prompt: str) -> Union[str, int]:
        last = prompt.rsplit("Example 3:", 1)[-1].rsplit(f"{s.NO_ANSWER}\n\n", 1)[-1]
        return next((v for k, v in self.replies.items() if k in last), self.default)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def prompts(self) -> list[str]:
        return [r["messages"][-1]["content"] for r in self.requests]

    def __enter__(self) -> "JudgeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # external endpoints honour HTTP(S)_PROXY; the local judge must be reached directly
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def registry():
    return load_registry(ROOT / "configs/eval")


def make_ctx(tmp_path: Path, judge_url: Optional[str] = None, datasets: tuple[str, ...] = ("mmbench_en",),
             benchmarks: tuple[str, ...] = ("english",)) -> TaskContext:
    judge = JudgeConfig(model="", max_tokens=16)
    if judge_url:
        judge = JudgeConfig(model="test-judge", max_tokens=16, max_concurrency=2, max_retries=0, request_timeout_s=10,
                            server=ServerConfig(mode="external", url=judge_url))
    cfg = RunConfig(eval=EvalConfig(benchmarks=list(benchmarks), datasets=list(datasets), data_root=str(FIXTURES),
                                    judge=judge))
    return TaskContext(cfg=cfg, run=RunDir(tmp_path), stage="eval", index=0, num_tasks=1,
                       log=logging.getLogger("test_eval_judge_fallback"))


def unit_of(registry, *names: str) -> EvalUnit:
    specs = tuple(registry.datasets[n] for n in names)
    return EvalUnit(f"{specs[0].family}/" + "+".join(names), specs[0].family, specs[0].domain, specs)


def mmb(qid: str, prediction: str, gold: str, options: list[str] = COLOURS, question: Optional[str] = "What colour?"):
    meta: dict[str, Any] = {"options": list(options), "letters": list(LATIN[:len(options)])}
    if question is not None:
        meta["question"] = question
    return {"id": f"mmbench_en/{qid}", "dataset": "mmbench_en", "prediction": prediction, "gold": gold, "meta": meta,
            "backend": "hf"}


def mv(qid: str, prediction: str, gold: str, answer_type: str, precision: Optional[int] = None,
       options: Optional[list[str]] = None):
    meta: dict[str, Any] = {"answer_type": answer_type, "question_type": "multi_choice" if options else "free_form",
                            "question": f"Hint: test\nQuestion: question {qid}?", "precision": precision}
    if options:
        meta["options"] = options
    return {"id": f"mathvista_en/{qid}", "dataset": "mathvista_en", "prediction": prediction, "gold": gold,
            "meta": meta, "backend": "hf"}


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["id"].split("/", 1)[1]: r for r in rows}


def test_unreadable_mmbench_reply_is_matched_by_the_judge_and_cached(tmp_path, registry):
    preds = [mmb("0", "B", "B"),                                          # the rule reads it
             mmb("1", "Neither red nor blue: it is green.", "B"),         # two option texts: can_infer gives up
             mmb("2", "Warm, like a ripe tomato.", "A")]         # no letter, no option text
    with JudgeServer({"it is green": "B", "ripe tomato": "Your output: A"}) as judge:
        ctx = make_ctx(tmp_path, judge.url)
        rows = by_id(score_predictions(ctx, unit_of(registry, "mmbench_en"), preds))
        assert len(judge.requests) == 2                                  # only the unreadable replies
        # requests run concurrently: find the prompt by its answer, not by arrival order
        first = next(p for p in judge.prompts() if "it is green" in p)
        assert "Question: What colour?\nOptions:\nA. red\nB. green\nC. blue\nD. yellow\n" in first
        assert first.endswith("Answer: Neither red nor blue: it is green.\nYour output:")
        assert "one of A, B, C, D, or Z" in first
        # a restarted task scores again from the judge cache, asking nothing
        again = by_id(score_predictions(ctx, unit_of(registry, "mmbench_en"), preds))
        assert len(judge.requests) == 2
    assert (rows["0"]["matched_by"], rows["0"]["match"], rows["0"]["correct"]) == ("rule", "B", True)
    assert (rows["1"]["matched_by"], rows["1"]["match"], rows["1"]["correct"]) == ("judge", "B", True)
    assert (rows["2"]["matched_by"], rows["2"]["match"], rows["2"]["correct"]) == ("judge", "A", True)
    assert [again[k]["correct"] for k in "012"] == [True, True, True]
    assert (tmp_path / "stages/eval/state/judge-00000.jsonl").is_file()


def test_judge_garbage_z_and_rejection_are_wrong_and_counted(tmp_path, registry):
    preds = [mmb("0", "C", "C"),
             mmb("1", "Hard to say, a warm colour maybe.", "A"),   # judge: garbage
             mmb("2", "It is a kind of purple.", "B"),             # judge: Z (none of the options)
             mmb("3", "It is some shade of teal.", "C"),           # judge: HTTP 400
             mmb("4", "Probably a very dark tone.", "D")]          # judge: two letters
    replies = {"warm colour": "Well, it could be anything.", "purple": "Z", "teal": 400, "dark tone": "A or D"}
    with JudgeServer(replies) as judge:
        rows = by_id(score_predictions(make_ctx(tmp_path, judge.url), unit_of(registry, "mmbench_en"), preds))
    assert [rows[k]["correct"] for k in "01234"] == [True, False, False, False, False]
    assert [rows[k]["matched_by"] for k in "01234"] == ["rule", "judge_invalid", "judge", "judge_rejected",
                                                         "judge_invalid"]
    assert rows["2"]["match"] == s.NO_OPTION and rows["1"]["judge_reply"] == "Well, it could be anything."
    summary = s.summarize(list(rows.values()), "circular")
    assert summary["matched_by"] == {"judge": 1, "judge_invalid": 2, "judge_rejected": 1, "rule": 1}
    assert summary["unscored"] == {} and summary["scored"] == 5       # wrong, not unscored


def test_without_a_judge_scoring_is_unchanged_and_counted(tmp_path, registry):
    preds = [mmb("0", "B", "B"), mmb("1", "It is green, not red.", "B"), mmb("2", "(D)", "C"),
             mv("0", "The answer is 3.50", "3.5", "float", 1), mv("1", "three and a half", "3.5", "float", 1),
             mv("2", "", "7", "integer")]
    # no judge configured: nothing is reached, the rows get exactly the pure scorers' verdicts
    rows = score_predictions(make_ctx(tmp_path, datasets=("mmbench_en", "mathvista_en")),
                             unit_of(registry, "mmbench_en", "mathvista_en"), preds)
    for r, p in zip(rows, preds):
        scorer = s.letter if p["dataset"] == "mmbench_en" else s.mathvista
        assert r["correct"] is scorer(p["prediction"], p["gold"], p["meta"]), r["id"]
    assert [r["correct"] for r in rows] == [True, False, False, True, False, False]
    assert [r["matched_by"] for r in rows] == ["rule", "none", "rule", "rule", "none", "none"]
    assert not (tmp_path / "stages/eval/state/judge-00000.jsonl").exists()
    assert s.summarize(rows[:3], "circular")["matched_by"] == {"none": 1, "rule": 2}


def test_circular_group_with_one_rotation_read_by_the_matcher(tmp_path, registry):
    # "red" is the gold; rotation k shows COLOURS[k:] + COLOURS[:k], so red's letter moves.
    preds = []
    for k in range(4):
        options = COLOURS[k:] + COLOURS[:k]
        gold = LATIN[options.index("red")]
        reply = gold if k < 3 else "Warm, like a ripe tomato."   # rotation 3: rule cannot read it
        preds.append(mmb(f"0@{k}", reply, gold, options))
    assert preds[3]["gold"] == "B"
    with JudgeServer({"ripe tomato": "B"}) as judge:
        rows = score_predictions(make_ctx(tmp_path, judge.url), unit_of(registry, "mmbench_en"), preds)
        assert len(judge.requests) == 1 and "A. yellow\nB. red\nC. green\nD. blue" in judge.prompts()[0]
    assert [r["matched_by"] for r in rows] == ["rule", "rule", "rule", "judge"]
    out = s.summarize(rows, "circular")
    assert (out["groups"], out["groups_correct"], out["score"]) == (1, 1, 100.0)
    # without the matcher the same group fails: one rotation unread = wrong = the question is lost
    rows = score_predictions(make_ctx(tmp_path / "nojudge"), unit_of(registry, "mmbench_en"), preds)
    out = s.summarize(rows, "circular")
    assert (out["groups_correct"], out["score"], out["matched_by"]) == (0, 0.0, {"none": 1, "rule": 3})


def test_mathvista_extraction_by_the_judge_then_normalisation(tmp_path, registry):
    options = ["the first bar", "the tallest bar", "the last bar"]
    preds = [mv("0", "The answer is 3.50", "3.5", "float", 1),             # rule: last number, rounded to 1 place
             mv("1", "It measures three and a half centimetres.", "3.5", "float", 1),   # judge: "3.50"
             mv("2", "About three point five six units.", "3.5", "float", 1),          # judge: 3.56 -> 3.6: wrong
             mv("3", "I count seven apples.", "7", "integer"),                         # judge: Extracted answer: 7
             mv("4", "It is the tallest one in the chart.", "the tallest bar", "text", options=options),  # judge: B
             mv("5", "The picture is too dark to tell.", "2", "integer"),              # judge: NO_ANSWER
             mv("6", "Roughly two dozen, give or take.", "24", "integer")]             # judge: empty -> invalid
    replies = {"three and a half": "3.50", "five six": "3.56", "seven apples": "Extracted answer: 7",
               "tallest one": "B", "too dark": s.NO_ANSWER, "two dozen": "   "}
    with JudgeServer(replies) as judge:
        rows = score_predictions(make_ctx(tmp_path, judge.url, ("mathvista_en",)), unit_of(registry, "mathvista_en"),
                                 preds)
        assert len(judge.requests) == 6
        assert {r["max_tokens"] for r in judge.requests} == {EXTRACT_MAX_TOKENS}
        assert any(p.endswith("Hint: test\nQuestion: question 1?\nModel response: It measures three "
                              "and a half centimetres.\nExtracted answer:") for p in judge.prompts())
    got = [(r["matched_by"], r.get("extracted"), r["correct"]) for r in rows]
    assert got == [("rule", "3.50", True), ("judge", "3.50", True), ("judge", "3.56", False), ("judge", "7", True),
                   ("judge", "B", True), ("judge", "", False), ("judge_invalid", None, False)]


def test_old_predictions_without_a_stored_question_read_it_from_the_data(tmp_path, registry):
    preds = [mmb("2", "Warm, like a ripe tomato.", "D", ["green", "blue", "yellow", "red"], question=None)]
    with JudgeServer({"ripe tomato": "D"}) as judge:
        rows = score_predictions(make_ctx(tmp_path, judge.url), unit_of(registry, "mmbench_en"), preds)
        assert "Question: What colour is the image?\nOptions:\nA. green" in judge.prompts()[0]  # fixture row 2
    assert (rows[0]["matched_by"], rows[0]["correct"]) == ("judge", True)


def test_camel_bench_verdicts_still_go_through_the_shared_judge_path(tmp_path, registry):
    preds = [{"id": "geochat/0", "dataset": "geochat", "prediction": "ثلاثة مبان", "gold": "ثلاثة", "meta": {},
              "backend": "hf"},
             {"id": "geochat/1", "dataset": "geochat", "prediction": "صناعية", "gold": "سكنية", "meta": {},
              "backend": "hf"}]
    with JudgeServer({"ثلاثة مبان": '{"score": 1}', "صناعية": "not json"}) as judge:
        ctx = make_ctx(tmp_path, judge.url, ("geochat",), ("camel_bench",))
        rows = score_predictions(ctx, unit_of(registry, "geochat"), preds)
        # CAMEL-Bench's fuzz_eval.py sends the FIRST LINE of the prompt the model saw (re-read from
        # the data): for geochat that is its instruction line, not the question
        assert any('Question: "أجب على السؤال التالي بكلمة أو جملة."\nPredicted Answer: "ثلاثة مبان"\n'
                   'Ground Truth: "ثلاثة"\nScore: ' in p for p in judge.prompts())
        assert all(r["messages"][0] == {"role": "system", "content": camel_judge.SYSTEM} for r in judge.requests)
        assert all(r["response_format"]["type"] == "json_schema" for r in judge.requests)
    assert rows[0]["correct"] is True and "matched_by" not in rows[0]
    assert (rows[1]["correct"], rows[1]["reason"]) == (None, "judge gave no valid verdict")


def test_parsing_the_judges_replies():
    letters = ["A", "B", "C"]
    assert s.parse_choice_reply("B", letters) == "B" and s.parse_choice_reply(" (c). ", letters) is None
    assert s.parse_choice_reply("Your output: C", letters) == "C" and s.parse_choice_reply("Z", letters) == "Z"
    assert s.parse_choice_reply("A or B", letters) is None and s.parse_choice_reply("D", letters) is None
    assert s.parse_choice_reply("", letters) is None
    with pytest.raises(ValueError, match="'none' letter Z"):
        s.parse_choice_reply("A", list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    assert s.parse_extraction("Extracted answer: 3.50\nbecause ...") == "3.50"
    assert s.parse_extraction('"[1, 2]"') == "[1, 2]" and s.parse_extraction(" NO_ANSWER. ") == ""
    assert s.parse_extraction("  ") is None


@pytest.mark.parametrize("extraction, gold, meta, ok", [
    ("3.50", "3.5", {"answer_type": "float", "precision": 1}, True),
    ("3.54", "3.5", {"answer_type": "float", "precision": 1}, True),      # rounded to the answer's precision
    ("3.56", "3.5", {"answer_type": "float", "precision": 1}, False),
    ("3.504", "3.5", {"answer_type": "float"}, True),                     # no precision: the gold's decimals
    ("1,000", "1000", {"answer_type": "integer"}, True),
    ("7.9", "7", {"answer_type": "integer"}, True),                       # int(float(x)) truncates, as the official
    ("seven", "7", {"answer_type": "integer"}, False),
    ("[1, 2,3]", "[1,2,3]", {"answer_type": "list"}, True),
    ("(B) tall", "tall", {"answer_type": "text", "options": ["short", "tall"]}, True),
    ("talll", "tall", {"answer_type": "text", "options": ["short", "tall"]}, True),   # most similar option
    ("", "7", {"answer_type": "integer"}, False),                        # NO_ANSWER
])
def test_mathvista_normalisation(extraction, gold, meta, ok):
    assert s.mathvista_match(extraction, gold, meta) is ok


def test_mathvista_rule_extraction():
    assert s.mathvista_extract("So x = 12, and y = 3.5", {"answer_type": "float"}) == "3.5"
    assert s.mathvista_extract("three and a half", {"answer_type": "float"}) is None
    assert s.mathvista_extract("the list is [1, 2, 3].", {"answer_type": "list"}) == "[1, 2, 3]"
    assert s.mathvista_extract("tall", {"answer_type": "text", "options": ["short", "tall"]}) == "tall"
    assert s.mathvista_extract("I pick (A)", {"answer_type": "text", "options": ["short", "tall"]}) == "A"
    assert s.mathvista_extract("no idea", {"answer_type": "text", "options": ["short", "tall"]}) is None


def test_registry_checks_judge_fallback(tmp_path, registry):
    assert registry.datasets["mmbench_en"].judge_fallback == "choice_matcher"
    assert registry.datasets["mathvista_en"].judge_fallback == "answer_extractor"
    assert registry.datasets["seed_en"].judge_fallback is None
    shutil.copytree(ROOT / "configs/eval", tmp_path / "reg")
    path = tmp_path / "reg/english.yaml"
    text = path.read_text()
    path.write_text(text.replace("judge_fallback: choice_matcher", "judge_fallback: gpt"))
    with pytest.raises(RegistryError, match=r"english.yaml.*\[mmbench_en\]\.judge_fallback: 'gpt'"):
        load_registry(tmp_path / "reg")
    path.write_text(text.replace("judge_fallback: choice_matcher", "judge_fallback: answer_extractor"))
    with pytest.raises(RegistryError, match=r"\[mmbench_en\]\.judge_fallback: answer_extractor extends .*mathvista"):
        load_registry(tmp_path / "reg")


def test_report_shows_the_matching_paths():
    base = {"items": 6, "scored": 6, "correct": 3, "unscored": {}, "status": "scored", "family": "english"}
    data = {"checkpoint": "ckpt", "label": "this", "missing_units": [], "camel_bench": {"domains": {}},
            "arabic_mmlu": None, "english": {}, "unscored": {}, "published": {}, "compare_with": [],
            "datasets": {"mmbench_en": {**base, "matched_by": {"rule": 4, "none": 2}},
                         "chartqa_en": dict(base)}}
    md = render_markdown(data)
    assert "## Answer matching" in md
    assert "| mmbench_en | 4 | 0 | 0 | 0 | 2 |" in md and "chartqa_en |" not in md.split("## Answer matching")[1]
    assert "No judge configured: 2 item(s) needed it and were scored wrong" in md
