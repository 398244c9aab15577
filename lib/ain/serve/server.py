"""Judge endpoints: start, find and stop OpenAI-compatible servers (DESIGN.md "Judges and servers").

Three modes, chosen by `ServerConfig.mode`:

* per_task -- `ManagedServer` starts `cfg.command` (vLLM on a cluster, `transformers serve` in
  tests: the same code path) in its own process group, waits for its health check and always
  kills the whole group at the end, including when Slurm sends SIGTERM or submitit's USR2
  (the server must not outlive the task and hold the GPUs of the requeued job).
* shared -- one long-lived job runs `serve_shared`, which publishes the server's address in
  `<run_dir>/serve/<name>.json`; client tasks (CPU only) wait for that file and its health.
* external -- an existing URL; the API key comes from the environment variable named in the
  config and is never logged or written anywhere.

The command is an argument list, never a shell string: placeholders are substituted per
element with str.replace, so a model path with spaces or braces cannot inject anything.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import httpx

from ain.atomic import atomic_write_json, read_json
from ain.config_base import ConfigError, JudgeConfig, ServerConfig

log = logging.getLogger(__name__)

PLACEHOLDERS = ("{model}", "{host}", "{port}", "{tensor_parallel_size}", "{dtype}")
_PLACEHOLDER_RE = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))
LOG_TAIL_LINES = 40
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class ServerStartError(RuntimeError):
    """The server did not become healthy; the message has the command, exit code and log tail."""


@dataclass(frozen=True)
class Endpoint:
    """Where to send requests. `api_key` is never logged (repr hides it)."""

    base_url: str
    model: str
    api_key: Optional[str] = None
    trust_env: bool = False
    """Honour HTTP(S)_PROXY from the environment: only for external endpoints; cluster-internal
    servers are reached directly."""

    def __repr__(self) -> str:
        key = "set" if self.api_key else "none"
        return f"Endpoint(base_url={self.base_url!r}, model={self.model!r}, api_key=<{key}>)"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host` (the server may still lose a race for it;
    `ManagedServer` retries on 'address already in use')."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host not in ("", "::") else "0.0.0.0", 0))
        return s.getsockname()[1]


def render_command(command: list[str], *, model: str, host: str, port: int, tensor_parallel_size: int,
                   dtype: str = "auto") -> list[str]:
    """Fill the placeholders in each argument. One regex pass per argument (never str.format):
    braces in a value stay literal, and a model path containing "{port}" is not re-substituted."""
    if isinstance(command, str) or not command or not all(isinstance(a, str) for a in command):
        raise ConfigError(f"server.command must be a non-empty list of strings (an argument list, not a "
                          f"shell string); got {command!r}")
    values = {"{model}": model, "{host}": host, "{port}": str(port),
              "{tensor_parallel_size}": str(tensor_parallel_size), "{dtype}": dtype}
    return [_PLACEHOLDER_RE.sub(lambda m: values[m.group(0)], arg) for arg in command]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES, max_bytes: int = 64 * 1024) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def check_health(url: str, timeout_s: float = 5.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout_s, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _task_tag() -> str:
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID") or f"pid{os.getpid()}"


class ManagedServer:
    """One server process group for the life of a `with` block.

    Stopped on __exit__, on SIGTERM / SIGUSR2 to this process (then the previously installed
    handler runs: submitit's USR2 handler still requeues), and at interpreter exit.
    """

    def __init__(self, cfg: ServerConfig, model: str, log_path: Path | str, *, port: Optional[int] = None,
                 stop_timeout_s: float = 20.0, handle_signals: bool = True, bind_retries: int = 3) -> None:
        self.cfg = cfg
        self.model = model
        self.log_path = Path(log_path)
        self.port = port
        self.stop_timeout_s = stop_timeout_s
        self.handle_signals = handle_signals
        self.bind_retries = bind_retries
        self.proc: Optional[subprocess.Popen] = None
        self.argv: list[str] = []
        self.stopped = False
        self._lock = threading.RLock()
        self._prev_handlers: dict[int, object] = {}
        self._handlers_active = False
        self.restarts = 0
        self._watchdog: Optional[threading.Thread] = None

    # addresses ---------------------------------------------------------------------------------
    @property
    def connect_host(self) -> str:
        """Where this node reaches the server (a wildcard bind is reached on loopback)."""
        return "127.0.0.1" if self.cfg.host in _WILDCARD_HOSTS else self.cfg.host

    @property
    def root_url(self) -> str:
        return f"http://{self.connect_host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def health_url(self) -> str:
        return self.root_url + self.cfg.health_path

    # lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> "ManagedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "ManagedServer":
        self._start_bound()
        if self.cfg.max_restarts > 0 and self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="server-watchdog", daemon=True)
            self._watchdog.start()
        return self

    def _watch(self, poll_s: float = 1.0) -> None:
        """Restart the server on its port if it dies while in use, at most cfg.max_restarts times
        (clients wait for it: ain.serve.client down_budget_s)."""
        while not self.stopped:
            time.sleep(poll_s)
            with self._lock:
                if self.stopped or self.proc is None or self.proc.poll() is None:
                    continue
                code = self.proc.returncode
                if self.restarts >= self.cfg.max_restarts:
                    log.error("server died (exit code %s) after %d restart(s) (server.max_restarts): not restarted\n"
                              "--- last %d log lines ---\n%s", code, self.restarts, LOG_TAIL_LINES, log_tail(self.log_path))
                    return
                self.restarts += 1
                log.warning("server died (exit code %s): restart %d/%d on port %s\n--- last %d log lines ---\n%s",
                            code, self.restarts, self.cfg.max_restarts, self.port, LOG_TAIL_LINES,
                            log_tail(self.log_path))
                try:
                    self._launch()  # under the lock: a concurrent stop() kills this new process
                except ServerStartError as exc:
                    log.error("server restart failed: %s", exc)
                    return
            try:
                self._wait_healthy()  # not under the lock: stop() may end the wait at any time
            except ServerStartError as exc:
                log.error("restarted server never became healthy: %s", exc)
                self.stop()
                return

    def _start_bound(self) -> "ManagedServer":
        fixed_port = self.port is not None
        for attempt in range(1, self.bind_retries + 1):
            if not fixed_port:
                self.port = free_port(self.connect_host)
            try:
                self._start_once()
                return self
            except ServerStartError as exc:
                if fixed_port or attempt == self.bind_retries or "address already in use" not in str(exc).lower():
                    raise
                log.warning("server port %s was taken; retrying on another port", self.port)
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        self._launch()
        self.stopped = False
        atexit.register(self.stop)
        self._install_signal_handlers()
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _launch(self) -> None:
        """Start the server process (its own process group), not waiting for it."""
        self.argv = render_command(self.cfg.command, model=self.model, host=self.cfg.host, port=self.port,
                                   tensor_parallel_size=self.cfg.tensor_parallel_size, dtype=self.cfg.dtype)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.chmod(self.log_path, 0o600)
        env = {**os.environ, **{str(k): str(v) for k, v in self.cfg.env.items()}}
        log.info("starting server: %s (log %s)", shlex.join(self.argv), self.log_path)
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True, close_fds=True)
        except OSError as exc:
            raise ServerStartError(f"cannot start server command {shlex.join(self.argv)}: {exc}") from exc
        finally:
            os.close(fd)

    def _wait_healthy(self) -> None:
        start = time.monotonic()
        deadline = start + self.cfg.startup_timeout_s
        delay = 0.05
        while True:
            if self.stopped:
                raise ServerStartError(f"server stopped by a signal while starting: {shlex.join(self.argv)}")
            code = self.proc.poll()
            if code is not None:
                raise self._start_error(f"exited with code {code} before becoming healthy")
            if check_health(self.health_url, timeout_s=max(0.5, min(5.0, deadline - time.monotonic()))):
                # Still ours? A server that lost the port race exits, while another one answers.
                if self.proc.poll() is None:
                    log.info("server healthy at %s after %.1fs", self.base_url, time.monotonic() - start)
                    return
                continue
            if time.monotonic() >= deadline:
                raise self._start_error(f"not healthy at {self.health_url} within {self.cfg.startup_timeout_s:g}s")
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)

    def _start_error(self, what: str) -> ServerStartError:
        # Give the process a moment to flush its last words into the log.
        time.sleep(0.05)
        return ServerStartError(f"server {what}\n  command: {shlex.join(self.argv)}\n  log: {self.log_path}\n"
                                f"--- last {LOG_TAIL_LINES} log lines ---\n{log_tail(self.log_path)}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the process group, wait up to stop_timeout_s, then SIGKILL it. Idempotent."""
        with self._lock:
            if self.stopped or self.proc is None:
                self.stopped = True
                self._uninstall_signal_handlers()
                return
            self.stopped = True
            pgid = self.proc.pid  # start_new_session: the leader's pid is the group id
            _killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout_s
            try:
                self.proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                pass
            # Workers may outlive the leader (vLLM spawns them): wait for the whole group.
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _group_alive(pgid) or self.proc.poll() is None:
                log.warning("server process group %d ignored SIGTERM for %.0fs; killing it", pgid, self.stop_timeout_s)
                _killpg(pgid, signal.SIGKILL)
                self.proc.wait()
            log.info("server stopped (exit code %s)", self.proc.returncode)
            self._uninstall_signal_handlers()
            atexit.unregister(self.stop)

    # signals ---------------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        if (not self.handle_signals or self._handlers_active
                or threading.current_thread() is not threading.main_thread()):
            return  # signal handlers can only be installed from the main thread
        for sig in _STOP_SIGNALS:
            self._prev_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)
        self._handlers_active = True

    def _uninstall_signal_handlers(self) -> None:
        if not self._handlers_active or threading.current_thread() is not threading.main_thread():
            return
        self._handlers_active = False
        for sig, prev in self._prev_handlers.items():
            # Restore only if nobody chained on top of us; otherwise stay in the chain as a pass-through.
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)

    def _on_signal(self, signum: int, frame) -> None:
        if self._handlers_active:
            log.warning("received signal %d: stopping the server before passing the signal on", signum)
            self.stop()
        prev = self._prev_handlers.get(signum)
        if callable(prev):
            prev(signum, frame)
        elif prev == signal.SIG_DFL or prev is None:
            # The default action (terminate): re-deliver it with the default disposition.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process left in the group? Zombies count as gone: where PID 1 does
    not reap orphans (some containers), they would otherwise keep the group 'alive' forever."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True  # no procfs: trust killpg
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command name: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


# endpoints ---------------------------------------------------------------------------------------
def read_api_key(cfg: ServerConfig) -> Optional[str]:
    if not cfg.api_key_env:
        return None
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise ConfigError(f"server.api_key_env names the environment variable {cfg.api_key_env}, which is not set "
                          "(or empty) in this job's environment; export it before launching")
    return key


def address_path(run_dir: Path | str, name: str) -> Path:
    return Path(run_dir) / "serve" / f"{name}.json"


@contextlib.contextmanager
def endpoint(judge: JudgeConfig, run_dir: Path | str, name: str, log_dir: Path | str,
             devices: Optional[list[str]] = None) -> Iterator[Endpoint]:
    """The judge's endpoint for the duration of the block, whatever the mode. `devices`: the GPUs a
    per_task server may use (its CUDA_VISIBLE_DEVICES; ain.serve.placement), None: the task's."""
    cfg = judge.server
    if not judge.model:
        raise ConfigError(f"judge {name!r}: model is empty")
    if cfg.mode == "per_task":
        api_key = read_api_key(cfg)
        log_path = Path(log_dir) / f"{name}.server.{_task_tag()}.log"
        if devices is not None:
            cfg = dataclasses.replace(cfg, env={**cfg.env, "CUDA_VISIBLE_DEVICES": ",".join(devices)})
            log.info("judge %s: server on GPU(s) %s", name, ",".join(devices))
        with ManagedServer(cfg, judge.model, log_path) as server:
            yield Endpoint(server.base_url, judge.model, api_key)
    elif cfg.mode == "external":
        if not cfg.url:
            raise ConfigError(f"judge {name!r}: server.mode=external needs server.url (e.g. https://host/v1)")
        yield Endpoint(cfg.url.rstrip("/"), judge.model, read_api_key(cfg), trust_env=True)
    elif cfg.mode == "shared":
        api_key = read_api_key(cfg)
        yield Endpoint(wait_for_shared(cfg, run_dir, name), judge.model, api_key)
    else:
        raise ConfigError(f"judge {name!r}: server.mode must be per_task, shared or external; got {cfg.mode!r}")


def wait_for_shared(cfg: ServerConfig, run_dir: Path | str, name: str, poll_s: float = 2.0) -> str:
    """Poll (every 0.1 s at first, then every `poll_s`) for the shared server's address file and
    its health; return its base URL. The file is re-read each time: a requeued server job
    publishes a new address."""
    path = address_path(run_dir, name)
    deadline = time.monotonic() + cfg.startup_timeout_s
    last = "no address file yet"
    delay = 0.1
    while True:
        if path.exists():
            try:
                addr = read_json(path)
                health = f"http://{addr['host']}:{addr['port']}{cfg.health_path}"
                if check_health(health):
                    return addr["url"]
                last = f"{path} names {addr['url']} (job {addr.get('job_id')}) but {health} does not answer 200"
            except (OSError, ValueError, KeyError) as exc:
                last = f"{path} is unreadable: {exc}"
        if time.monotonic() >= deadline:
            raise ServerStartError(f"shared server {name!r} not available within {cfg.startup_timeout_s:g}s: {last}. "
                                   f"Is the server job for {name!r} running?")
        time.sleep(min(delay, poll_s, max(0.0, deadline - time.monotonic())))
        delay *= 2


def serve_shared(judge: JudgeConfig, run_dir: Path | str, name: str, log_dir: Path | str,
                 until: Callable[[], bool], poll_s: float = 5.0) -> None:
    """Body of a long-lived server job: serve until `until()` is true (e.g. every client task is
    done), publishing the address for clients meanwhile. Fails (raises) if the server dies."""
    cfg = judge.server
    path = address_path(run_dir, name)
    log_path = Path(log_dir) / f"{name}.shared-server.{_task_tag()}.log"
    with ManagedServer(cfg, judge.model, log_path) as server:
        advertised = socket.gethostname() if cfg.host in _WILDCARD_HOSTS else cfg.host
        record = {"url": f"http://{advertised}:{server.port}/v1", "host": advertised, "port": server.port,
                  "pid": server.proc.pid, "job_id": os.environ.get("SLURM_JOB_ID"), "model": judge.model}
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_json(path, record)
        log.info("shared server %s published at %s", name, record["url"])
        try:
            while not until():
                if server.stopped:  # a signal stopped it: leave quietly, the job is being requeued
                    return
                if not server.alive():
                    raise ServerStartError(f"shared server {name!r} died (exit code {server.proc.returncode})\n"
                                           f"--- last {LOG_TAIL_LINES} log lines ---\n{log_tail(log_path)}")
                time.sleep(poll_s)
        finally:
            _remove_if_ours(path, record)


def _remove_if_ours(path: Path, record: dict) -> None:
    """Remove the address file unless a newer server job has replaced it meanwhile."""
    with contextlib.suppress(OSError, ValueError):
        current = read_json(path)
        if current.get("pid") == record["pid"] and current.get("job_id") == record["job_id"]:
            path.unlink()
