"""A call that runs a playbook: the session with a :class:`PlaybookRunner` attached.

:class:`PlaybookCall` stands where the worker expects a session and forwards everything to the
real one. In between it taps the session's events (each is handed to the runner on the next
turn of the loop, so the runner never re-enters the session while it is emitting), sends the
runner's commands to the session exactly as a client's, and fills the playbook's engine options
(``asr``, ``tts``, ``vad``, ...) into the ``invite``/``accept`` option where the client's option
leaves them out. The client, if there is one, sees every event and can still send commands.

Attaching (:func:`attach_playbook`) is what the session factory does when a call's open params
carry ``playbook``: a file path, or the playbook's text (starting with ``---``). Optional params:
``playbookVars`` (template variables), and for a call no client drives (an inbound SIP call
routed to a playbook, ``--call``) ``playbookStart`` = ``accept`` or ``invite`` with
``playbookOption`` (e.g. the ``callee`` of an outbound call): the call then starts by itself
(:meth:`PlaybookCall.start`). A playbook that does not load is an ``error`` event (sender
``playbook``) naming the file and line, and the call goes on without it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from activecall.playbook.model import Playbook
from activecall.playbook.parser import PlaybookError, load_playbook
from activecall.playbook.runner import PlaybookRunner
from activecall.playbook.template import CallFacts, render, template_variables
from activecall.protocol import MetricsEvent
from activecall.providers.base import LlmProvider
from activecall.providers.registry import ProviderRegistry, UnknownProvider, registry
from activecall.workers.session import CallSession, SessionPort

__all__ = ["REALTIME_TOOLS", "PlaybookCall", "attach_playbook", "merge_option"]

log = logging.getLogger(__name__)

REALTIME_TOOLS: tuple[Mapping[str, Any], ...] = (
    {
        "type": "function",
        "name": "hangup_call",
        "description": "End the call once you have said goodbye.",
        "parameters": {"type": "object", "properties": {}},
    },
    {
        "type": "function",
        "name": "transfer_call",
        "description": "Transfer the caller to another number or person (a SIP URI).",
        "parameters": {
            "type": "object",
            "properties": {"callee": {"type": "string"}},
            "required": ["callee"],
        },
    },
    {
        "type": "function",
        "name": "goto_scene",
        "description": "Move the conversation to another scene of the playbook.",
        "parameters": {
            "type": "object",
            "properties": {"scene": {"type": "string"}},
            "required": ["scene"],
        },
    },
)
"""The function tools a realtime model gets when the playbook's ``realtime`` names none."""

_CALL_TYPES = {"websocket": "websocket", "webrtc": "webrtc", "sip": "sip", "b2bua": "b2bua"}


def merge_option(playbook: Mapping[str, Any], client: Mapping[str, Any] | None) -> dict[str, Any]:
    """The client's call option with the playbook's filled in where it has none (objects
    such as ``asr`` are merged key by key, the client's keys winning)."""
    merged: dict[str, Any] = {k: _plain(v) for k, v in playbook.items()}
    for key, value in (client or {}).items():
        base = merged.get(key)
        if isinstance(base, dict) and isinstance(value, dict):
            merged[key] = {**base, **value}
        else:
            merged[key] = value
    return merged


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class _EventTap:
    """The session's port, with every event it emits also handed to the runner."""

    def __init__(self, port: SessionPort, deliver: Callable[[bytes], None]) -> None:
        self._port = port
        self._deliver = deliver

    def emit_text(self, data: bytes) -> None:
        """To the client, and (on the next turn of the loop) to the runner."""
        self._port.emit_text(data)
        self._port.call_soon(lambda: self._deliver(data))

    def now_ms(self) -> int:
        """The port's clock."""
        return self._port.now_ms()

    def emit_audio(self, data: bytes) -> None:
        """Agent audio to the client."""
        self._port.emit_audio(data)

    def end(self) -> None:
        """The session is over."""
        self._port.end()

    def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Off the loop, as the port does it."""
        return self._port.run_blocking(fn, *args)

    def note_file(self, kind: str, path: str) -> None:
        """A file the call writes."""
        self._port.note_file(kind, path)

    def start_task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task on the worker's loop."""
        return self._port.start_task(coro)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Later on the worker's loop."""
        self._port.call_soon(fn)

    def __getattr__(self, name: str) -> Any:
        # what else the worker's context offers (worker_index for SIP's RTP ports, ...)
        if name == "_port":
            raise AttributeError(name)
        return getattr(self._port, name)


class PlaybookCall:
    """A session (``/call``, WebRTC or SIP) whose dialogue a playbook runs."""

    def __init__(
        self,
        session: CallSession,
        playbook: Playbook,
        *,
        llm: LlmProvider | None = None,
        variables: Mapping[str, Any] | None = None,
        providers: ProviderRegistry = registry,
    ) -> None:
        self.session = session
        self.playbook = playbook
        port = session.port
        self._port = port
        self._closing: asyncio.Task[None] | None = None
        session.port = _EventTap(port, self._event)
        self.runner = PlaybookRunner(
            playbook,
            send=self._command,
            llm=llm if llm is not None else _llm_for(playbook, providers),
            facts=CallFacts(
                session_id=session.id,
                call_type=_CALL_TYPES.get(str(session.call_type).lower(), "websocket"),
            ),
            clock=port.now_ms,
            start_task=port.start_task,
            variables=variables,
            report=self._report,
            server_side_track=session.server_side_track,
            set_extra=self._set_extra,
            metric=self._metric,
            realtime=_RealtimeLink(session) if playbook.realtime is not None else None,
        )
        self._variables = dict(variables or {})

    # ------------------------------------------------------------------ the worker's side

    def on_text(self, data: bytes | str) -> None:
        """A client's command: ``invite``/``accept`` get the playbook's option filled in."""
        try:
            command = orjson.loads(data)
        except orjson.JSONDecodeError:
            command = None
        if isinstance(command, dict) and command.get("command") in ("invite", "accept"):
            data = orjson.dumps(self._with_option(command))
        self.session.on_text(data)

    def on_audio(self, data: bytes) -> None:
        """Caller audio: to the session."""
        self.session.on_audio(data)

    def vad_chunks(self) -> list[npt.NDArray[Any]]:
        """The session's VAD chunks of this tick."""
        chunks: list[npt.NDArray[Any]] = self.session.vad_chunks()
        return chunks

    def on_vad(self, probabilities: npt.NDArray[np.float32]) -> None:
        """The VAD's answer: to the session."""
        self.session.on_vad(probabilities)

    def tick(self, now_ms: int) -> None:
        """The 20 ms tick: the session, then the runner's timers."""
        self.session.tick(now_ms)
        self.runner.tick(now_ms)

    def on_close(self, reason: str = "caller") -> None:
        """The connection is gone: to the session."""
        self.session.on_close(reason)

    def on_kill(self) -> None:
        """``/kill``: to the session."""
        self.session.on_kill()

    def __getattr__(self, name: str) -> Any:
        # on_control (SIP), hangup, state, ...: whatever else the session offers
        if name == "session":
            raise AttributeError(name)
        return getattr(self.session, name)

    def start(self, command: str = "accept", option: Mapping[str, Any] | None = None) -> None:
        """Start a call no client drives: ``accept`` a pending inbound SIP call, or
        ``invite`` (an outbound call: ``option`` names the callee) with the playbook's option."""
        if command not in ("accept", "invite"):
            raise ValueError(f"a playbook call starts with accept or invite, not {command!r}")
        self.on_text(orjson.dumps({"command": command, "option": dict(option or {})}))

    # ------------------------------------------------------------------ in between

    def _with_option(self, command: dict[str, Any]) -> dict[str, Any]:
        client = command.get("option")
        option = merge_option(self.playbook.option, client if isinstance(client, dict) else None)
        caller, callee = option.get("caller"), option.get("callee")
        facts = self.runner.facts
        self.runner.start_call(
            CallFacts(
                session_id=facts.session_id,
                call_type=facts.call_type,
                caller=caller if isinstance(caller, str) else facts.caller,
                callee=callee if isinstance(callee, str) else facts.callee,
                start_time=facts.start_time,
                sip=facts.sip,
            )
        )
        realtime = option.get("realtime")
        if self.playbook.realtime is not None and isinstance(realtime, dict):
            option["realtime"] = self._realtime(realtime)
        return {**command, "option": option}

    def _realtime(self, realtime: dict[str, Any]) -> dict[str, Any]:
        """The realtime model gets the first scene's prompt and the call-control tools."""
        out = dict(realtime)
        extra = dict(out.get("extra") or {})
        if not extra.get("instructions"):
            variables = template_variables(self.runner.facts, self._variables)
            extra["instructions"] = render(self.playbook.first_scene.prompt, variables)
        out["extra"] = extra
        if not out.get("tools"):
            out["tools"] = [dict(tool) for tool in REALTIME_TOOLS]
        return out

    def _event(self, data: bytes) -> None:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(event, dict):
            self.runner.on_event(event)
            if event.get("event") == "hangup" and not event.get("refer"):
                # the posthook still runs; then the runner's HTTP client is released
                self._closing = self._port.start_task(self.runner.aclose())

    def _command(self, command: dict[str, Any]) -> None:
        self.session.on_text(orjson.dumps(command))

    def _report(self, message: str) -> None:
        self.session.error("playbook", message)

    def _set_extra(self, key: str, value: str) -> None:
        """A ``set_var`` value: into the call option's ``extra``, which the call record's
        ``extras`` are made of when the call ends."""
        option = self.session.option
        if option is not None:
            self.session.option = replace(option, extra={**(option.extra or {}), key: value})

    def _metric(self, key: str, duration: int, data: Mapping[str, Any]) -> None:
        self.session.emit(
            MetricsEvent(timestamp=self._port.now_ms(), key=key, duration=duration, data=data)
        )


class _RealtimeLink:
    """The runner's way to the session's realtime model (there once the call started)."""

    def __init__(self, session: CallSession) -> None:
        self._session = session

    def function_result(self, call_id: str, output: str, *, respond: bool = True) -> None:
        """Answer a function call of the model."""
        agent = self._session.realtime
        if agent is not None:
            agent.function_result(call_id, output, respond=respond)

    def update_instructions(self, instructions: str) -> None:
        """The model's new instructions (a scene switch)."""
        agent = self._session.realtime
        if agent is not None:
            agent.update_instructions(instructions)

    def tell(self, text: str) -> None:
        """A system message for the model, which then speaks."""
        agent = self._session.realtime
        if agent is not None:
            agent.tell(text)


def _llm_for(playbook: Playbook, providers: ProviderRegistry) -> LlmProvider | None:
    """The chat provider: ``llm.provider`` when it names a registered one, else OpenAI's
    (upstream's provider name is informational; its client is OpenAI-compatible only)."""
    if playbook.llm is None:
        return None
    name = playbook.llm.provider or "openai"
    try:
        provider: LlmProvider = providers.get("llm", name)
    except UnknownProvider:
        provider = providers.get("llm", "openai")
    return provider


def attach_playbook(
    session: CallSession,
    params: Mapping[str, Any],
    *,
    providers: ProviderRegistry = registry,
) -> CallSession | PlaybookCall:
    """The session, running the playbook its open ``params`` name (``playbook``: a path or
    the text; ``playbookVars``, ``playbookStart``, ``playbookOption``: see the module); the
    bare session when there is none, or when it does not load (an ``error`` event)."""
    spec = params.get("playbook")
    if not isinstance(spec, str) or not spec.strip():
        return session
    try:
        playbook = load_playbook(spec)
    except PlaybookError as exc:
        session.error("playbook", f"the playbook cannot be used:\n{exc}")
        return session
    variables = params.get("playbookVars")
    call = PlaybookCall(
        session,
        playbook,
        variables=variables if isinstance(variables, Mapping) else None,
        providers=providers,
    )
    start = params.get("playbookStart")
    if start is not None:
        if start not in ("accept", "invite"):
            session.error("playbook", f"playbookStart must be accept or invite, not {start!r}")
            return call
        option = params.get("playbookOption")
        given = option if isinstance(option, Mapping) else None
        # once the worker holds the session: its answer events must find it
        session.port.call_soon(lambda: call.start(start, given))
    return call
