"""A call in realtime mode: the caller talks to the OpenAI/Azure Realtime API directly.

With ``option.realtime`` the caller's 16 kHz audio goes to a
:class:`~activecall.providers.realtime.RealtimeBridge` and the model's speech plays on the
server-side track. Mapped to the call's events (reference §7.4): the API's speech start →
``speaking`` and barge-in (playback stops, the reply is cancelled and truncated where the
caller stopped hearing it); the assistant's transcript deltas → ``asrDelta``, its finished
sentences and the caller's transcribed turns → ``addHistory``; function calls →
``functionCall``; errors the API reports → ``error`` (sender ``realtime``) and the call goes on.
Whoever handles the function calls (a playbook) answers them with
:meth:`RealtimeAgent.function_result`, and may change the model's instructions or tell it
something (:meth:`~RealtimeAgent.update_instructions`, :meth:`~RealtimeAgent.tell`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from activecall.media.codec import Pcm
from activecall.media.playback import PlaybackTrack
from activecall.protocol import (
    AddHistoryEvent,
    AsrDeltaEvent,
    Event,
    FunctionCallEvent,
    SpeakingEvent,
)
from activecall.providers.base import ProviderError
from activecall.providers.realtime import (
    AgentAudio,
    ApiError,
    FunctionCall,
    RealtimeBridge,
    RealtimeOption,
    ResponseDone,
    SpeechStarted,
    TranscriptDelta,
    TranscriptDone,
    UserTranscript,
)

__all__ = ["RealtimeAgent", "RealtimeHost"]

log = logging.getLogger(__name__)

PLAY_ID = "realtime"


class RealtimeHost(Protocol):
    """What the realtime side needs from its session."""

    id: str

    def now_ms(self) -> int:
        """The call's clock (epoch ms)."""
        ...

    def emit(self, event: Event) -> None:
        """Send an event."""
        ...

    def error(self, sender: str, message: str) -> None:
        """Send an ``error`` event; the call goes on."""
        ...

    def agent_track(self, play_id: str, *, create: bool) -> PlaybackTrack | None:
        """The streaming track ``play_id`` if it is playing; else a new one if ``create``."""
        ...

    def stop_agent(self) -> int | None:
        """Barge-in: stop the model's speech now; how many ms of it the caller heard."""
        ...


class RealtimeAgent:
    """The bridge of one call, driven by its session."""

    def __init__(
        self,
        host: RealtimeHost,
        option: Mapping[str, Any],
        start_task: Callable[[Any], asyncio.Task[None]],
        connect: Callable[[RealtimeOption], Any] = RealtimeBridge.connect,
    ) -> None:
        self.host = host
        self.option = RealtimeOption.from_json(option)  # ValueError names the bad key
        self._connect = connect
        self._bridge: RealtimeBridge | None = None
        self._closed = False
        self._index = 0
        self._instructions: str | None = None  # set before the bridge was up: sent once it is
        self._task = start_task(self._run())

    def push(self, pcm: Pcm) -> None:
        """Caller audio (16 kHz); dropped until the bridge is up."""
        if self._bridge is not None:
            self._bridge.push_audio(pcm.astype("<i2", copy=False).tobytes())

    def function_result(self, call_id: str, output: str, *, respond: bool = True) -> None:
        """Answer the model's function call ``call_id``; ``respond``: it replies next."""
        if self._bridge is not None:
            self._bridge.send_function_result(call_id, output, respond=respond)

    def update_instructions(self, instructions: str) -> None:
        """Replace the model's instructions (a playbook's scene switch)."""
        if not isinstance(instructions, str):
            raise TypeError(f"instructions must be a string, got {type(instructions).__name__}")
        if self._bridge is not None:
            self._bridge.update_instructions(instructions)
        else:
            self._instructions = instructions

    def tell(self, text: str) -> None:
        """Tell the model something that happened (a system message); it replies."""
        if self._bridge is not None:
            self._bridge.send_system_message(text)

    async def aclose(self) -> None:
        """End the bridge (the call ended); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        bridge, self._bridge = self._bridge, None
        if bridge is not None:
            with contextlib.suppress(Exception):
                await bridge.aclose()

    async def _run(self) -> None:
        try:
            bridge = await self._connect(self.option)
        except ProviderError as exc:
            self.host.error("realtime", f"cannot connect to the realtime API: {exc}")
            return
        if self._closed:
            await bridge.aclose()
            return
        self._bridge = bridge
        if self._instructions is not None:
            bridge.update_instructions(self._instructions)
        try:
            async for event in bridge.events():
                self._on_event(bridge, event)
        except ProviderError as exc:
            self.host.error("realtime", str(exc))
        except Exception as exc:
            log.exception("realtime bridge failed")
            self.host.error("realtime", f"realtime bridge failed: {exc}")

    def _on_event(self, bridge: RealtimeBridge, event: Any) -> None:
        host = self.host
        now = host.now_ms()
        if isinstance(event, AgentAudio):
            pcm = np.frombuffer(event.pcm16k[: len(event.pcm16k) // 2 * 2], "<i2")
            track = host.agent_track(PLAY_ID, create=True)
            if track is not None:
                track.append(pcm.astype(np.int16))
        elif isinstance(event, SpeechStarted):
            host.emit(SpeakingEvent(track_id=host.id, timestamp=now, start_time=now))
            heard = host.stop_agent()
            bridge.cancel_response(heard)
        elif isinstance(event, TranscriptDelta):
            host.emit(
                AsrDeltaEvent(track_id=host.id, index=self._index, timestamp=now, text=event.text)
            )
        elif isinstance(event, TranscriptDone):
            self._index += 1
            host.emit(AddHistoryEvent(timestamp=now, speaker="assistant", text=event.text))
        elif isinstance(event, UserTranscript):
            host.emit(AddHistoryEvent(timestamp=now, speaker="user", text=event.text))
        elif isinstance(event, FunctionCall):
            host.emit(
                FunctionCallEvent(
                    track_id=host.id,
                    call_id=event.call_id,
                    name=event.name,
                    arguments=event.arguments,
                    timestamp=now,
                )
            )
        elif isinstance(event, ResponseDone):
            track = host.agent_track(PLAY_ID, create=False)
            if track is not None:
                track.end_input()  # trackEnd once played out
        elif isinstance(event, ApiError):
            host.error("realtime", event.message)
