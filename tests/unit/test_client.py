"""ChatClient against a scripted fake server (tests/serve_helpers.py: a real HTTP server on
127.0.0.1 standing in for a misbehaving vLLM): retries, rejection, schema validation, cache,
concurrency and API-key hygiene."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import threading
import time

import pytest

from ain.config_base import JudgeConfig, ServerConfig
from ain.serve.client import (
    ChatClient,
    EndpointUnavailable,
    InvalidAnswer,
    RequestRejected,
    ResponseCache,
    extract_json,
    request_key,
    run_all,
)
from ain.serve.server import endpoint, free_port
from tests.serve_helpers import FakeChatServer

SCHEMA = {"title": "verdict", "type": "object", "properties": {"score": {"type": "integer", "minimum": 1,
                                                                         "maximum": 5}},
          "required": ["score"], "additionalProperties": False}
MESSAGES = [{"role": "user", "content": "Rate this translation."}]


def client_for(server: FakeChatServer, **kw) -> ChatClient:
    opts = dict(max_concurrency=4, request_timeout_s=0.5, max_retries=3, backoff_base_s=0.01, backoff_max_s=0.02)
    opts.update(kw)
    return ChatClient(server.base_url, "fake-model", **opts)


def chat(client: ChatClient, **kw):
    async def main():
        try:
            return await client.chat(MESSAGES, **kw)
        finally:
            await client.aclose()
    return asyncio.run(main())


FAULTS = {
    "429": {"kind": "status", "status": 429, "headers": {"Retry-After": "0"}},
    "500": {"kind": "status", "status": 500},
    "503": {"kind": "status", "status": 503},
    "hang": {"kind": "hang", "seconds": 3},
    "close": {"kind": "close"},
    "malformed_body": {"kind": "raw", "body": "{not json"},
}


@pytest.mark.parametrize("fast", [True, False], ids=["Http11Transport", "httpx-default"])
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_transport_faults_are_retried_then_succeed(fault, fast):
    with FakeChatServer([FAULTS[fault], FAULTS[fault]], default_content="fine") as server:
        t0 = time.monotonic()
        client = client_for(server, fast_transport=fast)
        assert client.uses_fast_transport is fast
        result = chat(client)
        elapsed = time.monotonic() - t0
    assert result.text == "fine" and result.attempts == 3 and not result.cached
    assert server.hits == 3
    # Two backoffs of at most 0.02 s each (+ two 0.5 s timeouts for the hang case).
    assert elapsed < (1.0 if fault != "hang" else 2.0)


@pytest.mark.parametrize("text", ["no json here", '```json\n{"score": 9}\n```', '{"score": "high"}'])
def test_invalid_structured_answers_are_retried_then_succeed(text):
    with FakeChatServer([{"kind": "content", "text": text}], default_content='```json\n{"score": 4}\n```') as server:
        result = chat(client_for(server), json_schema=SCHEMA, temperature=0.3)
    assert result.parsed == {"score": 4} and result.attempts == 2
    # Same temperature on the retry; response_format sent both times.
    assert [r["temperature"] for r in server.requests] == [0.3, 0.3]
    fmt = server.requests[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == SCHEMA
    assert fmt["json_schema"]["strict"] is True and fmt["json_schema"]["name"] == "verdict"
    assert server.requests[0]["max_tokens"] == 1024


def test_retry_after_is_honoured():
    with FakeChatServer([{"kind": "status", "status": 429, "headers": {"Retry-After": "0.3"}}]) as server:
        t0 = time.monotonic()
        result = chat(client_for(server))
    assert result.attempts == 2 and time.monotonic() - t0 >= 0.3


def test_backoff_is_bounded_full_jitter():
    client = ChatClient("http://127.0.0.1:9/v1", "m", backoff_base_s=0.5, backoff_max_s=4.0)
    for attempt in range(1, 12):
        cap = min(4.0, 0.5 * 2 ** (attempt - 1))
        delays = [client._backoff(attempt, None) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays) and max(delays) > cap / 2
    assert client._backoff(1, 7.5) == 7.5


def test_transport_retries_exhausted_raise_endpoint_unavailable():
    with FakeChatServer([FAULTS["500"]] * 10) as server:
        with pytest.raises(EndpointUnavailable) as info:
            chat(client_for(server, max_retries=2))
    assert server.hits == 3 and info.value.attempts == 3 and "500" in info.value.last_error


def test_unreachable_endpoint_raises_endpoint_unavailable():
    from ain.serve.server import free_port
    client = ChatClient(f"http://127.0.0.1:{free_port()}/v1", "m", max_retries=1, backoff_base_s=0.01)
    with pytest.raises(EndpointUnavailable, match="connection error"):
        chat(client)


def test_400_is_rejected_without_retry():
    script = [{"kind": "status", "status": 400, "body": '{"detail": "bad field top_k"}'}]
    with FakeChatServer(script) as server:
        with pytest.raises(RequestRejected) as info:
            chat(client_for(server))
    assert server.hits == 1 and info.value.status == 400 and "top_k" in info.value.body


def test_schema_violations_exhaust_retries_into_invalid_answer():
    with FakeChatServer(default_content='{"score": 42}') as server:
        with pytest.raises(InvalidAnswer) as info:
            chat(client_for(server, max_retries=2), json_schema=SCHEMA)
    assert server.hits == 3
    assert info.value.texts == ['{"score": 42}'] * 3
    assert "42" in str(info.value) and "schema" in info.value.errors[-1]


def test_invalid_schema_is_a_value_error():
    with FakeChatServer() as server:
        with pytest.raises(ValueError, match="not a valid JSON schema"):
            chat(client_for(server), json_schema={"type": "no-such-type"})
    assert server.hits == 0


def test_extract_json_tolerates_fences_and_prose():
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('Sure!\n```json\n{"a": [1, 2]}\n```\n') == {"a": [1, 2]}
    assert extract_json('The answer is {"a": 2}.') == {"a": 2}
    with pytest.raises(ValueError):
        extract_json("nothing")


def test_cache_serves_repeats_and_survives_reopening(tmp_path):
    path = tmp_path / "cache" / "task-00001.jsonl"
    with FakeChatServer(default_content='{"score": 3}') as server:
        with ResponseCache(path) as cache:
            first = chat(client_for(server, cache=cache), json_schema=SCHEMA)
            second = chat(client_for(server, cache=cache), json_schema=SCHEMA)
        assert server.hits == 1
        assert (first.cached, second.cached) == (False, True)
        assert second.parsed == {"score": 3} and second.attempts == 0
        assert oct(path.stat().st_mode & 0o777) == "0o600"

        with ResponseCache(path) as cache:  # a requeued task
            again = chat(client_for(server, cache=cache), json_schema=SCHEMA)
            assert again.cached and server.hits == 1
            other = chat(client_for(server, cache=cache), json_schema=SCHEMA, temperature=0.7)
            assert not other.cached and server.hits == 2
            bypass = chat(client_for(server, cache=cache), json_schema=SCHEMA, cache=False)
            assert not bypass.cached and server.hits == 3
            assert len(cache) == 2


def test_cache_key_covers_every_request_field():
    base = dict(model="m", messages=MESSAGES, temperature=0.0, top_p=1.0, max_tokens=10, json_schema=None,
                extra_body={})
    keys = {request_key(**base)}
    for change in [{"model": "n"}, {"temperature": 0.1}, {"top_p": 0.9}, {"max_tokens": 11},
                   {"json_schema": SCHEMA}, {"extra_body": {"top_k": 5}},
                   {"messages": [{"role": "user", "content": "other"}]}]:
        keys.add(request_key(**{**base, **change}))
    assert len(keys) == 8


def test_failed_answers_are_not_cached_and_torn_lines_are_dropped(tmp_path):
    path = tmp_path / "c.jsonl"
    with FakeChatServer(default_content="not json") as server:
        with ResponseCache(path) as cache:
            with pytest.raises(InvalidAnswer):
                chat(client_for(server, cache=cache, max_retries=0), json_schema=SCHEMA)
            assert len(cache) == 0
            chat(client_for(server, cache=cache))
            assert len(cache) == 1
    with open(path, "ab") as f:
        f.write(b'{"key": "torn", "te')  # killed mid-write
    with ResponseCache(path) as cache:
        assert len(cache) == 1 and "torn" not in cache
    assert path.read_bytes().endswith(b"}\n")


def test_concurrency_is_capped_and_reached():
    with FakeChatServer(delay_s=0.1) as server:
        client = client_for(server, max_concurrency=4, request_timeout_s=5)
        results = run_all(client, [{"messages": [{"role": "user", "content": str(i)}]} for i in range(16)])
    assert all(r.text == "ok" for r in results)
    assert server.hits == 16 and server.max_in_flight == 4


def test_run_all_returns_exceptions_in_order():
    script = [{"kind": "status", "status": 400}]
    with FakeChatServer(script) as server:
        client = client_for(server, max_concurrency=1)
        results = run_all(client, [{"messages": MESSAGES}, {"messages": MESSAGES, "temperature": 0.5}])
        # The client is reusable after run_all (a fresh loop gets a fresh connection pool).
        results += run_all(client, [{"messages": MESSAGES}])
    assert isinstance(results[0], RequestRejected) and results[1].text == "ok" and results[2].text == "ok"


def test_api_key_never_leaks(tmp_path, monkeypatch, caplog):
    secret = "sk-test-SECRET-9f8e7d6c5b4a"
    monkeypatch.setenv("AIN_TEST_JUDGE_KEY", secret)
    caplog.set_level(logging.DEBUG)
    script = [FAULTS["500"], FAULTS["close"], {"kind": "status", "status": 401, "body": f"bad key {secret}"},
              {"kind": "content", "text": "no json"}]
    errors = []
    with FakeChatServer(script, default_content='{"score": 2}') as server:
        judge = JudgeConfig(model="fake-model", server=ServerConfig(mode="external", url=server.base_url,
                                                                    api_key_env="AIN_TEST_JUDGE_KEY"))
        with endpoint(judge, tmp_path, "judge", tmp_path) as ep, ResponseCache(tmp_path / "cache.jsonl") as cache:
            assert ep.api_key == secret and secret not in repr(ep)
            client = ChatClient.from_judge(judge, ep, cache=cache)
            client.backoff_base_s = client.backoff_max_s = 0.01
            assert secret not in repr(client)
            try:  # 500, close, then 401 (echoing the key): rejected
                chat(client)
            except RequestRejected as exc:
                errors.append(exc)
            result = chat(client, json_schema=SCHEMA, temperature=0.9)  # invalid JSON, then valid
        assert result.parsed == {"score": 2}
        assert server.auth_headers and all(h == f"Bearer {secret}" for h in server.auth_headers)
    assert len(errors) == 1 and errors[0].status == 401
    texts = [caplog.text, (tmp_path / "cache.jsonl").read_text()]
    texts += [str(e) + repr(e) + str(getattr(e, "body", "")) for e in errors]
    assert "retrying" in caplog.text  # the failures were logged ...
    assert all(secret not in t for t in texts)  # ... without the key


def test_missing_api_key_variable_is_named(tmp_path, monkeypatch):
    from ain.config_base import ConfigError
    monkeypatch.delenv("AIN_TEST_NO_SUCH_KEY", raising=False)
    judge = JudgeConfig(model="m", server=ServerConfig(mode="external", url="http://127.0.0.1:9/v1",
                                                       api_key_env="AIN_TEST_NO_SUCH_KEY"))
    with pytest.raises(ConfigError, match="AIN_TEST_NO_SUCH_KEY"):
        with endpoint(judge, tmp_path, "judge", tmp_path):
            pass
    judge.server.url = None
    judge.server.api_key_env = None
    with pytest.raises(ConfigError, match="server.url"):
        with endpoint(judge, tmp_path, "judge", tmp_path):
            pass


def test_extra_body_is_sent():
    with FakeChatServer() as server:
        chat(client_for(server, extra_body={"top_k": 20}), max_tokens=7, top_p=0.9)
    sent = server.requests[0]
    assert sent["top_k"] == 20 and sent["max_tokens"] == 7 and sent["top_p"] == 0.9 and sent["model"] == "fake-model"
    assert "response_format" not in sent
    json.dumps(sent)


def _wire(body: bytes, *headers: bytes, chunked: bool = False) -> bytes:
    if chunked:
        half = len(body) // 2
        payload = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:]) if p)
        payload += b"0\r\nX-Trailer: t\r\n\r\n"
        headers += (b"Transfer-Encoding: chunked",)
    else:
        payload = body
    return b"HTTP/1.1 200 OK\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + payload


def test_http11_transport_body_framings_and_reconnects():
    """Chunked bodies (with extensions and trailers), interim 100 responses, bodies delimited by
    the server closing, and `Connection: close`: each answer is read whole, and the next request
    opens a fresh connection when the last one was closed."""
    from tests.serve_helpers import completion
    body = lambda text: json.dumps(completion(text)).encode()  # noqa: E731
    script = [
        {"kind": "wire", "data": _wire(body("chunked"), chunked=True)},
        {"kind": "wire", "data": b"HTTP/1.1 100 Continue\r\n\r\n" + _wire(body("after-100"), b"Content-Length: %d"
                                                                              % len(body("after-100")))},
        {"kind": "wire", "data": _wire(body("to-eof")), "close": True},
        {"kind": "wire", "data": _wire(body("conn-close"), b"Connection: close",
                                       b"Content-Length: %d" % len(body("conn-close"))), "close": True},
        {"kind": "wire", "data": b"garbage\r\n\r\n", "close": True},
    ]
    with FakeChatServer(script, default_content="default") as server:
        client = client_for(server, max_concurrency=1)
        results = run_all(client, [{"messages": [{"role": "user", "content": str(i)}]} for i in range(5)])
    assert [r.text for r in results] == ["chunked", "after-100", "to-eof", "conn-close", "default"]
    assert [r.attempts for r in results] == [1, 1, 1, 1, 2]  # the malformed status line was retried


def _restarting_server(port: int, after_s: float) -> threading.Thread:
    """A chat server that comes up on `port` only after `after_s` seconds (a restarting judge)."""
    def serve() -> None:
        time.sleep(after_s)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _OkHandler)
        server.timeout = 0.1
        deadline = time.time() + 20
        while time.time() < deadline and not getattr(server, "done", False):
            server.handle_request()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


class _OkHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"choices": [{"message": {"content": "back"}, "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.done = True


def test_a_down_endpoint_is_waited_for_within_the_budget_not_a_count_of_retries():
    """Refused connections (the server restarting) keep the request alive past max_retries for
    down_budget_s (the server's start-up timeout in from_judge); without a budget the same outage
    fails after max_retries backoffs. HTTP error statuses stay bounded by max_retries."""
    port = free_port()
    _restarting_server(port, after_s=2.0)
    client = ChatClient(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, backoff_base_s=0.05, backoff_max_s=0.2,
                        down_budget_s=15.0)
    start = time.time()
    [result] = run_all(client, [{"messages": [{"role": "user", "content": "x"}]}])
    assert not isinstance(result, Exception), result
    assert result.text == "back" and result.attempts > 2 and time.time() - start >= 2.0
    gone = ChatClient(f"http://127.0.0.1:{free_port()}/v1", "m", max_retries=1, backoff_base_s=0.05, backoff_max_s=0.2)
    [failed] = run_all(gone, [{"messages": [{"role": "user", "content": "x"}]}])
    assert isinstance(failed, EndpointUnavailable) and failed.attempts == 2
