"""ManagedServer and endpoint(): start-up failures with log tails, process-group cleanup, signal
chaining, the shared-server address file, and a real OpenAI-compatible server (`transformers
serve` on a tiny random model, marked slow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from ain.config_base import ConfigError, JudgeConfig, ServerConfig
from ain.serve.client import ChatClient, EndpointUnavailable, InvalidAnswer, run_all
from ain.serve.server import ManagedServer, ServerStartError, address_path, endpoint, render_command, serve_shared

PY = sys.executable

# Starts `python -m http.server` as a child and waits: the server is a grandchild of ours, so
# only killing the whole process group cleans it up.
WRAPPER = textwrap.dedent("""
    import subprocess, sys
    port, host, pidfile = sys.argv[1:4]
    child = subprocess.Popen([sys.executable, "-m", "http.server", port, "--bind", host])
    open(pidfile, "w").write(str(child.pid))
    print("wrapper started child", child.pid, flush=True)
    child.wait()
""")

# A server that ignores SIGTERM: stop() must escalate to SIGKILL.
STUBBORN = textwrap.dedent("""
    import signal, sys, http.server as h
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    h.ThreadingHTTPServer((sys.argv[2], int(sys.argv[1])), h.SimpleHTTPRequestHandler).serve_forever()
""")


def http_server_cfg(**kw) -> ServerConfig:
    opts = dict(command=[PY, "-m", "http.server", "{port}", "--bind", "{host}"], health_path="/",
                startup_timeout_s=20.0)
    opts.update(kw)
    return ServerConfig(**opts)


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def test_render_command_fills_each_argument_literally():
    cmd = ["vllm", "serve", "{model}", "--port", "{port}", "--host={host}", "-tp", "{tensor_parallel_size}"]
    out = render_command(cmd, model="/m/{port} {x}%s", host="0.0.0.0", port=8001, tensor_parallel_size=4)
    assert out == ["vllm", "serve", "/m/{port} {x}%s", "--port", "8001", "--host=0.0.0.0", "-tp", "4"]
    with pytest.raises(ConfigError, match="argument list"):
        render_command("vllm serve {model}",  # type: ignore[arg-type]
                       model="m", host="h", port=1, tensor_parallel_size=1)


def test_never_healthy_fails_at_timeout_with_log_tail(tmp_path):
    cfg = ServerConfig(command=[PY, "-c", "import time,sys; print('booting'); sys.stdout.flush(); time.sleep(60)"],
                       startup_timeout_s=2)
    server = ManagedServer(cfg, "m", tmp_path / "s.log")
    t0 = time.monotonic()
    with pytest.raises(ServerStartError) as info:
        server.start()
    assert 2 <= time.monotonic() - t0 < 8
    message = str(info.value)
    assert "booting" in message and "not healthy" in message and "time.sleep(60)" in message
    assert not alive(server.proc.pid)


def test_immediate_exit_fails_fast_with_exit_code_and_log(tmp_path):
    cfg = ServerConfig(command=[PY, "-c", "import sys; print('fatal: no GPU found'); sys.exit(3)"],
                       startup_timeout_s=60)
    t0 = time.monotonic()
    with pytest.raises(ServerStartError) as info:
        with ManagedServer(cfg, "m", tmp_path / "s.log"):
            pass
    assert time.monotonic() - t0 < 5
    assert "fatal: no GPU found" in str(info.value) and "code 3" in str(info.value)


def test_missing_executable_is_a_start_error(tmp_path):
    cfg = ServerConfig(command=["/nonexistent/vllm", "serve", "{model}"], startup_timeout_s=5)
    with pytest.raises(ServerStartError, match="/nonexistent/vllm"):
        ManagedServer(cfg, "m", tmp_path / "s.log").start()


def test_real_server_starts_and_stop_kills_the_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    cfg = http_server_cfg(command=[PY, "-c", WRAPPER, "{port}", "{host}", str(pidfile)])
    log_path = tmp_path / "logs" / "server.log"
    with ManagedServer(cfg, "m", log_path) as server:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        assert httpx.get(server.root_url + "/").status_code == 200
        child = int(pidfile.read_text())
        assert alive(child) and alive(server.proc.pid)
    assert server.stopped and not alive(server.proc.pid) and not alive(child)
    server.stop()  # idempotent
    assert oct(log_path.stat().st_mode & 0o777) == "0o600"
    assert "wrapper started child" in log_path.read_text()


def test_stop_escalates_to_sigkill(tmp_path):
    cfg = http_server_cfg(command=[PY, "-c", STUBBORN, "{port}", "{host}"])
    with ManagedServer(cfg, "m", tmp_path / "s.log", stop_timeout_s=1.0) as server:
        pass
    assert server.proc.returncode == -signal.SIGKILL


def test_sigusr2_stops_server_then_chains_to_previous_handler(tmp_path):
    calls = []
    sentinel = lambda signum, frame: calls.append(signum)  # noqa: E731 - stands in for submitit's requeue
    original = signal.signal(signal.SIGUSR2, sentinel)
    try:
        with ManagedServer(http_server_cfg(), "m", tmp_path / "s.log") as server:
            pid = server.proc.pid
            os.kill(os.getpid(), signal.SIGUSR2)
            for _ in range(100):  # the handler runs in the main thread at the next bytecode
                if calls:
                    break
                time.sleep(0.01)
            assert calls == [signal.SIGUSR2]
            assert server.stopped and not alive(pid)
        assert signal.getsignal(signal.SIGUSR2) is sentinel  # restored on exit
    finally:
        signal.signal(signal.SIGUSR2, original)


def test_sigterm_with_default_handler_stops_server_and_terminates(tmp_path):
    """In a child interpreter: SIGTERM stops the server, then the default action still applies."""
    pidfile = tmp_path / "server.pid"
    script = textwrap.dedent(f"""
        import sys, time
        from ain.config_base import ServerConfig
        from ain.serve.server import ManagedServer
        cfg = ServerConfig(command=[sys.executable, "-m", "http.server", "{{port}}", "--bind", "{{host}}"],
                           health_path="/", startup_timeout_s=20)
        with ManagedServer(cfg, "m", {str(tmp_path / 's.log')!r}) as server:
            open({str(pidfile)!r}, "w").write(str(server.proc.pid))
            time.sleep(60)
    """)
    proc = subprocess.Popen([PY, "-c", script])
    try:
        for _ in range(300):
            if pidfile.exists() and pidfile.read_text():
                break
            time.sleep(0.05)
        server_pid = int(pidfile.read_text())
        assert alive(server_pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == -signal.SIGTERM
        assert not alive(server_pid)
    finally:
        proc.kill()


def test_per_task_endpoint_and_client(tmp_path):
    """per_task: the endpoint is a ManagedServer for the block; here a stand-in that answers GETs
    only, so a chat POST fails (501, a 5xx: retried, then EndpointUnavailable) -- the point is the
    address and the cleanup."""
    judge = JudgeConfig(model="m", server=http_server_cfg())
    with endpoint(judge, tmp_path, "judge", tmp_path / "logs") as ep:
        assert ep.base_url.startswith("http://127.0.0.1:") and ep.base_url.endswith("/v1") and ep.api_key is None
        [result] = run_all(ChatClient(ep.base_url, ep.model, max_retries=0), [{"messages": [{"role": "user",
                                                                                              "content": "x"}]}])
        assert isinstance(result, EndpointUnavailable) and "HTTP 501" in result.last_error
        url = ep.base_url
    with pytest.raises(httpx.ConnectError):
        httpx.get(url.removesuffix("/v1") + "/")
    assert list((tmp_path / "logs").glob("judge.server.*.log"))


def test_shared_server_publishes_address_and_cleans_up(tmp_path):
    judge = JudgeConfig(model="m", server=http_server_cfg(mode="shared", host="0.0.0.0", startup_timeout_s=20))
    done = threading.Event()
    errors = []

    def server_job():
        try:
            serve_shared(judge, tmp_path, "judge", tmp_path / "logs", until=done.is_set, poll_s=0.05)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    job = threading.Thread(target=server_job)
    job.start()
    try:
        with endpoint(judge, tmp_path, "judge", tmp_path / "logs") as ep:
            addr = json.loads(address_path(tmp_path, "judge").read_text())
            assert ep.base_url == addr["url"] and addr["model"] == "m" and addr["host"] == os.uname().nodename
            assert oct(address_path(tmp_path, "judge").stat().st_mode & 0o777) == "0o600"
            assert httpx.get(f"http://127.0.0.1:{addr['port']}/").status_code == 200
    finally:
        done.set()
        job.join(timeout=30)
    assert not errors and not job.is_alive()
    assert not address_path(tmp_path, "judge").exists()
    assert not alive(addr["pid"])


def test_shared_endpoint_times_out_on_stale_address(tmp_path):
    judge = JudgeConfig(model="m", server=http_server_cfg(mode="shared", startup_timeout_s=1))
    path = address_path(tmp_path, "judge")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"url": "http://127.0.0.1:9/v1", "host": "127.0.0.1", "port": 9, "pid": 1,
                                "job_id": "123", "model": "m"}))
    with pytest.raises(ServerStartError, match="job 123"):
        with endpoint(judge, tmp_path, "judge", tmp_path):
            pass


def test_unknown_mode_is_a_config_error(tmp_path):
    judge = JudgeConfig(model="m", server=ServerConfig(mode="sidecar"))
    with pytest.raises(ConfigError, match="per_task, shared or external"):
        with endpoint(judge, tmp_path, "judge", tmp_path):
            pass


# Real OpenAI-compatible server ---------------------------------------------------------------------
# `transformers serve` (transformers 5.x): the positional FORCE_MODEL argument pins (preloads)
# the model before uvicorn starts, so `/health` answers 200 only once the model is loaded --
# the same contract as vLLM's /health. A pinned server answers 400 to requests naming another
# model, so the request's `model` must be the same string as {model} (it is: JudgeConfig.model
# fills both). Without a pinned model /health answers as soon as uvicorn is up, before loading.
TRANSFORMERS_SERVE = ["transformers", "serve", "{model}", "--host", "{host}", "--port", "{port}"]

TEXTS = [
    "Translate the following English text into Modern Standard Arabic.",
    "The cat sits on the red mat. A man rides a bicycle in the park.",
    "ترجم النص التالي إلى اللغة العربية الفصحى.",
    "القطة تجلس على السجادة الحمراء. رجل يركب دراجة في الحديقة.",
]


@pytest.mark.slow
def test_transformers_serve_end_to_end(tmp_path):
    pytest.importorskip("fastapi")
    from ain_testkit.tiny_server import build_tiny_chat_model

    exe = Path(PY).parent / "transformers"
    if not exe.exists():
        pytest.skip(f"no transformers CLI next to {PY}")
    t0 = time.monotonic()
    model_dir = build_tiny_chat_model(tmp_path / "tiny", TEXTS, seed=0)
    t_build = time.monotonic() - t0
    cfg = ServerConfig(command=[str(exe)] + TRANSFORMERS_SERVE[1:], health_path="/health", startup_timeout_s=120,
                       env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    judge = JudgeConfig(model=str(model_dir), server=cfg, max_tokens=8, request_timeout_s=60, max_retries=1,
                        max_concurrency=2)
    t1 = time.monotonic()
    with endpoint(judge, tmp_path, "tiny", tmp_path / "logs") as ep:
        t_start = time.monotonic() - t1
        client = ChatClient.from_judge(judge, ep)
        t2 = time.monotonic()
        results = run_all(client, [{"messages": [{"role": "user", "content": text}], "max_tokens": 8}
                                   for text in TEXTS[2:]])
        t_chat = time.monotonic() - t2
        # response_format is accepted (and ignored) by transformers serve: the random answer is
        # then rejected client-side by schema validation, not by the server (no RequestRejected).
        schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
        strict = ChatClient(ep.base_url, ep.model, max_retries=0, request_timeout_s=60)
        [structured] = run_all(strict, [{"messages": [{"role": "user", "content": TEXTS[0]}], "max_tokens": 8,
                                         "json_schema": schema}])
    assert isinstance(structured, InvalidAnswer), structured
    for r in results:
        assert not isinstance(r, Exception), r
        assert isinstance(r.text, str) and r.finish_reason in ("stop", "length")
        assert 1 <= r.usage["completion_tokens"] <= 8
    assert any(r.text.strip() for r in results)  # random weights, untied head: visible (nonsense) tokens
    print(f"\ntiny model build {t_build:.1f}s, server start {t_start:.1f}s, 2 chats {t_chat:.2f}s: "
          f"{[r.text for r in results]}")
    assert t_chat < 30


def test_a_per_task_server_that_dies_is_restarted_on_its_port_a_bounded_number_of_times(tmp_path, caplog):
    """The watchdog restarts a dead server (same port, so clients reconnect) at most
    server.max_restarts times, logging each restart with the server's log tail."""
    cfg = http_server_cfg(max_restarts=1)
    server = ManagedServer(cfg, "m", tmp_path / "s.log")
    with caplog.at_level("INFO"), server:
        port, first = server.port, server.proc.pid
        os.killpg(first, signal.SIGKILL)
        deadline = time.time() + 30
        # restarted, and seen healthy by the watchdog (its second "server healthy" line)
        while sum("server healthy at" in r.getMessage() for r in caplog.records) < 2:
            assert time.time() < deadline, "not restarted"
            time.sleep(0.1)
        assert server.restarts == 1 and server.alive() and server.proc.pid != first
        assert httpx_ok(f"http://127.0.0.1:{port}/")
        assert server.port == port
        os.killpg(server.proc.pid, signal.SIGKILL)  # the second death: over the bound
        while server.alive() or not any("not restarted" in r.getMessage() for r in caplog.records):
            assert time.time() < deadline, "second death not reported"
            time.sleep(0.1)
        assert server.restarts == 1
    assert any("restart 1/1 on port" in r.getMessage() for r in caplog.records)


def httpx_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
