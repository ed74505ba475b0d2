"""The engine interface, its options and the process handling every engine shares (see the package)."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.config.parameters import ENGINES
from workbench.core.errors import WorkbenchError
from workbench.serve.metrics import parse


class EngineError(WorkbenchError):
    """A serving engine is unknown, unavailable, or did not come up."""


@dataclass
class ServeOptions:
    """What ``workbench serve`` and the server trial pass to an engine."""

    name: str = "model"
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 8
    max_queue_delay_ms: float = 2.0
    batch_policy: str = "delay"
    max_queue: int = 256
    instances: int = 1
    threads: int | None = None
    trust_model_code: bool = False  # the operator's word (--trust-model-code), never the bundle's
    grpc_port: int | None = None  # v2 over gRPC beside REST (the builtin engine only)
    auth_token_env: str | None = None  # the variable holding the bearer token; never the token itself
    extra: dict[str, Any] = field(default_factory=dict)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for tests and trials on loopback)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(host: str, port: int, flag: str = "--port") -> None:
    """Refuse, in one line, a port another process listens on: the server would fail to bind
    in its own process, while the readiness probe could be answered by that other server."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is fine
        try:
            s.bind((host, port))
        except OSError as err:
            raise EngineError(f"{host}:{port}: cannot listen there ({err.strerror or err}); "
                              f"choose another {flag} (or --host)") from None


def grpc_address(host: str, port: int) -> str:
    """``host:port`` as gRPC reads it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class Engine:
    """A server process: subclasses say which command serves the bundle."""

    name = "?"

    def __init__(self, bundle: str | Path, options: ServeOptions):
        self.bundle, self.options = Path(bundle), options
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        host = self.options.host if self.options.host not in ("0.0.0.0", "") else "127.0.0.1"
        return f"http://{host}:{self.options.port}"

    @property
    def grpc_target(self) -> str:
        """``host:port`` of the gRPC service (with ``grpc_port``), as a client dials it."""
        host = self.options.host if self.options.host not in ("0.0.0.0", "") else "127.0.0.1"
        return grpc_address(host, self.options.grpc_port)

    @property
    def infer_url(self) -> str:
        return f"{self.url}/v2/models/{self.options.name}/infer"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, log: str | Path | None = None, watch_parent: bool = True) -> None:
        """Start the server in its own process group (output to ``log`` if given; else its
        stderr, where tracebacks go, is this process's own: never /dev/null)."""
        check_port(self.options.host, self.options.port)
        if self.options.grpc_port is not None:
            if self.options.grpc_port == self.options.port:
                raise EngineError(f"--grpc-port: {self.options.grpc_port} is the REST --port too; choose another")
            check_port(self.options.host, self.options.grpc_port, "--grpc-port")
        cmd = self.command()
        if watch_parent:
            cmd += ["--parent-pid", str(os.getpid())]
        out = open(log, "ab") if log else subprocess.DEVNULL
        err = subprocess.STDOUT if log else None
        self.log_path = Path(log) if log else None
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(Path(__file__).resolve().parents[2]),
                                                                       os.environ.get("PYTHONPATH", "")] if p)}
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True, env=env)
        if log:
            out.close()

    def ready(self) -> bool:
        """The model answers its readiness probe (not only the server)."""
        try:
            status, _ = _get(f"{self.url}/v2/models/{self.options.name}/ready", timeout=1.0)
        except OSError:
            return False
        return status == 200

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise EngineError(f"{self.name} server exited with code {self.proc.returncode} before it was "
                                  f"ready{self._tail()}")
            if self.ready():
                return
            time.sleep(0.1)
        self.stop()
        raise EngineError(f"{self.name} server was not ready within {timeout:g} s{self._tail()}")

    def _tail(self) -> str:
        if self.log_path and self.log_path.exists():
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
            if lines:
                return f": {lines[-1][:300]}"
        return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the server (it drains, then stops its instance processes), SIGKILL its whole
        process group after ``timeout`` and in any case once it is gone."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with _suppress():
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with _suppress():  # workers the server started (process instances) go with it
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return self.proc.returncode

    def metrics(self) -> dict[str, float]:
        """The server's /metrics, parsed (``{}`` if the engine exposes none)."""
        try:
            status, body = _get(f"{self.url}/metrics", timeout=2.0)
        except OSError:
            return {}
        return parse(body.decode()) if status == 200 else {}

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, typ, *_):
        return typ is not None and issubclass(typ, (ProcessLookupError, PermissionError))


def engine(name: str, bundle: str | Path, options: ServeOptions) -> Engine:
    """The engine ``name`` for ``bundle`` (unknown or unavailable: a one-line error)."""
    if name not in ENGINES:
        raise EngineError(f"--engine: unknown serving engine {name!r} (known: {', '.join(ENGINES)})")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)(bundle, options)


def watch_parent(pid: int) -> None:
    """SIGTERM this process (a graceful drain) once process ``pid`` is gone: a server whose
    sweep or CLI was SIGKILLed must not be left behind. Standard library only, so the
    kserve engine's own environment can use it too."""
    import threading

    def loop() -> None:
        while True:
            time.sleep(0.5)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except PermissionError:
                pass

    threading.Thread(target=loop, daemon=True, name="parent-watch").start()
