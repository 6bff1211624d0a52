"""TinySilero against onnxruntime running the official silero_vad.onnx, chunk by chunk."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numba
import numpy as np
import onnxruntime as ort
import pytest

from activecall._native import silero
from activecall._native.silero import SileroModel, VadBatch, VadSession

THRESHOLD = 0.5
TOLERANCE = 1e-3
CHUNK = {16000: 512, 8000: 256}
CONTEXT = {16000: 64, 8000: 32}


@cache
def _onnx_session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_probs(path: Path, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Per-chunk probabilities as silero-vad's OnnxWrapper computes them (context kept)."""
    session = _onnx_session(path)
    n, c = CHUNK[sample_rate], CONTEXT[sample_rate]
    x = audio.astype(np.float32) / 32768 if audio.dtype == np.int16 else audio
    context = np.zeros(c, np.float32)
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(sample_rate, np.int64)
    probs = []
    for k in range(len(x) // n):
        chunk = x[k * n : (k + 1) * n]
        feed = {"input": np.concatenate([context, chunk])[None], "state": state, "sr": sr}
        out, state = session.run(None, feed)
        context = chunk[-c:]
        probs.append(out[0, 0])
    return np.array(probs, np.float32)


def tiny_probs(audio: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    vad = VadSession(sample_rate=sample_rate)
    n = vad.chunk_size
    return np.array([vad.process_chunk(audio[k * n : (k + 1) * n]) for k in range(len(audio) // n)])


def noise(seconds: float, level: float, seed: int = 1, rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (
        (rng.standard_normal(int(seconds * rate)) * level * 32767)
        .clip(-32768, 32767)
        .astype(np.int16)
    )


def assert_matches(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() < TOLERANCE
    np.testing.assert_array_equal(ours > THRESHOLD, reference > THRESHOLD)


# --- accuracy ----------------------------------------------------------------------------------


def test_speech_matches_onnxruntime(speech_16k: np.ndarray, silero_onnx_path: Path) -> None:
    ours = tiny_probs(speech_16k)
    reference = onnx_probs(silero_onnx_path, speech_16k, 16000)
    assert_matches(ours, reference)
    # The file has speech and pauses: both decisions occur, so agreement means something.
    assert 0.2 < (reference > THRESHOLD).mean() < 0.8


@pytest.mark.parametrize(
    "audio",
    [noise(10, 0.3), noise(10, 0.01, seed=2), np.zeros(16000 * 5, np.int16)],
    ids=["white-noise", "quiet-noise", "silence"],
)
def test_noise_and_silence_match_onnxruntime(audio: np.ndarray, silero_onnx_path: Path) -> None:
    assert_matches(tiny_probs(audio), onnx_probs(silero_onnx_path, audio, 16000))


def test_8k_branch_matches_onnxruntime(speech_16k: np.ndarray, silero_onnx_path: Path) -> None:
    audio = np.concatenate([speech_16k[::2], noise(5, 0.2, rate=8000)])
    assert_matches(tiny_probs(audio, 8000), onnx_probs(silero_onnx_path, audio, 8000))


def test_float32_input_equals_int16(speech_16k: np.ndarray) -> None:
    audio = speech_16k[: 16000 * 10]
    floats = audio.astype(np.float32) / 32768
    np.testing.assert_array_equal(tiny_probs(floats), tiny_probs(audio))


# --- streaming and state -----------------------------------------------------------------------


def test_process_with_20ms_frames_equals_chunks(speech_16k: np.ndarray) -> None:
    audio = speech_16k[: 16000 * 20]
    vad = VadSession()
    streamed = np.concatenate([vad.process(audio[i : i + 320]) for i in range(0, len(audio), 320)])
    assert streamed.dtype == np.float32
    np.testing.assert_array_equal(streamed, tiny_probs(audio))


def test_process_with_ragged_frames(speech_16k: np.ndarray) -> None:
    audio = speech_16k[: 16000 * 10]
    rng = np.random.default_rng(3)
    cuts = np.sort(rng.integers(0, len(audio), 60))
    vad = VadSession()
    parts = [vad.process(piece) for piece in np.split(audio, cuts)]
    np.testing.assert_array_equal(np.concatenate(parts), tiny_probs(audio))
    assert sum(len(p) for p in parts) == len(audio) // 512


def test_process_many_chunks_at_once(speech_16k: np.ndarray) -> None:
    audio = speech_16k[: 16000 * 10 + 100]
    np.testing.assert_array_equal(VadSession().process(audio), tiny_probs(audio))


def test_process_empty_and_short_inputs() -> None:
    vad = VadSession()
    out = vad.process(np.zeros(0, np.int16))
    assert out.shape == (0,) and out.dtype == np.float32
    assert vad.process(np.zeros(511, np.int16)).shape == (0,)
    assert vad.process(np.zeros(1, np.int16)).shape == (1,)


def test_reset_starts_afresh(speech_16k: np.ndarray) -> None:
    audio = speech_16k[: 16000 * 5]
    vad = VadSession()
    vad.process(speech_16k[16000 * 20 : 16000 * 25 + 100])
    vad.reset()
    np.testing.assert_array_equal(vad.process(audio), tiny_probs(audio))


def test_state_carries_over_chunks(speech_16k: np.ndarray) -> None:
    """The same chunk gives another probability after other audio: context and h, c persist."""
    chunk = speech_16k[16000 * 3 : 16000 * 3 + 512]
    fresh = VadSession().process_chunk(chunk)
    vad = VadSession()
    vad.process(speech_16k[: 16000 * 3])
    assert vad.process_chunk(chunk) != fresh


# --- batch -------------------------------------------------------------------------------------


def test_batch_equals_single_streams(speech_16k: np.ndarray) -> None:
    streams = [
        speech_16k[: 16000 * 8],
        speech_16k[16000 * 30 : 16000 * 38],
        noise(8, 0.2),
        np.zeros(16000 * 8, np.int16),
        speech_16k[16000 * 50 : 16000 * 58],
    ]
    slots = [6, 0, 3, 9, 1]  # sparse, unordered slots in a larger batch
    singles = [tiny_probs(s) for s in streams]
    batch = VadBatch(capacity=10)
    got: list[list[float]] = [[] for _ in streams]
    rng = np.random.default_rng(4)
    pos = [0] * len(streams)
    while any(p < len(singles[0]) for p in pos):
        # Each tick a random subset of the streams has a chunk ready, in a random order.
        ready = [i for i in rng.permutation(len(streams)) if pos[i] < len(singles[i])]
        ready = ready[: max(1, rng.integers(0, len(ready) + 1))]
        chunks = np.stack(
            [
                streams[i][pos[i] * 512 : (pos[i] + 1) * 512].astype(np.float32) / 32768
                for i in ready
            ]
        )
        probs = batch.process(np.array([slots[i] for i in ready], np.int64), chunks)
        assert probs.dtype == np.float32 and probs.shape == (len(ready),)
        for i, p in zip(ready, probs, strict=True):
            got[i].append(float(p))
            pos[i] += 1
    for ours, single in zip(got, singles, strict=True):
        np.testing.assert_allclose(ours, single, rtol=0, atol=1e-5)


def test_batch_reset_slot_and_int16(speech_16k: np.ndarray) -> None:
    audio = speech_16k[: 512 * 20].reshape(20, 512)
    batch = VadBatch(capacity=2)
    for chunk in speech_16k[16000 * 20 : 16000 * 20 + 512 * 10].reshape(10, 512):
        batch.process(np.array([1], np.int64), chunk[None])
    batch.reset_slot(1)
    got = [batch.process(np.array([1, 0], np.int64), np.stack([c, c]))[0] for c in audio]
    np.testing.assert_allclose(got, tiny_probs(audio.reshape(-1)), rtol=0, atol=1e-5)


def test_batch_empty_call() -> None:
    out = VadBatch(4).process(np.zeros(0, np.int64), np.zeros((0, 512), np.float32))
    assert out.shape == (0,) and out.dtype == np.float32


@pytest.mark.parametrize("slots", [[0, 4], [-1], [1, 1]], ids=["past-end", "negative", "twice"])
def test_batch_bad_slots_leave_state_alone(slots: list[int]) -> None:
    batch = VadBatch(4)
    chunks = np.full((len(slots), 512), 0.1, np.float32)
    with pytest.raises(ValueError):
        batch.process(np.array(slots, np.int64), chunks)
    assert not batch.h.any() and not batch.c.any() and not batch.context.any()


def test_batch_argument_checks() -> None:
    batch = VadBatch(4)
    with pytest.raises(TypeError):
        batch.process(np.array([0], np.int32), np.zeros((1, 512), np.float32))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        batch.process(np.array([0], np.int64), np.zeros((1, 512), np.float64))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        batch.process(np.array([0], np.int64), np.zeros((1, 320), np.float32))
    with pytest.raises(ValueError):
        batch.process(np.array([0, 1], np.int64), np.zeros((1, 512), np.float32))
    with pytest.raises(ValueError):
        VadBatch(0)


# --- argument checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 320, 511, 513, 1024])
def test_wrong_chunk_length(length: int) -> None:
    with pytest.raises(ValueError):
        VadSession().process_chunk(np.zeros(length, np.int16))


def test_wrong_chunk_shape() -> None:
    with pytest.raises(ValueError):
        VadSession().process_chunk(np.zeros((1, 512), np.int16))
    with pytest.raises(ValueError):
        VadSession().process(np.zeros((2, 320), np.int16))


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.uint8, np.dtype(">i2")])
def test_wrong_dtype(dtype: np.dtype) -> None:
    vad = VadSession()
    with pytest.raises(TypeError):
        vad.process_chunk(np.zeros(512, dtype))
    with pytest.raises(TypeError):
        vad.process(np.zeros(320, dtype))


def test_sample_rates() -> None:
    with pytest.raises(ValueError):
        VadSession(sample_rate=44100)
    vad = VadSession(sample_rate=8000)
    assert vad.chunk_size == 256
    with pytest.raises(ValueError):
        vad.process_chunk(np.zeros(512, np.int16))
    assert VadBatch(2, sample_rate=8000).chunk_size == 256


# --- model and internals -----------------------------------------------------------------------


def test_model_is_loaded_once() -> None:
    model = SileroModel.load()
    assert SileroModel.load() is model
    assert "silero-vad 6.2.3" in model.source and "silero_vad.onnx" in model.source


def test_weights_ship_with_licence() -> None:
    here = Path(silero.__file__).parent
    text = (here / "LICENSE-silero-vad").read_text()
    assert "MIT License" in text and "Silero Team" in text and "6.2.3" in text
    with np.load(here / silero.WEIGHTS_FILE) as npz:
        assert npz["sr16_enc0_w"].shape == (129, 3, 128)
        assert npz["sr16_lstm_w"].shape == (256, 512)
        assert all(npz[k].dtype in (np.float32, np.int64) for k in npz.files if k != "source")


@pytest.mark.parametrize("sample_rate", [16000, 8000])
def test_stft_is_windowed_rfft_magnitude(sample_rate: int) -> None:
    n_fft, _, _, params = SileroModel.load().branch(sample_rate)
    m = n_fft // 2
    lo = silero._layout(m)
    rng = np.random.default_rng(5)
    buf = rng.standard_normal(m * (silero.FRAMES + 1)).astype(np.float32)
    z = np.zeros((4, (m + 1) * silero.FRAMES), np.float32)
    feat = np.zeros((m + 1, silero.FRAMES), np.float32)
    window = params[lo[0] : lo[0] + n_fft]
    tw = params[lo[1] : lo[1] + n_fft].reshape(2, m)
    post = params[lo[2] : lo[2] + 2 * (m + 1) * silero.FRAMES].reshape(2, -1)
    silero._stft(buf, window, tw, post, z, feat)
    frames = np.stack([buf[f * m : f * m + n_fft] for f in range(silero.FRAMES)])
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    expected = np.abs(np.fft.rfft(frames * hann, axis=1)).T
    np.testing.assert_allclose(feat, expected, rtol=0, atol=2e-5 * np.abs(expected).max())


def test_tanh_and_sigmoid_approximations() -> None:
    @numba.njit
    def apply(x: np.ndarray, t: np.ndarray, s: np.ndarray) -> None:
        for i in range(x.shape[0]):
            t[i] = silero._tanh(x[i])
            s[i] = silero._sigmoid(x[i])

    x = np.linspace(-30, 30, 200001, dtype=np.float32)
    t = np.empty_like(x)
    s = np.empty_like(x)
    apply(x, t, s)
    exact = x.astype(np.float64)
    assert np.abs(t - np.tanh(exact)).max() < 5e-7
    assert np.abs(s - 1 / (1 + np.exp(-exact))).max() < 5e-7
