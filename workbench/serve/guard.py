"""Limits before parsing for the builtin engine: uvicorn's httptools protocol with a header cap,
read deadlines and a connection cap.

httptools accumulates a header value by concatenation, so one request with a 128 MB header cost
18 s of CPU and stalled every other client; a client sending its headers or body at 1 byte/s,
or connecting and sending nothing, held its connection (and a file descriptor) forever. Each
limit here answers before the request reaches the app, in one line of JSON, and closes the
connection, saying so (``connection: close``):

* the head of a request (request line and headers) over ``max_header_bytes``: 431;
* the head not complete ``header_timeout`` seconds after its first byte, or the body not
  complete ``body_timeout`` seconds after the head: 408;
* a connection that sends nothing for ``idle_timeout`` seconds (connect-only sockets too, not
  only after a response as uvicorn does): closed;
* a connection beyond ``max_connections``: 503. uvicorn's own ``limit_concurrency`` is set as
  high, a backstop only: its 503 closes the connection and loses the requests pipelined on it
  (at 384 an open-loop overload at 3x capacity lost thousands that way), while the batcher's
  ``max_queue`` sheds with 503 on connections that stay open. Its plain-text 503 is answered in
  one line of JSON like every other refusal.

Both engines use it: the builtin one directly, the kserve one by configuring KServe's own
uvicorn server with it (:mod:`workbench.serve.kserve_main`), since KServe has no such limits.
:class:`Gate` is the ASGI layer in front of an app, for what needs the request's path and
headers: the bearer token (:func:`bearer_ok`, every route but the health probes) and, for an app
that has no limits of its own (KServe's), the routes it may answer and the body size.

Each request's scope also says how many requests were received and not yet answered when its
head was complete (``scope[AHEAD]``): a request the batcher runs inline, on the event loop,
never sees a queue - those ahead of it wait in the loop, not in the batcher - so this is its
queue when ``max_queue`` is checked.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from workbench.core.errors import WorkbenchError

# Large bodies (both engines): read and parsed LARGE_AT_ONCE at a time (parsing JSON takes about 9
# times the body); beyond LARGE_WAITING waiting their turn, 503 before they are read.
LARGE_BODY = 2**20  # bytes
LARGE_AT_ONCE = 2
LARGE_WAITING = 6
HEALTH = re.compile(r"/v2/health/(live|ready)|/v2/models/[^/]+/ready")  # probes: never behind the token


AHEAD = "workbench.ahead"  # scope key: requests the server held unanswered when this one's head was complete


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 32 * 2**10
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 30.0  # also uvicorn's keep-alive timeout
    max_connections: int = 512
    limit_concurrency: int = 512


def _answer(status: int, reason: str, message: str) -> bytes:
    body = json_body(message)
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


def json_body(message: str) -> bytes:
    """The one-line JSON body of every refusal: ``{"error": message}``."""
    return json.dumps({"error": message.splitlines()[0] if message else "error"}).encode()


async def _over_concurrency(scope, receive, send) -> None:
    """uvicorn's ``limit_concurrency`` answer, in JSON like the others (its own is plain text)."""
    await _send(send, 503, "over the server's concurrency limit; retry later", close=True)


def refusal(status: int, message: str, close: bool = False) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, body and ASGI headers of a one-line JSON refusal; ``close``: the rest of the body
    is not read, so the connection cannot carry another request (uvicorn closes it after the
    answer, saying so)."""
    body = json_body(message)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    return status, body, headers + ([(b"connection", b"close")] if close else [])


async def _send(send, status: int, message: str, close: bool = False) -> None:
    status, body, headers = refusal(status, message, close)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def bearer_ok(authorization: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` value carries the bearer ``token`` (no token: everything
    passes). Compared in constant time, so the answer's timing says nothing about the token.
    For REST and gRPC alike (gRPC: the ``authorization`` metadata)."""
    if not token:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def loopback(host: str) -> bool:
    """Whether ``host`` (``--host``) is a loopback address: anything else is reachable from elsewhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or 0.0.0.0-like wildcards are not loopback


def auth_token(var: str | None) -> str | None:
    """The bearer token in environment variable ``var`` (``--auth-token-env VAR``; never on a
    command line, where ``ps`` shows it); ``None`` without ``var``. Unset or empty: one line."""
    if not var:
        return None
    token = os.environ.get(var, "").strip()
    if not token:
        raise WorkbenchError(f"--auth-token-env {var}: the environment variable {var} is unset or empty")
    return token


ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class Gate:
    """ASGI middleware: the bearer token on every route but the health probes (401); with
    ``routes``, any other path is 404 (KServe's model repository can unload the model); with
    ``max_body_bytes``, a body over it is 400, refused before it is read when its length is
    declared, else as soon as it grows over the limit, and the connection is closed; a body over
    ``LARGE_BODY`` (or of no declared length) is read and handled ``LARGE_AT_ONCE`` at a time
    (the app behind, KServe's, parses it whole on the event loop), beyond ``LARGE_WAITING``
    waiting: 503 before it is read, as the builtin engine does."""

    def __init__(self, app: ASGIApp, auth_token: str | None = None, routes: re.Pattern | None = None,
                 max_body_bytes: int | None = None):
        self.app, self.token, self.routes, self.max_body = app, auth_token or None, routes, max_body_bytes
        self.large, self.large_count = asyncio.Semaphore(LARGE_AT_ONCE), 0

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if self.routes is not None and not self.routes.fullmatch(path):
            return await _send(send, 404, f"{path[:100]}: not a route of this server "
                                          "(the model repository and other routes are off)")
        if self.token and not HEALTH.fullmatch(path):
            auth = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
            if not bearer_ok(auth, self.token):
                return await _send(send, 401, "missing or wrong bearer token (Authorization: Bearer ...)")
        if self.max_body is not None and scope["method"] in ("POST", "PUT", "PATCH"):
            return await self._bounded(scope, receive, send)
        await self.app(scope, receive, send)

    async def _bounded(self, scope: dict, receive, send) -> None:
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.max_body:
            return await _send(send, 400, f"body of {int(declared)} bytes is over the limit of {self.max_body}",
                               close=True)
        if declared.isdigit() and int(declared) <= LARGE_BODY:
            return await self._read_and_call(scope, receive, send)
        if self.large_count >= LARGE_AT_ONCE + LARGE_WAITING:
            return await _send(send, 503, f"{self.large_count} large bodies are being handled or waiting; "
                                          "retry later", close=True)
        self.large_count += 1
        try:
            async with self.large:
                await self._read_and_call(scope, receive, send)
        finally:
            self.large_count -= 1

    async def _read_and_call(self, scope: dict, receive, send) -> None:
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body:
                return await _send(send, 400, f"body is over the limit of {self.max_body} bytes", close=True)
        body = b"".join(chunks)
        del chunks
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def protocol(limits: Limits) -> type[HttpToolsProtocol]:
    """The httptools protocol class of uvicorn, guarded by ``limits`` (``uvicorn.Config(http=...)``)."""

    head_late = f"request head not received within {limits.header_timeout:g} s"
    body_late = f"request body not received within {limits.body_timeout:g} s"

    class Guarded(HttpToolsProtocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_bytes, self._in_head, self._deadline, self._message = 0, False, None, ""
            self._timer, self._wake = None, 0.0
            if len(self.connections) > limits.max_connections:
                self._refuse(503, "Service Unavailable",
                             f"over {limits.max_connections} connections; retry later")
                return
            self.timeout_keep_alive_task = self.loop.call_later(limits.idle_timeout, self.timeout_keep_alive_handler)

        def connection_lost(self, exc) -> None:
            self._disarm()
            if getattr(self, "_timer", None) is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._in_head and not self.transport.is_closing():
                self._head_bytes += len(data)  # counted after feeding: at most one chunk beyond the cap
                if self._head_bytes > limits.max_header_bytes:
                    self._refuse(431, "Request Header Fields Too Large",
                                 f"request head over {limits.max_header_bytes} bytes")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes, self._in_head = 0, True
            self._arm(limits.header_timeout, head_late)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self.scope[AHEAD] = len(self.tasks)  # requests received and not yet answered
            self._arm(limits.body_timeout, body_late)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def _start_asgi_task(self, cycle, app) -> None:  # type: ignore[override]
            super()._start_asgi_task(cycle, _over_concurrency if app is service_unavailable else app)

        def _arm(self, seconds: float, message: str) -> None:
            # A deadline is a number; one timer per connection wakes at the earliest and looks at
            # it: arming and cancelling a loop timer twice per request cost more than the checks
            # it serves (py-spy, benchmarks/serving.md).
            self._deadline, self._message = self.loop.time() + seconds, message
            if self._timer is None or self._wake > self._deadline:
                if self._timer is not None:
                    self._timer.cancel()
                self._wake, self._timer = self._deadline, self.loop.call_at(self._deadline, self._check)

        def _disarm(self) -> None:
            self._deadline = None  # the timer, when it wakes, finds nothing to do

        def _check(self) -> None:
            self._timer = None
            if self._deadline is None or self.transport.is_closing():
                return
            if self.loop.time() < self._deadline:  # re-armed since: wake at the new deadline
                self._wake, self._timer = self._deadline, self.loop.call_at(self._deadline, self._check)
                return
            self._deadline = None
            self._expire(self._message)

        def _expire(self, message: str) -> None:
            if self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete:
                self.transport.close()  # an answer is being written: no status line can follow
                return
            if self.cycle is not None:
                self.cycle.disconnected = True  # the app's receive() ends: it answers nobody
                self.cycle.message_event.set()
            self._refuse(408, "Request Timeout", message)

        def _refuse(self, status: int, reason: str, message: str) -> None:
            self._in_head = False
            self._disarm()
            self.transport.write(_answer(status, reason, message))
            self.transport.close()

    return Guarded
