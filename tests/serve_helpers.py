"""A scripted fake OpenAI-compatible server for the client's fault tests.

`FakeChatServer` is a real HTTP/1.1 server on 127.0.0.1 (http.server, one thread per
connection, keep-alive) standing in for a misbehaving vLLM: each request to
/v1/chat/completions takes the next action from a script -- 429 with Retry-After, 500 (closing
the connection, as `transformers serve` does), a hang past the client's timeout, a dropped
connection, malformed or schema-violating content -- and answers normally once the script is
used up. It counts hits and the most requests it ever had in flight.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional


def completion(content: str, finish_reason: str = "stop") -> dict:
    return {"id": "fake", "object": "chat.completion", "created": 0, "model": "fake",
            "choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class FakeChatServer:
    """Actions (dicts) in `script`, consumed one per chat request:

    {"kind": "status", "status": 429, "headers": {...}, "body": "..."}
    {"kind": "hang", "seconds": 5}           sleep, then drop the connection without answering
    {"kind": "close"}                        drop the connection without answering
    {"kind": "content", "text": "..."}       200 with this message content
    {"kind": "raw", "body": "..."}           200 with this (possibly malformed) response body
    {"kind": "wire", "data": b"...", "close": True}   these exact bytes (status line and all)

    After the script: 200 with `default_content`, after `delay_s`.
    """

    def __init__(self, script: Optional[list[dict]] = None, default_content: str = "ok",
                 delay_s: float = 0.0) -> None:
        self.script = list(script or [])
        self.default_content = default_content
        self.delay_s = delay_s
        self.hits = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests: list[dict] = []
        self.auth_headers: list[Optional[str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "FakeChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _next_action(self) -> Optional[dict]:
        with self._lock:
            return self.script.pop(0) if self.script else None

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like uvicorn and vLLM

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: Optional[dict] = None, close: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._send(200, b'{"status": "ok"}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake._lock:
                    fake.hits += 1
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    fake.requests.append(body)
                    fake.auth_headers.append(self.headers.get("Authorization"))
                try:
                    self._answer(fake._next_action())
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

            def _answer(self, action: Optional[dict]) -> None:
                if action is None:
                    if fake.delay_s:
                        time.sleep(fake.delay_s)
                    self._send(200, json.dumps(completion(fake.default_content)).encode())
                    return
                kind = action["kind"]
                if kind == "status":
                    status = action["status"]
                    self._send(status, action.get("body", json.dumps({"error": f"fake {status}"})).encode(),
                               action.get("headers"), close=status >= 500)
                elif kind == "hang":
                    fake._stop.wait(action.get("seconds", 5))
                    self.close_connection = True
                elif kind == "close":
                    self.close_connection = True
                elif kind == "content":
                    self._send(200, json.dumps(completion(action["text"])).encode())
                elif kind == "raw":
                    self._send(200, action["body"].encode())
                elif kind == "wire":
                    self.wfile.write(action["data"])
                    self.wfile.flush()
                    self.close_connection = action.get("close", False)
                else:
                    raise ValueError(f"unknown fake action {kind!r}")

        return Handler
