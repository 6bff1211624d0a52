"""WebRTC load: N concurrent aiortc browser calls on ``/call/webrtc`` streaming speech.

The script starts ``activecall serve`` itself (127.0.0.1, free ports, no STUN server: the
machine has no network and loopback needs none), then for each N of the sweep runs the
clients in separate generator processes (``--per-proc`` clients each; aiortc clients cost about
as much CPU as the server's side of the call, so the generators' CPU is measured and reported;
they run on the CPUs no worker is pinned to when there are any, so with one worker on this
2-CPU machine the worker's CPU is the server's and the other one the clients').
Each client is what a browser does: an ``RTCPeerConnection`` with one ``sendrecv`` audio
transceiver (Opus, the browser default, or ``--codec pcmu``), its offer after full gathering,
``invite{offer, vad:{}}`` on ``ws://…/call/webrtc``, the ``answer`` applied, then its
microphone streams the 60 s test speech (``tests/data/speech_60s_16k.flac``, looping) at real
time while the server's audio is received and played to nowhere. Client i starts its speech
about 300 ms before sentence ``5i mod 14`` (each client from a different offset). Clients are
ramped (``--ramp`` per second); the *steady window* opens ``SETTLE_S`` after the last client
was due and lasts ``--duration`` seconds; at the end every client sends ``hangup``.

Measured per N:

* setup: invite sent → ``answer`` received (the server gathers ICE fully before answering),
  → the client's connection ``connected`` (ICE + DTLS), → first ``speaking`` (that one also
  holds the ~300 ms of lead-in audio before the first sentence and the 250 ms speechPadding).
* server CPU: user+sys of the server's process tree (supervisor + workers), psutil, over the
  steady window, divided by the call-seconds streamed in it. Generator CPU likewise.
* VAD latency, per ``silence`` event whose segment end the client captured inside the window:
  ``arrival − capture(E) − silencePadding``, where ``capture(m)`` is the wall-clock time the
  client's microphone track handed the frame carrying media time m to aiortc's encoder. So it
  covers client encoding, SRTP, loopback UDP, aiortc's jitter buffer and decoder, the worker's
  resampler and VAD, the rings and the WebSocket. To map server media times to the client's,
  each client rebuilds offline exactly what the worker's VAD heard: its own frames through
  aiortc's encoder and decoder for the negotiated codec and the worker's ``CallerAudio``
  (stereo 48 kHz → mono 16 kHz), then our VAD (TinySilero + ``VadProcessor``). The server's
  media epoch is recovered as ``bench.load_ws`` does (the 32 ms grid and the exact (start,
  duration) matches with that reference); the codec's own delay (Opus lookahead 6.5 ms; 0 for
  PCMU), measured by cross-correlating the rebuilt audio with the sent audio, is then taken
  off. *after-send* is ``arrival − capture(frame with the last sample of the deciding chunk)``.
* segments: sentences (``tests/data/speech_60s_16k.json``) a client sent whole with their end
  inside the window; received when a ``silence`` segment overlaps one (as ``bench.load_ws``).
* worker tick lag: ``activecall_tick_lag_p99_us`` of every worker from ``GET /metrics``,
  scraped every 0.5 s through the window (each value is the p99 of one 500 ms heartbeat
  interval); the worst value is reported.
* after each point: calls the server still lists, UDP sockets its processes still hold beyond
  those held before the point, its resident memory, and the WARNING/ERROR lines it logged.

A point *holds* when every call connected and lasted until its hangup, no expected segment is
missing, VAD latency p99 ≤ 250 ms and the worst worker tick lag p99 < 20 ms. The latency bound
is ``bench.load_ws``'s 100 ms plus what the WebRTC path costs before any load, about 150 ms:

* the *transport floor*, about 120 ms from a client's capture of a frame to the frame being
  ready for the worker: aiortc's encoder emits a frame's packet only when the next frame comes
  in (its resampler holds one 20 ms frame), aiortc's audio jitter buffer releases a frame only
  once four more are in (80 ms), and the encoder-executor and decoder-thread hops add the rest.
  The script measures it first (one call in-process: capture → frame ready in
  ``WebRtcPeer.pop_frames``) and reports it;
* one more tick (20 ms): the worker's tick runs the batched VAD before the sessions' ``tick``
  pulls the WebRTC audio (``WebRtcSession._pull_media``), so pulled audio waits for the next
  tick's VAD, while ``/call`` audio read from the ring between ticks is in the first one;

rounded up. A failing point measured while other processes used more than 25 % of a CPU is
measured again (``--retries``), and before each point the script waits (``--quiet-wait``) for
other processes to calm down; a sweep stops at the first point that does not hold.

Run: ``.venv/bin/python -m bench.load_webrtc [--duration 30] [--sweep 2,5,10]
[--workers 1,2] [--codec opus|pcmu]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import math
import multiprocessing
import os
import re
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import av
import numpy as np
import psutil
from aiortc import (
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.codecs import get_decoder, get_encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from activecall._native.silero import VadSession
from activecall.media.vad import Silence, VadProcessor
from activecall.webrtc import WebRtcPeer
from activecall.webrtc.peer import CallerAudio
from bench._common import RESULTS, format_table, load_speech, write_results
from bench.load_ws import (
    CHUNK_MS,
    CHUNK_SAMPLES,
    FRAME_MS,
    FRAME_SAMPLES,
    RATE,
    SILENCE_PADDING_MS,
    SPEECH_MS,
    ServerProcess,
    ServerSpec,
    busy_seconds,
    cpu_delta,
    cpu_seconds,
    load_sentences,
    scrape,
    server_epoch,
    wait_idle,
)

FRAME_S = FRAME_MS / 1000
TIME_BASE = fractions.Fraction(1, RATE)
LEAD_MS = 300  # speech each client sends before its first sentence starts
SETTLE_S = 4.0  # after the last client is due, before the steady window opens
STREAM_TAIL_S = 0.5  # the window's last segments still end while the clients stream on
EVENT_GRACE_S = 1.5  # events in flight are awaited before hanging up
HANGUP_WAIT_S = 10.0
SETUP_TIMEOUT_S = 30.0  # invite → connected, per client
LATENCY_LIMIT_MS = 250.0  # bench.load_ws's 100 ms + what the WebRTC path costs at no load
TICK_LAG_LIMIT_US = 20_000
NOISE_LIMIT_PERCENT = 25.0
SCRAPE_EVERY_S = 0.5
LOG_PROBLEM = re.compile(rb" (WARNING|ERROR|CRITICAL) |Traceback")
CODECS = {"opus": ("audio/opus", 48_000, 2), "pcmu": ("audio/PCMU", 8_000, 1)}
ANSWER_CODEC = {"opus": "opus/48000/2", "pcmu": "PCMU/8000"}


def speech_frames(pcm: np.ndarray) -> np.ndarray:
    """The test speech as 20 ms frames, shape ``(n, 320)`` int16."""
    n = len(pcm) // FRAME_SAMPLES
    return np.ascontiguousarray(pcm[: n * FRAME_SAMPLES].astype(np.int16).reshape(n, -1))


def client_offset(client: int, sentences: Sequence[tuple[int, int]], frames: int) -> int:
    """Where client ``client`` starts (frames into the speech): about ``LEAD_MS`` before
    sentence ``5·client mod S``, 20 ms earlier for each time round the sentences, so no two
    clients share a start."""
    start_ms = sentences[client * 5 % len(sentences)][0]
    lead_ms = LEAD_MS + FRAME_MS * (client // len(sentences))
    return (start_ms - lead_ms) // FRAME_MS % frames


# ---------------------------------------------------------------------------- the server's ear


def codec_parameters(codec: str) -> RTCRtpCodecParameters:
    """aiortc's parameters for the negotiated ``codec`` (``opus`` or ``pcmu``)."""
    mime, clock, channels = CODECS[codec]
    return RTCRtpCodecParameters(mimeType=mime, clockRate=clock, channels=channels)


def server_view(frames: np.ndarray, codec: str) -> np.ndarray:
    """What the worker's VAD hears when a client sends ``frames`` (``(n, 320)`` int16) and no
    packet is lost: aiortc's encoder and decoder for ``codec``, then the worker's
    ``CallerAudio`` (downmix, resample to 16 kHz)."""
    params = codec_parameters(codec)
    encoder, decoder, ear = get_encoder(params), get_decoder(params), CallerAudio()
    out: list[np.ndarray] = []
    for k, pcm in enumerate(frames):
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, k * FRAME_SAMPLES, TIME_BASE
        payloads, timestamp = encoder.encode(frame)
        for payload in payloads:
            for decoded in decoder.decode(JitterFrame(data=payload, timestamp=timestamp)):
                assert isinstance(decoded, av.AudioFrame)
                samples = decoded.to_ndarray().astype(np.int16)
                # planar frames are (channels, samples); packed ones are interleaved already
                samples = samples.T.reshape(-1) if decoded.format.is_planar else samples.ravel()
                channels = len(decoded.layout.channels)
                out.extend(ear.push(samples, channels, decoded.rate))
    return np.concatenate(out) if out else np.zeros(0, np.int16)


def codec_delay(frames: np.ndarray, codec: str, seconds: int = 10) -> int:
    """Samples (16 kHz) by which the server's audio lags the client's for ``codec``: the lag
    that best correlates :func:`server_view` with what was sent."""
    sent = frames[: seconds * 1000 // FRAME_MS].reshape(-1).astype(np.float64)
    heard = server_view(frames[: len(sent) // FRAME_SAMPLES], codec).astype(np.float64)
    m = min(len(sent), len(heard)) - 800
    scores = [float(np.dot(heard[lag : lag + m], sent[:m])) for lag in range(800)]
    return int(np.argmax(scores))


def reference_segments(heard: np.ndarray) -> set[tuple[int, int]]:
    """(start, duration) in media ms of the segments our VAD finds in ``heard``."""
    vad = VadProcessor()
    out: set[tuple[int, int]] = set()
    for i, p in enumerate(VadSession().process(heard)):
        for ev in vad.process(float(p), i * CHUNK_MS):
            if isinstance(ev, Silence):
                out.add((ev.start_time, ev.duration))
    return out


def answer_codec(sdp: str) -> str:
    """The first codec of the answer's audio section (``opus/48000/2``, ``PCMU/8000``, …)."""
    lines = sdp.splitlines()
    media = next((ln.split() for ln in lines if ln.startswith("m=audio")), [])
    if len(media) < 4:
        return "none"
    for ln in lines:
        if ln.startswith(f"a=rtpmap:{media[3]} "):
            return ln.split(" ", 1)[1].strip()
    return media[3]


# ---------------------------------------------------------------------------- the generator


@dataclass(frozen=True, slots=True)
class Plan:
    """What one generator process does, with absolute wall-clock times (epoch seconds)."""

    url: str
    clients: tuple[int, ...]  # global client indices handled by this process
    codec: str
    ramp: float  # clients per second, over all processes
    t_begin: float  # client i is due at t_begin + i / ramp
    steady_start: float
    steady_end: float
    stop: float  # hang up after this (and EVENT_GRACE_S)
    cpus: tuple[int, ...]  # where the process may run; empty: anywhere


class Microphone(MediaStreamTrack):
    """The browser's microphone: ``frames`` from ``offset`` (looping) at real-time pace. It
    stamps the wall time each frame is handed to aiortc's encoder, and its lateness."""

    kind = "audio"

    def __init__(self, frames: np.ndarray, offset: int, capacity: int) -> None:
        super().__init__()
        self.frames, self.offset = frames, offset
        self.send_times = np.zeros(capacity)  # epoch seconds, per frame
        self.lateness = np.zeros(capacity)  # seconds behind the 20 ms schedule, per frame
        self.sent = 0
        self._t0: float | None = None

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms frame, at its time (aiortc's sender calls this in a loop)."""
        if self.readyState != "live":
            raise MediaStreamError
        k = self.sent
        if self._t0 is None:
            self._t0 = time.monotonic()
        due = self._t0 + k * FRAME_S
        # time.monotonic, not loop.time(): uvloop's clock is whole milliseconds
        while (delay := due - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        pcm = self.frames[(self.offset + k) % len(self.frames)]
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, k * FRAME_SAMPLES, TIME_BASE
        if k < len(self.send_times):
            self.send_times[k] = time.time()
            self.lateness[k] = time.monotonic() - due
        self.sent = k + 1
        return frame

    @property
    def stamped(self) -> int:
        """Frames captured and stamped."""
        return min(self.sent, len(self.send_times))


@dataclass(slots=True)
class Client:
    """One browser call: its speech offset, microphone, signalling record and outcome."""

    index: int
    offset: int  # frames into the speech
    mic: Microphone
    pc: RTCPeerConnection | None = None
    ws: Any = None
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    error: str = ""
    answer_sdp: str = ""
    t_invite: float = math.nan
    t_answer: float = math.nan
    t_connected: float = math.nan
    heard: int = 0  # frames of server audio received inside the steady window
    hangup_sent: bool = False
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def fail(self, reason: str) -> None:
        """Record the first reason this call failed and stop waiting for it."""
        self.error = self.error or reason
        self.ended.set()


async def _until(flag: asyncio.Event, abort: asyncio.Event) -> bool:
    """Wait for ``flag`` or ``abort``; whether ``flag`` is set."""
    waits = [asyncio.ensure_future(flag.wait()), asyncio.ensure_future(abort.wait())]
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return flag.is_set()


class Generator:
    """The browser calls of one process."""

    def __init__(self, plan: Plan, frames: np.ndarray, offsets: dict[int, int]) -> None:
        self.plan = plan
        capacity = int((plan.stop - plan.t_begin + EVENT_GRACE_S + HANGUP_WAIT_S) / FRAME_S)
        self.clients = [
            Client(i, offsets[i], Microphone(frames, offsets[i], capacity)) for i in plan.clients
        ]
        self.finished = asyncio.Event()
        self._listeners: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Ramp, stream until ``plan.stop``, wait for late events, hang everyone up."""
        tasks = [asyncio.create_task(self._call(c)) for c in self.clients]
        try:
            await asyncio.sleep(max(0.0, self.plan.stop - time.time()) + EVENT_GRACE_S)
            live = [c for c in self.clients if c.connected.is_set() and not c.ended.is_set()]
            for c in live:
                c.hangup_sent = True
                with contextlib.suppress(Exception):
                    await c.ws.send('{"command":"hangup"}')
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HANGUP_WAIT_S):
                    for c in live:
                        await c.ended.wait()
            for c in live:
                if not any(e.get("event") == "hangup" for _, e in c.events):
                    c.error = c.error or "no hangup event after our hangup"
        finally:
            self.finished.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HANGUP_WAIT_S):
                    await asyncio.gather(*tasks, return_exceptions=True)
            for t in [*tasks, *self._listeners]:
                t.cancel()
            await asyncio.gather(*tasks, *self._listeners, return_exceptions=True)

    async def _call(self, c: Client) -> None:
        due = self.plan.t_begin + c.index / self.plan.ramp
        await asyncio.sleep(max(0.0, due - time.time()))
        reader: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(SETUP_TIMEOUT_S):
                reader = await self._setup(c)
            await self.finished.wait()
        except Exception as exc:  # a failed call is a result, not a crash
            c.fail(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        finally:
            if c.ws is not None:
                with contextlib.suppress(Exception):
                    await c.ws.close()
            if reader is not None:
                reader.cancel()
            if c.pc is not None:
                await c.pc.close()

    async def _setup(self, c: Client) -> asyncio.Task[None]:
        c.pc = pc = RTCPeerConnection()  # no ICE servers: host candidates on loopback
        _prefer(pc.addTransceiver(c.mic, direction="sendrecv"), self.plan.codec)
        pc.on("track", lambda track: self._listen(c, track))
        pc.on("connectionstatechange", lambda: self._on_state(c, pc))
        await pc.setLocalDescription(await pc.createOffer())
        url = f"{self.plan.url}?id=webrtc-load-{c.index}-{int(time.time() * 1000)}&dump=false"
        c.ws = await connect(url, compression=None, ping_interval=None, close_timeout=1)
        option = {"offer": pc.localDescription.sdp, "vad": {}}
        c.t_invite = time.time()
        await c.ws.send(json.dumps({"command": "invite", "option": option}))
        reader = asyncio.create_task(self._read(c))
        if not await _until(c.answered, c.ended):
            raise RuntimeError(c.error or "no answer")
        got = answer_codec(c.answer_sdp)
        if got != ANSWER_CODEC[self.plan.codec]:
            raise RuntimeError(f"answer has {got}, not {ANSWER_CODEC[self.plan.codec]}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=c.answer_sdp, type="answer"))
        if not await _until(c.connected, c.ended):
            raise RuntimeError(c.error or "not connected")
        return reader

    def _on_state(self, c: Client, pc: RTCPeerConnection) -> None:
        state = pc.connectionState
        if state == "connected" and math.isnan(c.t_connected):
            c.t_connected = time.time()
            c.connected.set()
        elif state == "failed":
            c.fail("the peer connection failed (ICE or DTLS)")
        elif state == "closed" and not c.hangup_sent and not self.finished.is_set():
            c.fail("the peer connection closed before our hangup")

    def _listen(self, c: Client, track: Any) -> None:
        lo, hi = self.plan.steady_start, self.plan.steady_end

        async def play() -> None:  # the browser plays the agent's audio: here, to nowhere
            with contextlib.suppress(MediaStreamError):
                while True:
                    await track.recv()
                    c.heard += lo <= time.time() < hi

        task = asyncio.ensure_future(play())
        self._listeners.add(task)

    async def _read(self, c: Client) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in c.ws:
                arrival = time.time()
                if isinstance(message, bytes):
                    continue
                event = json.loads(message)
                c.events.append((arrival, event))
                name = event.get("event")
                if name == "answer":
                    c.t_answer = arrival
                    c.answer_sdp = str(event.get("sdp", ""))
                    c.answered.set()
                elif name == "error":
                    c.fail(f"error event ({event.get('sender')}): {event.get('error')}")
                elif name == "hangup":
                    if not c.hangup_sent:
                        c.fail(f"server hung up: {event.get('reason')}")
                    c.ended.set()
        if not c.hangup_sent:
            c.fail("the WebSocket closed before our hangup")
        c.ended.set()


# ---------------------------------------------------------------------------- analysis


@dataclass(slots=True)
class Tally:
    """The measurements of one generator process (or several, merged)."""

    clients: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # failure reason -> calls
    call_seconds: float = 0.0  # captured inside the steady window
    heard_per_s: list[float] = field(default_factory=list)  # server frames per s, per call
    answer_ms: list[float] = field(default_factory=list)
    connected_ms: list[float] = field(default_factory=list)
    speaking_ms: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    after_send_ms: list[float] = field(default_factory=list)
    first_frame_ms: list[float] = field(default_factory=list)
    lateness_ms: list[float] = field(default_factory=list)  # microphone, inside the window
    expected: int = 0
    received: int = 0
    silences: int = 0
    reference_matches: int = 0
    unpaired: int = 0
    codec_delay_samples: int = 0

    def merge(self, other: Tally) -> None:
        """Add another process's tally."""
        for name in (
            "clients",
            "failed",
            "expected",
            "received",
            "silences",
            "reference_matches",
            "unpaired",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.call_seconds += other.call_seconds
        for reason, count in other.errors.items():
            self.errors[reason] = self.errors.get(reason, 0) + count
        for name in (
            "heard_per_s",
            "answer_ms",
            "connected_ms",
            "speaking_ms",
            "latency_ms",
            "after_send_ms",
            "first_frame_ms",
            "lateness_ms",
        ):
            getattr(self, name).extend(getattr(other, name))
        self.codec_delay_samples = other.codec_delay_samples


def percentile(values: Sequence[float], q: float) -> float:
    """Percentile ``q`` of ``values``; NaN when empty."""
    return float(np.percentile(values, q)) if len(values) else math.nan


def analyse_client(
    c: Client,
    frames: np.ndarray,
    plan: Plan,
    delay: int,
    sentences: Sequence[tuple[int, int]],
    tally: Tally,
) -> None:
    """Add one finished call's setup times, latencies and segments to ``tally``."""
    n = c.mic.stamped
    sent = c.mic.send_times[:n]
    lo, hi = plan.steady_start, plan.steady_end
    inside = (sent >= lo) & (sent < hi)
    tally.call_seconds += float(np.count_nonzero(inside)) * FRAME_S
    tally.lateness_ms += (c.mic.lateness[:n][inside] * 1000).tolist()
    tally.answer_ms.append((c.t_answer - c.t_invite) * 1000)
    tally.connected_ms.append((c.t_connected - c.t_invite) * 1000)
    speaking = [t for t, e in c.events if e.get("event") == "speaking"]
    if speaking:
        tally.speaking_ms.append((speaking[0] - c.t_invite) * 1000)
    tally.heard_per_s.append(c.heard / (hi - lo))
    if n == 0:
        return
    stream = frames[(c.offset + np.arange(n)) % len(frames)]
    reference = reference_segments(server_view(stream, plan.codec))
    starts = {e["startTime"] for _, e in c.events if e.get("event") == "speaking"}
    silences = [(t, e) for t, e in c.events if e.get("event") == "silence" and "duration" in e]
    pairs = [(int(e["startTime"]), int(e["duration"])) for _, e in silences]
    epoch, _, exact = server_epoch(float(sent[0]), pairs, reference)
    tally.silences += len(pairs)
    tally.reference_matches += exact
    segments: list[tuple[float, float]] = []
    if epoch is not None:
        tally.first_frame_ms.append(epoch - float(sent[0]) * 1000)
        shift_ms = delay * 1000 / RATE  # server media ms → the client's
        decide_ms = math.ceil(SILENCE_PADDING_MS / CHUNK_MS) * CHUNK_MS
        for arrival, e in silences:
            start = e["startTime"] - epoch
            stop = start + e["duration"]
            segments.append((start - shift_ms, stop - shift_ms))
            tally.unpaired += e["startTime"] not in starts
            k_end = math.floor((stop - shift_ms) / FRAME_MS)
            last = (stop + decide_ms) * RATE // 1000 + CHUNK_SAMPLES - 1 - delay
            k_decide = last // FRAME_SAMPLES
            if not 0 <= k_end < n or not lo <= sent[k_end] < hi:
                continue
            tally.latency_ms.append((arrival - sent[k_end]) * 1000 - SILENCE_PADDING_MS)
            if k_decide < n:
                tally.after_send_ms.append((arrival - sent[k_decide]) * 1000)
    offset_ms = c.offset * FRAME_MS
    for j in range(offset_ms // SPEECH_MS, (offset_ms + n * FRAME_MS) // SPEECH_MS + 1):
        for s_ms, e_ms in sentences:
            s_m, e_m = s_ms + j * SPEECH_MS - offset_ms, e_ms + j * SPEECH_MS - offset_ms
            k = e_m // FRAME_MS
            if s_m < 0 or k >= n or not lo <= sent[k] < hi:
                continue
            tally.expected += 1
            tally.received += any(a < e_m + 64 and b > s_m - 32 for a, b in segments)


def analyse(gen: Generator, frames: np.ndarray) -> Tally:
    """Everything one generator process measured, reduced to a :class:`Tally`."""
    sentences = load_sentences()
    delay = codec_delay(frames, gen.plan.codec)
    tally = Tally(clients=len(gen.clients), codec_delay_samples=delay)
    for c in gen.clients:
        if c.error or not c.connected.is_set():
            tally.failed += 1
            reason = c.error or "never connected"
            tally.errors[reason] = tally.errors.get(reason, 0) + 1
            continue
        analyse_client(c, frames, gen.plan, delay, sentences, tally)
    return tally


def generator_main(conn: Connection) -> None:
    """Entry point of a generator process: report ready, take a :class:`Plan`, send a Tally."""
    with contextlib.suppress(KeyboardInterrupt):
        import logging

        import uvloop

        logging.basicConfig(level=logging.ERROR)
        frames = speech_frames(load_speech())
        sentences = load_sentences()
        conn.send("ready")
        plan: Plan = conn.recv()
        if plan.cpus:
            os.sched_setaffinity(0, plan.cpus)
        offsets = {i: client_offset(i, sentences, len(frames)) for i in plan.clients}

        async def main() -> Tally:
            gen = Generator(plan, frames, offsets)
            await gen.run()
            return analyse(gen, frames)

        try:
            conn.send(uvloop.run(main()))
        except Exception as exc:  # reported to the orchestrator, which stops the sweep
            conn.send(f"generator failed: {type(exc).__name__}: {exc}")


async def _transport_floor(codec: str, seconds: float) -> list[float]:
    frames = speech_frames(load_speech())
    mic = Microphone(frames, 0, int(seconds / FRAME_S) + 100)
    pc = RTCPeerConnection()
    transceiver = pc.addTransceiver(mic, direction="sendrecv")
    _prefer(transceiver, codec)
    peer = WebRtcPeer([])
    delay = codec_delay(frames, codec)
    out: list[float] = []
    try:
        await pc.setLocalDescription(await pc.createOffer())
        answer = await peer.answer(pc.localDescription.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        got, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            new = len(peer.pop_frames())
            got += new
            # the newest frame the peer just got: the captured frame holding its last sample
            k = (got * FRAME_SAMPLES - 1 - delay) // FRAME_SAMPLES
            if new and 0 <= k < mic.stamped:
                out.append((time.time() - mic.send_times[k]) * 1000)
            await asyncio.sleep(0.001)
    finally:
        await pc.close()
        await peer.close()
    return out


def transport_floor(codec: str, seconds: float = 5.0) -> list[float]:
    """ms from a client's capture of a frame to that frame being ready for the worker's tick
    (``WebRtcPeer.pop_frames``), for one call in this process polled every ms: the delay
    WebRTC adds before the VAD hears anything."""
    return asyncio.run(_transport_floor(codec, seconds))


def _prefer(transceiver: Any, codec: str) -> None:
    """Offer only ``codec`` (a browser offers Opus first, which ``opus`` keeps)."""
    if codec != "opus":
        mime = CODECS[codec][0]
        codecs = RTCRtpSender.getCapabilities("audio").codecs
        transceiver.setCodecPreferences([x for x in codecs if x.mimeType == mime])


# ---------------------------------------------------------------------------- the server


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class WebRtcServer(ServerProcess):
    """``activecall serve`` with a config for loopback WebRTC: no STUN server (no network
    here, and host candidates suffice), SIP on a free port of 127.0.0.1."""

    def start(self, timeout: float = 120.0) -> None:
        """Write the config, start, wait for ``GET /health``."""
        self.config = self.workdir / f"{self.spec.label}.toml"
        self.config.write_text(
            f'ice_servers = []\naddr = "127.0.0.1"\nudp_port = {free_udp_port()}\n'
        )
        super().start(timeout)

    def command(self) -> list[str]:
        """The serve command line, with the config."""
        return [*super().command(), "--conf", str(self.config)]

    def worker_cpus(self) -> set[int]:
        """The CPUs the server's workers are pinned to (processes allowed on one CPU only)."""
        cpus: set[int] = set()
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                allowed = p.cpu_affinity()
                if len(allowed) == 1:
                    cpus.update(allowed)
        return cpus

    def pinned_neighbours(self, cpus: set[int], exclude: set[int]) -> dict[int, int]:
        """Per CPU of ``cpus``: other processes pinned to it alone (not the server's, not in
        ``exclude``), e.g. the workers of other activecall servers on a shared machine."""
        ours = {p.pid for p in self.processes()} | exclude
        out = dict.fromkeys(sorted(cpus), 0)
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                allowed = p.cpu_affinity()
                if p.pid not in ours and len(allowed) == 1 and allowed[0] in out and p.cmdline():
                    out[allowed[0]] += 1
        return out

    def udp_sockets(self) -> int:
        """UDP sockets the server's processes hold (WebRTC peers hold one per candidate)."""
        count = 0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                count += len(p.net_connections(kind="udp"))
        return count

    def rss_mb(self) -> float:
        """Resident memory of the server's processes, MB."""
        total = 0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total / 2**20

    def log_size(self) -> int:
        """Bytes in the server log so far."""
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def log_problems(self, since: int) -> list[str]:
        """WARNING/ERROR/Traceback lines logged after byte ``since``, timestamps cut off."""
        try:
            with self.log.open("rb") as f:
                f.seek(since)
                lines = f.read().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            if LOG_PROBLEM.search(line):
                text = line.decode(errors="replace")
                out.append(re.sub(r"^\S+ \S+ ", "", text))  # drop the date and time
        return out


def tick_lags_us(metrics: dict[str, float]) -> list[float]:
    """Every worker's ``activecall_tick_lag_p99_us`` in one scrape."""
    return [v for k, v in metrics.items() if k.split("{")[0] == "activecall_tick_lag_p99_us"]


def active_calls(metrics: dict[str, float]) -> float:
    """``activecall_active_calls``; NaN when the scrape failed."""
    return metrics.get("activecall_active_calls", math.nan)


# ---------------------------------------------------------------------------- one point


@dataclass(slots=True)
class Point:
    """One (workers, N) measurement."""

    workers: int
    n: int
    procs: int
    tally: Tally
    server_cpu_s: float
    root_cpu_s: float  # of which the supervisor
    generator_cpu_s: float
    other_cpu_s: float
    window_s: float
    tick_lag_us: list[float]  # every worker's interval p99, every scrape in the window
    calls_left: float
    udp_left: int
    rss_mb: float
    log_problems: list[str]
    generator_cpus: tuple[int, ...]
    neighbours: dict[int, int]  # worker CPU -> other processes pinned to it
    retried: str = ""

    @property
    def cpu_ms_per_call_s(self) -> float:
        return self.server_cpu_s * 1000 / max(self.tally.call_seconds, 1e-9)

    @property
    def worst_tick_lag_ms(self) -> float:
        return max(self.tick_lag_us) / 1000 if self.tick_lag_us else math.nan

    @property
    def failures(self) -> list[str]:
        """Why the point does not hold; empty when it does."""
        t = self.tally
        out = []
        if t.failed:
            out.append(f"{t.failed} calls failed")
        if t.received < t.expected or not t.expected:
            out.append("segments missing")
        if not percentile(t.latency_ms, 99) <= LATENCY_LIMIT_MS:
            out.append(f"p99 > {LATENCY_LIMIT_MS:.0f} ms")
        if not self.worst_tick_lag_ms < TICK_LAG_LIMIT_US / 1000:
            out.append(f"tick lag ≥ {TICK_LAG_LIMIT_US // 1000} ms")
        return out

    @property
    def holds(self) -> bool:
        return not self.failures


def wait_quiet(server: WebRtcServer, limit_s: float) -> float:
    """Wait (at most ``limit_s``) until processes other than the server use under
    ``NOISE_LIMIT_PERCENT`` of a CPU over 2 s; the last such share (%)."""
    deadline = time.monotonic() + limit_s
    while True:
        cpu0, busy0 = cpu_seconds(server.processes()), busy_seconds()
        time.sleep(2.0)
        cpu1, busy1 = cpu_seconds(server.processes()), busy_seconds()
        other = max(0.0, busy1 - busy0 - cpu_delta(cpu0, cpu1)) * 100 / 2.0
        if other < NOISE_LIMIT_PERCENT or time.monotonic() >= deadline:
            return other


def _receive(conn: Connection, timeout: float) -> object:
    """The next message from a generator process, or RuntimeError if none comes in time."""
    if not conn.poll(timeout):
        raise RuntimeError(f"a generator process said nothing for {timeout:.0f} s")
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError("a generator process died") from None


def run_point(server: WebRtcServer, n: int, args: argparse.Namespace, udp_before: int) -> Point:
    """Load ``server`` with ``n`` browser calls for one steady window."""
    procs = max(1, math.ceil(n / args.per_proc))
    cpus: tuple[int, ...] = ()
    if args.generator_cpus == "auto":  # the CPUs no worker is pinned to, if there are any
        cpus = tuple(sorted(os.sched_getaffinity(0) - server.worker_cpus()))
    ctx = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    gens: list[Any] = []
    log_mark = server.log_size()
    lags: list[float] = []
    try:
        for _ in range(procs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=generator_main, args=(child,), daemon=True)
            p.start()
            child.close()
            pipes.append(parent)
            gens.append(p)
        for conn in pipes:
            if _receive(conn, 120.0) != "ready":
                raise RuntimeError("a generator process did not start")
        t_begin = time.time() + 0.5
        steady_start = t_begin + n / args.ramp + SETTLE_S
        steady_end = steady_start + args.duration
        stop = steady_end + STREAM_TAIL_S
        for i, conn in enumerate(pipes):
            conn.send(
                Plan(
                    url=server.url("ws", "/call/webrtc"),
                    clients=tuple(range(i, n, procs)),
                    codec=args.codec,
                    ramp=args.ramp,
                    t_begin=t_begin,
                    steady_start=steady_start,
                    steady_end=steady_end,
                    stop=stop,
                    cpus=cpus,
                )
            )
        gen_ps = [psutil.Process(p.pid) for p in gens]
        neighbours = server.pinned_neighbours(server.worker_cpus(), {p.pid for p in gens})
        time.sleep(max(0.0, steady_start - time.time()))
        cpu0, gcpu0, busy0 = cpu_seconds(server.processes()), cpu_seconds(gen_ps), busy_seconds()
        while (left := steady_end - time.time()) > 0:
            time.sleep(min(SCRAPE_EVERY_S, left))
            lags += tick_lags_us(scrape(server))
        cpu1, gcpu1, busy1 = cpu_seconds(server.processes()), cpu_seconds(gen_ps), busy_seconds()
        tally = Tally()
        budget = stop - time.time() + EVENT_GRACE_S + 3 * HANGUP_WAIT_S + 60 + 2 * n
        for conn in pipes:
            result = _receive(conn, max(budget, 1.0))
            if not isinstance(result, Tally):
                raise RuntimeError(str(result))
            tally.merge(result)
    finally:
        for p in gens:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
    calls_left, udp_left = math.nan, 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the server releases calls and ports on its own
        calls_left, udp_left = active_calls(scrape(server)), server.udp_sockets() - udp_before
        if calls_left == 0 and udp_left <= 0:
            break
        time.sleep(0.5)
    server_cpu, generator_cpu = cpu_delta(cpu0, cpu1), cpu_delta(gcpu0, gcpu1)
    root = server.root_pid
    return Point(
        workers=server.spec.workers,
        n=n,
        procs=procs,
        tally=tally,
        server_cpu_s=server_cpu,
        root_cpu_s=cpu1.get(root, 0.0) - cpu0.get(root, 0.0),
        generator_cpu_s=generator_cpu,
        other_cpu_s=max(0.0, busy1 - busy0 - server_cpu - generator_cpu),
        window_s=args.duration,
        tick_lag_us=lags,
        calls_left=calls_left,
        udp_left=max(0, udp_left),
        rss_mb=server.rss_mb(),
        log_problems=server.log_problems(log_mark),
        generator_cpus=cpus,
        neighbours=neighbours,
    )


# ---------------------------------------------------------------------------- output

HEADERS = (
    "workers",
    "N",
    "CPU ms per call-s",
    "server CPU % (supervisor + workers)",
    "generator CPU % (procs)",
    "other CPU %",
    "setup ms p50 / p99: answer, connected, first speaking",
    "VAD latency p50 / p99 ms",
    "after-send p50 / p99 ms",
    "segments expected / received",
    "worst tick lag p99 ms",
    "client mic lateness p99 ms",
    "failed calls",
    "left after hangup: calls, UDP",
    "server RSS MB",
    "holds",
)


def _pair(values: Sequence[float]) -> str:
    return f"{percentile(values, 50):.0f} / {percentile(values, 99):.0f}"


def row(pt: Point) -> list[object]:
    """One table row."""
    t = pt.tally
    total = pt.server_cpu_s * 100 / pt.window_s
    root = pt.root_cpu_s * 100 / pt.window_s
    setup = ", ".join(_pair(v) for v in (t.answer_ms, t.connected_ms, t.speaking_ms))
    return [
        pt.workers,
        pt.n,
        f"{pt.cpu_ms_per_call_s:.1f}",
        f"{total:.0f} ({root:.0f} + {total - root:.0f})",
        f"{pt.generator_cpu_s * 100 / pt.window_s:.0f} ({pt.procs})",
        f"{pt.other_cpu_s * 100 / pt.window_s:.0f}",
        setup,
        _pair(t.latency_ms),
        _pair(t.after_send_ms),
        f"{t.expected} / {t.received}",
        f"{pt.worst_tick_lag_ms:.1f}",
        f"{percentile(t.lateness_ms, 99):.0f}",
        t.failed,
        f"{pt.calls_left:.0f}, {pt.udp_left}",
        f"{pt.rss_mb:.0f}",
        "no: " + ", ".join(pt.failures) if pt.failures else "yes",
    ]


def chart(name: str, points: Sequence[Point]) -> Path:
    """Against N, one line per worker count: server CPU per call-second, p99 VAD latency,
    the worst worker tick lag p99 (both with their bounds) and p99 setup times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    (ax_cpu, ax_lat), (ax_tick, ax_setup) = axes
    for workers in dict.fromkeys(p.workers for p in points):
        run = [p for p in points if p.workers == workers]
        ns = [p.n for p in run]
        label = f"{workers} worker{'s' if workers > 1 else ''}"
        ax_cpu.plot(ns, [p.cpu_ms_per_call_s for p in run], marker="o", label=label)
        ax_lat.plot(ns, [percentile(p.tally.latency_ms, 99) for p in run], marker="o", label=label)
        ax_tick.plot(ns, [p.worst_tick_lag_ms for p in run], marker="o", label=label)
        connected = [percentile(p.tally.connected_ms, 99) for p in run]
        line = ax_setup.plot(ns, connected, marker="o", label=f"{label}: connected")
        ax_setup.plot(
            ns,
            [percentile(p.tally.answer_ms, 99) for p in run],
            marker="s",
            linestyle="--",
            color=line[0].get_color(),
            label=f"{label}: answer",
        )
    for ax, bound in ((ax_lat, LATENCY_LIMIT_MS), (ax_tick, TICK_LAG_LIMIT_US / 1000)):
        ax.axhline(bound, color="grey", linestyle="--", linewidth=1)
        top = max((v for line in ax.get_lines() for v in line.get_ydata()), default=bound)
        ax.set_ylim(0, max(bound * 1.3, float(top) * 1.05))
    ax_cpu.set(xlabel="concurrent calls N", ylabel="server CPU ms per call-second")
    ax_lat.set(xlabel="concurrent calls N", ylabel="p99 VAD latency (ms)")
    ax_tick.set(xlabel="concurrent calls N", ylabel="worst 500 ms interval p99 (ms)")
    ax_setup.set(xlabel="concurrent calls N", ylabel="p99 ms after invite")
    ax_cpu.set_title("Server CPU per WebRTC call (supervisor + workers)")
    ax_lat.set_title("p99 silence-event latency (bound dashed)")
    ax_tick.set_title("Worker tick lag (bound dashed)")
    ax_setup.set_title("Setup: invite → answer / connected")
    for ax in (ax_cpu, ax_lat, ax_tick, ax_setup):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def notes(points: Sequence[Point], args: argparse.Namespace, floor: Sequence[float]) -> str:
    """The largest N held per worker count, the settings, the definitions, what went wrong."""
    lines = [
        f"Largest N that held (every call connected, no missing segment, VAD latency p99 ≤ "
        f"{LATENCY_LIMIT_MS:.0f} ms, worst worker tick lag p99 < {TICK_LAG_LIMIT_US // 1000} ms):",
        "",
    ]
    for workers in dict.fromkeys(p.workers for p in points):
        run = [p for p in points if p.workers == workers]
        held = [p.n for p in run if p.holds]
        first_fail = next((p for p in run if not p.holds), None)
        tail = f" (N={first_fail.n} did not)" if first_fail else " (no point failed)"
        lines.append(f"- {workers} worker(s): {max(held) if held else 'none'}{tail}")
    delay = next((p.tally.codec_delay_samples for p in points), 0)
    lines += [
        "",
        f"Settings: steady window {args.duration:g} s per point, ramp {args.ramp:g} calls/s, "
        f"up to {args.per_proc} clients per generator process, codec `{args.codec}`, "
        "`invite{offer, vad:{}}` (silencePadding 100 ms), aiortc clients on 127.0.0.1, "
        "no STUN/TURN server, the server's log level `info`.",
        "",
        "- CPU ms per call-s = server tree (supervisor + workers) user+sys over the steady "
        "window / call-seconds captured in it; CPU % columns are of one CPU (the machine has "
        "2). generator CPU = the aiortc client processes (Opus encode + decode, SRTP, ICE "
        "consent, Python); other CPU = the machine's busy time minus both (other engineers' "
        "work, kernel time not charged to a process).",
        "- setup: invite sent → `answer` (the server answers after full ICE gathering), → the "
        "client's peer connection `connected` (ICE + DTLS), → first `speaking` (includes "
        f"~{LEAD_MS} ms of audio before the first sentence and the 250 ms speechPadding).",
        "- VAD latency = `silence` arrival − wall time the client's microphone handed the frame "
        "with the segment end to aiortc − silencePadding: client encoding, SRTP, UDP, "
        "aiortc's jitter buffer, decoding, resampling, the tick, the VAD, rings and WebSocket. "
        "after-send = arrival − capture of the frame with the last sample of the chunk that "
        "decided the end.",
        f"- the bound {LATENCY_LIMIT_MS:.0f} ms = `bench.load_ws`'s 100 ms + what the WebRTC "
        "path costs at no load: the transport floor (aiortc's encoder holds each frame until "
        "the next one, 20 ms; its jitter buffer holds 4 more, 80 ms; executor and "
        "decoder-thread hops), measured by this run with one idle call in-process (capture → "
        f"frame ready in `WebRtcPeer.pop_frames`) at p50 {percentile(floor, 50):.0f} ms, p99 "
        f"{percentile(floor, 99):.0f} ms; plus one 20 ms tick, because the worker runs the "
        "tick's VAD batch before the sessions pull their WebRTC audio; rounded up.",
        f"- server media is mapped to the client's by rebuilding what the worker heard "
        f"(aiortc's encoder and decoder, the worker's CallerAudio) and running our VAD on it: "
        f"codec delay {delay} samples at 16 kHz ({delay / 16:.1f} ms).",
        "- worst tick lag p99 = the largest `activecall_tick_lag_p99_us` of any worker in any "
        "scrape (every 0.5 s) during the window; each value is the p99 of one 500 ms interval.",
        "- client mic lateness = how late the clients' microphone tracks delivered their "
        "frames against the 20 ms schedule (p99 over the window): large values mean the "
        "clients' processes did not get the CPU in time, i.e. the host was saturated.",
        "- other processes pinned to the workers' CPUs (counted when the point starts): "
        "every activecall server pins its worker 0 to the first CPU it may use (CPU 0 here), "
        "so on a shared machine other "
        "people's servers (and their recognizer processes) compete with our worker 0 there "
        "and the OS cannot move either away.",
        "- left after hangup: calls the server still counted and UDP sockets its processes "
        "held beyond those before the point, up to 15 s after the last client closed.",
    ]
    firsts = [d for p in points for d in p.tally.first_frame_ms]
    if firsts:
        lines.append(
            f"- first-frame delay (server media epoch − capture of frame 0): p50 "
            f"{percentile(firsts, 50):.0f} ms, p99 {percentile(firsts, 99):.0f} ms."
        )
    for workers in dict.fromkeys(p.workers for p in points):
        pinned = next(p.generator_cpus for p in points if p.workers == workers)
        where = f"CPU {', '.join(map(str, pinned))}" if pinned else "any CPU"
        lines.append(f"- {workers} worker(s): the generator processes ran on {where}.")
        tallies = [p.tally for p in points if p.workers == workers]
        matches = sum(t.reference_matches for t in tallies)
        total = sum(t.silences for t in tallies)
        unpaired = sum(t.unpaired for t in tallies)
        lines.append(
            f"- {workers} worker(s): {matches} of {total} `silence` events equal (start, "
            f"duration) to the offline rebuild's; {unpaired} without a `speaking` before."
        )
    for p in points:
        heard = percentile(p.tally.heard_per_s, 50)
        over = sum(v >= TICK_LAG_LIMIT_US for v in p.tick_lag_us)
        line = (
            f"- {p.workers} worker(s), N={p.n}: server audio received p50 {heard:.1f} "
            f"frames/s per call; tick lag p99 "
            f"≥ {TICK_LAG_LIMIT_US // 1000} ms in {over} of {len(p.tick_lag_us)} worker "
            f"intervals (median {percentile(p.tick_lag_us, 50) / 1000:.1f} ms); other "
            "processes pinned to the workers' CPUs: "
            + ", ".join(f"CPU {cpu}: {count}" for cpu, count in p.neighbours.items())
        )
        if p.retried:
            line += f"; {p.retried}"
        lines.append(line + ".")
        for reason, count in p.tally.errors.items():
            lines.append(f"  - {count} calls failed: {reason}")
        if p.log_problems:
            distinct = list(dict.fromkeys(p.log_problems))
            lines.append(
                f"  - server log: {len(p.log_problems)} WARNING/ERROR lines, "
                f"{len(distinct)} distinct; first: `{distinct[0][:200]}`"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def sweep(
    workers: int, ns: Sequence[int], args: argparse.Namespace, workdir: Path
) -> Iterator[Point]:
    """Start a server with ``workers`` workers, load it with each N until a point does not
    hold, stop it."""
    server = WebRtcServer(ServerSpec("activecall", workers), workdir)
    try:
        server.start()
        for n in ns:
            for attempt in range(args.retries + 1):
                wait_idle(server)
                other = wait_quiet(server, args.quiet_wait)
                if other >= NOISE_LIMIT_PERCENT:
                    print(f"  other processes still use {other:.0f} % of a CPU: measuring anyway")
                udp_before = server.udp_sockets()
                pt = run_point(server, n, args, udp_before)
                print(" | ".join(str(c) for c in row(pt)), flush=True)
                other = pt.other_cpu_s * 100 / pt.window_s
                if pt.holds or other <= NOISE_LIMIT_PERCENT or attempt == args.retries:
                    break
                print(f"  other processes used {other:.0f} % of a CPU: measuring again")
            if attempt:
                pt.retried = f"{attempt} earlier attempt(s) failed under other load"
            yield pt
            if not pt.holds:
                break
    except RuntimeError as exc:
        print(f"workers={workers}: {exc}\n{server.log_tail()}", file=sys.stderr)
    finally:
        server.stop()


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="steady window (s)")
    parser.add_argument("--sweep", default="2,5,8,10,12,15,20,25,30", help="values of N")
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--codec", choices=tuple(CODECS), default="opus")
    parser.add_argument("--ramp", type=float, default=5.0, help="new calls per second")
    parser.add_argument(
        "--per-proc", type=int, default=5, help="clients per generator process (at most)"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="re-measure a failing point this many times when other processes loaded the host",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="seconds to wait before a point for other processes to go under 25 %% of a CPU",
    )
    parser.add_argument(
        "--generator-cpus",
        choices=("auto", "all"),
        default="auto",
        help="auto: run the clients on the CPUs no worker is pinned to, when there are any",
    )
    parser.add_argument("--name", default="load_webrtc", help="results file name")
    args = parser.parse_args()
    ns = [int(n) for n in args.sweep.split(",") if n]
    worker_counts = [int(w) for w in args.workers.split(",") if w]
    signal.signal(signal.SIGTERM, _terminate)
    floor = transport_floor(args.codec)
    print(
        f"transport floor (capture → frame in WebRtcPeer, one call in-process): "
        f"p50 {percentile(floor, 50):.0f} ms, p99 {percentile(floor, 99):.0f} ms",
        flush=True,
    )
    points: list[Point] = []
    print(" | ".join(HEADERS), flush=True)
    with tempfile.TemporaryDirectory(prefix="load_webrtc.") as tmp:
        try:
            for workers in worker_counts:
                points.extend(sweep(workers, ns, args, Path(tmp)))
        except KeyboardInterrupt:
            print("interrupted: writing what was measured", file=sys.stderr)
    if not points:
        return
    write_results(
        args.name,
        f"WebRTC load: concurrent aiortc calls on /call/webrtc with VAD ({args.codec})",
        format_table(HEADERS, [row(p) for p in points]),
        notes(points, args, floor),
    )
    print(f"wrote {chart(args.name, points)}")


if __name__ == "__main__":
    main()
