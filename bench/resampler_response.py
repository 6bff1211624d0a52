"""Resampler quality and speed: measured response of every rate pair, and time against soxr.

Quality comes from test tones through the real streaming code (float path), not from the
filter taps: for each input tone the output is fitted at the tone's frequency (gain), and what
is left over is its aliases (downsampling) or images (upsampling). The chart plots both against
frequency over the lower rate's Nyquist: the gain below 1, and above 1 the level of the
unwanted output each tone produces, drawn where the filter acts on it (an alias at the tone's
own frequency, an image at in_rate - tone). soxr LQ/MQ/HQ are measured the same way, on 8k <->
16k, for reference.

Run: ``.venv/bin/python bench/resampler_response.py [--no-speed] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from activecall._native import resample
from activecall._native.resample import SUPPORTED_RATES, Resampler
from bench._common import RESULTS, best_of, format_table, load_speech, write_results

PAIRS = list(itertools.permutations(SUPPORTED_RATES, 2))
AMPLITUDE = 0.5
STEADY = 4096  # output samples measured per tone
SKIP = 600  # output samples dropped at each end (start-up and flush transients)
PASS_EDGE = 0.9  # ripple is measured up to this fraction of the lower Nyquist
SOXR_QUALITIES = ("LQ", "MQ", "HQ")
SPEED_PAIRS = [(8000, 16000), (16000, 8000), (16000, 48000), (48000, 16000), (24000, 16000)]

Convert = Callable[[np.ndarray], np.ndarray]
"""Resamples a whole float32 signal, output time-aligned with the input."""


def ours(in_rate: int, out_rate: int) -> Convert:
    def run(x: np.ndarray) -> np.ndarray:
        r = Resampler(in_rate, out_rate)
        return np.concatenate([r.process_float(x), r.flush_float()])

    return run


def soxr_convert(in_rate: int, out_rate: int, quality: str) -> Convert:
    import soxr

    def run(x: np.ndarray) -> np.ndarray:
        y: np.ndarray = soxr.resample(x, in_rate, out_rate, quality=quality)
        return y

    return run


def tone(convert: Convert, in_rate: int, out_rate: int, freq: float) -> tuple[float, float]:
    """(gain in dB, level of everything else in dB re the tone) for one input tone."""
    n_in = math.ceil((STEADY + 2 * SKIP) * in_rate / out_rate)
    x = (AMPLITUDE * np.sin(2 * np.pi * freq / in_rate * np.arange(n_in))).astype(np.float32)
    y = convert(x).astype(np.float64)[SKIP : SKIP + STEADY]
    residual, gain = y, 0.0
    if freq < out_rate / 2:
        w = 2 * np.pi * freq / out_rate * np.arange(SKIP, SKIP + STEADY)
        basis = np.stack([np.sin(w), np.cos(w)], axis=1)
        coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
        residual = y - basis @ coef
        gain = math.hypot(*coef) / AMPLITUDE
    rms = max(math.sqrt(float(np.mean(residual**2))), 1e-12)
    return 20 * math.log10(max(gain, 1e-12)), 20 * math.log10(rms / (AMPLITUDE / math.sqrt(2)))


@dataclass(frozen=True, slots=True)
class Response:
    """One converter's measured response, frequencies in units of the lower Nyquist."""

    passband: np.ndarray  # (frequency, gain dB)
    stopband: np.ndarray  # (frequency the filter acts at, unwanted level dB)

    @property
    def ripple(self) -> float:
        inside = self.passband[:, 0] <= PASS_EDGE
        return float(np.max(np.abs(self.passband[inside, 1])))

    @property
    def rejection(self) -> tuple[float, float]:
        """(worst rejection in dB, where) over the whole stopband, from the lower Nyquist."""
        i = int(np.argmax(self.stopband[:, 1]))
        return -float(self.stopband[i, 1]), float(self.stopband[i, 0])


def measure(convert: Convert, in_rate: int, out_rate: int, points: int) -> Response:
    nyquist = min(in_rate, out_rate) / 2
    passband, stopband = [], []
    # The passband edge gets its own dense grid: the ripple peaks next to it.
    band = np.concatenate([np.linspace(0.005, 0.8, points), np.linspace(0.8, 0.998, points)])
    for freq in np.unique(np.append(band, PASS_EDGE)) * nyquist:
        gain, others = tone(convert, in_rate, out_rate, freq)
        passband.append((freq / nyquist, gain))
        if in_rate < out_rate:  # the first image, at in_rate - freq, is the one nearest in
            stopband.append(((in_rate - freq) / nyquist, others))
    if in_rate > out_rate:
        top = 0.995 * in_rate / 2
        near = np.linspace(nyquist, min(2 * nyquist, top), 2 * points)
        for freq in np.concatenate([near, np.linspace(near[-1], top, points // 4)]):
            stopband.append((freq / nyquist, tone(convert, in_rate, out_rate, freq)[1]))
    return Response(np.array(passband), np.array(sorted(stopband)))


def quality(points: int) -> dict[str, Response]:
    responses = {f"{a} -> {b}": measure(ours(a, b), a, b, points) for a, b in PAIRS}
    rows = []
    for (a, b), (name, resp) in zip(PAIRS, responses.items(), strict=True):
        r = Resampler(a, b)
        g = math.gcd(a, b)
        rejection, where = resp.rejection
        rows.append(
            [
                name,
                f"{b // g}/{a // g}",
                r.taps,
                f"{r.delay} ({1000 * r.delay / b:.2f} ms)",
                f"{resp.ripple:.3f}",
                f"{rejection:.1f}",
                f"{where:.3f}",
            ]
        )
    for (a, b), q in itertools.product([(8000, 16000), (16000, 8000)], SOXR_QUALITIES):
        resp = measure(soxr_convert(a, b, q), a, b, points)
        rejection, where = resp.rejection
        rows.append(
            [
                f"soxr {q} {a} -> {b}",
                "",
                "",
                "",
                f"{resp.ripple:.3f}",
                f"{rejection:.1f}",
                f"{where:.3f}",
            ]
        )
        responses[f"soxr {q} {a} -> {b}"] = resp
    table = format_table(
        [
            "pair",
            "L/M",
            "taps",
            "look-ahead (out samples)",
            "ripple (dB)",
            "rejection (dB)",
            "worst at (x Nyquist)",
        ],
        rows,
    )
    notes = (
        f"Measured with {2 * points} test tones per pair from 0 to the lower Nyquist (half "
        f"of them from 0.8 up), plus {2 * points} just above it and {points // 4} up to the "
        "input Nyquist when downsampling; amplitude 0.5, through `process_float` + "
        "`flush_float`.\n"
        f"- ripple: largest |gain| in dB for tones up to {PASS_EDGE} x the lower Nyquist "
        "(target <= 0.1 dB).\n"
        "- rejection: the smallest distance in dB between a tone and what it leaves in the "
        "output besides itself (aliases, images, for in-band and out-of-band tones alike; "
        "target >= 70 dB). 'worst at' is where that happens, in units of the lower Nyquist "
        "(an image's frequency for upsamplers, the tone's for downsamplers).\n"
        "- look-ahead: `Resampler.delay`; the output is time-aligned (zero phase), this is "
        "latency.\n"
        "- soxr rows: `soxr.resample` on the whole signal at that quality, same measurement."
    )
    write_results("resampler_quality", "Resampler quality per rate pair", table, notes)
    return responses


def chart(responses: dict[str, Response]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, zoom) = plt.subplots(2, 1, figsize=(10, 9), height_ratios=[3, 2])
    for name, resp in responses.items():
        soxr_run = name.startswith("soxr")
        style = {"lw": 0.8, "alpha": 0.9 if soxr_run else 0.5, "ls": "--" if soxr_run else "-"}
        curve = np.concatenate([resp.passband, resp.stopband[resp.stopband[:, 0] > 1]])
        keep = curve[:, 0] <= 2.0
        (line,) = top.plot(curve[keep, 0], np.maximum(curve[keep, 1], -140), label=name, **style)
        zoom.plot(resp.passband[:, 0], resp.passband[:, 1], color=line.get_color(), **style)
    for ax in (top, zoom):
        ax.axvline(PASS_EDGE, color="grey", lw=0.6, ls=":")
        ax.axvline(1.0, color="grey", lw=0.6, ls=":")
        ax.grid(alpha=0.3)
    top.axhline(-70, color="red", lw=0.8, ls=":")
    top.set_xlim(0, 2)
    top.set_ylim(-140, 5)
    top.set_ylabel("dB: tone gain (< 1), aliases and images (> 1)")
    top.set_title("Resampler response, every rate pair (activecall solid, soxr dashed)")
    top.legend(fontsize=5.5, ncol=4, loc="lower left")
    zoom.axhline(0.1, color="red", lw=0.8, ls=":")
    zoom.axhline(-0.1, color="red", lw=0.8, ls=":")
    zoom.set_xlim(0, 1.0)
    zoom.set_ylim(-0.3, 0.15)
    zoom.set_xlabel("frequency / Nyquist of the lower rate")
    zoom.set_ylabel("passband gain (dB)")
    fig.tight_layout()
    out = RESULTS / "resampler_response.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"wrote {out}")


def time_pair(in_rate: int, out_rate: int, pcm: np.ndarray, repeat: int) -> list[str]:
    """One table row: ms per 60 s at once, then µs per 20 ms frame; ours, then soxr's."""
    import soxr

    size = in_rate // 50
    frames = [pcm[i : i + size] for i in range(0, len(pcm) - size + 1, size)]

    def ours_whole() -> None:
        r = Resampler(in_rate, out_rate)
        r.process(pcm)
        r.flush()

    def ours_frames() -> None:
        step = Resampler(in_rate, out_rate).process
        for f in frames:
            step(f)

    def soxr_whole(q: str) -> Callable[[], None]:
        return lambda: soxr.resample(pcm, in_rate, out_rate, quality=q)

    def soxr_frames(q: str) -> Callable[[], None]:
        def run() -> None:
            step = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=q)
            for f in frames:
                step.resample_chunk(f)

        return run

    whole = [ours_whole, *(soxr_whole(q) for q in SOXR_QUALITIES)]
    framed = [ours_frames, *(soxr_frames(q) for q in SOXR_QUALITIES)]
    return (
        [f"{in_rate} -> {out_rate}"]
        + [f"{1000 * best_of(run, repeat):.2f}" for run in whole]
        + [f"{1e6 * best_of(run, repeat) / len(frames):.2f}" for run in framed]
    )


def speed(repeat: int) -> None:
    speech = load_speech()
    rows = []
    for in_rate, out_rate in SPEED_PAIRS:
        pcm = speech if in_rate == 16000 else Resampler(16000, in_rate).process(speech)
        rows.append(time_pair(in_rate, out_rate, pcm, repeat))
    heads = ["ours", *(f"soxr {q}" for q in SOXR_QUALITIES)]
    table = format_table(
        ["pair", *(f"{h} 60 s (ms)" for h in heads), *(f"{h} 20 ms (µs/frame)" for h in heads)],
        rows,
    )
    notes = (
        "60 s of speech (`tests/data/speech_60s_16k.flac`, resampled by us to the input rate "
        "when it is not 16 kHz), int16 in and out. '60 s': one call on the whole signal plus "
        "flush (`soxr.resample`). '20 ms': a loop over pre-sliced 20 ms frames into one "
        f"streaming object (`soxr.ResampleStream`), time per frame. Best of {repeat} after a "
        f"warm-up. Our dot-product kernel: `{resample.KERNEL}`."
    )
    write_results("resampler_speed", "Resampler speed against soxr", table, notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200, help="tones per pair in the band")
    parser.add_argument("--repeat", type=int, default=5, help="timing runs (best is kept)")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed table")
    args = parser.parse_args()
    chart(quality(args.points))
    if not args.no_speed:
        speed(args.repeat)


if __name__ == "__main__":
    main()
