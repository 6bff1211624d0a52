"""The supervisor's HTTP and WebSocket front end: one ``asyncio.Protocol`` per TCP connection.

Built for ~400 calls x 50 binary messages/s each way on one uvloop thread, so there is no
task, queue or stream per connection or message: a data frame goes from ``data_received``
straight into the session's ``SessionHandle`` (and back out with one ``transport.write``); the
sans-I/O ``websockets.server.ServerProtocol`` does the handshake, control frames, closing and
protocol errors (see :class:`WebSocketCall`).

A connection starts as an :class:`HttpConnection`, which parses one request head with
``httptools`` and routes it:

* a call route (``/call`` -> ``"webSocket"``; ``add_call_route`` adds ``/call/webrtc`` and
  ``/call/sip`` when their call types exist) hands the raw bytes to ``ServerProtocol``, asks the
  :class:`~activecall.supervisor.sessions.SessionDirectory` to open the call, answers the
  handshake, and switches the transport to a :class:`WebSocketCall`;
* ``GET /events/{id}`` switches the transport to an :class:`EventStreamResponse` (SSE);
* every other route answers one JSON (or text) response and closes: no keep-alive, so a
  pipelined second request is not answered (the client sees ``Connection: close``).

Responses (bodies are JSON unless said; every error body has ``status`` and ``error``):

=======================  =====================================================================
``GET /list``            200 ``{"active_calls": [...]}`` (entries from the directory, §2.11)
``GET /kill/{id}``       200 ``{"status":"killed","id"}``; 404 ``{"status":"not_found","id"}``
``POST /command/{id}``   200 ``{"status":"sent","id"}``; 404 ``{"status":"not_found","id"}``;
                         400 ``{"status":"invalid","error"}`` when the body is not a command
``GET /events/{id}``     200 ``text/event-stream``: ``event: event``/``event: command`` records
                         with ``data: <json>``, until the call ends; 404 ``not_found``
``GET /iceservers``      200 the configured ICE servers (default Google STUN), snake_case
``GET /health``          200 ``{"status":"ok","workers","active_calls"}``; 503 ``"draining"``
``GET /metrics``         200 Prometheus text format 0.0.4
``GET /`` (and files)    the web console's static files (``add_page``), without the token
``GET /call`` (WS)       101; 400 bad query or handshake; 409 ``{"status":"conflict","id"}``
                         when a call with that ``id`` is live; 503 ``unavailable`` (draining)
any route                401 ``unauthorized`` without the bearer token (when one is set);
                         404 ``not_found`` unknown path; 405 ``method_not_allowed`` (+ Allow);
                         400 ``invalid`` unparsable request; 408, 413, 431 as named
=======================  =====================================================================

With a ``token``, every request needs ``Authorization: Bearer <token>``; a WebSocket upgrade
may pass ``?token=<token>`` instead (browsers cannot set headers on a WebSocket).

On a call WebSocket: text messages go to ``SessionHandle.on_text`` as received (the session
parses them and answers a malformed one with an ``error`` event; invalid UTF-8 included),
binary messages to ``on_binary``, fragmented messages reassembled first; a message over
``max_size`` closes the connection with 1009. The server sends a Ping every ``ping`` seconds
(payload: RFC 3339 time) and answers client Pings. Binary messages to a client whose socket
buffer is full are dropped and counted; text is never dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, unquote

import httptools
import orjson
from websockets.frames import BINARY, CLOSE, CONT, TEXT, Frame
from websockets.http11 import Request, Response
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

try:  # websockets' C speed-up, with its pure-Python fallback (as websockets itself does)
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

from activecall.protocol import CommandError, parse_command
from activecall.supervisor.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from activecall.supervisor.metrics import Registry
from activecall.supervisor.sessions import (
    CallParams,
    SessionConflict,
    SessionDirectory,
    SessionHandle,
    SessionUnavailable,
)

__all__ = [
    "DEFAULT_ICE_SERVERS",
    "DEFAULT_MAX_SIZE",
    "EventStreamResponse",
    "HttpConnection",
    "HttpFrontEnd",
    "HttpRequest",
    "HttpResponse",
    "WebSocketCall",
    "serve_http",
]

logger = logging.getLogger(__name__)
_ws_logger = logging.getLogger("activecall.supervisor.ws")

DEFAULT_MAX_SIZE = 2**20
"""Largest WebSocket message (and ``POST`` body) accepted, in bytes."""

DEFAULT_ICE_SERVERS: tuple[Mapping[str, Any], ...] = ({"urls": ["stun:stun.l.google.com:19302"]},)
"""``GET /iceservers`` when none are configured (§2.11)."""

_MAX_HEAD = 64 * 1024  # request line + headers; websockets allows 8 KiB lines
_JSON = "application/json"
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"X-Accel-Buffering: no\r\n"
    b"Connection: close\r\n\r\n"
)
_SSE_WRITE_LIMIT = 4 * 2**20  # a stream reader this far behind is cut off
_CLOSE_REASON_MAX = 123  # bytes: a close frame payload is at most 125 with the code


def _json(obj: Any) -> bytes:
    return orjson.dumps(obj)


@dataclasses.dataclass(frozen=True, slots=True)
class HttpRequest:
    """A parsed request, as a route handler sees it."""

    method: str
    path: str
    arg: str | None  # the ``{id}`` segment of ``/name/{id}`` routes, percent-decoded
    query: str
    headers: tuple[tuple[str, str], ...]  # lower-case names
    body: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class HttpResponse:
    """What a route handler answers; sent with ``Connection: close``."""

    status: int
    body: bytes = b""
    content_type: str = _JSON
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, obj: Any, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
        """A JSON response."""
        return cls(status, _json(obj), _JSON, headers)


RouteHandler = Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]
"""A route: a response, or an awaitable of one (work that waits, such as ``/precache``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Route:
    method: str
    takes_id: bool
    handler: RouteHandler | None  # None: the SSE stream, which takes the connection over
    tree: bool = False  # ``/name`` and every path under it, any method: the handler decides


class _Head:
    """httptools callbacks collecting one request; later pipelined requests are refused."""

    __slots__ = (
        "body",
        "body_limit",
        "complete",
        "head_size",
        "headers",
        "headers_done",
        "too_large",
        "url",
    )

    def __init__(self, body_limit: int) -> None:
        self.head_size = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.body_limit = body_limit
        self.headers_done = False
        self.complete = False
        self.too_large = False

    def on_message_begin(self) -> None:
        if self.complete:
            raise _StopParsing  # only the first request of a connection is answered

    def on_url(self, url: bytes) -> None:
        self.url += url  # llhttp hands the URL over in pieces on partial reads
        self._grow(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))
        self._grow(len(name) + len(value) + 4)

    def _grow(self, size: int) -> None:
        self.head_size += size
        if self.head_size > _MAX_HEAD:
            raise _StopParsing

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > self.body_limit:
            self.too_large = True
            raise _StopParsing
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class _StopParsing(Exception):
    """Raised inside an httptools callback to stop parsing."""


class HttpFrontEnd:
    """Routes HTTP requests and call WebSockets of one listening socket to a directory.

    ``HttpFrontEnd(directory, ...)`` is the ``protocol_factory`` of ``loop.create_server``;
    :meth:`start` does that. ``token`` enables bearer-token auth; ``max_size`` caps WebSocket
    messages and request bodies; ``ice_servers`` is what ``GET /iceservers`` returns.
    """

    def __init__(
        self,
        directory: SessionDirectory,
        *,
        token: str | None = None,
        max_size: int = DEFAULT_MAX_SIZE,
        ice_servers: Sequence[Mapping[str, Any]] | None = None,
        registry: Registry | None = None,
        request_timeout: float = 10.0,
        close_timeout: float = 10.0,
    ) -> None:
        self.directory = directory
        self.max_size = max_size
        self.request_timeout = request_timeout
        self.close_timeout = close_timeout
        self.registry = registry if registry is not None else Registry()
        self.server: asyncio.Server | None = None
        self._token_digest = hashlib.sha256(token.encode()).digest() if token else None
        self._ice_servers = _json(list(DEFAULT_ICE_SERVERS if ice_servers is None else ice_servers))
        self._call_routes: dict[str, str] = {"/call": "webSocket"}
        self._pages: dict[str, HttpResponse] = {}
        self._routes: dict[str, _Route] = {
            "list": _Route("GET", False, self._list),
            "kill": _Route("GET", True, self._kill),
            "command": _Route("POST", True, self._command),
            "events": _Route("GET", True, None),
            "iceservers": _Route("GET", False, self._iceservers),
            "health": _Route("GET", False, self._health),
            "metrics": _Route("GET", False, self._metrics),
        }
        self._requests: set[HttpConnection] = set()
        self._calls: set[WebSocketCall] = set()
        self._streams: set[EventStreamResponse] = set()
        # [text in, binary in, text out, binary out, binary dropped] of closed connections;
        # live ones count on themselves, so the hot path touches no shared object.
        self._closed_totals = [0, 0, 0, 0, 0]
        self._register_metrics()

    # -- configuration -------------------------------------------------------------------

    def add_call_route(self, path: str, call_type: str) -> None:
        """Serve call WebSockets of ``call_type`` on ``path`` (e.g. ``/call/sip``, ``"sip"``)."""
        if not path.startswith("/"):
            raise ValueError(f"a route path starts with '/': {path!r}")
        self._call_routes[path] = call_type

    def add_page(self, path: str, body: bytes, content_type: str) -> None:
        """Serve a static file at ``GET path``, without the token (the web console: a browser
        cannot send the header when it loads a page; the page's own requests carry it)."""
        if not path.startswith("/"):
            raise ValueError(f"a page path starts with '/': {path!r}")
        headers = (("Cache-Control", "no-cache"),)
        self._pages[path] = HttpResponse(200, body, content_type, headers)

    def add_route(
        self, method: str, name: str, handler: RouteHandler, *, takes_id: bool = False
    ) -> None:
        """Serve ``method /name`` (or ``/name/{id}`` with ``takes_id``) with ``handler``."""
        if not name or "/" in name:
            raise ValueError(f"a route name is one path segment: {name!r}")
        self._routes[name] = _Route(method.upper(), takes_id, handler)

    def add_tree(self, name: str, handler: RouteHandler) -> None:
        """Serve ``/name`` and every path under it, any method, with ``handler`` (which reads
        ``request.method`` and ``request.path`` and answers 404/405 itself)."""
        if not name or "/" in name:
            raise ValueError(f"a route name is one path segment: {name!r}")
        self._routes[name] = _Route("*", False, handler, tree=True)

    # -- serving -------------------------------------------------------------------------

    def __call__(self) -> HttpConnection:
        return HttpConnection(self)

    async def start(self, host: str | None, port: int, **kwargs: Any) -> asyncio.Server:
        """Listen on ``host:port`` (``port=0``: any free port); extra args go to create_server."""
        loop = asyncio.get_running_loop()
        # A burst of hundreds of calls connecting at once (a campaign, a reconnecting client
        # pool) overflows the default backlog of 100, and the kernel then drops SYNs (1-3 s
        # retries); the kernel caps this at net.core.somaxconn anyway.
        kwargs.setdefault("backlog", 1024)
        self.server = await loop.create_server(self, host, port, **kwargs)
        return self.server

    @property
    def port(self) -> int:
        """The port of the first listening socket."""
        if self.server is None or not self.server.sockets:
            raise RuntimeError("the front end is not listening")
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self, code: int = 1001, reason: str = "server shutdown") -> None:
        """Stop listening, close every call WebSocket with ``code``, end every stream."""
        if self.server is not None:
            self.server.close()
        for call in list(self._calls):
            call.close(code, reason)
        for stream in list(self._streams):
            stream.close()
        for request in list(self._requests):
            request.abort()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.close_timeout
        while self._calls and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for call in list(self._calls):
            call.abort()
        if self.server is not None:
            await self.server.wait_closed()

    # -- auth and routes -----------------------------------------------------------------

    def _authorized(self, head: _Head, query_token: str | None) -> bool:
        """Whether the request carries the token (always true without one); constant time."""
        if self._token_digest is None:
            return True
        given = b""
        authorization = head.header(b"authorization")
        if authorization is not None:
            scheme, _, credentials = authorization.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                given = credentials.strip()
        if not given and query_token is not None:
            given = query_token.encode()
        # Hashing first makes the comparison independent of the token's length too.
        return hmac.compare_digest(hashlib.sha256(given).digest(), self._token_digest)

    def _list(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse.json(200, {"active_calls": self.directory.list_calls()})

    def _kill(self, request: HttpRequest) -> HttpResponse:
        session_id = request.arg or ""
        if self.directory.kill(session_id):
            return HttpResponse.json(200, {"status": "killed", "id": session_id})
        return HttpResponse.json(404, {"status": "not_found", "id": session_id})

    def _command(self, request: HttpRequest) -> HttpResponse:
        session_id = request.arg or ""
        try:
            command = parse_command(request.body)
        except CommandError as exc:
            return HttpResponse.json(400, {"status": "invalid", "error": exc.message})
        if self.directory.command(session_id, command):
            return HttpResponse.json(200, {"status": "sent", "id": session_id})
        return HttpResponse.json(404, {"status": "not_found", "id": session_id})

    def _iceservers(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, self._ice_servers)

    def _health(self, request: HttpRequest) -> HttpResponse:
        health = self.directory.health()
        body = {
            "status": "draining" if health.draining else "ok",
            "workers": health.workers,
            "active_calls": health.active_calls,
        }
        return HttpResponse.json(503 if health.draining else 200, body)

    def _metrics(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, self.registry.exposition(), METRICS_CONTENT_TYPE)

    # -- metrics -------------------------------------------------------------------------

    def _register_metrics(self) -> None:
        registry = self.registry
        self.requests_total = registry.counter(
            "activecall_http_requests_total",
            "HTTP requests answered, by route and status code (upgrades included).",
            ("route", "code"),
        )
        calls = registry.gauge("activecall_ws_calls", "Open call WebSockets.")
        streams = registry.gauge("activecall_sse_streams", "Open GET /events streams.")
        received = registry.counter(
            "activecall_ws_messages_received_total",
            "WebSocket messages received on call routes, by kind.",
            ("kind",),
        )
        sent = registry.counter(
            "activecall_ws_messages_sent_total",
            "WebSocket messages sent on call routes, by kind.",
            ("kind",),
        )
        dropped = registry.counter(
            "activecall_ws_binary_dropped_total",
            "Binary messages not sent because the client was not reading.",
        )

        def collect() -> None:
            totals = list(self._closed_totals)
            for call in self._calls:
                for i, value in enumerate(call.counts()):
                    totals[i] += value
            received.labels("text").value = totals[0]
            received.labels("binary").value = totals[1]
            sent.labels("text").value = totals[2]
            sent.labels("binary").value = totals[3]
            dropped.labels().value = totals[4]  # counters mirrored from the connections
            calls.set(len(self._calls))
            streams.set(len(self._streams))

        registry.add_collector(collect)

    def _count(self, route: str, status: int) -> None:
        self.requests_total.labels(route, str(status)).inc()

    def _call_closed(self, call: WebSocketCall) -> None:
        self._calls.discard(call)
        for i, value in enumerate(call.counts()):
            self._closed_totals[i] += value


def _response_bytes(response: HttpResponse) -> bytes:
    status = HTTPStatus(response.status)
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Date: {formatdate(usegmt=True)}",
        "Server: activecall",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Connection: close",
    ]
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


def _error(status: int, word: str, message: str) -> HttpResponse:
    headers: tuple[tuple[str, str], ...] = ()
    if status == 401:
        headers = (("WWW-Authenticate", 'Bearer realm="activecall"'),)
    return HttpResponse.json(status, {"status": word, "error": message}, headers)


class HttpConnection(asyncio.Protocol):
    """A TCP connection until its request is routed: parses the head, answers or hands over."""

    def __init__(self, front: HttpFrontEnd) -> None:
        self._front = front
        self._transport: asyncio.Transport | None = None
        self._head = _Head(front.max_size)
        self._parser = httptools.HttpRequestParser(self._head)
        self._buffer = bytearray()  # the raw bytes, for the WebSocket handshake
        self._done = False
        self._continue_sent = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP server's transports are streams (uvloop's do not subclass asyncio.Transport).
        self._transport = cast(asyncio.Transport, transport)
        self._front._requests.add(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._front.request_timeout, self._timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._front._requests.discard(self)
        if self._timer is not None:
            self._timer.cancel()

    def eof_received(self) -> bool | None:
        return None  # close: a request cut short will not complete

    def abort(self) -> None:
        """Drop the connection without an answer."""
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._done:
            return  # answered; pipelined requests and late body bytes are discarded
        head = self._head
        self._buffer += data
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the head is complete; the rest of the bytes belong to WebSocket
        except httptools.HttpParserError as exc:
            if not head.complete:
                if head.too_large:
                    self._send(_error(413, "too_large", "the body exceeds the size limit"))
                elif head.head_size > _MAX_HEAD:
                    self._send(_error(431, "too_large", "the request head exceeds 64 KiB"))
                else:
                    self._send(_error(400, "invalid", f"malformed HTTP request: {exc}"))
                return
        if head.complete:
            self._dispatch()
        elif not head.headers_done and len(self._buffer) > _MAX_HEAD:
            self._send(_error(431, "too_large", "the request head exceeds 64 KiB"))
        elif head.headers_done and not self._continue_sent:
            self._continue_sent = True
            if head.header(b"expect") == b"100-continue":
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _timed_out(self) -> None:
        if not self._done:
            self._send(_error(408, "timeout", "the request did not arrive in time"))

    # -- responses -------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def _finish(self) -> None:
        """Stop reading requests; the rest of the connection is someone else's or closes."""
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _send(self, response: HttpResponse, route: str = "unknown") -> None:
        self._finish()
        self._front._count(route, response.status)
        self._write(_response_bytes(response))
        self._linger()

    def _linger(self) -> None:
        # Half-close and let the client close: closing with unread request bytes in the
        # kernel buffer would reset the connection and could destroy the response in flight.
        transport = self._transport
        assert transport is not None
        if transport.can_write_eof():
            transport.write_eof()
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._front.close_timeout, transport.close)
        else:
            transport.close()

    # -- routing ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        self._finish()
        head = self._head
        method = self._parser.get_method().decode("ascii", "replace")
        try:
            url = httptools.parse_url(head.url)
        except httptools.HttpParserInvalidURLError:
            self._send(_error(400, "invalid", "malformed request target"))
            return
        path = url.path.decode("latin-1") if url.path else "/"
        query = url.query.decode("latin-1") if url.query else ""
        call_type = self._front._call_routes.get(path)
        if call_type is not None:
            self._route_call(method, path, query, call_type)
            return
        page = self._front._pages.get(path)
        if page is not None and method == "GET":
            self._send(page, "page")
            return
        name, _, arg = path[1:].partition("/")
        route = self._front._routes.get(name)
        if route is not None and not route.tree and (route.takes_id != bool(arg) or "/" in arg):
            route = None  # /list/x, /kill, /kill/a/b
        if not self._front._authorized(head, None):
            response = _error(401, "unauthorized", "a valid bearer token is required")
            self._send(response, name if route is not None else "unknown")
            return
        if route is None:
            self._send(_error(404, "not_found", f"no such endpoint: {path}"))
            return
        if method != route.method and not route.tree:
            response = _error(
                405,
                "method_not_allowed",
                f"{path} accepts {route.method} only",
            )
            allow = (("Allow", route.method),)
            self._send(dataclasses.replace(response, headers=allow), name)
            return
        session_id = unquote(arg) if arg else None
        if route.handler is None:
            self._open_stream(session_id or "")
            return
        request = HttpRequest(
            method=method,
            path=path,
            arg=session_id,
            query=query,
            headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers),
            body=bytes(head.body),
        )
        try:
            result = route.handler(request)
        except Exception:
            logger.exception("route %s failed", path)
            result = _error(500, "error", "internal error")
        if isinstance(result, HttpResponse):
            self._send(result, name)
            return
        task = asyncio.ensure_future(result)
        task.add_done_callback(lambda t: self._send_later(t, path, name))

    def _send_later(self, task: asyncio.Future[HttpResponse], path: str, name: str) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("route %s failed", path, exc_info=exc)
        if self._transport is None or self._transport.is_closing():
            return  # the client left while the handler worked
        self._send(task.result() if exc is None else _error(500, "error", "internal error"), name)

    def _route_call(self, method: str, path: str, query: str, call_type: str) -> None:
        pairs = parse_qsl(query, keep_blank_values=True)
        query_token = next((value for key, value in pairs if key == "token"), None)
        if not self._front._authorized(self._head, query_token):
            self._send(_error(401, "unauthorized", "a valid bearer token is required"), "call")
            return
        if method != "GET":
            response = _error(405, "method_not_allowed", f"{path} accepts GET only")
            self._send(dataclasses.replace(response, headers=(("Allow", "GET"),)), "call")
            return
        try:
            params = CallParams.from_pairs(pairs)
        except ValueError as exc:
            self._send(_error(400, "invalid", str(exc)), "call")
            return
        self._upgrade(call_type, params)

    def _open_stream(self, session_id: str) -> None:
        assert self._transport is not None
        stream = EventStreamResponse(self._front, self._transport)
        unsubscribe = self._front.directory.subscribe(session_id, stream)
        if unsubscribe is None:
            self._send(HttpResponse.json(404, {"status": "not_found", "id": session_id}), "events")
            return
        self._front._requests.discard(self)
        self._front._count("events", 200)
        stream.start(unsubscribe)

    def _upgrade(self, call_type: str, params: CallParams) -> None:
        assert self._transport is not None
        front = self._front
        ws = ServerProtocol(max_size=front.max_size, logger=_ws_logger)
        # websockets gets the head only: frames pipelined behind it (maybe cut) are parsed by
        # the WebSocketCall, whose frame parser must start at a frame boundary.
        head_end = self._buffer.find(b"\r\n\r\n") + 4
        ws.receive_data(bytes(self._buffer[:head_end]))
        events = ws.events_received()
        if head_end < 4 or len(events) != 1 or not isinstance(events[0], Request):
            self._send(_error(400, "invalid", "not a valid WebSocket handshake"), "call")
            return
        response = ws.accept(events[0])
        if response.status_code == 101:
            call = WebSocketCall(front, self._transport, ws, params.ping_interval)
            try:
                handle = front.directory.open_call(call_type, params, call)
            except SessionConflict:
                response = _ws_reject(
                    ws, 409, "conflict", f"session {params.session_id} is live", params.session_id
                )
            except SessionUnavailable as exc:
                response = _ws_reject(ws, 503, "unavailable", str(exc) or "not taking calls")
            except Exception:
                logger.exception("open_call failed")
                response = _ws_reject(ws, 500, "error", "internal error")
            else:
                front._requests.discard(self)
                front._count("call", 101)
                call.start(handle, response, bytes(self._buffer[head_end:]))
                return
        ws.send_response(response)
        self._finish()
        front._count("call", response.status_code)
        for chunk in ws.data_to_send():
            if chunk:  # the end-of-stream marker: we linger-close ourselves
                self._write(chunk)
        self._linger()


def _ws_reject(
    ws: ServerProtocol, status: int, word: str, message: str, session_id: str | None = None
) -> Response:
    body: dict[str, Any] = {"status": word, "error": message}
    if session_id is not None:
        body["id"] = session_id
    response = ws.reject(status, "")
    payload = _json(body)
    del response.headers["Content-Type"]
    del response.headers["Content-Length"]
    response.headers["Content-Type"] = _JSON
    response.headers["Content-Length"] = str(len(payload))
    return dataclasses.replace(response, body=payload)


def _frame_header(first: int, length: int) -> bytes:
    """The header of an unmasked server frame (RFC 6455 5.2): FIN + opcode, then the length."""
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


class WebSocketCall(asyncio.Protocol):
    """A call WebSocket after the handshake: the session's ``CallConnection``.

    Data frames are the hot path, 50 a second per direction per call, so they skip
    websockets' generator-based frame codec (~3 µs a frame received, ~1 µs sent): a whole
    masked text or binary message within ``max_size``, without reserved bits and outside a
    fragmented message, is unmasked here with websockets' C ``apply_mask`` (~0.5 µs), and
    messages are sent as single unmasked frames. Every other frame (control frames,
    fragments, anything invalid) is fed, whole, to websockets' ``ServerProtocol``, which stays
    the authority on the protocol: handshake, ping/pong, closing, errors and close codes.
    The split holds because no extension is negotiated (none is offered). The tests feed
    streams of data, control, fragmented and invalid frames cut at every byte.
    """

    __slots__ = (
        "_binary_in",
        "_binary_out",
        "_buffer",
        "_close_timer",
        "_dropped",
        "_ended",
        "_fragmented",
        "_front",
        "_handle",
        "_loop",
        "_max_size",
        "_need",
        "_parts",
        "_parts_text",
        "_paused",
        "_ping_interval",
        "_ping_timer",
        "_text_in",
        "_text_out",
        "_transport",
        "_ws",
    )

    def __init__(
        self,
        front: HttpFrontEnd,
        transport: asyncio.Transport,
        ws: ServerProtocol,
        ping_interval: int,
    ) -> None:
        self._front = front
        self._transport = transport
        self._ws = ws
        self._loop = asyncio.get_running_loop()
        self._ping_interval = ping_interval
        self._handle: SessionHandle | None = None
        self._max_size = front.max_size
        self._buffer = bytearray()  # the start of a frame cut by a read
        self._need = 0  # bytes of _buffer needed before parsing it again
        self._fragmented = False  # inside a fragmented message (its frames go to websockets)
        self._parts: list[bytes] = []  # a fragmented message being received
        self._parts_text = False
        self._paused = False
        self._ended = False
        self._ping_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._text_in = self._binary_in = self._text_out = self._binary_out = self._dropped = 0

    def start(self, handle: SessionHandle, response: Response, pending: bytes) -> None:
        """Send the 101 response, take the transport over, deliver what followed the head."""
        self._handle = handle
        self._front._calls.add(self)
        ws = self._ws
        ws.send_response(response)
        self._transport.set_protocol(self)
        self._flush()
        if pending:
            self.data_received(pending)
        if self._ping_interval and ws.state is OPEN:
            self._ping_timer = self._loop.call_later(self._ping_interval, self._ping)

    def counts(self) -> tuple[int, int, int, int, int]:
        """Messages (text in, binary in, text out, binary out, binary dropped)."""
        return (self._text_in, self._binary_in, self._text_out, self._binary_out, self._dropped)

    # -- CallConnection --------------------------------------------------------------------

    def send_text(self, data: bytes) -> None:
        """Send one text message; dropped once the WebSocket is closing."""
        if self._ws.state is OPEN:
            self._text_out += 1
            self._transport.write(_frame_header(0x81, len(data)) + data)

    def send_binary(self, data: bytes) -> None:
        """Send one binary message; dropped while the client is not reading, or closing."""
        if self._paused:
            self._dropped += 1
        elif self._ws.state is OPEN:
            self._binary_out += 1
            self._transport.write(_frame_header(0x82, len(data)) + data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (once); the client has ``close_timeout`` to answer."""
        ws = self._ws
        if ws.state is not OPEN:
            return
        encoded = reason.encode()
        if len(encoded) > _CLOSE_REASON_MAX:
            reason = encoded[:_CLOSE_REASON_MAX].decode(errors="ignore")
        ws.send_close(code, reason)
        self._flush()
        self._close_timer = self._loop.call_later(self._front.close_timeout, self.abort)

    def abort(self) -> None:
        """Drop the TCP connection now."""
        self._transport.abort()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            self._buffer += data
            if len(self._buffer) < self._need:
                return
            data = bytes(self._buffer)
            self._buffer.clear()
        if self._ws.state is OPEN:
            self._frames(data)
        else:
            self._feed(data)  # closing: websockets takes the rest (and discards it)

    def eof_received(self) -> bool | None:
        self._ws.receive_eof()
        self._flush()
        self._end()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._ws.receive_eof()  # the protocol state becomes CLOSED: later sends are dropped
        self._end()
        self._front._call_closed(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    # -- internals -------------------------------------------------------------------------

    def _frames(self, data: bytes) -> None:
        """Deliver the frames in ``data``; keep a cut frame for the next read (RFC 6455 5.2)."""
        handle = self._handle
        assert handle is not None
        size = len(data)
        pos = 0
        try:
            while pos < size:
                avail = size - pos
                if avail < 2:
                    self._keep(data, pos, 2)
                    return
                b0 = data[pos]
                b1 = data[pos + 1]
                length = b1 & 0x7F
                if length < 126:
                    start = pos + 6
                elif length == 126:
                    if avail < 4:
                        self._keep(data, pos, 4)
                        return
                    length = (data[pos + 2] << 8) | data[pos + 3]
                    start = pos + 8
                else:
                    if avail < 10:
                        self._keep(data, pos, 10)
                        return
                    length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                    start = pos + 14
                if not b1 & 0x80 or length > self._max_size:
                    # Unmasked or too big: websockets fails the connection (1002, 1009) on
                    # the header alone, so the payload is never buffered.
                    self._feed(data[pos:])
                    return
                end = start + length
                if end > size:
                    self._keep(data, pos, end - pos)
                    return
                opcode = b0 & 0x0F
                if b0 & 0xF0 == 0x80 and (opcode == 2 or opcode == 1) and not self._fragmented:
                    payload = apply_mask(data[start:end], data[start - 4 : start])
                    if opcode == 2:
                        self._binary_in += 1
                        handle.on_binary(payload)
                    else:
                        self._text_in += 1
                        handle.on_text(payload)
                else:
                    if opcode <= 2:  # a data frame without FIN opens or continues a message
                        self._fragmented = not b0 & 0x80
                    self._feed(data[pos:end])
                    if self._ws.state is not OPEN:
                        if end < size:
                            self._feed(data[end:])
                        return
                pos = end
        except Exception:
            logger.exception("session handle failed")
            self.close(1011, "internal error")

    def _keep(self, data: bytes, pos: int, need: int) -> None:
        self._buffer += data[pos:] if pos else data
        self._need = need

    def _feed(self, data: bytes) -> None:
        """Hand bytes to websockets (whole frames while open) and act on what it makes of them."""
        ws = self._ws
        ws.receive_data(data)
        events = ws.events_received()
        if events:
            self._deliver(events)  # type: ignore[arg-type]  # after the handshake: frames
        writes = ws.data_to_send()
        if writes:
            self._write(writes)

    def _deliver(self, frames: list[Frame]) -> None:
        handle = self._handle
        assert handle is not None
        try:
            for frame in frames:
                opcode = frame.opcode
                # Frames from a client are masked, and unmasking yields bytes.
                if opcode is BINARY and frame.fin:
                    self._binary_in += 1
                    handle.on_binary(frame.data)  # type: ignore[arg-type]
                elif opcode is TEXT and frame.fin:
                    self._text_in += 1
                    handle.on_text(frame.data)  # type: ignore[arg-type]
                elif opcode is TEXT or opcode is BINARY or opcode is CONT:
                    self._fragment(handle, frame)
                elif opcode is CLOSE:
                    self._end()
        except Exception:
            logger.exception("session handle failed")
            self.close(1011, "internal error")

    def _fragment(self, handle: SessionHandle, frame: Frame) -> None:
        # websockets checks the sequence (and max_size over the whole message) already.
        if frame.opcode is not CONT:
            self._parts_text = frame.opcode is TEXT
            self._parts = []
        self._parts.append(frame.data)  # type: ignore[arg-type]
        if frame.fin:
            message = b"".join(self._parts)
            self._parts = []
            if self._parts_text:
                self._text_in += 1
                handle.on_text(message)
            else:
                self._binary_in += 1
                handle.on_binary(message)

    def _write(self, writes: list[bytes]) -> None:
        transport = self._transport
        for chunk in writes:
            if chunk:
                transport.write(chunk)
            else:
                # websockets' end-of-stream marker: the server closes TCP first (RFC 6455 7.1.1).
                transport.close()
                self._end()

    def _flush(self) -> None:
        writes = self._ws.data_to_send()
        if writes:
            self._write(writes)

    def _ping(self) -> None:
        self._ping_timer = None
        if self._ws.state is not OPEN:
            return
        self._ws.send_ping(datetime.now(UTC).isoformat().encode())
        self._flush()
        self._ping_timer = self._loop.call_later(self._ping_interval, self._ping)

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        handle = self._handle
        if handle is not None:
            try:
                handle.on_close()
            except Exception:
                logger.exception("session handle failed on close")


class EventStreamResponse(asyncio.Protocol):
    """A ``GET /events/{id}`` response: Server-Sent Events until the call ends."""

    def __init__(self, front: HttpFrontEnd, transport: asyncio.Transport) -> None:
        self._front = front
        self._transport = transport
        self._pending: list[bytes] | None = []  # records before the head is sent
        self._ended = False
        self._unsubscribe: Callable[[], None] | None = None

    def start(self, unsubscribe: Callable[[], None]) -> None:
        """Send the head and what came during ``subscribe``; take the transport over."""
        self._unsubscribe = None if self._ended else unsubscribe
        transport = self._transport
        transport.set_protocol(self)
        transport.set_write_buffer_limits(high=_SSE_WRITE_LIMIT)
        self._front._streams.add(self)
        pending, self._pending = self._pending or [], None
        transport.writelines([_SSE_HEAD, *pending])
        if self._ended:
            transport.close()

    def send(self, kind: Literal["event", "command"], data: bytes) -> None:
        """Write one record (``event: <kind>`` + ``data: <json>``)."""
        if self._ended:
            return
        if b"\n" in data:  # each line of a multi-line payload needs its own data: field
            data = data.replace(b"\r", b"").replace(b"\n", b"\ndata: ")
        record = b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
        if self._pending is not None:
            self._pending.append(record)
        else:
            self._transport.write(record)

    def end(self) -> None:
        """The call ended: close the stream (the body ends with the connection)."""
        if self._ended:
            return
        self._ended = True
        self._unsubscribe = None
        if self._pending is None:
            self._transport.close()

    def close(self) -> None:
        """Close the stream from this side (shutdown); the subscription is dropped."""
        self._transport.close()

    def data_received(self, data: bytes) -> None:
        pass  # nothing is expected from an SSE client

    def eof_received(self) -> bool | None:
        return None  # an SSE client that closes its side has gone: end the stream

    def pause_writing(self) -> None:
        logger.warning("closing an event stream whose reader is %d bytes behind", _SSE_WRITE_LIMIT)
        self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._front._streams.discard(self)
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        self._ended = True
        if unsubscribe is not None:
            unsubscribe()


async def serve_http(
    directory: SessionDirectory,
    host: str | None,
    port: int,
    *,
    token: str | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    ice_servers: Sequence[Mapping[str, Any]] | None = None,
    registry: Registry | None = None,
) -> HttpFrontEnd:
    """Start a front end listening on ``host:port``; ``await front.close()`` stops it."""
    front = HttpFrontEnd(
        directory, token=token, max_size=max_size, ice_servers=ice_servers, registry=registry
    )
    await front.start(host, port)
    return front
