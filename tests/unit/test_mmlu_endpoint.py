"""ArabicMMLU on the endpoint backend: /v1/completions on the raw prompt with logprobs, the option
letter with the highest logprob among the first token's top logprobs (util_compute.py's restricted
argmax). The server is a stand-in that answers the completions API with a scripted top_logprobs
(vLLM's layout); the real vLLM answers the same request in tests/e2e/test_real_vllm.py."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ain.eval.backends import EndpointBackend, restricted_choice
from ain.serve.client import ChatClient


def test_restricted_choice_by_hand():
    top = {" B": -0.3, "The": -0.1, "A": -1.2, " C": -2.5, "\n": -0.05}
    assert restricted_choice(top, ["A", "B", "C", "D"]) == (1, [-1.2, -0.3, -2.5, float("-inf")])
    assert restricted_choice({"The": -0.1}, ["A", "B"])[0] is None           # no letter in the top K: wrong


class _Completions(BaseHTTPRequestHandler):
    seen: list = []

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, body))
        top = {" ب": -0.2, " أ": -1.0, "ال": -0.1} if "سؤال" in body["prompt"] else {"A": -2.0, "C": -0.5}
        reply = {"choices": [{"text": "ال", "finish_reason": "length",
                              "logprobs": {"tokens": ["ال"], "token_logprobs": [-0.1], "top_logprobs": [top]}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_endpoint_backend_scores_the_letters_from_completion_logprobs():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Completions)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = EndpointBackend(ChatClient(f"http://127.0.0.1:{server.server_address[1]}/v1", "m"))
        got = backend.letter_choice([("هذا سؤال ...\n\nإجابة: ", ["أ", "ب", "ج"]), ("Question ...\n\nAnswer: ", ["A", "B", "C"])])
    finally:
        server.shutdown()
    assert [g[0] for g in got] == [1, 2]                                      # ب and C, not the generated "ال"
    path, body = _Completions.seen[0]
    assert path == "/v1/completions" and body["max_tokens"] == 1 and body["logprobs"] == 20 and "messages" not in body
