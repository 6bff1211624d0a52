"""WebSocket load: N concurrent ``/call`` clients streaming speech at real time, against a server.

The script starts the server itself (a subprocess on 127.0.0.1, a free port, stopped at the
end), then for each N of the sweep runs a load generator in a separate process (or several,
``--gen-procs``). Every client sends ``invite{codec:"pcm",vad:{}}`` and streams the 60 s test
speech (each client from its own offset, looping) in 20 ms frames of 640 bytes. One pacing loop
per generator process sends the next frame of every client on absolute deadlines; the 20 ms
period is cut into ``--phases`` slots (default 10, 2 ms apart) and client i sends in slot
i mod phases, as independent calls' packets do not arrive in lockstep. The clients are ramped
(``--ramp`` per second); the measured *steady phase* starts ``SETTLE_S`` after the last client
was due to connect and lasts ``--duration`` seconds.

Measured per N:

* server CPU: user+sys of the server's process tree (supervisor and workers), psutil, from the
  start to the end of the steady phase, divided by the call-seconds streamed in that window.
* VAD latency, for each ``silence`` event that ends a speech segment whose end the client sent
  inside the steady window:

      latency = arrival − sent(E) − silencePadding

  *Media time* m of a client is milliseconds of audio since its first frame; frame k carries
  [20k, 20k+20) and ``sent(m)`` is the wall-clock time (``time.time()``, taken just before the
  write) at which the client sent the frame carrying m. The server stamps VAD times as
  ``epoch + m``, where ``epoch`` is its wall clock (epoch ms) when the call's first audio frame
  reached the VAD, and chunks are 32 ms from there, so every ``startTime`` and
  ``startTime + duration`` is ``epoch`` plus a multiple of 32. The client recovers ``epoch``:
  of the values at or after ``floor(sent(0))`` congruent to those times modulo 32, the one
  that maps the most (start, duration) pairs exactly onto the segments of a reference run of
  our VAD (TinySilero + ``VadProcessor``, offline, on the very stream the client sent), the
  earliest on a tie. For a server whose VAD decides as ours does this is exact for any
  first-frame delay up to 2 s; otherwise it falls back to a delay under 32 ms. The recovered
  first-frame delay and the exact-match count are reported. The segment end is then
  ``E = startTime + duration − epoch``: the start of the first silent chunk. The VAD can only
  decide once ``silencePadding`` more ms (rounded up to whole chunks) and that chunk (32 ms)
  have arrived, so with silencePadding 100 ms the latency has a floor of 40-60 ms
  (chunk-to-frame alignment) before any queueing or processing; the *server delay* column is
  ``arrival − sent(frame carrying the last sample of the deciding chunk)``, which is the part
  the server adds.
* segments: from the sentence labels (``tests/data/speech_60s_16k.json``) each client knows
  which sentences it sent whole with their end inside the steady window; a sentence is received
  when a ``silence`` segment overlaps it (32 ms slack before, 64 ms after). A ``silence`` with no
  ``speaking`` of the same ``startTime`` before it is counted as unpaired.
* frames lost: frames the client sent minus frames the server counted in (``GET /metrics``),
  plus any server counter named ``*drop*``/``*lost*``/``*overflow*`` that grew.
* generator lag: per frame, send time minus its 20 ms deadline; p99 over the steady window,
  and frames more than 20 ms late (generator problems, not server loss).

A point *holds* when p99 VAD latency ≤ 100 ms, no segment is missing, no frame is lost, every
client connected and the generator kept time (p99 lag ≤ 10 ms; otherwise the point measured the
host, not the server). A failing point measured while other processes used more than 25 % of a
CPU is measured again (``--retries``). The sweep of a server stops at the first point that does
not hold.

Run: ``.venv/bin/python -m bench.load_ws [--duration 30] [--sweep 50,100,200]
[--servers activecall1,activecall2,baseline]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench._common import RESULTS, ROOT, format_table, load_speech, write_results

RATE = 16_000
FRAME_MS = 20
FRAME_SAMPLES = RATE * FRAME_MS // 1000
CHUNK_MS = 32
CHUNK_SAMPLES = RATE * CHUNK_MS // 1000
SILENCE_PADDING_MS = 100  # VadOption default; the clients send vad:{}
SPEECH_MS = 60_000
LABELS = ROOT / "tests" / "data" / "speech_60s_16k.json"
SETTLE_S = 2.0  # after the last client is due, before the steady window opens
STREAM_TAIL_S = 0.5  # streaming goes on after the window, so its last segments can end
EVENT_GRACE_S = 1.5  # then events still in flight are awaited before hanging up
HANGUP_WAIT_S = 5.0
CONNECT_TIMEOUT_S = 10.0
LATENCY_LIMIT_MS = 100.0
LATE_FRAME_MS = 20.0
NOISE_LIMIT_PERCENT = 25.0  # other load (% of a CPU) past which a failing point is re-measured
GENERATOR_LAG_LIMIT_MS = 10.0  # p99 send lateness past which a point is not a server result
DROP_COUNTER = re.compile(r"drop|lost|overflow")
YIELD_EVERY = 64  # clients sent to between two yields of the pacing loop
OFFSETS = 97  # distinct starting points in the speech
EPOCH_SEARCH = 64  # chunks (of 32 ms) of first-frame delay the epoch search considers


# ---------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class Plan:
    """What one generator process does, with absolute wall-clock times (epoch seconds)."""

    url: str
    clients: tuple[int, ...]  # global client indices handled by this process
    ramp: float  # clients per second, over all processes
    t_begin: float  # tick 0 of the pacing loop; client i is due at t_begin + i / ramp
    steady_start: float
    steady_end: float
    stop: float  # streaming ends
    phases: int  # slots per 20 ms: client i sends in slot i % phases
    sender: str  # "raw" (prebuilt frames) or "websockets" (ws.send)


def speech_offset_frames(client: int, frames: int) -> int:
    """Where client ``client`` starts in the speech: OFFSETS starts spread by the golden ratio
    (few enough that the reference VAD runs once per start, not once per client)."""
    return int((client % OFFSETS * 0.6180339887498949) % 1.0 * frames)


def wire_frames(pcm: np.ndarray) -> tuple[list[bytes], list[bytes]]:
    """The speech as 20 ms payloads, and as complete masked client WebSocket binary frames."""
    n = len(pcm) // FRAME_SAMPLES
    payloads = pcm[: n * FRAME_SAMPLES].astype("<i2").reshape(n, FRAME_SAMPLES)
    rng = np.random.default_rng()
    wire: list[bytes] = []
    size = FRAME_SAMPLES * 2
    header = bytes([0x82, 0x80 | 126]) + size.to_bytes(2, "big")  # FIN binary, masked, 16-bit
    for row in payloads:
        key = rng.integers(0, 256, 4, dtype=np.uint8)
        masked = row.view(np.uint8) ^ np.tile(key, size // 4)
        wire.append(header + key.tobytes() + masked.tobytes())
    return [row.tobytes() for row in payloads], wire


# ---------------------------------------------------------------------------- the generator


@dataclass(slots=True)
class Client:
    """One ``/call`` connection: its speech offset, what it sent and when, what it received."""

    index: int
    offset: int  # frames into the speech
    phase: int  # which slot of the 20 ms period it sends in
    send_times: np.ndarray  # epoch seconds, per frame sent
    sent: int = 0
    start_slot: int = -1  # the pacing slot of its first frame
    ws: Any = None
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    error: str = ""
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)


class Generator:
    """The clients of one process and the single pacing loop that feeds them."""

    def __init__(self, plan: Plan, payloads: list[bytes], wire: list[bytes]) -> None:
        self.plan = plan
        self.payloads, self.wire = payloads, wire
        n_frames = int((plan.stop - plan.t_begin) / (FRAME_MS / 1000)) + 8
        self.clients = [
            Client(i, speech_offset_frames(i, len(payloads)), i % plan.phases, np.zeros(n_frames))
            for i in plan.clients
        ]
        self.active: list[list[Client]] = [[] for _ in range(plan.phases)]
        self.deadlines = np.zeros(n_frames * plan.phases)  # epoch seconds, per pacing slot

    async def run(self) -> None:
        """Ramp, stream until ``plan.stop``, wait for late events, hang everyone up."""
        tasks = [asyncio.create_task(self._call(c)) for c in self.clients]
        try:
            await self._pace()
            await asyncio.sleep(EVENT_GRACE_S)
            for c in self.clients:
                if c.ws is not None and c.answered.is_set():
                    with contextlib.suppress(Exception):
                        await c.ws.send('{"command":"hangup"}')
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HANGUP_WAIT_S):
                    for c in self.clients:
                        if c.answered.is_set():
                            await c.hung_up.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _call(self, c: Client) -> None:
        from websockets.asyncio.client import connect

        due = self.plan.t_begin + c.index / self.plan.ramp
        await asyncio.sleep(max(0.0, due - time.time()))
        reader: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                c.ws = await connect(
                    self.plan.url,
                    compression=None,
                    ping_interval=None,
                    write_limit=2**24,  # never block the shared pacing loop on one socket
                    close_timeout=1,
                )
                await c.ws.send(json.dumps({"command": "invite", "option": _INVITE_OPTION}))
                reader = asyncio.create_task(self._read(c))
                await c.answered.wait()
            self.active[c.phase].append(c)
            await reader
        except Exception as exc:  # a failed client is a result, not a crash
            c.error = f"{type(exc).__name__}: {exc}"
        finally:
            if reader is not None:
                reader.cancel()
            if c.ws is not None:
                await c.ws.close()

    async def _read(self, c: Client) -> None:
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):
            async for message in c.ws:
                arrival = time.time()
                if isinstance(message, bytes):
                    continue
                event = json.loads(message)
                c.events.append((arrival, event))
                name = event.get("event")
                if name == "answer":
                    c.answered.set()
                elif name == "hangup":
                    c.hung_up.set()
        c.hung_up.set()

    async def _pace(self) -> None:
        # time.monotonic, not loop.time(): uvloop's clock is whole milliseconds, cached per
        # loop iteration
        phases = self.plan.phases
        step = FRAME_MS / 1000 / phases
        base = self.plan.t_begin - (time.time() - time.monotonic())  # slot 0, monotonic
        raw = self.plan.sender == "raw"
        payloads, wire, n = self.payloads, self.wire, len(self.payloads)
        stop = self.plan.stop
        for slot in range(len(self.deadlines)):
            deadline = base + slot * step
            for _ in range(4):  # the loop's timers are ms-grained: may wake a bit early
                delay = deadline - time.monotonic()
                if delay <= 0:
                    break
                await asyncio.sleep(delay)
            # re-read the offset each slot so a wall-clock step cannot skew the lag figures
            self.deadlines[slot] = deadline + (time.time() - time.monotonic())
            if self.deadlines[slot] >= stop:
                self.deadlines = self.deadlines[:slot]
                return
            group = self.active[slot % phases]
            for i, c in enumerate(list(group)):
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)  # let readers stamp arrivals between slices
                if c.start_slot < 0:
                    c.start_slot = slot
                k = c.sent
                if k >= len(c.send_times) or c.ws.transport.is_closing():
                    group.remove(c)
                    if time.time() < stop:
                        c.error = c.error or "connection closed while streaming"
                    continue
                c.send_times[k] = time.time()
                if raw:
                    c.ws.transport.write(wire[(c.offset + k) % n])
                else:
                    with contextlib.suppress(Exception):
                        await c.ws.send(payloads[(c.offset + k) % n])
                c.sent = k + 1


_INVITE_OPTION: dict[str, Any] = {"codec": "pcm", "vad": {}}


# ---------------------------------------------------------------------------- analysis


@dataclass(slots=True)
class Tally:
    """The measurements of one generator process (or several, merged)."""

    clients: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # failure reason -> calls
    frames_sent: int = 0
    call_seconds: float = 0.0  # streamed inside the steady window
    latency_ms: list[float] = field(default_factory=list)
    server_delay_ms: list[float] = field(default_factory=list)
    first_frame_delay_ms: list[float] = field(default_factory=list)
    expected: int = 0
    received: int = 0
    unpaired: int = 0
    epoch_mismatch: int = 0
    silences: int = 0
    reference_matches: int = 0
    lag_p50_ms: float = 0.0
    lag_p99_ms: float = 0.0
    lag_max_ms: float = 0.0
    late_frames: int = 0

    def merge(self, other: Tally) -> None:
        """Add another process's tally (lag figures: the worst of the two)."""
        for name in (
            "clients",
            "failed",
            "frames_sent",
            "expected",
            "received",
            "unpaired",
            "epoch_mismatch",
            "silences",
            "reference_matches",
            "late_frames",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.call_seconds += other.call_seconds
        for reason, count in other.errors.items():
            self.errors[reason] = self.errors.get(reason, 0) + count
        self.latency_ms += other.latency_ms
        self.server_delay_ms += other.server_delay_ms
        self.first_frame_delay_ms += other.first_frame_delay_ms
        self.lag_p50_ms = max(self.lag_p50_ms, other.lag_p50_ms)
        self.lag_p99_ms = max(self.lag_p99_ms, other.lag_p99_ms)
        self.lag_max_ms = max(self.lag_max_ms, other.lag_max_ms)


def load_sentences() -> list[tuple[int, int]]:
    """Start and end (ms) of every spoken sentence of the test speech."""
    return [(int(s), int(e)) for s, e in json.loads(LABELS.read_text())["sentences"]]


def reference_segments(pcm: np.ndarray, offset: int, frames: int) -> set[tuple[int, int]]:
    """(start, duration) in media ms of the segments our VAD finds in a client's stream."""
    from activecall._native.silero import VadSession
    from activecall.media.vad import Silence, VadProcessor

    start = offset * FRAME_SAMPLES
    reps = (start + frames * FRAME_SAMPLES) // len(pcm) + 1
    stream = np.tile(pcm, reps)[start : start + frames * FRAME_SAMPLES]
    vad = VadProcessor()
    out: set[tuple[int, int]] = set()
    for i, p in enumerate(VadSession().process(stream)):
        for ev in vad.process(float(p), i * CHUNK_MS):
            if isinstance(ev, Silence):
                out.add((ev.start_time, ev.duration))
    return out


def server_epoch(
    first_sent_s: float, silences: Sequence[tuple[int, int]], reference: set[tuple[int, int]]
) -> tuple[int | None, int, int]:
    """The server's media epoch (epoch ms) of a call, from its ``silence`` (startTime, duration).

    Its residue modulo 32 ms is the one every VAD time shares; of the candidates at or after
    the first frame's send time, the one that maps most segments exactly onto the reference
    VAD's wins (the nearest on a tie). Returns (epoch, times off the grid, exact matches).
    """
    if not silences:
        return None, 0, 0
    times = [t for start, duration in silences for t in (start, start + duration)]
    residues = np.array(times, np.int64) % CHUNK_MS
    values, counts = np.unique(residues, return_counts=True)
    r = int(values[np.argmax(counts)])
    floor_ms = math.floor(first_sent_s * 1000)
    base = floor_ms + (r - floor_ms) % CHUNK_MS
    best, best_hits = base, -1
    for j in range(EPOCH_SEARCH):
        epoch = base + j * CHUNK_MS
        hits = sum((start - epoch, duration) in reference for start, duration in silences)
        if hits > best_hits:
            best, best_hits = epoch, hits
    return best, int(len(times) - counts.max()), best_hits


def analyse_client(
    c: Client,
    window: tuple[float, float],
    sentences: Sequence[tuple[int, int]],
    reference: set[tuple[int, int]],
    tally: Tally,
) -> None:
    """Add one client's latencies, segments and send record to ``tally``."""
    sent = c.send_times[: c.sent]
    lo, hi = window
    tally.frames_sent += c.sent
    tally.call_seconds += float(np.count_nonzero((sent >= lo) & (sent < hi))) * FRAME_MS / 1000
    if c.sent == 0:
        return
    speaking = {e["startTime"] for _, e in c.events if e.get("event") == "speaking"}
    silences = [(t, e) for t, e in c.events if e.get("event") == "silence" and "duration" in e]
    pairs = [(e["startTime"], e["duration"]) for _, e in silences]
    epoch, mismatch, exact = server_epoch(float(sent[0]), pairs, reference)
    tally.epoch_mismatch += mismatch
    tally.silences += len(pairs)
    tally.reference_matches += exact
    segments: list[tuple[int, int]] = []
    if epoch is not None:
        tally.first_frame_delay_ms.append(epoch - float(sent[0]) * 1000)
        decide_ms = math.ceil(SILENCE_PADDING_MS / CHUNK_MS) * CHUNK_MS
        for arrival, e in silences:
            start, end = e["startTime"] - epoch, e["startTime"] + e["duration"] - epoch
            segments.append((start, end))
            tally.unpaired += e["startTime"] not in speaking
            k_end = end // FRAME_MS
            k_decide = ((end + decide_ms) * RATE // 1000 + CHUNK_SAMPLES - 1) // FRAME_SAMPLES
            if not 0 <= k_end < c.sent or not lo <= sent[k_end] < hi:
                continue
            tally.latency_ms.append((arrival - sent[k_end]) * 1000 - SILENCE_PADDING_MS)
            if k_decide < c.sent:
                tally.server_delay_ms.append((arrival - sent[k_decide]) * 1000)
    offset_ms = c.offset * FRAME_MS
    loops = range(offset_ms // SPEECH_MS, (offset_ms + c.sent * FRAME_MS) // SPEECH_MS + 1)
    for j in loops:
        for s_ms, e_ms in sentences:
            s_m, e_m = s_ms + j * SPEECH_MS - offset_ms, e_ms + j * SPEECH_MS - offset_ms
            k = e_m // FRAME_MS
            if s_m < 0 or k >= c.sent or not lo <= sent[k] < hi:
                continue
            tally.expected += 1
            tally.received += any(a < e_m + 64 and b > s_m - 32 for a, b in segments)


def analyse(gen: Generator, pcm: np.ndarray) -> Tally:
    """Everything one generator process measured, reduced to a :class:`Tally`."""
    plan = gen.plan
    window = (plan.steady_start, plan.steady_end)
    sentences = load_sentences()
    longest: dict[int, int] = {}
    for c in gen.clients:
        longest[c.offset] = max(longest.get(c.offset, 0), c.sent)
    references = {off: reference_segments(pcm, off, n) for off, n in longest.items()}
    tally = Tally(clients=len(gen.clients))
    lateness: list[np.ndarray] = []
    for c in gen.clients:
        if c.error or c.start_slot < 0:
            tally.failed += 1
            reason = c.error or "never answered"
            tally.errors[reason] = tally.errors.get(reason, 0) + 1
            continue
        analyse_client(c, window, sentences, references[c.offset], tally)
        sent = c.send_times[: c.sent]
        due = gen.deadlines[c.start_slot :: plan.phases][: c.sent]
        in_window = (due >= window[0]) & (due < window[1])
        lateness.append((sent[: len(due)] - due)[in_window] * 1000)
    lag = np.concatenate(lateness) if lateness else np.zeros(1)
    if lag.size:
        tally.lag_p50_ms = float(np.percentile(lag, 50))
        tally.lag_p99_ms = float(np.percentile(lag, 99))
        tally.lag_max_ms = float(lag.max())
        tally.late_frames = int(np.count_nonzero(lag > LATE_FRAME_MS))
    return tally


def generator_main(conn: Connection) -> None:
    """Entry point of a generator process: report ready, take a :class:`Plan`, send a Tally."""
    with contextlib.suppress(KeyboardInterrupt):
        import resource

        import uvloop

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        pcm = load_speech()
        payloads, wire = wire_frames(pcm)  # before the clock starts
        conn.send("ready")
        plan: Plan = conn.recv()

        async def main() -> Tally:
            gen = Generator(plan, payloads, wire)
            # a full collection over thousands of connections stalls the pacing loop for tens
            # of ms; the run is bounded, so collect before and after instead
            gc.collect()
            gc.freeze()
            gc.disable()
            try:
                await gen.run()
            finally:
                gc.enable()
                gc.unfreeze()
            return analyse(gen, pcm)

        try:
            conn.send(uvloop.run(main()))
        except Exception as exc:  # reported to the orchestrator, which stops the sweep
            conn.send(f"generator failed: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------- the server


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A server to load: ``activecall`` with ``workers`` workers, or the ``baseline``."""

    kind: str
    workers: int

    @property
    def label(self) -> str:
        return f"{self.kind}{self.workers if self.kind == 'activecall' else ''}"


def parse_server(text: str) -> ServerSpec:
    """``activecall2`` -> activecall with 2 workers; ``baseline`` -> the baseline server."""
    if text == "baseline":
        return ServerSpec("baseline", 1)
    match = re.fullmatch(r"activecall(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"unknown server {text!r}")
    return ServerSpec("activecall", int(match.group(1)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    """The server under test, in its own process group so it can be stopped as a whole."""

    def __init__(self, spec: ServerSpec, workdir: Path) -> None:
        self.spec = spec
        self.port = free_port()
        self.workdir = workdir
        self.log = workdir / f"{spec.label}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        if self.spec.kind == "baseline":
            return [sys.executable, "-m", "bench.baseline_server", "--port", str(self.port)]
        exe = Path(sys.executable).parent / "activecall"
        http = f"127.0.0.1:{self.port}"
        return [str(exe), "serve", "--workers", str(self.spec.workers), "--http", http]

    def start(self, timeout: float = 120.0) -> None:
        """Start and wait until ``GET /health`` answers."""
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.label} exited: {self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url("http", "/health"), timeout=1) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.spec.label} not ready in {timeout:.0f} s: {self.log_tail()}")

    def url(self, scheme: str, path: str) -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def root_pid(self) -> int:
        """The pid of the process started (our supervisor), or -1."""
        return self.proc.pid if self.proc is not None else -1

    def processes(self) -> list[psutil.Process]:
        """The server process and all its descendants."""
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL what is left after 10 s."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone; its workers may linger a moment in the same group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return


def cpu_seconds(procs: Sequence[psutil.Process]) -> dict[int, float]:
    """user+sys seconds of each process, by pid."""
    out: dict[int, float] = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
    return out


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle, over all CPUs."""
    t = psutil.cpu_times()
    busy: float = sum(t) - t.idle - getattr(t, "iowait", 0.0)
    return busy


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots (a process born in between counts whole)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def scrape(server: ServerProcess) -> dict[str, float]:
    """``GET /metrics`` as {series: value}; empty when the server has none."""
    try:
        with urllib.request.urlopen(server.url("http", "/metrics"), timeout=5) as r:
            text = r.read().decode()
    except (OSError, urllib.error.URLError):
        return {}
    series: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                series[name] = float(value)
    return series


def frames_in(metrics: dict[str, float]) -> float | None:
    """Client audio frames the server counted, from whichever counter it exposes: our
    workers' ``activecall_frames_in`` (summed over workers), else WebSocket binary messages
    received, else the baseline's byte count."""
    workers = [
        v
        for k, v in metrics.items()
        if k.split("{")[0] in ("activecall_frames_in", "activecall_frames_in_total")
    ]
    if workers:
        return sum(workers)
    binary = [v for k, v in metrics.items() if "received_total" in k and "binary" in k]
    if binary:
        return sum(binary)
    if "baseline_audio_bytes_received_total" in metrics:
        return metrics["baseline_audio_bytes_received_total"] / (FRAME_SAMPLES * 2)
    return None


def drops(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Counters named like drops that grew between two scrapes."""
    return {
        k: v - before.get(k, 0.0)
        for k, v in after.items()
        if DROP_COUNTER.search(k.split("{")[0]) and v > before.get(k, 0.0)
    }


def wait_idle(server: ServerProcess, limit: float = 30.0) -> None:
    """Wait (bounded) until the server tree uses under 5 % of a CPU."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = cpu_seconds(server.processes())
        time.sleep(0.5)
        if cpu_delta(before, cpu_seconds(server.processes())) < 0.025:
            return


# ---------------------------------------------------------------------------- one point


@dataclass(slots=True)
class Point:
    """One (server, N) measurement."""

    server: ServerSpec
    n: int
    tally: Tally
    server_cpu_s: float
    root_cpu_s: float  # of which the server's main process (our supervisor)
    generator_cpu_s: float
    other_cpu_s: float  # everything else the machine ran meanwhile (noise)
    window_s: float
    frames_lost: float | None
    drop_counters: dict[str, float]
    retried: str = ""  # why a first attempt at this point was thrown away

    @property
    def cpu_ms_per_call_s(self) -> float:
        return self.server_cpu_s * 1000 / max(self.tally.call_seconds, 1e-9)

    def latency(self, q: float) -> float:
        """Percentile ``q`` of the VAD latency (ms); NaN without events."""
        return _percentile(self.tally.latency_ms, q)

    def delay(self, q: float) -> float:
        """Percentile ``q`` of the server delay (ms); NaN without events."""
        return _percentile(self.tally.server_delay_ms, q)

    @property
    def holds(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[str]:
        """Why the point does not hold; empty when it does."""
        t = self.tally
        out = []
        if t.failed:
            out.append(f"{t.failed} calls failed")
        if t.received < t.expected or not t.expected:
            out.append("segments missing")
        if self.frames_lost or self.drop_counters:
            out.append("frames lost")
        if not self.latency(99) <= LATENCY_LIMIT_MS:
            out.append("p99 > 100 ms")
        if t.lag_p99_ms > GENERATOR_LAG_LIMIT_MS:
            out.append("generator late")  # the point measured the host, not only the server
        return out


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def _receive(conn: Connection, timeout: float) -> object:
    """The next message from a generator process, or RuntimeError if none comes in time."""
    if not conn.poll(timeout):
        raise RuntimeError(f"a generator process said nothing for {timeout:.0f} s")
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError("a generator process died") from None


def run_point(
    server: ServerProcess,
    n: int,
    duration: float,
    ramp: float,
    procs: int,
    sender: str,
    phases: int,
) -> Point:
    """Load ``server`` with ``n`` clients for one steady window of ``duration`` seconds."""
    ctx = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    gens: list[Any] = []
    try:
        for _ in range(procs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=generator_main, args=(child,), daemon=True)
            p.start()
            child.close()
            pipes.append(parent)
            gens.append(p)
        for conn in pipes:
            if _receive(conn, 60.0) != "ready":
                raise RuntimeError("a generator process did not start")
        t_begin = time.time() + 0.5
        steady_start = t_begin + n / ramp + SETTLE_S
        steady_end = steady_start + duration
        stop = steady_end + STREAM_TAIL_S
        for i, conn in enumerate(pipes):
            plan = Plan(
                url=server.url("ws", "/call?dump=false"),
                clients=tuple(range(i, n, procs)),
                ramp=ramp,
                t_begin=t_begin,
                steady_start=steady_start,
                steady_end=steady_end,
                stop=stop,
                phases=phases,
                sender=sender,
            )
            conn.send(plan)
        metrics0 = scrape(server)
        gen_ps = [psutil.Process(p.pid) for p in gens]
        time.sleep(max(0.0, steady_start - time.time()))
        cpu0, gcpu0, busy0 = cpu_seconds(server.processes()), cpu_seconds(gen_ps), busy_seconds()
        time.sleep(max(0.0, steady_end - time.time()))
        cpu1, gcpu1, busy1 = cpu_seconds(server.processes()), cpu_seconds(gen_ps), busy_seconds()
        tally = Tally()
        budget = stop - time.time() + EVENT_GRACE_S + HANGUP_WAIT_S + 30
        for conn in pipes:
            result = _receive(conn, max(budget, 1.0))
            if not isinstance(result, Tally):
                raise RuntimeError(str(result))
            tally.merge(result)
        time.sleep(1.0)  # let worker counters reach the supervisor
        metrics1 = scrape(server)
    finally:
        for p in gens:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)
    in0, in1 = frames_in(metrics0), frames_in(metrics1)
    counted = None if in1 is None else in1 - (in0 or 0.0)
    server_cpu, generator_cpu = cpu_delta(cpu0, cpu1), cpu_delta(gcpu0, gcpu1)
    root = server.root_pid
    root_cpu = cpu1.get(root, 0.0) - cpu0.get(root, 0.0)
    return Point(
        server=server.spec,
        n=n,
        tally=tally,
        server_cpu_s=server_cpu,
        root_cpu_s=root_cpu,
        generator_cpu_s=generator_cpu,
        other_cpu_s=max(0.0, busy1 - busy0 - server_cpu - generator_cpu),
        window_s=duration,
        frames_lost=None if counted is None else max(0.0, tally.frames_sent - counted),
        drop_counters=drops(metrics0, metrics1),
    )


# ---------------------------------------------------------------------------- output

HEADERS = (
    "server",
    "workers",
    "N",
    "CPU ms per call-s",
    "server CPU % (supervisor + workers)",
    "VAD latency p50 / p99 ms",
    "server delay p50 / p99 ms",
    "segments expected / received",
    "frames lost",
    "generator lag p99 ms (late frames)",
    "generator CPU %",
    "other CPU %",
    "holds",
)


def server_cpu_cell(pt: Point) -> str:
    """Server CPU % of one CPU, split into supervisor and workers for our server."""
    total = pt.server_cpu_s * 100 / pt.window_s
    if pt.server.kind != "activecall":
        return f"{total:.0f}"
    root = pt.root_cpu_s * 100 / pt.window_s
    return f"{total:.0f} ({root:.0f} + {total - root:.0f})"


def row(pt: Point) -> list[object]:
    """One table row."""
    t = pt.tally
    lost = "n/a" if pt.frames_lost is None else f"{pt.frames_lost:.0f}"
    if pt.drop_counters:
        lost += f" + {sum(pt.drop_counters.values()):.0f} dropped"
    return [
        pt.server.kind,
        pt.server.workers,
        pt.n,
        f"{pt.cpu_ms_per_call_s:.2f}",
        server_cpu_cell(pt),
        f"{pt.latency(50):.0f} / {pt.latency(99):.0f}",
        f"{pt.delay(50):.0f} / {pt.delay(99):.0f}",
        f"{t.expected} / {t.received}",
        lost,
        f"{t.lag_p99_ms:.1f} ({t.late_frames})",
        f"{pt.generator_cpu_s * 100 / pt.window_s:.0f}",
        f"{pt.other_cpu_s * 100 / pt.window_s:.0f}",
        "no: " + ", ".join(pt.failures) if pt.failures else "yes",
    ]


def chart(name: str, points: Sequence[Point]) -> Path:
    """CPU per call-second and p99 VAD latency against N, one line per server run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, (ax_cpu, ax_lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = list(dict.fromkeys(p.server.label for p in points))
    for label in labels:
        run = [p for p in points if p.server.label == label]
        ns = [p.n for p in run]
        ax_cpu.plot(ns, [p.cpu_ms_per_call_s for p in run], marker="o", label=label)
        ax_lat.plot(ns, [p.latency(99) for p in run], marker="o", label=label)
    ax_lat.axhline(LATENCY_LIMIT_MS, color="grey", linestyle="--", linewidth=1)
    ax_cpu.set(xlabel="concurrent calls N", ylabel="server CPU ms per call-second")
    ax_lat.set(xlabel="concurrent calls N", ylabel="p99 VAD latency (ms)", yscale="log")
    ax_lat.yaxis.set_major_formatter(ticker.ScalarFormatter())
    ax_lat.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax_lat.set_yticks([50, 100, 200, 500, 1000])
    ax_cpu.set_title("Server CPU per call")
    ax_lat.set_title("p99 silence-event latency")
    for ax in (ax_cpu, ax_lat):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def notes(points: Sequence[Point], args: argparse.Namespace) -> str:
    """The settings, the latency definition, and the largest N that held per run."""
    lines = [
        "Largest N that held (p99 VAD latency ≤ 100 ms, no missing segment, no lost frame, no "
        "failed call, generator lag p99 ≤ 10 ms):",
        "",
    ]
    for label in dict.fromkeys(p.server.label for p in points):
        held = [p.n for p in points if p.server.label == label and p.holds]
        lines.append(f"- {label}: {max(held) if held else 'none'}")
    delays = [d for p in points for d in p.tally.first_frame_delay_ms]
    lines += [
        "",
        f"Settings: steady window {args.duration:g} s per point, ramp {args.ramp:g} clients/s, "
        f"{args.gen_procs} generator process(es), sender `{args.sender}`, "
        f"{args.phases} send slots per 20 ms, "
        "`invite{codec:pcm, vad:{}}` (silencePadding 100 ms), 20 ms frames of PCM16LE 16 kHz, "
        "all on 127.0.0.1.",
        "",
        "- VAD latency = arrival of `silence` − wall time the client sent the frame carrying "
        "the segment end (`startTime + duration`, mapped to the client's media clock) − "
        "silencePadding. Its floor is 40-60 ms: the VAD needs silencePadding rounded up to "
        "32 ms chunks plus that chunk before it can decide.",
        "- server delay = arrival − wall time the client sent the frame carrying the last "
        "sample of the chunk that decided the segment end: queueing + processing only.",
        "- CPU ms per call-s = server tree user+sys over the steady window / call-seconds "
        "streamed in it; server CPU % is of one CPU (for activecall: supervisor + workers).",
        "- frames lost = frames sent − frames the server counted in `/metrics`, plus growth of "
        "any `*drop*`/`*lost*`/`*overflow*` counter.",
        "- generator lag = send time − 20 ms deadline per frame (late frames: > 20 ms late).",
        "- other CPU % = the machine's busy CPU time in the window minus server and generator "
        "(other processes, kernel softirq not charged to them): noise on a shared host.",
    ]
    if delays:
        lines.append(
            f"- first-frame delay (recovered server epoch − client send of frame 0): "
            f"p50 {np.percentile(delays, 50):.1f} ms, p99 {np.percentile(delays, 99):.1f} ms, "
            f"max {max(delays):.1f} ms."
        )
    mismatch = sum(p.tally.epoch_mismatch for p in points)
    unpaired = sum(p.tally.unpaired for p in points)
    for label in dict.fromkeys(p.server.label for p in points):
        run = [p.tally for p in points if p.server.label == label]
        matches, total = sum(t.reference_matches for t in run), sum(t.silences for t in run)
        lines.append(
            f"- {label}: {matches} of {total} `silence` events equal (start, duration) to the "
            "reference VAD's (TinySilero run offline on the same stream)."
        )
    lines.append(f"- VAD times off the 32 ms grid: {mismatch}; unpaired silences: {unpaired}.")
    for p in points:
        if p.retried:
            lines.append(f"- {p.server.label}, N={p.n}: {p.retried}; this is the last attempt.")
        for reason, count in p.tally.errors.items():
            lines.append(f"- {p.server.label}, N={p.n}: {count} calls failed: {reason}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def sweep(
    spec: ServerSpec, ns: Sequence[int], args: argparse.Namespace, workdir: Path
) -> Iterator[Point]:
    """Start ``spec``, load it with each N in turn until a point does not hold, stop it."""
    server = ServerProcess(spec, workdir)
    try:
        server.start()
        for n in ns:
            for attempt in range(args.retries + 1):
                wait_idle(server)
                pt = run_point(
                    server, n, args.duration, args.ramp, args.gen_procs, args.sender, args.phases
                )
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
        print(f"{spec.label}: {exc}", file=sys.stderr)
    finally:
        server.stop()


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="steady window (s)")
    parser.add_argument(
        "--sweep",
        default="50,100,150,200,250,300,400,500,600,800,1000,1200",
        help="values of N",
    )
    parser.add_argument(
        "--servers",
        default="activecall1,activecall2,baseline",
        help="comma-separated: activecallW (W workers), baseline",
    )
    parser.add_argument("--ramp", type=float, default=50.0, help="new clients per second")
    parser.add_argument("--gen-procs", type=int, default=1, help="generator processes")
    parser.add_argument("--sender", choices=("raw", "websockets"), default="raw")
    parser.add_argument(
        "--phases", type=int, default=10, help="send slots per 20 ms (1: all clients at once)"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="re-measure a failing point this many times when other processes loaded the host",
    )
    parser.add_argument("--name", default="load_ws", help="results file name")
    args = parser.parse_args()
    specs = [parse_server(s) for s in args.servers.split(",") if s]
    ns = [int(n) for n in args.sweep.split(",") if n]
    signal.signal(signal.SIGTERM, _terminate)
    points: list[Point] = []
    print(" | ".join(HEADERS), flush=True)
    with tempfile.TemporaryDirectory(prefix="load_ws.") as tmp:
        try:
            for spec in specs:
                for point in sweep(spec, ns, args, Path(tmp)):
                    points.append(point)
        except KeyboardInterrupt:
            print("interrupted: writing what was measured", file=sys.stderr)
    if not points:
        return
    write_results(
        args.name,
        "WebSocket load: concurrent /call clients with VAD",
        format_table(HEADERS, [row(p) for p in points]),
        notes(points, args),
    )
    print(f"wrote {chart(args.name, points)}")


if __name__ == "__main__":
    main()
