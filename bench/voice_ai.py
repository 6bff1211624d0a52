"""Voice AI on a live server: N concurrent ``/call`` clients with offline ASR and TTS.

The script starts ``activecall serve --workers 1`` (a subprocess on 127.0.0.1, a free port,
stopped at the end), warms it up with one unreported call, then for each N of the sweep runs a load
generator in its own process (``bench.load_ws``'s generator: one pacing loop, absolute 20 ms
deadlines, ``--phases`` send slots per frame). Every client sends
``invite{codec:"pcm", vad:{}, asr:{}}`` (pocketsphinx, decoded in the worker's recognition
process) and streams the 60 s test speech in 20 ms frames at real time, each client from its
own offset, looping. Like an agent, after each non-empty ``asrFinal`` the client sends a
``tts`` (piper, on the worker's synthesis thread) with a one-sentence reply and a new
``playId``. Each reply names a distinct ticket number so that no reply is a hit of the server's
TTS cache (the ``metrics`` events say ``cached``; the notes count them). Clients are ramped
(``--ramp`` per second); the steady window opens ``--settle`` seconds after the last client
was due and lasts ``--duration`` seconds; streaming goes on ``TAIL_S`` after it so that the
sentences that end inside the window still get their events.

Measured per N, over the steady window:

* ASR latency: for each labelled sentence (``tests/data/speech_60s_16k.json``) whose end the
  client sent inside the window, arrival of its ``asrFinal`` − the wall time the client sent
  the frame carrying the sentence's labelled end. Its ``asrFinal`` is the first one, arriving
  after that frame was sent, whose ``startTime``..``endTime`` (mapped to the client's media
  clock by the send time of its first frame) overlaps the sentence (150 ms slack). So it
  includes the VAD's silencePadding (100 ms) and chunking, the recognition process's decode
  of the end of the utterance, and transport. End of speech → ``silence`` is reported the
  same way, for reference.
* TTS first frame: the client's send of a ``tts`` → the first binary frame received after the
  ``trackStart`` of that ``playId`` (events and audio share one ordered stream, so audio of an
  earlier reply cannot be counted).
* CPU per call-second: user+sys of the server's process tree (supervisor, worker and the
  worker's recognition process, psutil) over the window / call-seconds streamed in it.
* the worker's tick lag: ``activecall_tick_lag_p99_us`` from ``GET /metrics`` (the p99 of one
  500 ms heartbeat interval, 25 ticks), scraped every 250 ms through the window; the table
  gives the median, p95 and worst of those values.
* frames lost: audio frames the client sent minus those the worker counted in, frames the
  worker sent out minus those the clients received, and growth of any drop counter.

A point *holds real time* when every call connected, every sentence got its ``asrFinal``,
ASR latency p95 ≤ 1.5 s, every reply sent in the window got audio (unless the client's next
reply replaced it within 1 s), TTS first frame p95 ≤ 1 s, the tick-lag p99 stayed ≤ 20 ms in
95 % of the 500 ms intervals, no frame was lost, and the generator kept time (p99 lag
≤ 10 ms). The sweep stops at the first point that does not hold. Before each point the script
waits for the server to be idle and (``--quiet-wait``) for other programs to use under 25 % of
a CPU; a failing point measured while they used more is measured again (``--retries``).

Run: ``.venv/bin/python -m bench.voice_ai [--duration 30] [--sweep 1,2,3,4,6,8]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench._common import RESULTS, format_table, load_speech, write_results
from bench.load_ws import (
    CONNECT_TIMEOUT_S,
    EVENT_GRACE_S,
    FRAME_MS,
    GENERATOR_LAG_LIMIT_MS,
    HANGUP_WAIT_S,
    LATE_FRAME_MS,
    NOISE_LIMIT_PERCENT,
    SPEECH_MS,
    Client,
    Generator,
    Plan,
    ServerProcess,
    ServerSpec,
    _percentile,
    _receive,
    busy_seconds,
    cpu_delta,
    cpu_seconds,
    drops,
    frames_in,
    load_sentences,
    scrape,
    wait_idle,
    wire_frames,
)

INVITE_OPTION: dict[str, Any] = {"codec": "pcm", "vad": {}, "asr": {}}
REPLY = "Sure, let me check ticket {} for you."
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TURNS_PER_CALL = 40  # reply numbers reserved per call and point (a call makes about 12)
TAIL_S = 3.0  # streaming goes on after the window, so its last sentences get their events
MATCH_SLACK_MS = 150  # an event's time range may miss its sentence by this much
ASR_LIMIT_MS = 1500.0
TTS_LIMIT_MS = 1000.0
TICK_LAG_LIMIT_MS = 20.0
TICK_LAG_QUANTILE = 95  # of the 500 ms intervals must keep their tick-lag p99 under the limit
LAG_SCRAPE_S = 0.25  # the worker reports a p99 per 500 ms heartbeat
WARMUP_S = 15.0  # long enough for several replies once the voice has loaded
IDLE_WAIT_S = 120.0  # for a recognition process that fell behind to finish its backlog
ASR_MODULE = "activecall.providers.pocketsphinx"


def reply_text(serial: int) -> str:
    """The agent's reply, naming a 4-digit ticket (spoken as digits: every reply has the same
    length, and a distinct text, so none is served from the TTS cache)."""
    return REPLY.format(" ".join(DIGITS[int(d)] for d in f"{serial % 10_000:04d}"))


# ---------------------------------------------------------------------------- the generator


@dataclass(frozen=True, slots=True)
class VoicePlan(Plan):
    """A :class:`~bench.load_ws.Plan` plus where this point's reply numbers start."""

    reply_base: int


@dataclass(slots=True)
class Turn:
    """One agent reply: the ``tts`` the client sent and when its audio began to arrive."""

    play_id: str
    sent: float  # epoch seconds, just before the send
    started: float | None = None  # arrival of the trackStart of play_id
    first_frame: float | None = None  # arrival of the first binary frame after it


@dataclass(slots=True)
class Dialogue:
    """The agent side of one client: its replies and the agent audio it received."""

    turns: list[Turn] = field(default_factory=list)
    frames: int = 0  # binary frames received


class VoiceGenerator(Generator):
    """``load_ws``'s clients and pacing loop, with ASR on and a TTS reply to each final."""

    plan: VoicePlan

    def __init__(self, plan: VoicePlan, payloads: list[bytes], wire: list[bytes]) -> None:
        super().__init__(plan, payloads, wire)
        self.dialogues = {c.index: Dialogue() for c in self.clients}

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
                await c.ws.send(json.dumps({"command": "invite", "option": INVITE_OPTION}))
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

        dialogue = self.dialogues[c.index]
        with contextlib.suppress(ConnectionClosed):
            async for message in c.ws:
                arrival = time.time()
                turn = dialogue.turns[-1] if dialogue.turns else None
                if isinstance(message, bytes):
                    dialogue.frames += 1
                    if turn is not None and turn.started is not None and turn.first_frame is None:
                        turn.first_frame = arrival
                    continue
                event = json.loads(message)
                c.events.append((arrival, event))
                name = event.get("event")
                if name == "answer":
                    c.answered.set()
                elif name == "hangup":
                    c.hung_up.set()
                elif name == "trackStart" and turn is not None and turn.started is None:
                    if event.get("playId") == turn.play_id:
                        turn.started = arrival
                elif name == "asrFinal" and event.get("text") and arrival < self.plan.stop:
                    await self._reply(c, dialogue)
        c.hung_up.set()

    async def _reply(self, c: Client, dialogue: Dialogue) -> None:
        k = len(dialogue.turns)
        serial = self.plan.reply_base + c.index * TURNS_PER_CALL + k
        play_id = f"reply-{c.index}-{k}"
        command = {"command": "tts", "text": reply_text(serial), "playId": play_id}
        dialogue.turns.append(Turn(play_id, time.time()))
        await c.ws.send(json.dumps(command))


# ---------------------------------------------------------------------------- analysis


@dataclass(slots=True)
class VoiceTally:
    """What the generator measured at one point."""

    clients: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # failure reason -> calls
    frames_sent: int = 0
    frames_received: int = 0
    call_seconds: float = 0.0  # streamed inside the steady window
    sentences: int = 0  # whole sentences whose end was sent inside the window
    recognised: int = 0  # of which got an asrFinal
    finals: int = 0  # asrFinal events whose end lies in the window
    empty_finals: int = 0  # of which had no text
    asr_latency_ms: list[float] = field(default_factory=list)
    silence_latency_ms: list[float] = field(default_factory=list)
    replies: int = 0  # tts sent inside the window
    superseded: int = 0  # of which the next reply replaced within TTS_LIMIT_MS, before audio
    silent_replies: int = 0  # of which got no audio though nothing replaced them that soon
    tts_first_ms: list[float] = field(default_factory=list)
    server_asr_ms: list[float] = field(default_factory=list)  # completed.asr: end → final
    server_tts_ttfb_ms: list[float] = field(default_factory=list)  # completed.tts: first chunk
    cached: int = 0  # replies the server took from its TTS cache
    server_errors: dict[str, int] = field(default_factory=dict)  # error events by text
    lag_p99_ms: float = 0.0
    late_frames: int = 0


def _overlaps(a: float, b: float, s: float, e: float) -> bool:
    return a < e + MATCH_SLACK_MS and b > s - MATCH_SLACK_MS


def _first_after(
    events: Sequence[tuple[float, float, float]], after: float, s: float, e: float
) -> float | None:
    """Earliest arrival, at or after ``after``, of an event (arrival, start, end) whose media
    range overlaps the sentence [s, e]."""
    hits = [t for t, a, b in events if t >= after and _overlaps(a, b, s, e)]
    return min(hits) if hits else None


def analyse_client(
    c: Client,
    dialogue: Dialogue,
    window: tuple[float, float],
    sentences: Sequence[tuple[int, int]],
    tally: VoiceTally,
) -> None:
    """Add one client's sentences, finals, replies and send record to ``tally``."""
    lo, hi = window
    sent = c.send_times[: c.sent]
    tally.frames_sent += c.sent
    tally.frames_received += dialogue.frames
    tally.call_seconds += float(np.count_nonzero((sent >= lo) & (sent < hi))) * FRAME_MS / 1000
    if c.sent == 0:
        return
    # The server's ASR and VAD clocks start when the first frame reaches the worker: a few ms
    # after the client sent it, far inside the matching slack.
    epoch = float(sent[0]) * 1000
    caller = next((e.get("trackId") for _, e in c.events if e.get("event") == "answer"), None)
    finals: list[tuple[float, float, float]] = []
    silences: list[tuple[float, float, float]] = []
    synthesis: dict[str, dict[str, Any]] = {}  # playId -> data of its completed.tts metrics
    for arrival, e in c.events:
        name = e.get("event")
        if name == "asrFinal" and "startTime" in e and "endTime" in e:
            a, b = e["startTime"] - epoch, e["endTime"] - epoch
            finals.append((arrival, a, b))
            k = int(b) // FRAME_MS
            if 0 <= k < c.sent and lo <= sent[k] < hi:
                tally.finals += 1
                tally.empty_finals += not e.get("text")
        elif name == "silence" and e.get("trackId") == caller and "duration" in e:
            a = e["startTime"] - epoch
            silences.append((arrival, a, a + e["duration"]))
        elif name == "metrics":
            key, data = e.get("key", ""), e.get("data", {})
            if key.startswith("completed.tts."):
                synthesis[data.get("playId", "")] = data
            elif key.startswith("completed.asr.") and lo <= arrival < hi:
                tally.server_asr_ms.append(float(e["duration"]))
        elif name == "error":
            text = f"{e.get('sender', '?')}: {e.get('error', '')}"
            tally.server_errors[text] = tally.server_errors.get(text, 0) + 1
    offset_ms = c.offset * FRAME_MS
    loops = range(offset_ms // SPEECH_MS, (offset_ms + c.sent * FRAME_MS) // SPEECH_MS + 1)
    for j in loops:
        for s_ms, e_ms in sentences:
            s_m, e_m = s_ms + j * SPEECH_MS - offset_ms, e_ms + j * SPEECH_MS - offset_ms
            k = e_m // FRAME_MS
            if s_m < 0 or k >= c.sent or not lo <= sent[k] < hi:
                continue
            tally.sentences += 1
            end_sent = float(sent[k])
            final = _first_after(finals, end_sent, s_m, e_m)
            if final is not None:
                tally.recognised += 1
                tally.asr_latency_ms.append((final - end_sent) * 1000)
            silence = _first_after(silences, end_sent, s_m, e_m)
            if silence is not None:
                tally.silence_latency_ms.append((silence - end_sent) * 1000)
    turns = dialogue.turns
    for i, turn in enumerate(turns):
        if not lo <= turn.sent < hi:
            continue
        tally.replies += 1
        data = synthesis.get(turn.play_id, {})
        tally.cached += bool(data.get("cached"))
        if "ttfb" in data:
            tally.server_tts_ttfb_ms.append(float(data["ttfb"]))
        if turn.first_frame is not None:
            tally.tts_first_ms.append((turn.first_frame - turn.sent) * 1000)
        elif i + 1 < len(turns) and (turns[i + 1].sent - turn.sent) * 1000 < TTS_LIMIT_MS:
            tally.superseded += 1  # the client's next reply replaced it before it was due
        else:
            tally.silent_replies += 1


def analyse(gen: VoiceGenerator) -> VoiceTally:
    """Everything the generator measured, reduced to a :class:`VoiceTally`."""
    plan = gen.plan
    window = (plan.steady_start, plan.steady_end)
    sentences = load_sentences()
    tally = VoiceTally(clients=len(gen.clients))
    lateness: list[np.ndarray] = []
    for c in gen.clients:
        if c.error or c.start_slot < 0:
            tally.failed += 1
            reason = c.error or "never answered"
            tally.errors[reason] = tally.errors.get(reason, 0) + 1
            continue
        analyse_client(c, gen.dialogues[c.index], window, sentences, tally)
        sent = c.send_times[: c.sent]
        due = gen.deadlines[c.start_slot :: plan.phases][: c.sent]
        in_window = (due >= window[0]) & (due < window[1])
        lateness.append((sent[: len(due)] - due)[in_window] * 1000)
    lag = np.concatenate(lateness) if lateness else np.zeros(0)
    if lag.size:
        tally.lag_p99_ms = float(np.percentile(lag, 99))
        tally.late_frames = int(np.count_nonzero(lag > LATE_FRAME_MS))
    return tally


def generator_main(conn: Connection) -> None:
    """Entry point of the generator process: report ready, take a plan, send a tally."""
    with contextlib.suppress(KeyboardInterrupt):
        import uvloop

        payloads, wire = wire_frames(load_speech())  # before the clock starts
        conn.send("ready")
        plan: VoicePlan = conn.recv()

        async def main() -> VoiceTally:
            gen = VoiceGenerator(plan, payloads, wire)
            # a collection mid-run would stall the pacing loop; the run is bounded
            gc.collect()
            gc.freeze()
            gc.disable()
            try:
                await gen.run()
            finally:
                gc.enable()
                gc.unfreeze()
            return analyse(gen)

        try:
            conn.send(uvloop.run(main()))
        except Exception as exc:  # reported to the orchestrator, which stops the sweep
            conn.send(f"generator failed: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------- one point


@dataclass(slots=True)
class VoicePoint:
    """One N: the generator's tally and what the server tree and its metrics said."""

    n: int
    tally: VoiceTally
    cpu_s: dict[str, float]  # supervisor, worker, recognition: CPU s in the window
    generator_cpu_s: float
    other_cpu_s: float  # everything else the machine ran meanwhile (noise)
    window_s: float
    tick_lag_ms: list[float]  # the worker's per-interval p99, one per scrape
    frames_lost_in: float | None
    frames_lost_out: float | None
    drop_counters: dict[str, float]
    retried: str = ""  # the other attempts at this N, when it was measured more than once

    @property
    def server_cpu_s(self) -> float:
        return sum(self.cpu_s.values())

    @property
    def cpu_ms_per_call_s(self) -> float:
        return self.server_cpu_s * 1000 / max(self.tally.call_seconds, 1e-9)

    def tick_lag(self, q: float) -> float:
        """Percentile ``q`` of the worker's per-interval tick-lag p99 over the window (ms)."""
        return _percentile(self.tick_lag_ms, q)

    def asr(self, q: float) -> float:
        """Percentile ``q`` of the ASR latency (ms)."""
        return _percentile(self.tally.asr_latency_ms, q)

    def tts(self, q: float) -> float:
        """Percentile ``q`` of the TTS first-frame time (ms)."""
        return _percentile(self.tally.tts_first_ms, q)

    @property
    def holds(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[str]:
        """Why the point does not hold real time; empty when it does."""
        t = self.tally
        out = []
        if t.failed:
            out.append(f"{t.failed} calls failed")
        if t.recognised < t.sentences or not t.sentences:
            out.append("sentences without asrFinal")
        if not self.asr(95) <= ASR_LIMIT_MS:
            out.append("ASR p95 > 1.5 s")
        if t.silent_replies or not t.replies:
            out.append("replies without audio")
        if not self.tts(95) <= TTS_LIMIT_MS:
            out.append("TTS p95 > 1 s")
        if not self.tick_lag(TICK_LAG_QUANTILE) <= TICK_LAG_LIMIT_MS:
            out.append("tick lag > 20 ms")
        if self.frames_lost_in or self.frames_lost_out or self.drop_counters:
            out.append("frames lost")
        if t.lag_p99_ms > GENERATOR_LAG_LIMIT_MS:
            out.append("generator late")  # the point measured the host, not only the server
        return out


def frames_out(metrics: dict[str, float]) -> float | None:
    """Audio frames the workers emitted (``activecall_frames_out``, summed over workers)."""
    values = [v for k, v in metrics.items() if k.split("{")[0] == "activecall_frames_out"]
    return sum(values) if values else None


def tick_lag_ms(metrics: dict[str, float]) -> float | None:
    """The worst worker's tick-lag p99 of its last heartbeat interval (ms)."""
    values = [v for k, v in metrics.items() if k.split("{")[0] == "activecall_tick_lag_p99_us"]
    return max(values) / 1000 if values else None


def role(p: psutil.Process, root: int) -> str:
    """``supervisor`` (with its multiprocessing resource tracker), ``recognition`` (a
    worker's pocketsphinx process) or ``worker``."""
    if p.pid == root:
        return "supervisor"
    with contextlib.suppress(psutil.Error):
        cmdline = " ".join(p.cmdline())
        if ASR_MODULE in cmdline:
            return "recognition"
        if "resource_tracker" in cmdline:
            return "supervisor"
    return "worker"


def cpu_by_role(server: ServerProcess) -> dict[int, tuple[str, float]]:
    """(role, user+sys seconds) of each process of the server tree, by pid."""
    procs = server.processes()
    times = cpu_seconds(procs)
    return {p.pid: (role(p, server.root_pid), times[p.pid]) for p in procs if p.pid in times}


def run_point(
    server: ServerProcess, n: int, args: argparse.Namespace, reply_base: int
) -> VoicePoint:
    """Load ``server`` with ``n`` talking clients for one steady window."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    gen = ctx.Process(target=generator_main, args=(child,), daemon=True)
    gen.start()
    child.close()
    lags: list[float] = []
    try:
        if _receive(parent, 60.0) != "ready":
            raise RuntimeError("the generator process did not start")
        t_begin = time.time() + 0.5
        steady_start = t_begin + n / args.ramp + args.settle
        steady_end = steady_start + args.duration
        stop = steady_end + TAIL_S
        parent.send(
            VoicePlan(
                url=server.url("ws", "/call?dump=false"),
                clients=tuple(range(n)),
                ramp=args.ramp,
                t_begin=t_begin,
                steady_start=steady_start,
                steady_end=steady_end,
                stop=stop,
                phases=args.phases,
                sender="raw",
                reply_base=reply_base,
            )
        )
        metrics0 = scrape(server)
        gen_ps = [psutil.Process(gen.pid)]
        time.sleep(max(0.0, steady_start - time.time()))
        cpu0, gcpu0, busy0 = cpu_by_role(server), cpu_seconds(gen_ps), busy_seconds()
        while (left := steady_end - time.time()) > 0:
            time.sleep(min(LAG_SCRAPE_S, left))
            lag = tick_lag_ms(scrape(server))
            if lag is not None and time.time() <= steady_end + LAG_SCRAPE_S:
                lags.append(lag)
        cpu1, gcpu1, busy1 = cpu_by_role(server), cpu_seconds(gen_ps), busy_seconds()
        budget = stop - time.time() + EVENT_GRACE_S + HANGUP_WAIT_S + 30
        result = _receive(parent, max(budget, 1.0))
        if not isinstance(result, VoiceTally):
            raise RuntimeError(str(result))
        time.sleep(1.0)  # let worker counters reach the supervisor
        metrics1 = scrape(server)
    finally:
        gen.join(5)
        if gen.is_alive():
            gen.terminate()
            gen.join(5)
    cpu: dict[str, float] = {"supervisor": 0.0, "worker": 0.0, "recognition": 0.0}
    for pid, (name, seconds) in cpu1.items():  # a process born in the window counts whole
        cpu[name] += seconds - cpu0.get(pid, (name, 0.0))[1]
    server_cpu, generator_cpu = sum(cpu.values()), cpu_delta(gcpu0, gcpu1)
    in0, in1 = frames_in(metrics0), frames_in(metrics1)
    out0, out1 = frames_out(metrics0), frames_out(metrics1)
    return VoicePoint(
        n=n,
        tally=result,
        cpu_s=cpu,
        generator_cpu_s=generator_cpu,
        other_cpu_s=max(0.0, busy1 - busy0 - server_cpu - generator_cpu),
        window_s=args.duration,
        tick_lag_ms=lags,
        frames_lost_in=None if in1 is None else result.frames_sent - (in1 - (in0 or 0.0)),
        frames_lost_out=None if out1 is None else out1 - (out0 or 0.0) - result.frames_received,
        drop_counters=drops(metrics0, metrics1),
    )


# ---------------------------------------------------------------------------- output

HEADERS = (
    "N",
    "CPU ms per call-s",
    "server CPU % (sup + worker + ASR proc)",
    "ASR latency p50 / p95 / max ms",
    "end of speech → silence p50 / p95 ms",
    "sentences / with asrFinal (finals, empty)",
    "TTS first frame p50 / p95 / max ms",
    "replies / with audio (superseded)",
    "server: end_utterance→final p95, TTS first chunk p95 ms",
    "tick lag p99 ms: intervals p50 / p95 / worst",
    "frames lost in / out",
    "generator lag p99 ms",
    "other CPU %",
    "holds",
)


def _cell(values: Sequence[float], *qs: float) -> str:
    return " / ".join(f"{_percentile(values, q):.0f}" for q in qs)


def row(pt: VoicePoint) -> list[object]:
    """One table row."""
    t, w = pt.tally, pt.window_s
    cpu = " + ".join(
        f"{pt.cpu_s[k] * 100 / w:.0f}" for k in ("supervisor", "worker", "recognition")
    )
    lost = " / ".join(
        "n/a" if x is None else f"{x:.0f}" for x in (pt.frames_lost_in, pt.frames_lost_out)
    )
    if pt.drop_counters:
        lost += f" + {sum(pt.drop_counters.values()):.0f} dropped"
    return [
        pt.n,
        f"{pt.cpu_ms_per_call_s:.0f}",
        f"{pt.server_cpu_s * 100 / w:.0f} ({cpu})",
        _cell(t.asr_latency_ms, 50, 95, 100),
        _cell(t.silence_latency_ms, 50, 95),
        f"{t.sentences} / {t.recognised} ({t.finals}, {t.empty_finals})",
        _cell(t.tts_first_ms, 50, 95, 100),
        f"{t.replies} / {len(t.tts_first_ms)} ({t.superseded})",
        f"{_cell(t.server_asr_ms, 95)}, {_cell(t.server_tts_ttfb_ms, 95)}",
        " / ".join(f"{pt.tick_lag(q):.1f}" for q in (50, TICK_LAG_QUANTILE, 100)),
        lost,
        f"{t.lag_p99_ms:.1f}",
        f"{pt.other_cpu_s * 100 / w:.0f}",
        "no: " + ", ".join(pt.failures) if pt.failures else "yes",
    ]


def chart(name: str, points: Sequence[VoicePoint]) -> Path:
    """ASR latency, TTS first frame, server CPU by process and CPU per call-second, against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    ns = [p.n for p in points]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (ax_asr, ax_tts), (ax_cpu, ax_call) = axes
    for ax, pick, limit, title in (
        (ax_asr, VoicePoint.asr, ASR_LIMIT_MS, "end of speech → asrFinal"),
        (ax_tts, VoicePoint.tts, TTS_LIMIT_MS, "tts sent → first audio frame"),
    ):
        for q, style in ((50, "o-"), (95, "s--")):
            ax.plot(ns, [pick(p, q) for p in points], style, label=f"p{q}")
        ax.axhline(limit, color="grey", linestyle=":", linewidth=1, label="real-time bound")
        ax.set(ylabel="ms (log scale)", title=title, yscale="log")
        ax.yaxis.set_major_locator(ticker.FixedLocator([100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4]))
        ax.yaxis.set_major_formatter(ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.legend()
    bottom = np.zeros(len(points))
    for part, label in (
        ("recognition", "recognition process (pocketsphinx)"),
        ("worker", "worker (media, piper thread)"),
        ("supervisor", "supervisor"),
    ):
        share = np.array([p.cpu_s[part] * 100 / p.window_s for p in points])
        ax_cpu.bar(ns, share, 0.6, bottom=bottom, label=label)
        bottom += share
    ax_cpu.axhline(100, color="grey", linestyle=":", linewidth=1, label="one CPU")
    ax_cpu.set_ylim(0, max(130.0, float(bottom.max()) * 1.35))  # room for the legend
    ax_cpu.set(ylabel="% of one CPU", title="server CPU by process (ASR runs on the worker's CPU)")
    ax_cpu.legend(loc="upper left", fontsize=8)
    ax_call.plot(ns, [p.cpu_ms_per_call_s for p in points], "o-")
    ax_call.set_ylim(bottom=0)
    ax_call.set(ylabel="CPU ms per call-second", title="server tree CPU per call-second")
    held = [p.n for p in points if p.holds]
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.set_xticks(ns)
        ax.set_xlabel("concurrent calls N on one worker (shaded: holds real time)")
        if held:
            ax.axvspan(min(ns) - 0.5, max(held) + 0.5, color="green", alpha=0.06)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def notes(
    points: Sequence[VoicePoint], args: argparse.Namespace, pins: str, yardstick: float
) -> str:
    """The largest N that held, the definitions and the settings."""
    held = [p.n for p in points if p.holds]
    lines = [
        f"Largest N that held real time on one worker: **{max(held) if held else 'none'}** "
        "(every call connected, every sentence got its asrFinal, ASR latency p95 ≤ 1.5 s, "
        "every reply got audio, TTS first frame p95 ≤ 1 s, worker tick-lag p99 ≤ 20 ms in "
        "95 % of the 500 ms intervals, no frame lost, generator lag p99 ≤ 10 ms).",
        "",
        f"Server: `activecall serve --workers 1` on 127.0.0.1; the machine has 2 CPUs. {pins} "
        "The load generator runs beside it in its own process (unpinned), so the server "
        "shares the machine with it and with whatever else runs (other CPU %). Before each "
        f"point the script waits (up to {args.quiet_wait:g} s) until other programs use under "
        "25 % of a CPU; a failing point measured with more than that is measured again "
        f"(up to {args.retries} time(s)).",
        f"Settings: steady window {args.duration:g} s per point, ramp {args.ramp:g} calls/s, "
        f"settle {args.settle:g} s, streaming goes on {TAIL_S:g} s after the window, "
        f"{args.phases} send slots per 20 ms. `invite{{codec:pcm, vad:{{}}, asr:{{}}}}`: "
        "pocketsphinx (default ASR) and piper (default TTS), silencePadding 100 ms; 20 ms "
        "frames of PCM16LE 16 kHz, each call from its own offset in the 60 s speech.",
        f'- After each non-empty `asrFinal` the client sends `tts` "{reply_text(1234)}" '
        "(a distinct number each time, so no reply comes from the TTS cache) with a new "
        "playId; a reply still playing is interrupted by the next, as upstream does. A reply "
        "that the client's next reply replaced less than 1 s after it was sent, before any "
        "of its audio came, is counted as superseded and left out; any other reply without "
        "audio fails the point.",
        f"- Before the sweep one {WARMUP_S:g} s call (not reported) starts the recognition "
        "process and loads the piper voice (about 1.6 s of CPU on the worker's CPU, in the "
        "first synthesis). Before each point the script waits (up to "
        f"{IDLE_WAIT_S:g} s) until the server tree is idle: a recognition process that fell "
        "behind still decodes the queued audio of calls that have ended.",
        "- ASR latency = arrival of the sentence's `asrFinal` − client send of the frame "
        "carrying the sentence's labelled end. It includes silencePadding (100 ms), the VAD's "
        "32 ms chunking, the recognition process finishing the utterance, and transport. "
        "end of speech → silence is the same for the VAD's `silence` event.",
        "- TTS first frame = client send of `tts` → first binary frame after the `trackStart` "
        "of its playId.",
        "- server: end_utterance→final = the `completed.asr.pocketsphinx` metrics event "
        "(VAD end of speech → final, inside the worker); TTS first chunk = `ttfb` of "
        "`completed.tts.piper` (command received → first synthesised chunk).",
        "- CPU ms per call-s = server tree user+sys (supervisor + worker, which runs piper on "
        "a thread, + the worker's pocketsphinx recognition process) over the window / "
        "call-seconds streamed in it; CPU % is of one CPU.",
        "- tick lag = `activecall_tick_lag_p99_us` (p99 of one 500 ms heartbeat interval) "
        f"scraped every {LAG_SCRAPE_S:g} s: p50, p95 and worst of those values over the "
        "window. An interval holds 25 ticks, so its p99 is its slowest tick; the criterion "
        "takes the p95 of the intervals, not the worst, so that one preemption of the pinned "
        "worker by another program on its CPU does not decide the point.",
        "- frames lost in = frames sent − `activecall_frames_in`; out = "
        "`activecall_frames_out` − binary frames received; plus drop counters.",
        "- generator lag = send time − 20 ms deadline per frame; other CPU % = busy CPU of "
        "the machine minus server and generator.",
        f"- Host speed yardstick, taken before the sweep: pocketsphinx alone needed "
        f"{yardstick:.3f} CPU s per second of the test speech (20 ms pushes, in the "
        "benchmark's process; `providers_offline.md` has a real-time factor of 0.161 for the "
        "same decoder). On a shared host it varies from run to run, and the CPU figures and "
        "the N that holds vary with it.",
    ]
    for p in points:
        t = p.tally
        if t.cached:
            lines.append(f"- N={p.n}: {t.cached} replies came from the TTS cache.")
        for reason, count in t.errors.items():
            lines.append(f"- N={p.n}: {count} calls failed: {reason}")
        for text, count in t.server_errors.items():
            lines.append(f"- N={p.n}: {count} `error` events: {text}")
        if p.retried:
            lines.append(f"- N={p.n}: other attempts, measured under more load: {p.retried}.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def pinning(server: ServerProcess) -> str:
    """Which CPUs the supervisor, the worker and its recognition process may run on."""
    cpus: dict[str, list[int]] = {}
    for p in server.processes():
        with contextlib.suppress(psutil.Error):
            cpus.setdefault(role(p, server.root_pid), p.cpu_affinity())
    names = {"recognition": "worker's recognition process"}
    return " ".join(
        f"The {names.get(name, name)} may run on CPUs {sorted(c)}." for name, c in cpus.items()
    )


def asr_reference(seconds: float = 20.0) -> float:
    """CPU seconds pocketsphinx alone needs per second of the test speech on this host now
    (20 ms pushes, in this process): a yardstick for the shared host's speed."""
    from activecall.providers.pocketsphinx import Recognizer, en_us_decoders

    pcm = load_speech()[: int(seconds * 16_000)].astype("<i2")
    ends = {(e + 300) // FRAME_MS for _, e in load_sentences()}  # end_utterance as the VAD would
    recognizer = Recognizer(en_us_decoders()())
    frame = 16 * FRAME_MS
    t0 = time.process_time()
    for k in range(len(pcm) // frame):
        recognizer.feed(pcm[k * frame : (k + 1) * frame].tobytes())
        if k in ends:
            recognizer.end_utterance()
    return (time.process_time() - t0) / seconds


def wait_quiet(server: ServerProcess, limit: float) -> float:
    """Wait (at most ``limit`` s) until programs other than the server use under 25 % of a
    CPU over 2 s; the last such figure (%)."""
    deadline = time.monotonic() + limit
    while True:
        busy0, cpu0 = busy_seconds(), cpu_seconds(server.processes())
        time.sleep(2.0)
        busy1, cpu1 = busy_seconds(), cpu_seconds(server.processes())
        other = (busy1 - busy0 - cpu_delta(cpu0, cpu1)) * 100 / 2.0
        if other <= NOISE_LIMIT_PERCENT or time.monotonic() >= deadline:
            return other


def sweep(
    server: ServerProcess, ns: Sequence[int], args: argparse.Namespace
) -> Iterator[VoicePoint]:
    """Load the running ``server`` with each N in turn until a point does not hold."""
    reply_base = 0
    for n in ns:
        attempts: list[VoicePoint] = []
        for _ in range(args.retries + 1):
            wait_idle(server, IDLE_WAIT_S)
            wait_quiet(server, args.quiet_wait)
            pt = run_point(server, n, args, reply_base)
            reply_base += n * TURNS_PER_CALL
            attempts.append(pt)
            print(" | ".join(str(c) for c in row(pt)), flush=True)
            other = pt.other_cpu_s * 100 / pt.window_s
            if pt.holds or other <= NOISE_LIMIT_PERCENT:
                break
            print(f"  other processes used {other:.0f} % of a CPU: measuring again")
        # all failed: the attempt that other programs disturbed least speaks for the server
        pt = attempts[-1] if pt.holds else min(attempts, key=lambda a: a.other_cpu_s)
        pt.retried = "; ".join(attempt_summary(a) for a in attempts if a is not pt)
        yield pt
        if not pt.holds:
            break


def attempt_summary(pt: VoicePoint) -> str:
    """One line on a discarded attempt: other load, ASR and TTS latency, why it failed."""
    return (
        f"other CPU {pt.other_cpu_s * 100 / pt.window_s:.0f} %, ASR p50/p95 "
        f"{pt.asr(50):.0f}/{pt.asr(95):.0f} ms, TTS p95 {pt.tts(95):.0f} ms, "
        f"recognition process {pt.cpu_s['recognition'] * 100 / pt.window_s:.0f} % CPU "
        f"({', '.join(pt.failures) or 'held'})"
    )


def warm_up(server: ServerProcess, args: argparse.Namespace) -> None:
    """One call, not reported: starts the recognition process and loads the piper voice."""
    short = argparse.Namespace(**{**vars(args), "duration": WARMUP_S, "settle": 1.0})
    pt = run_point(server, 1, short, reply_base=9_000)
    t = pt.tally
    print(
        f"warm-up: {t.recognised} of {t.sentences} sentences got a final, "
        f"ASR latency p50 {pt.asr(50):.0f} ms; {len(t.tts_first_ms)} of {t.replies} replies "
        f"got audio, first frame p50 {pt.tts(50):.0f} ms; "
        f"errors {t.errors or t.server_errors or 'none'}",
        flush=True,
    )


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="steady window (s)")
    parser.add_argument("--sweep", default="1,2,3,4,6,8,10,12,16", help="values of N")
    parser.add_argument("--ramp", type=float, default=2.0, help="new calls per second")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="after the last call, before the window (s)"
    )
    parser.add_argument("--phases", type=int, default=10, help="send slots per 20 ms")
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="re-measure a failing point this many times when other processes loaded the host",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each point, wait up to this long (s) for other programs to calm down",
    )
    parser.add_argument("--name", default="voice_ai", help="results file name")
    args = parser.parse_args()
    ns = [int(n) for n in args.sweep.split(",") if n]
    signal.signal(signal.SIGTERM, _terminate)
    points: list[VoicePoint] = []
    pins = ""
    yardstick = asr_reference()
    print(f"pocketsphinx alone: {yardstick:.3f} CPU s per audio s", flush=True)
    print(" | ".join(HEADERS), flush=True)
    with tempfile.TemporaryDirectory(prefix="voice_ai.") as tmp:
        server = ServerProcess(ServerSpec("activecall", 1), Path(tmp))
        try:
            server.start()
            warm_up(server, args)
            pins = pinning(server)
            points.extend(sweep(server, ns, args))
        except KeyboardInterrupt:
            print("interrupted: writing what was measured", file=sys.stderr)
        except RuntimeError as exc:
            print(f"stopped: {exc}\n{server.log_tail()}", file=sys.stderr)
        finally:
            server.stop()
    if not points:
        return
    write_results(
        args.name,
        "Voice AI: concurrent /call clients with offline ASR and TTS on one worker",
        format_table(HEADERS, [row(p) for p in points]),
        notes(points, args, pins, yardstick),
    )
    print(f"wrote {chart(args.name, points)}")


if __name__ == "__main__":
    main()
