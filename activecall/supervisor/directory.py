"""The live calls of this node: the front end's :class:`SessionDirectory` over the worker pool.

Each call is one :class:`LiveCall`, which is both the front end's handle (client frames go
to the call's worker through its :class:`~activecall.supervisor.pool.SessionRoute`) and the
pool's sink (what the worker emits goes to the client's WebSocket and to ``/events``
subscribers). The supervisor does not decode audio or run models; it only looks inside text
frames, which are rare, to keep the ``invite`` option for ``GET /list``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from activecall.media.dump import rfc3339
from activecall.protocol import Command, CommandError, ErrorEvent, HangupEvent, parse_command
from activecall.supervisor.metrics import Registry
from activecall.supervisor.pool import PoolFull, SessionRoute, WorkerPool
from activecall.supervisor.sessions import (
    CallConnection,
    CallParams,
    EventStream,
    Health,
    SessionConflict,
    SessionHandle,
    SessionUnavailable,
)
from activecall.workers import control

if TYPE_CHECKING:
    from activecall.supervisor.playbooks import PendingRuns

__all__ = ["CallDirectory", "LiveCall", "SipSignalling"]

# How a worker's ``sip`` record starts (orjson writes ``op`` first); events start ``{"event"``.
_SIP_RECORD = b'{"op":"sip"'


class SipSignalling(Protocol):
    """What the directory needs from the SIP service (:mod:`activecall.supervisor.sip`)."""

    def open_params(self, session_id: str, call_type: str = "sip") -> dict[str, Any]:
        """The ``sip`` and ``media`` open params of a ``/call/sip`` session; only ``media``
        (where a ``refer`` leg binds RTP) for other calls."""
        ...

    def on_action(self, session_id: str, record: dict[str, Any]) -> None:
        """A ``sip`` record the session's worker sent (``action``: invite, accept, bye...)."""
        ...

    def session_ended(self, session_id: str) -> None:
        """The session is over (ended, or its worker died): end its SIP legs (the call's,
        its refer leg's) if still up."""
        ...


log = logging.getLogger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class LiveCall:
    """One call: the front end's handle and the pool's sink."""

    __slots__ = (
        "_directory",
        "_ended",
        "_streams",
        "call_type",
        "conn",
        "option",
        "route",
        "session_id",
        "start_ms",
    )

    def __init__(
        self, directory: CallDirectory, session_id: str, call_type: str, conn: CallConnection
    ) -> None:
        self._directory = directory
        self.session_id = session_id
        self.call_type = call_type
        self.conn = conn
        self.start_ms = _now_ms()
        self.option: Any = None
        self.route: SessionRoute | None = None
        self._streams: list[EventStream] = []
        self._ended = False

    # The front end's side (SessionHandle): the client's frames.

    def on_text(self, data: bytes) -> None:
        """A command from the client: to the worker, and to ``/events`` subscribers."""
        if self.option is None and b'"invite"' in data:
            self._remember_option(data)
        for stream in self._streams:
            stream.send("command", data)
        if self.route is not None:
            self.route.send_text(data)

    def on_binary(self, data: bytes) -> None:
        """Caller audio: to the worker (dropped and counted by the pool if its ring is full)."""
        if self.route is not None:
            self.route.send_audio(data)

    def on_close(self) -> None:
        """The client's WebSocket is gone: the worker ends the call (``hangup`` by caller)."""
        if self.route is not None and not self._ended:
            self.route.close("caller")

    # The pool's side (SessionSink): what the worker emits.

    def on_audio(self, data: bytes) -> None:
        """Agent audio for the client."""
        self.conn.send_binary(data)

    def on_ended(self) -> None:
        """The worker has ended the session and sent all its events: close the WebSocket."""
        self._finish(1000, "call ended")

    def on_worker_lost(self) -> None:
        """The worker died: tell the client (``error`` + ``hangup``) and close."""
        now = _now_ms()
        error = ErrorEvent(
            track_id=self.session_id,
            timestamp=now,
            sender="system",
            error="the worker process running this call died",
        )
        hangup = HangupEvent(
            track_id=self.session_id,
            timestamp=now,
            reason="error",
            initiator="system",
            start_time=rfc3339(datetime.fromtimestamp(self.start_ms / 1000, UTC)),
            hangup_time=rfc3339(datetime.fromtimestamp(now / 1000, UTC)),
        )
        self.on_text_out(error.to_json())
        self.on_text_out(hangup.to_json())
        self._finish(1011, "worker lost")

    def on_sip(self, data: bytes) -> None:
        """A ``sip`` record from the worker: for the SIP service, never for the client."""
        sip = self._directory.sip
        if sip is None:
            return
        try:
            record = control.decode(data)
        except ValueError:
            log.error("session %s: bad sip record %r", self.session_id, data[:200])
            return
        sip.on_action(self.session_id, record)

    def on_text_out(self, data: bytes) -> None:
        """An event for the client and the subscribers."""
        self.conn.send_text(data)
        for stream in self._streams:
            stream.send("event", data)

    def _remember_option(self, data: bytes) -> None:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(obj, dict) and obj.get("command") == "invite":
            self.option = obj.get("option")

    def _finish(self, code: int, reason: str) -> None:
        if self._ended:
            return
        self._ended = True
        for stream in self._streams:
            stream.end()
        self._streams.clear()
        self.conn.close(code, reason)
        self._directory._forget(self)

    def subscribe(self, stream: EventStream) -> Callable[[], None]:
        """Feed ``stream`` until the call ends."""
        self._streams.append(stream)

        def unsubscribe() -> None:
            if stream in self._streams:
                self._streams.remove(stream)

        return unsubscribe

    def summary(self) -> dict[str, Any]:
        """The ``GET /list`` entry (§2.11)."""
        entry: dict[str, Any] = {
            "id": self.session_id,
            "callType": self.call_type,
            "startTime": rfc3339(datetime.fromtimestamp(self.start_ms / 1000, UTC)),
        }
        if self.option is not None:
            entry["cs.option"] = self.option
        return entry


class _Outbound:
    """The pool's sink for one call: routes the worker's records to :class:`LiveCall`."""

    __slots__ = ("call",)

    def __init__(self, call: LiveCall) -> None:
        self.call = call

    def on_text(self, data: bytes) -> None:
        if data.startswith(_SIP_RECORD):
            self.call.on_sip(data)
        else:
            self.call.on_text_out(data)

    def on_audio(self, data: bytes) -> None:
        self.call.on_audio(data)

    def on_ended(self) -> None:
        self.call.on_ended()

    def on_worker_lost(self) -> None:
        self.call.on_worker_lost()


class CallDirectory:
    """:class:`~activecall.supervisor.sessions.SessionDirectory` backed by a worker pool."""

    def __init__(self, pool: WorkerPool, registry: Registry | None = None) -> None:
        self.pool = pool
        self.calls: dict[str, LiveCall] = {}
        self.draining = False
        self.sip: SipSignalling | None = None
        """The SIP service, when the node runs one: ``/call/sip`` sessions are joined to it."""
        self.playbook_runs: PendingRuns | None = None
        """``POST /api/playbook/run`` playbooks: the next call with that id runs one."""
        if registry is not None:
            self._register_metrics(registry)

    def open_call(
        self,
        call_type: str,
        params: CallParams,
        conn: CallConnection,
        extra: Mapping[str, Any] | None = None,
    ) -> SessionHandle:
        """Start the call's session on the least-loaded worker; ``extra``: more open params
        (the ``playbook`` a call with no client runs, ...)."""
        if self.draining:
            raise SessionUnavailable("the server is shutting down")
        if params.session_id in self.calls:
            raise SessionConflict(f"a call with id {params.session_id!r} is live")
        call = LiveCall(self, params.session_id, call_type, conn)
        wire_params: dict[str, Any] = {
            "dump": params.dump,
            "ping": params.ping_interval,
            "serverSideTrack": params.server_side_track,
        }
        if self.sip is not None and call_type != "precache":
            # SIP calls join their signalling; any call may dial a refer leg.
            wire_params.update(self.sip.open_params(params.session_id, call_type))
        if self.playbook_runs is not None:
            wire_params.update(self.playbook_runs.take(params.session_id, time.monotonic()))
        wire_params.update(extra or {})
        try:
            call.route = self.pool.open_session(
                params.session_id, call_type, wire_params, _Outbound(call)
            )
        except PoolFull as exc:
            raise SessionUnavailable(str(exc) or "no worker can take a call now") from None
        self.calls[params.session_id] = call
        return call

    async def precache(self, body: bytes, timeout: float = 150.0) -> tuple[int, dict[str, Any]]:
        """``POST /precache``: a worker synthesises the ``tts`` command into the media cache."""
        try:
            command = parse_command(body)
        except CommandError as exc:
            return 400, {"status": "invalid", "error": exc.message}
        if command.command != "tts":
            return 400, {"status": "invalid", "error": "the body must be a tts command"}
        sink = _Reply()
        try:
            route = self.pool.open_session(f"precache.{uuid.uuid4()}", "precache", {}, sink)
        except PoolFull as exc:
            return 503, {"status": "unavailable", "error": str(exc) or "no worker is free"}
        route.send_text(body)
        try:
            async with asyncio.timeout(timeout):
                reply = await sink.done
        except TimeoutError:
            route.kill()
            return 504, {"status": "error", "error": "synthesis took too long"}
        if reply is None:
            return 500, {"status": "error", "error": "the worker ended the job without a reply"}
        return (200 if reply.get("status") in ("cached", "exists") else 502), reply

    def signal(self, session_id: str, fields: dict[str, Any]) -> bool:
        """Send a ``sip`` control record to the session's worker; ``False`` if it is gone."""
        call = self.calls.get(session_id)
        route = call.route if call is not None else None
        if route is None or not route.live:
            return False
        # SessionRoute has no public way to send a control record yet: its worker's does.
        route._worker.control(route.slot, control.encode(control.OP_SIP, **fields))
        return True

    def list_calls(self) -> list[dict[str, Any]]:
        """``GET /list``."""
        return [call.summary() for call in self.calls.values()]

    def kill(self, session_id: str) -> bool:
        """``GET /kill/{id}``: the worker ends the call with ``hangup``."""
        call = self.calls.get(session_id)
        if call is None or call.route is None:
            return False
        call.route.kill()
        return True

    def command(self, session_id: str, command: Command) -> bool:
        """``POST /command/{id}``: deliver as if the client had sent it."""
        call = self.calls.get(session_id)
        if call is None:
            return False
        call.on_text(command.to_json())
        return True

    def subscribe(self, session_id: str, stream: EventStream) -> Callable[[], None] | None:
        """``GET /events/{id}``."""
        call = self.calls.get(session_id)
        return call.subscribe(stream) if call is not None else None

    def health(self) -> Health:
        """``GET /health``."""
        return Health(
            workers=self.pool.stats().ready_workers,
            active_calls=len(self.calls),
            draining=self.draining,
        )

    def _forget(self, call: LiveCall) -> None:
        if self.calls.get(call.session_id) is call:
            del self.calls[call.session_id]
            if self.sip is not None:  # any call may have a refer leg
                self.sip.session_ended(call.session_id)

    def _register_metrics(self, registry: Registry) -> None:
        active = registry.gauge("activecall_active_calls", "Calls in progress on this node.")
        gauges: dict[str, Any] = {}
        # Totals the pool carries over worker restarts are exposed as gauges: a heartbeat lost
        # with a dead worker must never show as a counter going down.
        per_worker = {
            "activecall_worker_sessions": "Sessions on the worker.",
            "activecall_frames_in": "Audio frames the worker received.",
            "activecall_frames_out": "Audio frames the worker emitted.",
            "activecall_ring_dropped_in": "Audio frames dropped: the worker's ring was full.",
            "activecall_ring_dropped_out": "Audio frames dropped: the supervisor's ring was full.",
            "activecall_worker_restarts": "Times the worker process was replaced.",
            "activecall_vad_tick_us": "VAD time per tick, average over the last interval (us).",
            "activecall_tick_lag_p99_us": "Worker tick lag, p99 over the last interval (us).",
        }
        for name, help_text in per_worker.items():
            gauges[name] = registry.gauge(name, help_text, ("worker",))

        def collect() -> None:
            stats = self.pool.stats()
            active.set(len(self.calls))
            for w in stats.workers:
                label = str(w.index)
                values = {
                    "activecall_worker_sessions": w.sessions,
                    "activecall_frames_in": w.frames_in,
                    "activecall_frames_out": w.frames_out,
                    "activecall_ring_dropped_in": w.dropped_audio_in,
                    "activecall_ring_dropped_out": w.dropped_audio_out,
                    "activecall_worker_restarts": w.restarts,
                    "activecall_vad_tick_us": w.vad_us_avg,
                    "activecall_tick_lag_p99_us": w.lag_us_p99,
                }
                for name, value in values.items():
                    gauges[name].labels(label).set(value)

        registry.add_collector(collect)


class _Reply:
    """The sink of a worker job that answers with one JSON object."""

    def __init__(self) -> None:
        self.done: asyncio.Future[dict[str, Any] | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._reply: dict[str, Any] | None = None

    def on_text(self, data: bytes) -> None:
        with contextlib.suppress(orjson.JSONDecodeError):
            obj = orjson.loads(data)
            if isinstance(obj, dict):
                self._reply = obj

    def on_audio(self, data: bytes) -> None:
        pass

    def on_ended(self) -> None:
        if not self.done.done():
            self.done.set_result(self._reply)

    def on_worker_lost(self) -> None:
        self.on_ended()
