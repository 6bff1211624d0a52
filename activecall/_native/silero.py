"""TinySilero: the Silero VAD v5/v6 network in Numba kernels, without onnxruntime.

The network (weights from the official ``silero_vad.onnx``, see
``scripts/extract_silero_weights.py``), per chunk of ``N`` new samples at 16 kHz (8 kHz):

* input: ``C`` = 64 (32) context samples from the previous chunk, then the ``N`` = 512 (256)
  new ones, reflect-padded by ``C`` on the right;
* STFT: periodic-Hann-windowed ``n_fft`` = 256 (128) point DFT, hop ``n_fft/2``, 4 frames,
  magnitude of ``n_fft/2 + 1`` bins (computed with a real FFT);
* encoder: four Conv1d(k=3, pad=1) + ReLU, channels bins→128→64→64→128, strides 1, 2, 2, 1;
* decoder: one LSTM cell (128→128, gates i, f, g, o) whose h, c persist per stream, then
  ReLU(h) → 1×1 conv 128→1 → sigmoid = speech probability.

Convolution weights are stored ``[in, k, out]`` so the inner loops are broadcast-FMAs over
contiguous output channels, which LLVM vectorises; zero activations after a ReLU are skipped.
The kernels are compute- or L2-bound (about 0.9 MB of weights per chunk); a stream costs one
Numba call per chunk (or per frame with ``process``) and a batch one call per tick.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from importlib import resources
from typing import Any, ClassVar, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["SileroModel", "VadBatch", "VadSession"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

WEIGHTS_FILE = "silero_vad.npz"
HIDDEN = 128  # encoder output, LSTM size
MID = 64  # channels of encoder.1 and encoder.2
FRAMES = 4  # STFT frames per chunk, at both rates
INT16_SCALE = np.float32(1.0 / 32768.0)
SAMPLE_RATES = {16000: "sr16", 8000: "sr8"}

_Fn = TypeVar("_Fn", bound=Callable[..., Any])
# error_model="numpy": a float division never raises, so it carries no branch that would stop
# LLVM from vectorising the loop around it. No nnan/ninf/afn: NaN input propagates.
_OPTIONS: dict[str, Any] = {
    "cache": True,
    "nogil": True,
    "error_model": "numpy",
    "fastmath": {"contract", "reassoc", "nsz", "arcp"},
}


def _kernel(fn: _Fn) -> _Fn:
    return cast(_Fn, numba.njit(**_OPTIONS)(fn))


def _inline(fn: _Fn) -> _Fn:
    """A scalar helper inlined in Numba IR, so the loops calling it still vectorise."""
    return cast(_Fn, numba.njit(inline="always", **_OPTIONS)(fn))


# --- parameter layout -------------------------------------------------------------------------
# One flat float32 array per sample rate: FFT tables, then the weights in kernel layout. Each
# segment starts on a 64-byte boundary.


@_kernel
def _layout(m: int) -> tuple[int, ...]:
    """Offsets of the 15 segments (and the total size) for an ``2*m``-point STFT."""
    bins = m + 1
    sizes = (
        2 * m,  # window
        2 * m,  # twiddle: cos, -sin of 2πj/m, j < m
        2 * (m + 1) * FRAMES,  # post: cos, -sin of 2πk/(2m), k ≤ m, repeated per frame
        bins * 3 * HIDDEN,  # enc0_w [bins, 3, 128]
        HIDDEN,
        HIDDEN * 3 * MID,  # enc1_w [128, 3, 64]
        MID,
        MID * 2 * MID,  # enc2_w [64, 2, 64]: taps 1, 2 (tap 0 only meets the padding)
        MID,
        MID * HIDDEN,  # enc3_w [64, 128]: tap 1 (one frame in, taps 0 and 2 meet the padding)
        HIDDEN,
        2 * HIDDEN * 4 * HIDDEN,  # lstm_w [256, 512]: rows x then h; gate columns i, f, g, o
        4 * HIDDEN,  # lstm_b = b_ih + b_hh
        HIDDEN,  # head_w
        1,  # head_b
    )
    offsets = [0] * 16
    o = 0
    for i in range(15):
        offsets[i] = o
        o += (sizes[i] + 15) // 16 * 16
    offsets[15] = o
    return (
        offsets[0], offsets[1], offsets[2], offsets[3], offsets[4], offsets[5], offsets[6],
        offsets[7], offsets[8], offsets[9], offsets[10], offsets[11], offsets[12], offsets[13],
        offsets[14], offsets[15],
    )  # fmt: skip


_WEIGHT_NAMES = (
    "enc0_w", "enc0_b", "enc1_w", "enc1_b", "enc2_w", "enc2_b", "enc3_w", "enc3_b",
    "lstm_w", "lstm_b", "head_w", "head_b",
)  # fmt: skip


def _pack(arrays: dict[str, np.ndarray], key: str) -> tuple[int, int, int, F32]:
    """(n_fft, context, chunk, flat parameters) of one sample-rate branch of the npz."""
    n_fft, context, chunk = (int(v) for v in arrays[f"{key}_meta"])
    m = n_fft // 2
    n = np.arange(n_fft)
    a = 2 * np.pi * np.arange(m) / m
    b = 2 * np.pi * np.arange(m + 1) / n_fft
    weights = {name: arrays[f"{key}_{name}"] for name in _WEIGHT_NAMES}
    # With 4 frames in, encoder.2 sees 2 frames and encoder.3 one: drop the taps that only
    # ever multiply the zero padding.
    weights["enc2_w"] = weights["enc2_w"][:, 1:, :]
    weights["enc3_w"] = weights["enc3_w"][:, 1, :]
    segments = [
        0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft),
        np.stack([np.cos(a), -np.sin(a)]),
        np.repeat(np.stack([np.cos(b), -np.sin(b)]), FRAMES, axis=1),
        *weights.values(),
    ]
    offsets = _layout(m)
    params = np.zeros(offsets[-1], dtype=np.float32)
    for i, seg in enumerate(segments):
        size = offsets[i + 1] - offsets[i]
        flat = np.asarray(seg, dtype=np.float32).reshape(-1)
        if not size - 16 < flat.size <= size:
            raise ValueError(f"{key}: segment {i} has {flat.size} values, layout wants {size}")
        params[offsets[i] : offsets[i] + flat.size] = flat
    params.setflags(write=False)
    return n_fft, context, chunk, params


class SileroModel:
    """The Silero VAD weights (16 and 8 kHz branches), loaded once per process."""

    _instance: ClassVar[SileroModel | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.source = str(arrays["source"])
        self._branches = {rate: _pack(arrays, key) for rate, key in SAMPLE_RATES.items()}

    @classmethod
    def load(cls) -> SileroModel:
        """The process-wide model, read from the weights file shipped in this package."""
        with cls._lock:
            if cls._instance is None:
                ref = resources.files(__package__ or "activecall._native") / WEIGHTS_FILE
                with ref.open("rb") as f, np.load(f) as npz:
                    cls._instance = cls({k: npz[k] for k in npz.files})
            return cls._instance

    def branch(self, sample_rate: int) -> tuple[int, int, int, F32]:
        """(n_fft, context, chunk, flat parameters) for 16000 or 8000 Hz."""
        try:
            return self._branches[sample_rate]
        except KeyError:
            raise ValueError(f"sample_rate must be 16000 or 8000, not {sample_rate}") from None


# --- kernels ----------------------------------------------------------------------------------


@_inline
def _tanh(x: np.float32) -> np.float32:
    """tanh as Eigen's [13/6] rational fit on ±7.9: |error| < 4e-7, and it vectorises."""
    clip = np.float32(7.905311)  # end of the fitted range; |tanh| > 1 - 3e-7 beyond it
    if x > clip:
        x = clip
    elif x < -clip:
        x = -clip
    x2 = x * x
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return x * p / q


@_inline
def _sigmoid(x: np.float32) -> np.float32:
    return np.float32(0.5) + np.float32(0.5) * _tanh(np.float32(0.5) * x)


@_kernel
def _load_input(x: npt.NDArray[Any], scale: np.float32, ctx: F32, buf: F32) -> None:
    """buf = [ctx, x*scale, right reflect pad]; ctx becomes the last C samples of x."""
    c = ctx.shape[0]
    n = x.shape[0]
    for i in range(c):
        buf[i] = ctx[i]
    for i in range(n):
        buf[c + i] = np.float32(x[i]) * scale
    for i in range(c):
        buf[c + n + i] = buf[c + n - 2 - i]
    for i in range(c):
        ctx[i] = buf[n + i]


@_kernel
def _fft_pass(sr: F32, si: F32, dr: F32, di: F32, s: int, h: int, step: int, tw: F32) -> None:
    """One radix-2 Stockham pass over ``s`` interleaved sequences (self-sorting, no bit
    reversal; reading and writing different buffers keeps stores off the load path)."""
    for p in range(h):
        wr = tw[0, p * step]
        wi = tw[1, p * step]
        a0 = s * p
        b0 = s * (p + h)
        c0 = 2 * s * p
        for q in range(s):
            # Unsigned indices: Numba then emits no negative-index wraparound selects.
            a = np.uint64(a0 + q)
            b = np.uint64(b0 + q)
            c = np.uint64(c0 + q)
            d = np.uint64(c0 + s + q)
            ar = sr[a]
            ai = si[a]
            br = sr[b]
            bi = si[b]
            dr[c] = ar + br
            di[c] = ai + bi
            xr = ar - br
            xi = ai - bi
            dr[d] = xr * wr - xi * wi
            di[d] = xr * wi + xi * wr


@_kernel
def _stft(buf: F32, window: F32, tw: F32, post: F32, z: F32, feat: F32) -> None:
    """feat[m+1, FRAMES] = |DFT| of the Hann-windowed 2m-sample frames of buf (hop m).

    Each frame's even/odd samples form one m-point complex sequence; the frames are
    interleaved (z[., j*FRAMES + f]) and transformed together, then split into the spectrum of
    the real frame: X[k] = E[k] + e^{-2πik/2m} O[k].
    """
    m = tw.shape[1]
    for j in range(m):
        k = 2 * j
        for f in range(FRAMES):
            z[0, j * FRAMES + f] = buf[f * m + k] * window[k]
            z[1, j * FRAMES + f] = buf[f * m + k + 1] * window[k + 1]
    n = m
    s = FRAMES
    src = 0
    while n > 1:
        dst = 2 - src
        _fft_pass(z[src], z[src + 1], z[dst], z[dst + 1], s, n // 2, m // n, tw)
        n //= 2
        s *= 2
        src = dst
    # Pair bin k with bin m-k (mod m) by a reversed copy, so the split below is one
    # contiguous, vectorised loop over (k, frame).
    src_r = z[src]
    src_i = z[src + 1]
    rev_r = z[2 - src]
    rev_i = z[3 - src]
    for k in range(m + 1):
        k2 = ((m - k) % m) * FRAMES
        for f in range(FRAMES):
            rev_r[k * FRAMES + f] = src_r[k2 + f]
            rev_i[k * FRAMES + f] = src_i[k2 + f]
    nyquist = m * FRAMES  # bin m pairs bin 0 with itself
    for f in range(FRAMES):
        src_r[nyquist + f] = src_r[f]
        src_i[nyquist + f] = src_i[f]
    flat = feat.reshape(-1)
    for t in range((m + 1) * FRAMES):
        er = src_r[t] + rev_r[t]
        ei = src_i[t] - rev_i[t]
        orr = src_i[t] + rev_i[t]
        oi = rev_r[t] - src_r[t]
        xr = er + post[0, t] * orr - post[1, t] * oi
        xi = ei + post[0, t] * oi + post[1, t] * orr
        flat[t] = np.float32(0.5) * math.sqrt(xr * xr + xi * xi)


@_kernel
def _enc0(x: F32, w: F32, b: F32, out: F32) -> None:
    """out[4, 128] = ReLU(conv k3 s1 p1 of x[bins, 4]), each weight vector loaded once."""
    for o in range(HIDDEN):
        for t in range(FRAMES):
            out[t, o] = b[o]
    for i in range(x.shape[0]):
        x0 = x[i, 0]
        x1 = x[i, 1]
        x2 = x[i, 2]
        x3 = x[i, 3]
        for o in range(HIDDEN):
            w0 = w[i, 0, o]
            w1 = w[i, 1, o]
            w2 = w[i, 2, o]
            out[0, o] += x0 * w1 + x1 * w2
            out[1, o] += x0 * w0 + x1 * w1 + x2 * w2
            out[2, o] += x1 * w0 + x2 * w1 + x3 * w2
            out[3, o] += x2 * w0 + x3 * w1
    for t in range(FRAMES):
        for o in range(HIDDEN):
            out[t, o] = max(out[t, o], np.float32(0.0))


@_kernel
def _enc1(x: F32, w: F32, b: F32, out: F32) -> None:
    """out[2, 64] = ReLU(conv k3 s2 p1 of x[4, 128]); all-zero input channels skipped."""
    for o in range(MID):
        out[0, o] = b[o]
        out[1, o] = b[o]
    for i in range(x.shape[1]):
        x0 = x[0, i]
        x1 = x[1, i]
        x2 = x[2, i]
        x3 = x[3, i]
        if x0 == 0.0 and x1 == 0.0 and x2 == 0.0 and x3 == 0.0:
            continue
        for o in range(MID):
            w0 = w[i, 0, o]
            w1 = w[i, 1, o]
            w2 = w[i, 2, o]
            out[0, o] += x0 * w1 + x1 * w2
            out[1, o] += x1 * w0 + x2 * w1 + x3 * w2
    for o in range(MID):
        out[0, o] = max(out[0, o], np.float32(0.0))
        out[1, o] = max(out[1, o], np.float32(0.0))


@_kernel
def _enc2(x: F32, w: F32, b: F32, out: F32) -> None:
    """out[64] = ReLU(conv k3 s2 p1 of x[2, 64]); w holds taps 1 and 2 only."""
    for o in range(MID):
        out[o] = b[o]
    for i in range(MID):
        x0 = x[0, i]
        x1 = x[1, i]
        if x0 == 0.0 and x1 == 0.0:
            continue
        for o in range(MID):
            out[o] += x0 * w[i, 0, o] + x1 * w[i, 1, o]
    for o in range(MID):
        out[o] = max(out[o], np.float32(0.0))


@_kernel
def _matvec_rows(out: F32, w: F32, vals: F32, rows: I64, n: int) -> None:
    """out += Σ_k vals[k] * w[rows[k], :] for k < n; four rows per pass over out."""
    c_out = out.shape[0]
    k = 0
    while k + 4 <= n:
        r0, r1, r2, r3 = rows[k], rows[k + 1], rows[k + 2], rows[k + 3]
        v0, v1, v2, v3 = vals[k], vals[k + 1], vals[k + 2], vals[k + 3]
        for o in range(c_out):
            out[o] += v0 * w[r0, o] + v1 * w[r1, o] + v2 * w[r2, o] + v3 * w[r3, o]
        k += 4
    while k < n:
        r0 = rows[k]
        v0 = vals[k]
        for o in range(c_out):
            out[o] += v0 * w[r0, o]
        k += 1


@_kernel
def _enc3(x: F32, w: F32, b: F32, out: F32, vals: F32, rows: I64) -> None:
    """out[128] = ReLU(conv k3 s1 p1 of x[1, 64]) = ReLU(b + x·w[:, tap 1])."""
    n = 0
    for i in range(MID):
        if x[i] != 0.0:
            vals[n] = x[i]
            rows[n] = i
            n += 1
    for o in range(HIDDEN):
        out[o] = b[o]
    _matvec_rows(out, w, vals, rows, n)
    for o in range(HIDDEN):
        out[o] = max(out[o], np.float32(0.0))


@_kernel
def _lstm_head(
    x: F32, h: F32, c: F32, w: F32, b: F32, head_w: F32, head_b: np.float32,
    gates: F32, vals: F32, rows: I64,
) -> np.float32:  # fmt: skip
    """One LSTM step over the nonzero inputs (h, c updated in place), then the head."""
    n = 0
    for i in range(HIDDEN):
        if x[i] != 0.0:
            vals[n] = x[i]
            rows[n] = i
            n += 1
    for i in range(HIDDEN):
        if h[i] != 0.0:
            vals[n] = h[i]
            rows[n] = HIDDEN + i
            n += 1
    for o in range(4 * HIDDEN):
        gates[o] = b[o]
    _matvec_rows(gates, w, vals, rows, n)
    logit = np.float32(0.0)
    for k in range(HIDDEN):
        ig = _sigmoid(gates[k])
        fg = _sigmoid(gates[HIDDEN + k])
        gg = _tanh(gates[2 * HIDDEN + k])
        og = _sigmoid(gates[3 * HIDDEN + k])
        ck = fg * c[k] + ig * gg
        hk = og * _tanh(ck)
        c[k] = ck
        h[k] = hk
        logit += max(hk, np.float32(0.0)) * head_w[k]
    # The one exact exp: the probability itself.
    return np.float32(1.0) / (np.float32(1.0) + math.exp(-(logit + head_b)))


@_kernel
def _forward(
    x: npt.NDArray[Any], scale: np.float32, ctx: F32, h: F32, c: F32,
    scratch: F32, rows: I64, params: F32, m: int,
) -> np.float32:  # fmt: skip
    """Advance one stream (ctx, h, c) by one chunk ``x``; returns the speech probability."""
    lo = _layout(m)
    bins = m + 1
    window = params[lo[0] : lo[0] + 2 * m]
    tw = params[lo[1] : lo[1] + 2 * m].reshape((2, m))
    post = params[lo[2] : lo[2] + 2 * bins * FRAMES].reshape((2, bins * FRAMES))
    enc0_w = params[lo[3] : lo[3] + bins * 3 * HIDDEN].reshape((bins, 3, HIDDEN))
    enc1_w = params[lo[5] : lo[5] + HIDDEN * 3 * MID].reshape((HIDDEN, 3, MID))
    enc2_w = params[lo[7] : lo[7] + MID * 2 * MID].reshape((MID, 2, MID))
    enc3_w = params[lo[9] : lo[9] + MID * HIDDEN].reshape((MID, HIDDEN))
    lstm_w = params[lo[11] : lo[11] + 8 * HIDDEN * HIDDEN].reshape((2 * HIDDEN, 4 * HIDDEN))

    n_in = 2 * ctx.shape[0] + x.shape[0]
    o = 0
    buf = scratch[o : o + n_in]
    o += n_in
    z = scratch[o : o + 4 * bins * FRAMES].reshape((4, bins * FRAMES))
    o += 4 * bins * FRAMES
    feat = scratch[o : o + bins * FRAMES].reshape((bins, FRAMES))
    o += FRAMES * bins
    a0 = scratch[o : o + FRAMES * HIDDEN].reshape((FRAMES, HIDDEN))
    o += FRAMES * HIDDEN
    a1 = scratch[o : o + 2 * MID].reshape((2, MID))
    o += 2 * MID
    a2 = scratch[o : o + MID]
    o += MID
    a3 = scratch[o : o + HIDDEN]
    o += HIDDEN
    gates = scratch[o : o + 4 * HIDDEN]
    o += 4 * HIDDEN
    vals = scratch[o : o + rows.shape[0]]

    _load_input(x, scale, ctx, buf)
    _stft(buf, window, tw, post, z, feat)
    _enc0(feat, enc0_w, params[lo[4] : lo[4] + HIDDEN], a0)
    _enc1(a0, enc1_w, params[lo[6] : lo[6] + MID], a1)
    _enc2(a1, enc2_w, params[lo[8] : lo[8] + MID], a2)
    _enc3(a2, enc3_w, params[lo[10] : lo[10] + HIDDEN], a3, vals, rows)
    return _lstm_head(
        a3, h, c, lstm_w, params[lo[12] : lo[12] + 4 * HIDDEN],
        params[lo[13] : lo[13] + HIDDEN], params[lo[14]], gates, vals, rows,
    )  # fmt: skip


@_kernel
def _stream(
    pcm: npt.NDArray[Any], scale: np.float32, pending: F32, fill: int, out: F32,
    ctx: F32, h: F32, c: F32, scratch: F32, rows: I64, params: F32, m: int,
) -> int:  # fmt: skip
    """Append pcm to pending[:fill], run every completed chunk into out; returns the new fill."""
    n = pending.shape[0]
    done = 0
    for i in range(pcm.shape[0]):
        pending[fill] = np.float32(pcm[i]) * scale
        fill += 1
        if fill == n:
            out[done] = _forward(pending, np.float32(1.0), ctx, h, c, scratch, rows, params, m)
            done += 1
            fill = 0
    return fill


@_kernel
def _batch(
    chunks: npt.NDArray[Any], scale: np.float32, slots: I64, out: F32, seen: npt.NDArray[np.uint8],
    ctx: F32, h: F32, c: F32, scratch: F32, rows: I64, params: F32, m: int,
) -> int:  # fmt: skip
    """Advance the sessions in ``slots`` by one chunk each; returns -1 (bad slot), -2
    (repeated slot) before touching any state, else 0."""
    cap = ctx.shape[0]
    err = 0
    for i in range(slots.shape[0]):
        s = slots[i]
        if s < 0 or s >= cap:
            err = -1
            break
        if seen[s]:
            err = -2
            break
        seen[s] = 1
    for i in range(slots.shape[0]):
        s = slots[i]
        if 0 <= s < cap:
            seen[s] = 0
    if err:
        return err
    for i in range(slots.shape[0]):
        s = slots[i]
        out[i] = _forward(chunks[i], scale, ctx[s], h[s], c[s], scratch, rows, params, m)
    return 0


# --- streams ----------------------------------------------------------------------------------


_INT16 = np.dtype(np.int16)
_FLOAT32 = np.dtype(np.float32)
_ONE = np.float32(1.0)


def _scale(dtype: np.dtype[Any]) -> np.float32:
    """The factor that maps samples of ``dtype`` to [-1, 1]: 1/32768 for int16."""
    # Identity checks: native-order dtypes are singletons, and this runs once per chunk.
    if dtype is _INT16:
        return INT16_SCALE
    if dtype is _FLOAT32:
        return _ONE
    raise TypeError(f"audio must be int16 or float32 (native byte order), not {dtype}")


def _scratch(n_fft: int, context: int, chunk: int) -> tuple[F32, I64]:
    m = n_fft // 2
    floats = 2 * context + chunk + 5 * (m + 1) * FRAMES
    floats += FRAMES * HIDDEN + 3 * MID + HIDDEN + 4 * HIDDEN
    nonzero = 2 * HIDDEN  # most (value, row) pairs fed to a matvec: the LSTM's [x; h]
    return np.zeros(floats + nonzero, np.float32), np.zeros(nonzero, np.int64)


class VadSession:
    """One audio stream through TinySilero: context, LSTM state and scratch of its own."""

    __slots__ = (
        "_c", "_ctx", "_fill", "_h", "_m", "_params", "_pending", "_rows", "_scratch",
        "chunk_size", "sample_rate",
    )  # fmt: skip

    def __init__(self, model: SileroModel | None = None, sample_rate: int = 16000) -> None:
        n_fft, context, chunk, params = (model or SileroModel.load()).branch(sample_rate)
        self.sample_rate = sample_rate
        self.chunk_size = chunk  # new samples per probability: 512 at 16 kHz, 256 at 8 kHz
        self._m = n_fft // 2
        self._params = params
        self._ctx = np.zeros(context, np.float32)
        self._h = np.zeros(HIDDEN, np.float32)
        self._c = np.zeros(HIDDEN, np.float32)
        self._scratch, self._rows = _scratch(n_fft, context, chunk)
        self._pending = np.zeros(chunk, np.float32)
        self._fill = 0

    def reset(self) -> None:
        """Forget the context, the LSTM state and any buffered samples."""
        self._ctx[:] = 0
        self._h[:] = 0
        self._c[:] = 0
        self._fill = 0

    def process_chunk(self, chunk: npt.NDArray[np.int16] | F32) -> float:
        """Speech probability of exactly ``chunk_size`` new samples (int16, or float32 in
        [-1, 1]), advancing the stream."""
        scale = _scale(chunk.dtype)
        if chunk.shape != (self.chunk_size,):
            raise ValueError(f"chunk must have shape ({self.chunk_size},), not {chunk.shape}")
        return float(
            _forward(
                chunk, scale, self._ctx, self._h, self._c, self._scratch, self._rows,
                self._params, self._m,
            )
        )  # fmt: skip

    def process(self, pcm: npt.NDArray[np.int16] | F32) -> F32:
        """Buffer any number of samples; the probabilities of the chunks this completes."""
        scale = _scale(pcm.dtype)
        if pcm.ndim != 1:
            raise ValueError(f"pcm must be one-dimensional, not shape {pcm.shape}")
        out = np.empty((self._fill + pcm.shape[0]) // self.chunk_size, np.float32)
        self._fill = _stream(
            pcm, scale, self._pending, self._fill, out, self._ctx, self._h, self._c,
            self._scratch, self._rows, self._params, self._m,
        )  # fmt: skip
        return out


class VadBatch:
    """TinySilero over up to ``capacity`` streams (slots) whose states are stacked, so one
    call per tick advances every stream with a chunk ready."""

    def __init__(
        self, capacity: int, model: SileroModel | None = None, sample_rate: int = 16000
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be positive, not {capacity}")
        n_fft, context, chunk, params = (model or SileroModel.load()).branch(sample_rate)
        self.capacity = capacity
        self.sample_rate = sample_rate
        self.chunk_size = chunk
        self._m = n_fft // 2
        self._params = params
        self.context = np.zeros((capacity, context), np.float32)
        self.h = np.zeros((capacity, HIDDEN), np.float32)
        self.c = np.zeros((capacity, HIDDEN), np.float32)
        self._scratch, self._rows = _scratch(n_fft, context, chunk)
        self._seen = np.zeros(capacity, np.uint8)

    def reset_slot(self, slot: int) -> None:
        """Start the stream in ``slot`` afresh (a new session took the slot)."""
        self.context[slot] = 0
        self.h[slot] = 0
        self.c[slot] = 0

    def process(self, slots: I64, chunks: F32 | npt.NDArray[np.int16]) -> F32:
        """Advance each stream ``slots[i]`` by ``chunks[i]`` (float32 or int16, shape
        (n, chunk_size)); the n speech probabilities."""
        scale = _scale(chunks.dtype)
        if slots.dtype != np.int64:
            raise TypeError(f"slots must be int64, not {slots.dtype}")
        n = slots.shape[0]
        if slots.ndim != 1 or chunks.shape != (n, self.chunk_size):
            raise ValueError(
                f"want slots (n,) and chunks (n, {self.chunk_size}), "
                f"not {slots.shape} and {chunks.shape}"
            )
        out = np.empty(n, np.float32)
        err = _batch(
            chunks, scale, slots, out, self._seen, self.context, self.h, self.c,
            self._scratch, self._rows, self._params, self._m,
        )  # fmt: skip
        if err == -1:
            raise ValueError(f"slots must be in [0, {self.capacity})")
        if err == -2:
            raise ValueError("a slot appears twice in one call")
        return out
