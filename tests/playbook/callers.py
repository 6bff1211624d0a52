"""The parties of playbook scenario calls: the LLM fake that answers every call of a test module
by its own script, a ``/call`` caller that speaks piper's lines in real time, and sipp callers
built from a list of steps.

:class:`CaseLlm` is the OpenAI chat fake (:class:`~tests.providers.fakes.openai.FakeOpenAi`,
SSE ``chat.completion.chunk`` events ending with ``[DONE]``) with one script per case: a
request belongs to the case whose marker (any text, usually ``[case:NAME/{{ call_type }}]``
rendered in the system prompt) appears in its messages, so calls running at the same time never
take each other's replies, and a marker that was not rendered finds no script.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.playbook.scripted import KEY
from tests.playbook.speech import keypad_16k, silence_16k, spoken_16k
from tests.providers.fakes.openai import FakeOpenAi

FRAME_BYTES = 640  # 20 ms of 16 kHz PCM16


Piece = str | dict[str, Any]
"""A piece of a scripted reply: text (a ``content`` delta) or a raw ``delta`` object."""


def tool_call(call_id: str, name: str, arguments: str, index: int = 0) -> list[dict[str, Any]]:
    """The ``delta`` objects of one streamed tool call, as the API streams it: the first
    carries ``index``, ``id``, ``type`` and the function ``name``; the arguments follow in two
    pieces keyed by ``index``."""
    half = len(arguments) // 2
    first = {"index": index, "id": call_id, "type": "function"}
    return [
        {"tool_calls": [{**first, "function": {"name": name, "arguments": ""}}]},
        *(
            {"tool_calls": [{"index": index, "function": {"arguments": part}}]}
            for part in (arguments[:half], arguments[half:])
        ),
    ]


@dataclass
class Script:
    """One case's replies (each a list of streamed pieces) and the chats it got."""

    markers: tuple[str, ...]
    replies: list[Sequence[Piece]]
    chats: list[dict[str, Any]] = field(default_factory=list)


class CaseLlm(FakeOpenAi):
    """The chat fake with one script per case; unmatched requests get "OK." and are kept."""

    def __init__(self) -> None:
        super().__init__(api_key=KEY)
        self.scripts: dict[str, Script] = {}
        self.unmatched: list[dict[str, Any]] = []

    def script(self, case: str, markers: Sequence[str], *replies: Sequence[Piece]) -> Script:
        """Answer the requests that carry one of ``markers`` with ``replies``, in order."""
        self.scripts[case] = Script(tuple(markers), list(replies))
        return self.scripts[case]

    def _match(self, body: Any) -> Script | None:
        messages = body.get("messages") if isinstance(body, dict) else None
        text = json.dumps(messages) if isinstance(messages, list) else ""
        for script in self.scripts.values():
            if any(json.dumps(marker)[1:-1] in text for marker in script.markers):
                return script
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        script = self._match(body)
        if script is None:
            self.unmatched.append(body)
            pieces: Sequence[Piece] = ["OK."]
        else:
            script.chats.append(body)
            pieces = script.replies.pop(0) if script.replies else ["OK."]
        deltas = [{"content": p} if isinstance(p, str) else dict(p) for p in pieces]
        calls = any("tool_calls" in d for d in deltas)
        # the role comes first, merged into the first piece when that is a tool call
        role: dict[str, Any] = {"role": "assistant", "content": None if calls else ""}
        if deltas and "tool_calls" in deltas[0]:
            deltas[0] = {**role, **deltas[0]}
        else:
            deltas.insert(0, role)
        self.chat_deltas = [
            *((delta, None) for delta in deltas),
            ({}, "tool_calls" if calls else "stop"),
        ]
        return await super()._chat(request)


# --- /call ---------------------------------------------------------------------------------------


@dataclass
class Heard:
    """What a ``/call`` client received: events, and agent audio bytes after each event."""

    events: list[dict[str, Any]] = field(default_factory=list)
    audio_after: list[int] = field(default_factory=lambda: [0])  # [i]: bytes after event i-1

    def names(self) -> list[str]:
        """The event names, in order."""
        return [e["event"] for e in self.events]

    def audio_between(self, first: int, last: int) -> int:
        """Agent audio bytes received after event ``first`` and before event ``last``."""
        return sum(self.audio_after[first + 1 : last + 1])

    def index(self, match: Callable[[dict[str, Any]], bool]) -> int:
        """The index of the first event that ``match``es."""
        for i, event in enumerate(self.events):
            if match(event):
                return i
        raise AssertionError(f"no such event in {self.names()}")


class WsCaller:
    """A ``/call`` client joining a playbook run: a microphone sending 20 ms PCM frames in
    real time (silence unless a line is being said), and everything the server sends."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.heard = Heard()
        self.closed = asyncio.Event()
        self._pending = bytearray()
        self._said = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._receive()),
            asyncio.create_task(self._microphone()),
        ]

    @classmethod
    @contextlib.asynccontextmanager
    async def joined(cls, http_port: int, session_id: str) -> AsyncIterator[WsCaller]:
        """Connect ``/call?id=`` and send ``invite`` (PCM); the caller, until the block ends."""
        url = f"ws://127.0.0.1:{http_port}/call?id={session_id}"
        async with connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"command": "invite", "option": {"codec": "pcm"}}))
            caller = cls(ws)
            try:
                yield caller
            finally:
                for task in caller._tasks:
                    task.cancel()
                await asyncio.gather(*caller._tasks, return_exceptions=True)

    async def _receive(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self.ws:
                if isinstance(message, bytes):
                    self.heard.audio_after[-1] += len(message)
                else:
                    self.heard.events.append(json.loads(message))
                    self.heard.audio_after.append(0)
        self.closed.set()

    async def _microphone(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        silence = bytes(FRAME_BYTES)
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = bytes(self._pending[:FRAME_BYTES]) or silence
                del self._pending[:FRAME_BYTES]
                frame = frame.ljust(FRAME_BYTES, b"\0")
                if not self._pending:
                    self._said.set()
                await self.ws.send(frame)
                sent += 1
                await asyncio.sleep(max(0.0, start + sent * 0.02 - loop.time()))

    async def say(self, text: str, *, then_ms: int = 0) -> None:
        """Speak ``text`` (piper) into the call in real time; return once it has been sent
        (and ``then_ms`` of silence after it)."""
        audio = np.concatenate([spoken_16k(text), silence_16k(then_ms)])
        self._said.clear()
        self._pending += audio.astype("<i2").tobytes()
        await self._said.wait()

    async def press(self, keys: str) -> None:
        """Press ``keys``: their tones in the call's audio (in-band DTMF), in real time."""
        self._said.clear()
        self._pending += keypad_16k(keys).astype("<i2").tobytes()
        await self._said.wait()

    async def until(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 20
    ) -> dict[str, Any]:
        """Wait for the first event (seen or to come) that ``match``es."""
        async with asyncio.timeout(timeout):
            while True:
                for event in self.heard.events:
                    if match(event):
                        return event
                if self.closed.is_set():
                    raise AssertionError(f"closed before the event: {self.heard.names()}")
                await asyncio.sleep(0.02)

    async def send(self, command: dict[str, Any]) -> None:
        """One command."""
        await self.ws.send(json.dumps(command))

    async def ended(self, timeout: float = 30) -> Heard:
        """Wait for the server to close the WebSocket."""
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.heard


# --- sipp -----------------------------------------------------------------------------------------

_INVITE = """
  <send retrans="500">
    <![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: [service] <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      X-Customer: {customer}
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [auto_media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-16
      a=ptime:20

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true" rrs="true"/>
  <send>
    <![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: [service] <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""

_BYE = """
  <send retrans="500">
    <![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: [service] <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
"""

_AWAIT_BYE = """
  <recv request="BYE" timeout="{timeout_ms}"/>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
"""

Step = tuple[str, str | int]
"""``("play", pcap file name)`` or ``("pause", ms)``."""


def uac_scenario(steps: Sequence[Step], *, end: str, customer: str = "none") -> str:
    """A sipp UAC scenario: INVITE (PCMU + telephone-event, ``X-Customer``), the ``steps``,
    then ``end``: ``bye`` (sipp hangs up) or ``await-bye`` (the node must, within 30 s)."""
    body = [_INVITE.format(customer=customer)]
    for kind, value in steps:
        if kind == "play":
            body.append(f'  <nop><action><exec play_pcap_audio="{value}"/></action></nop>\n')
        elif kind == "pause":
            body.append(f'  <pause milliseconds="{int(value)}"/>\n')
        else:
            raise ValueError(f"unknown step {kind!r}")
    if end == "bye":
        body.append(_BYE)
    elif end == "await-bye":
        body.append(_AWAIT_BYE.format(timeout_ms=30000))
    else:
        raise ValueError(f"unknown end {end!r}")
    return (
        '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<!DOCTYPE scenario SYSTEM "sipp.dtd">\n'
        '<scenario name="playbook scenario">' + "".join(body) + "</scenario>\n"
    )


def dumps_of(folder: Path) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Each session dump in ``folder``: its id and its ``(type, content)`` records."""
    for path in sorted(folder.glob("*.events.jsonl")):
        records = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                records.append({"type": record["type"], **json.loads(record["content"])})
        yield path.name.removesuffix(".events.jsonl"), records


def sip_dump(folder: Path, service: str, timeout: float = 15) -> tuple[str, list[dict[str, Any]]]:
    """The dump of the SIP call to ``service``, once it holds the call's ``hangup``."""
    deadline = time.monotonic() + timeout
    while True:
        for session_id, records in dumps_of(folder):
            incoming = [r for r in records if r.get("event") == "incoming"]
            ours = incoming and str(incoming[0].get("callee", "")).startswith(f"sip:{service}@")
            if ours and any(r.get("event") == "hangup" and not r.get("refer") for r in records):
                return session_id, records
        if time.monotonic() > deadline:
            raise AssertionError(f"no ended dump for the call to {service} in {folder}")
        time.sleep(0.1)


# --- /call/webrtc ---------------------------------------------------------------------------------


class Microphone(MediaStreamTrack):
    """A browser's microphone (aiortc track): 20 ms frames at real-time pace, silence unless
    a line is being said (:meth:`say`)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pending = np.zeros(0, np.int16)
        self._sent = 0
        self._start: float | None = None

    def say(self, text: str, then_ms: int = 300) -> None:
        """Speak ``text`` (piper) next, then ``then_ms`` of silence."""
        line = np.concatenate([spoken_16k(text), silence_16k(then_ms)])
        self._pending = np.concatenate([self._pending, line])

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms frame, when it is due."""
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        await asyncio.sleep(max(0.0, self._start + self._sent / 16000 - loop.time()))
        chunk, self._pending = self._pending[:320], self._pending[320:]
        chunk = np.concatenate([chunk, np.zeros(320 - len(chunk), np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, 16000)
        self._sent += 320
        return frame


class Browser:
    """A browser's side of ``/call/webrtc``: an aiortc peer connection with a
    :class:`Microphone`, and the control WebSocket."""

    def __init__(self, ws: ClientConnection, pc: RTCPeerConnection, mic: Microphone) -> None:
        self.ws = ws
        self.pc = pc
        self.microphone = mic

    async def answered(self, sdp: str) -> None:
        """The server's ``answer`` SDP: media flows."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))


@contextlib.asynccontextmanager
async def browser_call(http_port: int, session_id: str) -> AsyncIterator[Browser]:
    """A browser joining ``session_id`` on ``/call/webrtc`` (its offer goes with ``invite``)."""
    pc = RTCPeerConnection()
    microphone = Microphone()
    pc.addTransceiver(microphone, direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    url = f"ws://127.0.0.1:{http_port}/call/webrtc?id={session_id}"
    try:
        async with connect(url) as ws:
            option = {"offer": pc.localDescription.sdp}
            await ws.send(json.dumps({"command": "invite", "option": option}))
            yield Browser(ws, pc, microphone)
    finally:
        await pc.close()
