"""What the HTTP/WebSocket front end needs from whoever owns the sessions (the worker pool).

The front end (``activecall.supervisor.http``) terminates connections; it never owns a
session. It talks to a :class:`SessionDirectory`:

* ``open_call(call_type, params, conn)`` when a WebSocket upgrade on a call route
  (``/call`` -> ``"webSocket"``, ``/call/webrtc`` -> ``"webrtc"``, ``/call/sip`` -> ``"sip"``)
  is valid. ``conn`` is the :class:`CallConnection` the session writes to; the returned
  :class:`SessionHandle` receives what the client sends. The handshake response is sent
  *after* ``open_call`` returns, so ``open_call`` may refuse the call
  (:class:`SessionConflict` -> HTTP 409, :class:`SessionUnavailable` -> HTTP 503) but must not
  write to ``conn`` before returning.
* ``list_calls``, ``kill``, ``command``, ``subscribe`` back the REST routes
  (``/list``, ``/kill/{id}``, ``/command/{id}``, ``/events/{id}``), ``health`` backs
  ``/health``.

Every method is called on the supervisor's event loop and must not block: the front end calls
``SessionHandle.on_text``/``on_binary`` once per WebSocket message, for ~20,000 messages/s.
Metrics are not part of this interface: the composition root gives the directory and the front
end the same :class:`~activecall.supervisor.metrics.Registry`.

Lifecycle of a WebSocket call::

    open_call() ─> handle.on_text / handle.on_binary ... ─> handle.on_close()   (exactly once)
                   conn.send_text / conn.send_binary ... ─> conn.close(code, reason)

``on_close`` runs whoever ends the connection (client close frame, ``conn.close``, TCP reset,
server shutdown); after it, ``conn`` drops whatever is sent to it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl

from activecall.protocol import Command

__all__ = [
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_SERVER_SIDE_TRACK",
    "CallConnection",
    "CallParams",
    "EventStream",
    "Health",
    "SessionConflict",
    "SessionDirectory",
    "SessionHandle",
    "SessionUnavailable",
    "new_session_id",
]

DEFAULT_PING_INTERVAL = 20
"""Seconds between server -> client WebSocket Pings when the query does not say (§2.1)."""

DEFAULT_SERVER_SIDE_TRACK = "server-side-track"
"""Track id of the server playback track when the query does not say (§2.1)."""

_MAX_ID_LENGTH = 256
_U32_MAX = 2**32 - 1
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})

# Each parameter with its spellings, canonical first: the canonical one wins when both are
# given (PROTOCOL.md compatibility rule 2).
_SPELLINGS: dict[str, tuple[str, ...]] = {
    "id": ("id",),
    "dump": ("dump", "dump_events"),
    "ping": ("ping", "ping_interval"),
    "server_side_track": ("serverSideTrack", "server_side_track"),
}


def new_session_id() -> str:
    """A fresh session id, ``s.<uuid4>`` (§2.12)."""
    return f"s.{uuid.uuid4()}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CallParams:
    """The query parameters of a call WebSocket (§2.1), parsed and defaulted."""

    session_id: str
    dump: bool = True
    ping_interval: int = DEFAULT_PING_INTERVAL
    server_side_track: str = DEFAULT_SERVER_SIDE_TRACK

    @classmethod
    def from_query(cls, query: str) -> CallParams:
        """Parse a query string (``id``, ``dump``, ``ping``, ``serverSideTrack`` and aliases).

        Unknown parameters (``forward``, ``visited``, ``token``, ...) are ignored; an empty
        ``id`` counts as absent. Raises ``ValueError`` naming the bad parameter.
        """
        return cls.from_pairs(parse_qsl(query, keep_blank_values=True))

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> CallParams:
        """Like :meth:`from_query`, from decoded ``(name, value)`` pairs."""
        given: dict[str, str] = {}
        for key, value in pairs:
            given.setdefault(key, value)  # first occurrence wins, as serde_urlencoded does

        def pick(field: str) -> tuple[str, str] | None:
            for name in _SPELLINGS[field]:
                if name in given:
                    return name, given[name]
            return None

        session_id = new_session_id()
        if (found := pick("id")) is not None and found[1]:
            session_id = found[1]
            if len(session_id) > _MAX_ID_LENGTH or not session_id.isprintable():
                raise ValueError(f"id must be at most {_MAX_ID_LENGTH} printable characters")
        dump = True
        if (found := pick("dump")) is not None:
            dump = _parse_bool(*found)
        ping = DEFAULT_PING_INTERVAL
        if (found := pick("ping")) is not None:
            ping = _parse_u32(*found)
        track = DEFAULT_SERVER_SIDE_TRACK
        if (found := pick("server_side_track")) is not None and found[1]:
            track = found[1]
        return cls(session_id=session_id, dump=dump, ping_interval=ping, server_side_track=track)


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _parse_u32(name: str, value: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) > _U32_MAX:
        raise ValueError(f"{name} must be a whole number of seconds, got {value!r}")
    return int(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Health:
    """What ``GET /health`` reports."""

    workers: int
    active_calls: int
    draining: bool = False


class SessionConflict(Exception):
    """``open_call``: a session with this id is already live (HTTP 409)."""


class SessionUnavailable(Exception):
    """``open_call``: no new call now (draining, or at capacity) (HTTP 503)."""


class CallConnection(Protocol):
    """The live WebSocket of a call, as the session sees it. Never blocks."""

    def send_text(self, data: bytes) -> None:
        """Send one text message (UTF-8 JSON, an event)."""
        ...

    def send_binary(self, data: bytes) -> None:
        """Send one binary message (audio); dropped while the client is not reading."""
        ...

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; later sends are dropped."""
        ...


class SessionHandle(Protocol):
    """The session side of a call WebSocket: what the front end delivers to."""

    def on_text(self, data: bytes) -> None:
        """One text message, as received (meant to be a JSON command; not validated here)."""
        ...

    def on_binary(self, data: bytes) -> None:
        """One binary message (audio in the call's codec), as received."""
        ...

    def on_close(self) -> None:
        """The WebSocket is gone; called exactly once."""
        ...


class EventStream(Protocol):
    """A ``GET /events/{id}`` subscriber (Server-Sent Events)."""

    def send(self, kind: Literal["event", "command"], data: bytes) -> None:
        """One record: an event the session emitted or a command it received (JSON)."""
        ...

    def end(self) -> None:
        """The call ended: finish the stream. The directory forgets the subscriber."""
        ...


class SessionDirectory(Protocol):
    """The live sessions of this node, as the front end reaches them."""

    def open_call(self, call_type: str, params: CallParams, conn: CallConnection) -> SessionHandle:
        """Create the session of a new call WebSocket.

        Raises :class:`SessionConflict` or :class:`SessionUnavailable`; must not use ``conn``
        before it returns.
        """
        ...

    def list_calls(self) -> list[dict[str, Any]]:
        """The ``active_calls`` entries of ``GET /list`` (§2.11), in wire form."""
        ...

    def kill(self, session_id: str) -> bool:
        """End a session (``GET /kill/{id}``); ``False`` when there is none."""
        ...

    def command(self, session_id: str, command: Command) -> bool:
        """Deliver a validated command (``POST /command/{id}``); ``False`` when no session."""
        ...

    def subscribe(self, session_id: str, stream: EventStream) -> Callable[[], None] | None:
        """Start feeding ``stream``; returns the unsubscribe function, ``None`` if no session.

        Records may be sent from inside ``subscribe``. Unsubscribing after ``end`` is a no-op.
        """
        ...

    def health(self) -> Health:
        """Worker count, live calls, and whether the node is draining."""
        ...
