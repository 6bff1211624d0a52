"""Offline providers: piper TTS and pocketsphinx ASR speed, CPU, latency, and event-loop lag.

Measures what a worker pays for one call's offline speech: piper's time to first audio and
real-time factor (whole text and streaming text), pocketsphinx's real-time factor and the
latency from ``end_utterance()`` to the final on the 60 s speech file, the CPU each spends per
second of call audio, whether each engine releases the GIL, and the lag of a 20 ms media tick
on the worker's event loop (uvloop) while a call's ASR and TTS run. The process is pinned to
one CPU, as a worker is (its recognition process inherits the pin).
Run: ``.venv/bin/python -m bench.providers_offline [--realtime-seconds 60]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil

from bench._common import ROOT, format_table, load_speech, machine, write_results

RATE = 16_000
FRAME = 320  # samples in a 20 ms frame
TICK = 0.020
TEXT = (
    "Thank you for calling, I can help you with that today. "
    "Your current account balance is two hundred and forty dollars. "
    "Is there anything else I can do for you?"
)
WORD_GAP = 0.05  # streaming text: one word every 50 ms, about an LLM's pace
LABELS = ROOT / "tests" / "data" / "speech_60s_16k.json"


@dataclass
class Row:
    """One line of the table."""

    what: str
    value: str
    how: str


@dataclass
class Ticks:
    """Lateness of 20 ms ticks on the event loop."""

    late_ms: list[float] = field(default_factory=list)

    def summary(self) -> str:
        if not self.late_ms:
            return "n/a"
        arr = np.array(self.late_ms)
        p50, p99 = np.percentile(arr, [50, 99])
        return f"p50 {p50:.2f} / p99 {p99:.2f} / max {arr.max():.1f}"


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (default: this one, all threads)."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


# --- GIL: does the engine let the main thread run? ------------------------------------------


def main_thread_share(
    work: Callable[[threading.Event], None], seconds: float = 2.0
) -> tuple[float, float]:
    """Main-thread loop iterations while ``work`` runs on a thread, relative to alone, and
    the main thread's longest stall (ms) meanwhile: a thread holding the GIL inside one C
    call stalls it for that whole call; CPU contention alone stalls it for a few ms."""

    def count() -> tuple[int, float]:
        n, gap = 0, 0.0
        last = time.perf_counter()
        end = last + seconds
        while last < end:
            now = time.perf_counter()
            gap = max(gap, now - last)
            last = now
            n += 1
        return n, gap

    alone, _ = count()
    stop = threading.Event()
    worker = threading.Thread(target=work, args=(stop,))
    worker.start()
    time.sleep(0.3)
    shared, stall = count()
    stop.set()
    worker.join()
    return shared / alone, stall * 1e3


def gil_rows(audio: np.ndarray) -> list[Row]:
    from pocketsphinx import Decoder

    from activecall.providers.piper import load_voice, voice_files

    decoder = Decoder(loglevel="FATAL")
    pcm = audio[: 10 * RATE].tobytes()
    voice = load_voice(*voice_files(None))
    ids = voice.phonemes_to_ids(voice.phonemize(TEXT)[0])

    def decode(stop: threading.Event) -> None:
        while not stop.is_set():
            decoder.start_utt()
            for k in range(0, len(pcm), 9600):
                decoder.process_raw(pcm[k : k + 9600], False, False)
            decoder.end_utt()

    def infer(stop: threading.Event) -> None:
        while not stop.is_set():
            voice.phoneme_ids_to_audio(ids)

    def python(stop: threading.Event) -> None:
        while not stop.is_set():
            sum(range(1000))

    how = (
        "main-thread loop progress with the engine on a thread / alone, and its longest "
        "stall; median of 3 runs of 1 s"
    )
    out = []
    for name, work in [
        ("pocketsphinx process_raw (0.6 s blocks) on a thread", decode),
        ("piper ONNX inference on a thread", infer),
        ("pure-Python thread (holds the GIL, control)", python),
    ]:
        runs = sorted(main_thread_share(work, 1.0) for _ in range(3))
        share, stall = runs[1][0], statistics.median(r[1] for r in runs)
        print(f"{name}: main thread keeps {share:.2f}, longest stall {stall:.1f} ms")
        value = f"{share:.2f} of progress, stall {stall:.0f} ms"
        out.append(Row(f"GIL: {name}", value, how))
    return out


# --- piper ---------------------------------------------------------------------------------


async def piper_rows(repeat: int) -> list[Row]:
    from activecall.protocol.options import SynthesisOption
    from activecall.providers.piper import PiperTts

    tts = PiperTts()
    t0 = time.perf_counter()
    warm = await tts.open(SynthesisOption(), streaming=False)
    load = time.perf_counter() - t0
    await warm.cancel()

    whole_first, whole_rtf, whole_cpu = [], [], []
    stream_first, stream_tail, stream_cpu = [], [], []
    for _ in range(repeat):
        stream = await tts.open(SynthesisOption(), streaming=False)
        c0, t0 = cpu_seconds(), time.perf_counter()
        stream.push_text(TEXT)
        stream.end_text()
        first, samples = None, 0
        async for chunk in stream.chunks():
            first = first if first is not None else time.perf_counter() - t0
            samples += len(chunk.pcm) // 2
        wall, audio_s = time.perf_counter() - t0, samples / 22050
        whole_first.append(first or 0.0)
        whole_rtf.append(wall / audio_s)
        whole_cpu.append((cpu_seconds() - c0) / audio_s)

        stream = await tts.open(SynthesisOption(), streaming=True)
        c0, t0 = cpu_seconds(), time.perf_counter()
        got: list[float] = []

        async def consume(s: Any = stream, got: list[float] = got) -> int:
            n = 0
            async for chunk in s.chunks():
                got.append(time.perf_counter())
                n += len(chunk.pcm) // 2
            return n

        reader = asyncio.create_task(consume())
        for word in TEXT.split(" "):
            stream.push_text(word + " ")
            await asyncio.sleep(WORD_GAP)
        text_done = time.perf_counter()
        stream.end_text()
        samples = await reader
        stream_first.append(got[0] - t0)
        stream_tail.append(got[-1] - text_done)
        stream_cpu.append((cpu_seconds() - c0) / (samples / 22050))
    tts.close()

    med = statistics.median
    text_s = len(TEXT.split(" ")) * WORD_GAP
    return [
        Row("piper: voice load", f"{load:.2f} s", "first open(): ONNX session, 1 intra-op thread"),
        Row(
            "piper whole text: time to first chunk",
            f"{med(whole_first) * 1e3:.0f} ms",
            f"3 sentences, {len(TEXT)} chars; end_text() to first chunk; median of {repeat}",
        ),
        Row(
            "piper whole text: real-time factor",
            f"{med(whole_rtf):.3f}",
            "wall time to last chunk / seconds of audio",
        ),
        Row(
            "piper whole text: CPU per call-second",
            f"{med(whole_cpu):.3f} CPU s",
            "process CPU (all threads) / seconds of audio",
        ),
        Row(
            "piper streaming: time to first chunk",
            f"{med(stream_first) * 1e3:.0f} ms",
            f"from the first word; words every {WORD_GAP * 1e3:.0f} ms, text complete after "
            f"{text_s:.1f} s",
        ),
        Row(
            "piper streaming: last chunk after text end",
            f"{med(stream_tail) * 1e3:.0f} ms",
            "end_text() to the last chunk (only the last sentence is left to say)",
        ),
        Row(
            "piper streaming: CPU per call-second",
            f"{med(stream_cpu):.3f} CPU s",
            "process CPU (all threads) / seconds of audio",
        ),
    ]


# --- pocketsphinx --------------------------------------------------------------------------


def decoder_probe(kind: str) -> None:
    """In a fresh process: print the build seconds and RSS MB of one more decoder of ``kind``
    (``shared`` or ``default``), each decoder having decoded the file's 14 sentences."""
    from pocketsphinx import Decoder

    from activecall.providers.pocketsphinx import en_us_decoders

    audio = load_speech()
    spans = json.loads(LABELS.read_text())["sentences"]
    utterances = [audio[(a - 300) * 16 : (b + 300) * 16].tobytes() for a, b in spans]
    make = en_us_decoders() if kind == "shared" else lambda: Decoder(loglevel="FATAL")
    proc = psutil.Process()

    def use(decoder: Any) -> Any:
        for pcm in utterances:
            decoder.start_utt()
            decoder.process_raw(pcm, False, False)
            decoder.end_utt()
        return decoder

    kept = [use(make())]  # the first one maps the shared files and loads shared tables
    before, builds = proc.memory_info().rss, []
    for _ in range(3):
        t0 = time.perf_counter()
        decoder = make()
        builds.append(time.perf_counter() - t0)
        kept.append(use(decoder))
    print(statistics.mean(builds), (proc.memory_info().rss - before) / 3 / 1e6)


def decoder_cost() -> list[Row]:
    """Build time and memory of one more decoder, shared language model or not; each kind
    in its own process, so neither reuses memory the other freed."""
    rows = []
    for kind, name in [("shared", "shared language model (used)"), ("default", "Decoder()")]:
        code = f"from bench.providers_offline import decoder_probe; decoder_probe({kind!r})"
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        )
        build, mb = (float(x) for x in out.stdout.split())
        print(f"decoder, {name}: {build:.2f} s, {mb:.0f} MB")
        rows.append(
            Row(
                f"pocketsphinx: one more decoder, {name}",
                f"{build:.2f} s, {mb:.0f} MB",
                "build time, and RSS growth once it has decoded the 14 sentences; mean of 3",
            )
        )
    return rows


def utterance_ends(audio: np.ndarray) -> list[int]:
    """The 20 ms frames (counted from 1) after which a VAD would end each labelled sentence
    (300 ms after it), for the sentences that end within ``audio``."""
    spans = json.loads(LABELS.read_text())["sentences"]
    frames = len(audio) // FRAME
    ends = [math.ceil((b + 300) * RATE / 1000 / FRAME) for _, b in spans]
    return [min(e, frames) for e in ends if e - 300 * RATE // 1000 // FRAME <= frames]


async def asr_fast(audio: np.ndarray) -> list[Row]:
    from activecall.protocol.options import TranscriptionOption
    from activecall.providers.pocketsphinx import PocketsphinxAsr

    asr = PocketsphinxAsr()
    t0 = time.perf_counter()
    stream = await asr.open(TranscriptionOption())
    start = time.perf_counter() - t0
    pid = asr.process_id
    assert pid is not None
    ends = set(utterance_ends(audio))
    finals: list[str] = []
    done = asyncio.Event()

    async def consume() -> None:
        async for t in stream.results():
            if t.final:
                finals.append(t.text)
                if len(finals) == len(ends):
                    done.set()

    reader = asyncio.create_task(consume())
    c_child, c_self, t0 = cpu_seconds(pid), cpu_seconds(), time.perf_counter()
    frames = len(audio) // FRAME
    for n in range(1, frames + 1):
        stream.push(audio[(n - 1) * FRAME : n * FRAME].tobytes())
        if n in ends:
            stream.end_utterance()
    await asyncio.wait_for(done.wait(), 600)  # the stream's backlog decoded
    wall = time.perf_counter() - t0
    await stream.aclose()
    await reader
    cpu = cpu_seconds(pid) - c_child + cpu_seconds() - c_self
    await asr.aclose()
    seconds = len(audio) / RATE
    print(f"pocketsphinx: {len(finals)} finals, e.g. {finals[:3]}")
    return [
        Row(
            "pocketsphinx: recognition process start",
            f"{start:.2f} s",
            "first open(): spawn, import, first decoder (once per worker)",
        ),
        Row(
            "pocketsphinx: real-time factor",
            f"{wall / seconds:.3f}",
            f"{seconds:.0f} s file pushed in 20 ms frames as fast as possible, "
            f"end_utterance() after each of {len(ends)} sentences; {len(finals)} finals",
        ),
        Row(
            "pocketsphinx: CPU per call-second",
            f"{cpu / seconds:.3f} CPU s",
            "recognition process + worker CPU / seconds of audio",
        ),
    ]


# --- real time: one call's ASR and TTS beside the 20 ms tick --------------------------------


async def ticker(ticks: Ticks, stop: asyncio.Event, on_tick: Callable[[int], None]) -> None:
    """A 20 ms media tick: records how late each tick wakes, then runs ``on_tick``."""
    # perf_counter, not loop.time(): uvloop's clock has 1 ms steps
    start = time.perf_counter()
    n = 0
    while not stop.is_set():
        n += 1
        deadline = start + n * TICK
        await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
        ticks.late_ms.append(max(0.0, time.perf_counter() - deadline) * 1e3)
        on_tick(n)


async def idle_ticks(seconds: float) -> Ticks:
    ticks, stop = Ticks(), asyncio.Event()
    task = asyncio.create_task(ticker(ticks, stop, lambda n: None))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    return ticks


async def realtime_call(audio: np.ndarray) -> tuple[Ticks, list[float], int]:
    """Feed the call's audio at real time from the tick; after each final, speak a reply."""
    from activecall.protocol.options import SynthesisOption, TranscriptionOption
    from activecall.providers.piper import PiperTts
    from activecall.providers.pocketsphinx import PocketsphinxAsr

    asr, tts = PocketsphinxAsr(), PiperTts()
    stream = await asr.open(TranscriptionOption())
    warm = await tts.open(SynthesisOption(), streaming=True)  # load the voice before the call
    await warm.cancel()
    ends = utterance_ends(audio)
    asked: dict[int, float] = {}
    latency: list[float] = []
    replies: list[asyncio.Task[int]] = []

    async def reply() -> int:
        speech = await tts.open(SynthesisOption(), streaming=True)
        for word in TEXT.split(" "):
            speech.push_text(word + " ")
        speech.end_text()
        return sum([len(c.pcm) async for c in speech.chunks()])

    async def consume() -> None:
        async for t in stream.results():
            if t.final:
                latency.append((time.perf_counter() - asked[t.index]) * 1e3)
                replies.append(asyncio.create_task(reply()))

    index = 0
    frames = len(audio) // FRAME
    stop = asyncio.Event()

    def on_tick(n: int) -> None:
        nonlocal index
        if n > frames:
            stop.set()
            return
        stream.push(audio[(n - 1) * FRAME : n * FRAME].tobytes())
        if index < len(ends) and n >= ends[index]:
            asked[index] = time.perf_counter()
            stream.end_utterance()
            index += 1

    reader = asyncio.create_task(consume())
    ticks = Ticks()
    await ticker(ticks, stop, on_tick)
    await stream.aclose()
    await reader
    await asyncio.gather(*replies)
    await asr.aclose()
    tts.close()
    return ticks, latency, len(replies)


async def realtime_thread_asr(audio: np.ndarray) -> Ticks:
    """The rejected design: pocketsphinx decoding on a thread of the worker process."""
    from concurrent.futures import ThreadPoolExecutor

    from pocketsphinx import Decoder

    from activecall.providers.pocketsphinx import Recognizer

    recognizer = Recognizer(Decoder(loglevel="FATAL"))
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(1)
    frames = len(audio) // FRAME
    ends = utterance_ends(audio)
    stop = asyncio.Event()
    pending: list[asyncio.Future[Any]] = []

    def on_tick(n: int) -> None:
        if n > frames:
            stop.set()
            return
        pcm = audio[(n - 1) * FRAME : n * FRAME].tobytes()
        pending.append(loop.run_in_executor(executor, recognizer.feed, pcm))
        if n in ends:
            pending.append(loop.run_in_executor(executor, recognizer.end_utterance))

    ticks = Ticks()
    await ticker(ticks, stop, on_tick)
    await asyncio.gather(*pending)
    executor.shutdown()
    return ticks


async def realtime_rows(audio: np.ndarray, seconds: float) -> list[Row]:
    clip = audio[: int(seconds * RATE)]
    idle = await idle_ticks(min(10.0, seconds))
    print(f"idle tick lateness: {idle.summary()}")
    ticks, latency, replies = await realtime_call(clip)
    print(f"with ASR + TTS: {ticks.summary()}; final latency {latency}")
    thread_clip = audio[: int(min(20.0, seconds) * RATE)]
    threaded = await realtime_thread_asr(thread_clip)
    print(f"pocketsphinx on a thread: {threaded.summary()}")
    lat = np.array(latency) if latency else np.zeros(1)
    return [
        Row(
            "pocketsphinx: end_utterance() to final",
            f"p50 {np.median(lat):.0f} ms / max {lat.max():.0f} ms",
            f"real-time feed of {seconds:.0f} s, {len(latency)} utterances, "
            "a piper reply synthesised after each final",
        ),
        Row(
            "event loop: 20 ms tick lateness, idle",
            f"{idle.summary()} ms",
            f"uvloop, {len(idle.late_ms)} ticks, nothing else running",
        ),
        Row(
            "event loop: tick lateness, one call's ASR + TTS",
            f"{ticks.summary()} ms",
            f"{len(ticks.late_ms)} ticks; recognition process + piper thread; {replies} replies",
        ),
        Row(
            "event loop: tick lateness, pocketsphinx on a thread",
            f"{threaded.summary()} ms",
            f"{len(threaded.late_ms)} ticks, {len(utterance_ends(thread_clip))} utterances, "
            "no TTS; the rejected design (the decoder holds the GIL)",
        ),
    ]


NOTES = """\
- The process (and so the recognition process it starts, and the piper thread) is pinned to
  CPU {cpu}, as a worker is; other programs may share the machine ({load} at the start).
  The GIL rows are measured first, unpinned (the engine thread needs a CPU of its own).
- pocketsphinx decodes in a per-worker recognition process (`activecall.providers.pocketsphinx`):
  its `process_raw` keeps the GIL (see the GIL rows), so on a thread it would stall the tick.
  Decoders are pooled in that process (a stream takes one with a fresh front end and returns
  it on close) and share one loaded language model. Partials every 250 ms of audio.
- Real time: the tick pushes the call's next 20 ms frame and calls `end_utterance()` 300 ms
  after each labelled sentence ends, as the VAD would; each final starts a streaming piper
  reply (3 sentences). The "on a thread" row feeds the same frames to a `Recognizer` on a
  thread of the bench process instead (decoding only, no TTS).
- piper synthesises on one thread per worker: ONNX Runtime releases the GIL during inference
  (only espeak phonemisation, under 1 ms a sentence, keeps it). intra-op threads = 1.
- Whole text: the full text is given, then `end_text()`. Streaming: words arrive one at a time,
  each sentence is synthesised once complete; audio is per sentence at 22050 Hz."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="piper runs per mode (median)")
    parser.add_argument(
        "--realtime-seconds", type=float, default=60.0, help="length of the real-time call"
    )
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: last)")
    args = parser.parse_args()

    import uvloop

    load = "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(machine(), load)
    audio = load_speech()
    # The GIL rows need a free CPU for the engine thread: measured before pinning.
    gil = gil_rows(audio)
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    print(f"pinned to CPU {cpu}")

    rows: list[Row] = []
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        rows += runner.run(piper_rows(args.repeat))
        rows += runner.run(asr_fast(audio))
        rows += decoder_cost()
        rows += runner.run(realtime_rows(audio, args.realtime_seconds))
    rows += gil

    table = format_table(["measure", "value", "how"], [[r.what, r.value, r.how] for r in rows])
    notes = NOTES.format(cpu=cpu, load=load)
    print()
    write_results(
        "providers_offline", "Offline providers: piper TTS and pocketsphinx ASR", table, notes
    )


if __name__ == "__main__":
    main()
