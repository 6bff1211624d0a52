"""Codec and resampler speed: G.711 against ``audioop``, G.722 against ``g722``, the streaming
resampler against ``soxr``.

Every operation runs on 60 s of speech in one call and as a loop of 20 ms frames (one RTP
packet each). Run: ``.venv/bin/python -m bench.codecs [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import G722
import numpy as np
import soxr

from activecall._native.g711 import decode_alaw, decode_ulaw, encode_alaw, encode_ulaw
from activecall._native.g722 import G722Decoder, G722Encoder
from bench._common import bar_chart, best_of, format_table, load_speech, machine, write_results

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # deprecated in 3.11-3.12
    import audioop

RATE = 16_000
FRAME_MS = 20
# soxr's nearest setting that meets our resampler's target (>= 70 dB stopband, <= 0.1 dB ripple
# up to 0.9 x the lower Nyquist): 16-bit precision (~100 dB) with a 95 % passband. "LQ" ends
# its passband at 80 %, short of the target; "HQ" is 20-bit.
SOXR_QUALITY = "MQ"
RESAMPLINGS = [(8_000, 16_000), (16_000, 8_000), (48_000, 16_000), (16_000, 48_000)]

Run = Callable[[], Any]


@dataclass(frozen=True, slots=True)
class Case:
    """One operation: ours and the reference, each on the whole signal and frame by frame.

    A ``None`` run of ours means our kernel is not available (the notes say why).
    """

    operation: str
    reference: str
    ours_whole: Run | None
    ours_frames: Run | None
    ref_whole: Run
    ref_frames: Run
    frames: int
    same_output: str = ""


def frames_of(signal: Any, size: int) -> list[Any]:
    """``signal`` cut into consecutive frames of ``size`` items (the tail is dropped)."""
    return [signal[i : i + size] for i in range(0, len(signal) - size + 1, size)]


def each_frame(step: Callable[..., Any], frames: Sequence[Any], *args: Any) -> Run:
    """A run that calls ``step(frame, *args)`` on every frame."""

    def run() -> None:
        for frame in frames:
            step(frame, *args)

    return run


def each_frame_fresh(make: Callable[[], Callable[[Any], Any]], frames: Sequence[Any]) -> Run:
    """A run that makes a fresh stateful ``step`` (a codec or resampler method), then calls it
    on every frame (``[signal]`` for the whole-signal call)."""

    def run() -> None:
        step = make()
        for frame in frames:
            step(frame)

    return run


def g711_cases(
    law: str,
    encode: Callable[[Any], bytes],
    decode: Callable[[Any], np.ndarray],
    lin2law: Callable[[bytes, int], bytes],
    law2lin: Callable[[bytes, int], bytes],
    pcm: np.ndarray,
) -> list[Case]:
    size = 8_000 * FRAME_MS // 1000
    raw = pcm.tobytes()
    codes = lin2law(raw, 2)
    pcm_frames, code_frames = frames_of(pcm, size), frames_of(codes, size)
    decoded = np.frombuffer(law2lin(codes, 2), dtype=np.int16)
    return [
        Case(
            f"G.711 {law} encode (8 kHz)",
            f"audioop.{lin2law.__name__}",
            partial(encode, pcm),
            each_frame(encode, pcm_frames),
            partial(lin2law, raw, 2),
            each_frame(lin2law, frames_of(raw, 2 * size), 2),
            len(pcm_frames),
            same(encode(pcm) == codes),
        ),
        Case(
            f"G.711 {law} decode (8 kHz)",
            f"audioop.{law2lin.__name__}",
            partial(decode, codes),
            each_frame(decode, code_frames),
            partial(law2lin, codes, 2),
            each_frame(law2lin, code_frames, 2),
            len(code_frames),
            same(np.array_equal(decode(codes), decoded)),
        ),
    ]


def g722_cases(pcm: np.ndarray) -> list[Case]:
    size = RATE * FRAME_MS // 1000
    pcm_frames = frames_of(pcm, size)
    codes = bytes(G722.G722(RATE, 64000).encode(pcm))
    code_frames = frames_of(codes, size // 2)

    def reference() -> Any:
        return G722.G722(RATE, 64000)

    return [
        Case(
            "G.722 encode (16 kHz, 64 kbit/s)",
            "g722 (libg722)",
            each_frame_fresh(lambda: G722Encoder().encode, [pcm]),
            each_frame_fresh(lambda: G722Encoder().encode, pcm_frames),
            each_frame_fresh(lambda: reference().encode, [pcm]),
            each_frame_fresh(lambda: reference().encode, pcm_frames),
            len(pcm_frames),
            same(G722Encoder().encode(pcm) == codes),
        ),
        Case(
            "G.722 decode (16 kHz, 64 kbit/s)",
            "g722 (libg722)",
            each_frame_fresh(lambda: G722Decoder().decode, [codes]),
            each_frame_fresh(lambda: G722Decoder().decode, code_frames),
            each_frame_fresh(lambda: reference().decode, [codes]),
            each_frame_fresh(lambda: reference().decode, code_frames),
            len(code_frames),
            same(np.array_equal(G722Decoder().decode(codes), reference().decode(codes))),
        ),
    ]


def resampler_case(in_rate: int, out_rate: int, pcm: np.ndarray, resampler: Any) -> Case:
    """``resampler`` is our ``Resampler`` class, or ``None`` if it is not available."""
    pcm_frames = frames_of(pcm, in_rate * FRAME_MS // 1000)
    ours_whole = ours_frames = None
    if resampler is not None:

        def ours() -> Callable[[Any], Any]:
            return resampler(in_rate, out_rate).process

        ours_whole = each_frame_fresh(ours, [pcm])
        ours_frames = each_frame_fresh(ours, pcm_frames)
    return Case(
        f"resample {in_rate // 1000}k -> {out_rate // 1000}k",
        f"soxr {SOXR_QUALITY}",
        ours_whole,
        ours_frames,
        partial(soxr.resample, pcm, in_rate, out_rate, quality=SOXR_QUALITY),
        each_frame_fresh(
            lambda: (
                soxr.ResampleStream(
                    in_rate, out_rate, 1, dtype="int16", quality=SOXR_QUALITY
                ).resample_chunk
            ),
            pcm_frames,
        ),
        len(pcm_frames),
        "n/a (other filter)",
    )


def our_resampler() -> tuple[Any, str]:
    """Our ``Resampler`` class and ``""``, or ``None`` and why it cannot be imported (it is
    another kernel, which may not be written or built yet)."""
    try:
        from activecall._native.resample import Resampler
    except ImportError as exc:
        why = f"activecall._native.resample not available ({type(exc).__name__}: {exc})"
        print(f"note: the resampler rows have no timings of ours: {why}\n")
        return None, why
    return Resampler, ""


def same(equal: bool) -> str:
    return "yes" if equal else "NO"


def time_or_failure(run: Run | None, repeat: int) -> float | str:
    """Best seconds of ``run``, or why there is no time."""
    if run is None:
        return "n/a"
    try:
        return best_of(run, repeat)
    except Exception as exc:  # a kernel still being written must not stop the table
        return f"failed ({type(exc).__name__})"


@dataclass(frozen=True, slots=True)
class Timing:
    case: Case
    ours_whole: float | str
    ref_whole: float | str
    ours_frames: float | str
    ref_frames: float | str


def measure(case: Case, repeat: int) -> Timing:
    print(f"  {case.operation} ...", flush=True)
    return Timing(
        case,
        time_or_failure(case.ours_whole, repeat),
        time_or_failure(case.ref_whole, repeat),
        time_or_failure(case.ours_frames, repeat),
        time_or_failure(case.ref_frames, repeat),
    )


def ratio(ours: float | str, ref: float | str) -> str:
    if isinstance(ours, float) and isinstance(ref, float):
        return f"{ours / ref:.2f}"
    return ""


def cell(seconds: float | str, scale: float, digits: int) -> str:
    return f"{seconds * scale:.{digits}f}" if isinstance(seconds, float) else seconds


def table_rows(timings: Sequence[Timing]) -> list[list[str]]:
    rows = []
    for t in timings:
        n = t.case.frames
        rows.append(
            [
                t.case.operation,
                t.case.reference,
                cell(t.ours_whole, 1e3, 2),
                cell(t.ref_whole, 1e3, 2),
                ratio(t.ours_whole, t.ref_whole),
                cell(t.ours_frames, 1e6 / n, 2),
                cell(t.ref_frames, 1e6 / n, 2),
                ratio(t.ours_frames, t.ref_frames),
                t.case.same_output,
            ]
        )
    return rows


NOTES = """\
Settings:
- Audio: `tests/data/speech_60s_16k.flac`, int16. The 8 and 48 kHz versions are made from it
  once with `soxr` VHQ (not timed). G.711 runs at 8 kHz, G.722 at 16 kHz.
- "60 s": one call on the whole signal. "20 ms": a Python loop over pre-sliced 20 ms frames
  (160 samples at 8 kHz, 320 at 16 kHz, 960 at 48 kHz; 160 bytes of G.722), time per frame.
- Timing: best of {repeat} runs after one warm-up. Stateful codecs and resamplers (ours and the
  reference) start each run from a fresh object, created inside the timed run.
- Inputs in each side's own currency: ours take int16 arrays (bytes work at the same speed) and
  decode to int16 arrays; `audioop` takes and returns bytes. Allocating the output array is a
  good part of our per-frame G.711 decode time.
- G.711 reference: CPython's `audioop` (width 2); ours is bit-exact over all 65,536 samples
  and 256 codes. G.722 reference: the `g722` package, sippy's `libg722`, i.e. Steve Underwood's
  spandsp G.722 (from the CMU code); ours is bit-exact with it on speech, noise and random codes.
- Resampler reference: `soxr.resample` (60 s; includes soxr's setup, as ours includes
  constructing a `Resampler`) and `soxr.ResampleStream.resample_chunk` (20 ms), quality
  "{quality}": 16-bit precision, 95 % passband, the nearest soxr setting that meets our target
  (>= 70 dB stopband, <= 0.1 dB ripple to 0.9 x the lower Nyquist). soxr filters somewhat more.
- Our kernels release the GIL for calls of 4,096 samples or more (whole-signal rows), not for
  frames, where re-acquiring a contended GIL would cost more than the work.
{missing}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per row (best of)")
    args = parser.parse_args()

    pcm16k = load_speech()
    pcm8k = soxr.resample(pcm16k, RATE, 8_000, quality="VHQ")
    print(machine())
    print(f"{len(pcm16k) / RATE:g} s of speech, {FRAME_MS} ms frames\n")

    speech = {RATE: pcm16k, 8_000: pcm8k}
    speech[48_000] = soxr.resample(pcm16k, RATE, 48_000, quality="VHQ")
    resampler, missing = our_resampler()
    cases = [
        *g711_cases("µ-law", encode_ulaw, decode_ulaw, audioop.lin2ulaw, audioop.ulaw2lin, pcm8k),
        *g711_cases("A-law", encode_alaw, decode_alaw, audioop.lin2alaw, audioop.alaw2lin, pcm8k),
        *g722_cases(pcm16k),
        *(resampler_case(i, o, speech[i], resampler) for i, o in RESAMPLINGS),
    ]
    timings = [measure(c, args.repeat) for c in cases]

    headers = [
        "operation",
        "reference",
        "ours 60 s (ms)",
        "ref 60 s (ms)",
        "ours/ref",
        "ours 20 ms (µs/frame)",
        "ref 20 ms (µs/frame)",
        "ours/ref (frames)",
        "same output",
    ]
    table = format_table(headers, table_rows(timings))
    notes = NOTES.format(
        repeat=args.repeat,
        quality=SOXR_QUALITY,
        missing=f"- Resampler: {missing}" if missing else "",
    )
    print()
    write_results("codecs", "Codec and resampler speed on 60 s of speech", table, notes.rstrip())

    labels, values = [], []
    for t in timings:
        for suffix, ours, ref in [
            ("60 s", t.ours_whole, t.ref_whole),
            ("20 ms", t.ours_frames, t.ref_frames),
        ]:
            if isinstance(ours, float) and isinstance(ref, float):
                labels.append(f"{t.case.operation} ({suffix})")
                values.append(ours / ref)
    chart = bar_chart(
        "codecs",
        "Time relative to the reference (ours / ref, lower is better)",
        labels,
        values,
        "ours / reference",
    )
    print(f"wrote {chart}")


if __name__ == "__main__":
    main()
