"""What one HTTP client may hold, and for how long: the HTTP service's defences against slow or greedy clients.

Two pieces, one per layer:
- `HeadDeadlineH11` (the connection, under uvicorn): a connection must deliver a complete request head
  within `head_timeout_s` of opening, and again after each response, or it is closed. uvicorn's own
  keep-alive timer restarts on every byte received, so a client trickling one header byte at a time
  would otherwise hold its connection forever.
- `RequestGuard` (an ASGI middleware, in front of FastAPI): reads the request body itself, counting bytes
  as they stream in (Content-Length and chunked bodies alike) and answering 413 the moment the limit is
  passed, or 408 when the whole body has not arrived in time; labels metrics by route template; turns a
  client that leaves mid-request into one log line and an unexpected exception into one traceback.

Neither buffers more than `max_body_bytes` of a request, whatever the client sends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.routing import BaseRoute, Match
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

UNMATCHED = "unmatched"  # the one metrics label every unknown path shares
CLIENT_LEFT = 499  # nginx's status for "client closed the request": counted in metrics, never sent


class HeadDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head (see the module docstring)."""

    def __init__(self, *args: Any, head_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout_s = head_timeout_s
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        # The cycle we wait past: a new request head replaces `self.cycle`, which disarms the deadline.
        self._head_deadline = self.loop.call_later(self.head_timeout_s, self._head_overdue, self.cycle)

    def _head_overdue(self, cycle: object) -> None:
        in_progress = self.cycle is not None and not self.cycle.response_complete  # e.g. a pipelined request
        if self.cycle is cycle and not in_progress and not self.transport.is_closing():
            # A half-sent head is worth a line (whose client it is); a connection that never spoke is not.
            partial = bool(self.conn.trailing_data[0])
            log.log(logging.INFO if partial else logging.DEBUG, "closed a connection from %s: %s within %.3g s",
                    _address(self.client), "no complete request head" if partial else "no request",
                    self.head_timeout_s)
            self.transport.close()


class _Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class _ClientLeft(Exception):
    def __init__(self, received: int) -> None:
        super().__init__(f"client left after {received} body bytes")
        self.received = received


Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class RequestGuard:
    """ASGI middleware: a counted, timed body read, route-labelled metrics, one log line per failure.

    Args:
        app: The next ASGI application.
        routes: The application's routes; a request is labelled by the template of the route it matches.
        max_body_bytes: Largest body; a larger one gets 413 as soon as the count passes this.
        body_timeout_s: Time for the whole body to arrive, from the request head; then 408.
        observe: (route label, status, seconds) -> None, called once per request.
    """

    def __init__(self, app: Callable, *, routes: list[BaseRoute], max_body_bytes: int, body_timeout_s: float,
                 observe: Callable[[str, int, float], None]) -> None:
        self.app, self.routes, self.observe = app, routes, observe
        self.max_body_bytes, self.body_timeout_s = max_body_bytes, body_timeout_s

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        route = self.route_label(scope)
        status = CLIENT_LEFT  # until a response starts
        gone: asyncio.Future | None = None  # resolves when the client leaves (or the response is complete)

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                if _has_left(gone):  # the answer has nobody to go to; the server drops it
                    log.info("client %s left before the answer to %s %s", _address(scope.get("client")),
                             scope["method"], route)
                else:
                    status = message["status"]
            await send(message)

        try:
            body = await self.read_body(scope, receive)
            # With the body read, the server's receive returns only when the client leaves or the response ends.
            gone = asyncio.ensure_future(receive())
            await self.app(scope, _replay(body, gone), send_and_note)
        except _Refusal as refusal:
            await _send_error(send_and_note, refusal.status, refusal.message)
        except _ClientLeft as left:
            log.info("client %s left during %s %s after %d body bytes", _address(scope.get("client")),
                     scope["method"], route, left.received)
        except Exception as exc:  # the one place an unexpected error is logged; nothing re-raises it
            log.exception("unexpected error on %s %s", scope["method"], route)
            if status == CLIENT_LEFT:
                await _send_error(send_and_note, 500, "internal error", type(exc).__name__)
        finally:
            if gone is not None and not gone.done():
                gone.cancel()
            self.observe(route, status, time.perf_counter() - start)

    def route_label(self, scope: dict) -> str:
        """The path template of the route the request matches (methods aside), or UNMATCHED."""
        partial = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return getattr(route, "path", UNMATCHED)
            if match is Match.PARTIAL and partial is None:
                partial = getattr(route, "path", UNMATCHED)
        return partial or UNMATCHED

    async def read_body(self, scope: dict, receive: Receive) -> bytes:
        """The whole body, refused (413) once its byte count passes the limit, or (408) past the deadline."""
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            raise _Refusal(413, f"request body over {self.max_body_bytes} bytes")
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s
        chunks, received, more = [], 0, True
        while more:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _Refusal(408, f"request body not received within {self.body_timeout_s:g} s") from None
            if message["type"] == "http.disconnect":
                raise _ClientLeft(received)
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_body_bytes:  # a chunked body announces no length: count as it streams
                raise _Refusal(413, f"request body over {self.max_body_bytes} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


def _has_left(gone: asyncio.Future | None) -> bool:
    if gone is None or not gone.done() or gone.cancelled() or gone.exception() is not None:
        return False
    return gone.result()["type"] == "http.disconnect"


def _replay(body: bytes, gone: asyncio.Future) -> Receive:
    """A receive that hands the app the body already read, then the server's next message (the disconnect)."""
    replayed = False

    async def receive_again() -> dict:
        nonlocal replayed
        if replayed:
            return await asyncio.shield(gone)
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_again


async def _send_error(send: Send, status: int, message: str, detail: Any = None) -> None:
    """The service's JSON error; the connection closes after it, since the client may still be sending."""
    payload = json.dumps({"error": message, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def _address(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"
