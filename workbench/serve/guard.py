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
  ``max_queue`` sheds with 503 on connections that stay open.

Each request's scope also says how many requests were received and not yet answered when its
head was complete (``scope[AHEAD]``): a request the batcher runs inline, on the event loop,
never sees a queue - those ahead of it wait in the loop, not in the batcher - so this is its
queue when ``max_queue`` is checked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


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
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


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
