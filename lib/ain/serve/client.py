"""Async client for OpenAI-compatible chat endpoints (vLLM, `transformers serve`, hosted APIs).

Why not the `openai` package: we need exact control of retries (429/5xx/timeouts/dropped
connections, plus answers that fail their JSON schema), of concurrency (a judge stage keeps
`max_concurrency` requests in flight per task and no more), and of what is logged (never the
API key, never whole prompts). httpx gives that in a few lines.

Structured answers: the request carries the standard `response_format` json_schema (vLLM
enforces it; `transformers serve` ignores it), and every answer is validated client-side with
`jsonschema` whatever the server claims. An invalid answer is retried like a transport error.

`ResponseCache` makes requeued tasks cheap: every validated answer is appended to a per-task
JSONL file keyed by a hash of the full request, so a task that restarts after preemption gets
its earlier answers back without paying for them again.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Optional

import httpx
import jsonschema

from ain.atomic import AppendOnlyCache
from ain.serve.transport import Http11Transport

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429})  # plus every 5xx
BODY_EXCERPT = 500


class ClientError(RuntimeError):
    """Base of the errors a request can end with."""


class RequestRejected(ClientError):
    """The server refused the request (4xx other than 408/429): retrying cannot help."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"request rejected with HTTP {status}: {body}")
        self.status = status
        self.body = body


class InvalidAnswer(ClientError):
    """Every attempt returned an answer that is not valid JSON for the schema."""

    def __init__(self, message: str, texts: list[str], errors: list[str]) -> None:
        super().__init__(message)
        self.texts = texts
        self.errors = errors


class EndpointUnavailable(ClientError):
    """Retries exhausted on 429/5xx/timeouts/connection errors."""

    def __init__(self, message: str, last_error: str, attempts: int) -> None:
        super().__init__(message)
        self.last_error = last_error
        self.attempts = attempts


@dataclass
class ChatResult:
    text: str
    parsed: Any = None
    """The validated JSON object when a json_schema was given."""
    attempts: int = 1
    """HTTP requests made for this answer (0 when it came from the cache)."""
    cached: bool = False
    finish_reason: Optional[str] = None
    usage: Optional[dict] = None
    top_logprobs: Optional[list[dict[str, float]]] = None
    """completions with `logprobs`: per generated token, the most likely tokens and their logprobs."""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(model: str, messages: list, temperature: float, top_p: float, max_tokens: int,
                json_schema: Optional[dict], extra_body: Optional[dict]) -> str:
    """sha256 of everything that determines the answer (and nothing secret)."""
    blob = canonical_json({"model": model, "messages": messages, "temperature": temperature, "top_p": top_p,
                           "max_tokens": max_tokens, "json_schema": json_schema, "extra_body": extra_body or {}})
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache(AppendOnlyCache):
    """Validated answers, one file per task (ain.atomic.AppendOnlyCache): each line {"key", "text",
    "parsed", "finish_reason", "usage", "time"}; no prompt is stored."""

    def put(self, key: str, result: ChatResult) -> None:
        entry = {"key": key, "text": result.text, "parsed": result.parsed, "finish_reason": result.finish_reason,
                 "usage": result.usage, "time": time.time()}
        if result.top_logprobs is not None:
            entry["top_logprobs"] = result.top_logprobs
        self.put_entry(entry)


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """The JSON value in an answer: bare, inside a ```json fence, or the outermost {...}."""
    candidates = [text.strip()]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(text)]
    first, last = text.find("{"), text.rfind("}")
    if 0 <= first < last:
        candidates.append(text[first:last + 1])
    error: Optional[ValueError] = None
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError as exc:
            error = error or exc
    raise ValueError(f"no JSON found ({error})")


def _schema_name(schema: dict) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title") or "answer"))
    return name[:64] or "answer"


def _retry_after(response: httpx.Response) -> Optional[float]:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class _Retry(Exception):
    """One failed attempt that may be retried."""

    def __init__(self, reason: str, retry_after: Optional[float] = None, invalid_text: Optional[str] = None,
                 down: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.invalid_text = invalid_text
        self.down = down
        """No connection to the endpoint (refused, reset): its server may be restarting. An HTTP
        error status is an answer, not an absence: bounded by max_retries as before."""


class ChatClient:
    """Chat completions with bounded concurrency, retries, schema validation and a cache.

    Safe to use from several event loops in turn (as `run_all` does): the httpx clients and the
    semaphore are created per loop, and `aclose()` releases them.
    """

    def __init__(self, base_url: str, model: str, api_key: Optional[str] = None, *, max_concurrency: int = 32,
                 request_timeout_s: float = 300.0, max_retries: int = 6, backoff_base_s: float = 0.5,
                 backoff_max_s: float = 30.0, retry_after_max_s: float = 300.0,
                 extra_body: Optional[dict] = None, cache: Optional[ResponseCache] = None,
                 temperature: float = 0.0, top_p: float = 1.0, max_tokens: int = 1024,
                 trust_env: bool = False, fast_transport: bool = True, down_budget_s: float = 0.0) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self._url = httpx.URL(f"{self.base_url}/chat/completions")  # parsed once: ~0.1 ms per request saved
        self._completions_url = httpx.URL(f"{self.base_url}/completions")
        self.model = model
        self.__api_key = api_key or None
        self.max_concurrency = max_concurrency
        self.request_timeout_s = request_timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self.extra_body = dict(extra_body or {})
        self.cache = cache
        self.temperature, self.top_p, self.max_tokens = temperature, top_p, max_tokens
        self.trust_env = trust_env
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._sem: Optional[asyncio.Semaphore] = None
        self._free: list[httpx.AsyncClient] = []  # idle slots' clients
        self._all: list[httpx.AsyncClient] = []
        self.fast_transport = fast_transport
        self.down_budget_s = down_budget_s
        """While the endpoint is down (refused or reset connections), keep retrying for this long
        after the first such failure even past max_retries: a restarting server (a per_task server
        the manager restarts, a requeued shared one, a vLLM reload) takes as long as its start-up,
        minutes, not the seconds of a fixed count of backoffs. 0: max_retries alone."""
        self._validators: dict[str, Any] = {}

    @classmethod
    def from_judge(cls, judge, endpoint, cache: Optional[ResponseCache] = None) -> "ChatClient":
        """From a `JudgeConfig` and the `Endpoint` that `ain.serve.server.endpoint` yielded."""
        return cls(endpoint.base_url, endpoint.model, endpoint.api_key, max_concurrency=judge.max_concurrency,
                   request_timeout_s=judge.request_timeout_s, max_retries=judge.max_retries,
                   backoff_base_s=judge.backoff_base_s, backoff_max_s=judge.backoff_max_s,
                   extra_body=judge.extra_body, cache=cache, temperature=judge.temperature, top_p=judge.top_p,
                   max_tokens=judge.max_tokens, trust_env=endpoint.trust_env,
                   down_budget_s=judge.server.startup_timeout_s)

    def __repr__(self) -> str:
        return (f"ChatClient(base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key=<{'set' if self.__api_key else 'none'}>, max_concurrency={self.max_concurrency})")

    # plumbing ----------------------------------------------------------------------------------
    # Plain-http endpoints (our own vLLM / transformers-serve servers): one single-connection
    # httpx client per in-flight slot, on the lean `Http11Transport` -- httpx's default transport
    # cost ~1 ms CPU and several ms of latency per request, enough to keep one client from
    # saturating a fast server, and still costs 5-50% of a 1 s, batch-64 judge's capacity, where the
    # lean transport keeps 0.98 (docs/PERFORMANCE.md, "Judge transport at production scale"). https or
    # proxied endpoints: one shared httpx client with the stock transport and a pool as large as
    # the concurrency, so no request waits for a connection. Either way the semaphore is the only
    # queue.
    @property
    def uses_fast_transport(self) -> bool:
        return self.fast_transport and self.base_url.startswith("http://") and not self.trust_env

    def _state(self) -> tuple[asyncio.Semaphore, list]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._sem is None:
            self._sem = asyncio.Semaphore(self.max_concurrency)
            self._free, self._all = [], []
            self._loop = loop
        return self._sem, self._free

    def _new_http(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.__api_key}"} if self.__api_key else {}
        timeout = httpx.Timeout(self.request_timeout_s)
        if self.uses_fast_transport:
            http = httpx.AsyncClient(headers=headers, transport=Http11Transport(), timeout=timeout, trust_env=False)
        elif self._all:
            return self._all[0]  # the shared pooled client
        else:
            limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
            http = httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout, trust_env=self.trust_env)
        self._all.append(http)
        return http

    async def aclose(self) -> None:
        for http in self._all:
            await http.aclose()
        self._all, self._free, self._sem, self._loop = [], [], None, None

    async def __aenter__(self) -> "ChatClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def _scrub(self, text: str) -> str:
        return text.replace(self.__api_key, "***") if self.__api_key else text

    def _validator(self, schema: dict):
        key = canonical_json(schema)
        if key not in self._validators:
            cls = jsonschema.validators.validator_for(schema)
            try:
                cls.check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"json_schema is not a valid JSON schema: {exc.message}") from None
            self._validators[key] = cls(schema)
        return self._validators[key]

    def _backoff(self, attempt: int, retry_after: Optional[float]) -> float:
        if retry_after is not None:
            return min(retry_after, self.retry_after_max_s)
        # Full jitter: uniform(0, min(max, base * 2^(attempt-1))).
        return random.uniform(0.0, min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1)))

    # requests ----------------------------------------------------------------------------------
    async def chat(self, messages: Optional[list[dict]] = None, *, temperature: Optional[float] = None,
                   top_p: Optional[float] = None, max_tokens: Optional[int] = None, json_schema: Optional[dict] = None,
                   cache: bool = True, prompt: Optional[str] = None, logprobs: Optional[int] = None) -> ChatResult:
        """One chat completion; raises RequestRejected, InvalidAnswer or EndpointUnavailable. With
        `prompt` instead of `messages`: a plain completion of the raw text (no chat template), and
        with `logprobs` the `top_logprobs` of each generated token (/v1/completions)."""
        if (messages is None) == (prompt is None):
            raise ValueError("give messages (chat) or prompt (completion), not both")
        temperature = self.temperature if temperature is None else temperature
        top_p = self.top_p if top_p is None else top_p
        max_tokens = self.max_tokens if max_tokens is None else max_tokens
        validator = self._validator(json_schema) if json_schema is not None else None
        body = messages if prompt is None else {"prompt": prompt, "logprobs": logprobs}
        key = request_key(self.model, body, temperature, top_p, max_tokens, json_schema, self.extra_body)
        if cache and self.cache is not None and (hit := self.cache.get(key)) is not None:
            return ChatResult(text=hit["text"], parsed=hit.get("parsed"), attempts=0, cached=True,
                              finish_reason=hit.get("finish_reason"), usage=hit.get("usage"),
                              top_logprobs=hit.get("top_logprobs"))

        payload: dict[str, Any] = {"model": self.model, "temperature": temperature, "top_p": top_p,
                                   "max_tokens": max_tokens}
        if prompt is None:
            payload["messages"] = messages
        else:
            payload["prompt"] = prompt
            if logprobs is not None:
                payload["logprobs"] = logprobs
        if json_schema is not None:
            payload["response_format"] = {"type": "json_schema", "json_schema": {
                "name": _schema_name(json_schema), "schema": json_schema, "strict": True}}
        payload.update(self.extra_body)

        sem, free = self._state()
        invalid_texts: list[str] = []
        reasons: list[str] = []
        last: Optional[_Retry] = None
        down_since: Optional[float] = None
        attempt = 0
        while True:
            attempt += 1
            try:
                async with sem:
                    http = free.pop() if free else self._new_http()
                    try:
                        result = await self._attempt(http, payload, validator)
                    finally:
                        free.append(http)
                result.attempts = attempt
                if cache and self.cache is not None:
                    self.cache.put(key, result)
                return result
            except _Retry as exc:
                last = exc
                reasons.append(exc.reason)
                if exc.invalid_text is not None:
                    invalid_texts.append(exc.invalid_text)
                down_since = (down_since or time.monotonic()) if exc.down else None
            waiting_for_restart = down_since is not None and time.monotonic() - down_since < self.down_budget_s
            if attempt > self.max_retries and not waiting_for_restart:
                break
            delay = self._backoff(min(attempt, self.max_retries + 1), last.retry_after)
            log.warning("request %s to %s: attempt %d/%d failed (%s); retrying in %.2fs", key[:10], self.base_url,
                        attempt, self.max_retries + 1, last.reason, delay)
            await asyncio.sleep(delay)

        attempts = attempt
        if last is not None and last.invalid_text is not None:
            raise InvalidAnswer(f"request {key[:10]}: no valid answer in {attempts} attempts; last: {last.reason}; "
                                f"last text: {last.invalid_text[:BODY_EXCERPT]!r}", invalid_texts, reasons)
        reason = last.reason if last is not None else "unknown"
        raise EndpointUnavailable(f"request {key[:10]} to {self.base_url} failed {attempts} times; last error: "
                                  f"{reason}", reason, attempts)

    async def _attempt(self, http: httpx.AsyncClient, payload: dict, validator) -> ChatResult:
        completion = "prompt" in payload
        try:
            response = await http.post(self._completions_url if completion else self._url, json=payload)
        except httpx.TimeoutException as exc:
            raise _Retry(f"timeout ({type(exc).__name__}) after {self.request_timeout_s:g}s") from None
        except httpx.TransportError as exc:
            raise _Retry(f"connection error ({type(exc).__name__}: {self._scrub(str(exc))[:200]})", down=True) from None
        status = response.status_code
        if status in RETRY_STATUSES or status >= 500:
            raise _Retry(f"HTTP {status}: {self._scrub(response.text[:200])}", _retry_after(response))
        if status >= 400:
            raise RequestRejected(status, self._scrub(response.text[:BODY_EXCERPT]))
        try:
            body = response.json()
            choice = body["choices"][0]
            text = (choice["text"] if completion else choice["message"]["content"]) or ""
            top = (choice.get("logprobs") or {}).get("top_logprobs") if completion else None
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            excerpt = self._scrub(response.text[:200])
            raise _Retry(f"malformed response body ({type(exc).__name__}): {excerpt!r}") from None
        parsed = None
        if validator is not None:
            try:
                parsed = extract_json(text)
            except ValueError as exc:
                raise _Retry(f"answer is not JSON: {exc}", invalid_text=text) from None
            error = jsonschema.exceptions.best_match(validator.iter_errors(parsed))
            if error is not None:
                where = "/".join(map(str, error.path)) or "<root>"
                raise _Retry(f"answer violates the schema at {where}: {error.message[:200]}", invalid_text=text)
        return ChatResult(text=text, parsed=parsed, finish_reason=choice.get("finish_reason"), usage=body.get("usage"),
                          top_logprobs=top)

    async def chat_many(self, requests: list[dict]) -> list[ChatResult | Exception]:
        """Answers in input order; failures are returned as exceptions. `max_concurrency` workers
        pull from a shared index, so memory stays flat however long the list is."""
        results: list[ChatResult | Exception | None] = [None] * len(requests)
        next_index = iter(range(len(requests)))

        async def worker() -> None:
            for i in next_index:
                try:
                    results[i] = await self.chat(**requests[i])
                except Exception as exc:  # noqa: BLE001 - returned to the caller, like gather(return_exceptions)
                    results[i] = exc

        await asyncio.gather(*(worker() for _ in range(min(self.max_concurrency, len(requests)))))
        return results  # type: ignore[return-value]


def run_all(client: ChatClient, requests: list[dict]) -> list[ChatResult | Exception]:
    """Synchronous batch: each dict holds `chat` keyword arguments (messages=..., json_schema=...).
    Keeps `client.max_concurrency` requests in flight. Not for use inside a running event loop."""

    async def main() -> list[ChatResult | Exception]:
        try:
            return await client.chat_many(requests)
        finally:
            await client.aclose()

    return asyncio.run(main())
