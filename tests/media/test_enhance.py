"""Denoiser and GainControl on real speech and noise, through the real WebRTC library.

Thresholds are conservative versions of what ``bench/enhance.py`` measured with the same
signals (bench/results/enhance.md): WebRTC NS level 1 removed 10.2 dB of pink noise and 7.5 dB
of pink+babble noise at 5 dB SNR with under 0.9 dB of speech attenuation; AGC2 brought a
-35 dBFS talker to -20.8 dBFS and held a -3 dBFS-peak talker below full scale.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from activecall.media.enhance import (
    NS_LEVELS,
    AgcOption,
    Denoiser,
    GainControl,
    make_denoiser,
    make_gain_control,
)
from bench.enhance import (
    LOUD_PEAK_DBFS,
    NOISES,
    QUIET_DBFS,
    SPEECH_DBFS,
    DenoiseScore,
    aligned,
    delay_of,
    level_dbfs,
    mix_at_snr,
    pink_noise,
    run,
    scaled,
    score_denoise,
    sentences,
    speech_mask,
    to_pcm,
    vad_decisions,
    vad_probabilities,
)

FRAME = 320


@pytest.fixture(scope="module")
def spans() -> list[tuple[int, int]]:
    return sentences()


@pytest.fixture(scope="module")
def active(speech_16k: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    return speech_mask(len(speech_16k), spans)


@pytest.fixture(scope="module")
def clean(speech_16k: np.ndarray, active: np.ndarray) -> np.ndarray:
    return scaled(speech_16k, active, SPEECH_DBFS)


def denoised_score(
    noise: str, speech: np.ndarray, clean: np.ndarray, active: np.ndarray, spans: Any
) -> DenoiseScore:
    noisy = to_pcm(mix_at_snr(clean, NOISES[noise](speech), active))
    out = run(make_denoiser().process, noisy)
    return score_denoise(clean, noisy, out, spans, vad_decisions(to_pcm(clean)))


def with_probabilities(agc: GainControl, pcm: np.ndarray) -> np.ndarray:
    probs = vad_probabilities(pcm)
    frames = pcm.reshape(-1, FRAME)
    return np.concatenate([agc.process(f, float(p)) for f, p in zip(frames, probs, strict=True)])


# -- denoise ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("noise", "min_reduction_db"), [("pink", 8.0), ("pink+babble", 5.0)])
def test_denoiser_removes_noise_and_keeps_speech(
    noise: str,
    min_reduction_db: float,
    speech_16k: np.ndarray,
    clean: np.ndarray,
    active: np.ndarray,
    spans: list[tuple[int, int]],
) -> None:
    score = denoised_score(noise, speech_16k, clean, active, spans)
    assert score.noise_reduction_db >= min_reduction_db
    assert score.snr_improvement_db >= min_reduction_db - 1.5
    assert score.speech_attenuation_db <= 1.5
    assert score.si_sdr_gain_db > 1.0


def test_denoiser_leaves_clean_speech_alone(clean: np.ndarray, active: np.ndarray) -> None:
    pcm = to_pcm(clean)
    out = run(make_denoiser().process, pcm)
    kept = level_dbfs(aligned(out, delay_of(out, clean)), active)
    assert abs(kept - level_dbfs(pcm.astype(np.float64), active)) < 0.5  # measured 0.01 dB


def test_denoiser_does_not_modify_its_input(speech_16k: np.ndarray) -> None:
    frame = speech_16k[16000:16320].copy()
    before = frame.copy()
    out = make_denoiser().process(frame)
    assert np.array_equal(frame, before)
    assert out.dtype == np.int16 and out.shape == (FRAME,)
    assert out is not frame


def test_denoiser_reads_a_strided_frame_as_its_values(speech_16k: np.ndarray) -> None:
    wide = np.repeat(speech_16k[: FRAME * 50], 2)
    strided = [wide[i * 2 * FRAME : (i + 1) * 2 * FRAME : 2] for i in range(50)]
    assert not strided[0].flags.c_contiguous
    a, b = make_denoiser(), make_denoiser()
    for view in strided:
        assert np.array_equal(a.process(view), b.process(view.copy()))


def test_denoiser_reset_restores_the_initial_state(speech_16k: np.ndarray) -> None:
    noisy = to_pcm(speech_16k[: 16000 * 4] + pink_noise(16000 * 4) * 800)
    denoiser = make_denoiser()
    first = run(denoiser.process, noisy)
    again_without_reset = run(denoiser.process, noisy)
    denoiser.reset()
    again = run(denoiser.process, noisy)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, again_without_reset)  # state really carried over


def test_denoisers_do_not_share_state(speech_16k: np.ndarray) -> None:
    n = 16000 * 2
    inputs = [
        to_pcm(np.roll(speech_16k, k * 7919)[:n] + pink_noise(n, seed=k) * 500) for k in range(6)
    ]
    alone = [run(make_denoiser().process, x) for x in inputs]
    denoisers = [make_denoiser() for _ in inputs]
    interleaved: list[list[np.ndarray]] = [[] for _ in inputs]
    for start in range(0, n, FRAME):
        for k, (d, x) in enumerate(zip(denoisers, inputs, strict=True)):
            interleaved[k].append(d.process(x[start : start + FRAME]))
    for k, out in enumerate(alone):
        assert np.array_equal(np.concatenate(interleaved[k]), out)


@pytest.mark.parametrize("level", NS_LEVELS)
def test_every_level_builds_and_processes(level: int, speech_16k: np.ndarray) -> None:
    out = Denoiser(level).process(speech_16k[:FRAME].copy())
    assert out.shape == (FRAME,) and out.dtype == np.int16


@pytest.mark.parametrize("level", [-1, 4, True, 1.0, "1", None])
def test_bad_denoise_level_is_refused(level: Any) -> None:
    with pytest.raises(ValueError, match="denoise level"):
        Denoiser(level)


BAD_FRAMES = {
    "short": np.zeros(160, np.int16),
    "long": np.zeros(321, np.int16),
    "empty": np.zeros(0, np.int16),
    "float32": np.zeros(FRAME, np.float32),
    "int32": np.zeros(FRAME, np.int32),
    "two-dimensional": np.zeros((1, FRAME), np.int16),
    "bytes": bytes(2 * FRAME),
    "list": [0] * FRAME,
}


@pytest.mark.parametrize("kind", BAD_FRAMES)
def test_denoiser_refuses_a_bad_frame_and_keeps_working(kind: str, speech_16k: np.ndarray) -> None:
    denoiser, reference = make_denoiser(), make_denoiser()
    good = speech_16k[: FRAME * 3].reshape(3, FRAME)
    assert np.array_equal(denoiser.process(good[0]), reference.process(good[0]))
    with pytest.raises(ValueError, match="frame"):
        denoiser.process(BAD_FRAMES[kind])
    for f in good[1:]:  # the refused frame changed nothing
        assert np.array_equal(denoiser.process(f), reference.process(f))


# -- gain control ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quiet(speech_16k: np.ndarray, active: np.ndarray) -> np.ndarray:
    talker = scaled(speech_16k, active, QUIET_DBFS)
    return to_pcm(mix_at_snr(talker, pink_noise(len(speech_16k)), active, snr_db=40.0))


@pytest.fixture(scope="module")
def loud(speech_16k: np.ndarray) -> np.ndarray:
    x = speech_16k.astype(np.float64)
    return to_pcm(x * 10 ** (LOUD_PEAK_DBFS / 20) * 32767 / np.max(np.abs(x)))


def tail_level(pcm: np.ndarray, active: np.ndarray, seconds: int = 20) -> float:
    tail = np.arange(len(pcm)) >= len(pcm) - seconds * 16000
    return level_dbfs(pcm.astype(np.float64), active & tail)


def test_gain_control_raises_a_quiet_talker(quiet: np.ndarray, active: np.ndarray) -> None:
    out = with_probabilities(make_gain_control({}), quiet)
    gain = tail_level(out, active) - tail_level(quiet, active)
    assert 9.0 <= gain <= 20.0  # measured 13.9 dB: -35 dBFS in, -20.8 dBFS out


def test_gain_control_without_a_probability_uses_its_own_vad(
    quiet: np.ndarray, active: np.ndarray
) -> None:
    agc = make_gain_control({})
    out = np.concatenate([agc.process(f) for f in quiet.reshape(-1, FRAME)])
    assert tail_level(out, active) - tail_level(quiet, active) >= 9.0


def test_gain_control_limits_a_loud_talker(loud: np.ndarray) -> None:
    out = with_probabilities(make_gain_control({}), loud)
    assert np.abs(loud.astype(np.int32)).max() < 32767 * 0.75  # -3 dBFS peaks in
    # It still adds gain (measured +4.8 dB), so only the limiter keeps the peaks in range.
    assert level_dbfs(out.astype(np.float64)) > level_dbfs(loud.astype(np.float64)) + 2.0
    assert np.abs(out.astype(np.int32)).max() < 32767


def test_max_gain_option_caps_the_gain(quiet: np.ndarray, active: np.ndarray) -> None:
    out = with_probabilities(make_gain_control({"maxGainDb": 6}), quiet)
    assert tail_level(out, active) - tail_level(quiet, active) == pytest.approx(6.0, abs=0.5)


def test_headroom_option_lowers_the_target(quiet: np.ndarray, active: np.ndarray) -> None:
    default = with_probabilities(make_gain_control({}), quiet)
    roomy = with_probabilities(make_gain_control({"headroomDb": 15.0}), quiet)
    assert tail_level(roomy, active) < tail_level(default, active) - 5.0


def test_gain_control_reset_restores_the_initial_state(quiet: np.ndarray) -> None:
    pcm = quiet[: 16000 * 6]
    agc = make_gain_control({})
    first = with_probabilities(agc, pcm)
    without_reset = with_probabilities(agc, pcm)
    agc.reset()
    again = with_probabilities(agc, pcm)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, without_reset)


def test_gain_controls_do_not_share_state(quiet: np.ndarray, loud: np.ndarray) -> None:
    n = 16000 * 3
    inputs = [quiet[:n], loud[:n], quiet[n : 2 * n], loud[n : 2 * n]]
    alone = [with_probabilities(make_gain_control({}), x) for x in inputs]
    agcs = [make_gain_control({}) for _ in inputs]
    probs = [vad_probabilities(x) for x in inputs]
    interleaved: list[list[np.ndarray]] = [[] for _ in inputs]
    for i in range(n // FRAME):
        for k, agc in enumerate(agcs):
            frame = inputs[k][i * FRAME : (i + 1) * FRAME]
            interleaved[k].append(agc.process(frame, float(probs[k][i])))
    for k, out in enumerate(alone):
        assert np.array_equal(np.concatenate(interleaved[k]), out)


@pytest.mark.parametrize("kind", BAD_FRAMES)
def test_gain_control_refuses_a_bad_frame(kind: str) -> None:
    with pytest.raises(ValueError, match="frame"):
        make_gain_control({}).process(BAD_FRAMES[kind], 0.5)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_gain_control_refuses_a_bad_probability(p: Any, quiet: np.ndarray) -> None:
    agc, reference = make_gain_control({}), make_gain_control({})
    frames = quiet[: FRAME * 3].reshape(3, FRAME)
    with pytest.raises(ValueError, match="speech_probability"):
        agc.process(frames[0], p)
    for f in frames:  # the refused call changed nothing
        assert np.array_equal(agc.process(f, 0.9), reference.process(f, 0.9))


# -- AGC options -----------------------------------------------------------------------------


def test_empty_option_means_upstream_defaults() -> None:
    assert AgcOption.from_json({}) == AgcOption(
        headroom_db=5.0,
        max_gain_db=50.0,
        initial_gain_db=15.0,
        max_gain_change_db_per_second=6.0,
        max_output_noise_level_dbfs=-50.0,
        adjacent_speech_frames_threshold=12,
        enable_limiter=True,
    )


def test_every_option_is_read() -> None:
    option = AgcOption.from_json(
        {
            "headroomDb": 3,
            "maxGainDb": 30.5,
            "initialGainDb": 15,
            "maxGainChangeDbPerSecond": 3.0,
            "maxOutputNoiseLevelDbfs": -60,
            "adjacentSpeechFramesThreshold": 12,
            "enableLimiter": True,
        }
    )
    assert (option.headroom_db, option.max_gain_db, option.max_gain_change_db_per_second) == (
        3,
        30.5,
        3.0,
    )
    assert option.max_output_noise_level_dbfs == -60
    assert isinstance(make_gain_control({"headroomDb": 3, "enableLimiter": None}), GainControl)


@pytest.mark.parametrize(
    ("option", "key"),
    [
        ({"headroom": 5}, "agc.headroom "),
        ({"maxGainDB": 5}, "agc.maxGainDB "),
        ({"max_gain_db": 5}, "agc.max_gain_db "),
        ({"headroomDb": "5"}, "agc.headroomDb "),
        ({"maxGainDb": True}, "agc.maxGainDb "),
        ({"maxGainDb": [50]}, "agc.maxGainDb "),
        ({"headroomDb": -1}, "agc.headroomDb "),
        ({"maxGainDb": 0}, "agc.maxGainDb "),
        ({"maxGainDb": float("inf")}, "agc.maxGainDb "),
        ({"maxGainChangeDbPerSecond": 0}, "agc.maxGainChangeDbPerSecond "),
        ({"maxOutputNoiseLevelDbfs": 1}, "agc.maxOutputNoiseLevelDbfs "),
        ({"maxOutputNoiseLevelDbfs": float("nan")}, "agc.maxOutputNoiseLevelDbfs "),
        ({"initialGainDb": -1}, "agc.initialGainDb "),
        ({"initialGainDb": 10}, "agc.initialGainDb "),
        ({"adjacentSpeechFramesThreshold": 12.5}, "agc.adjacentSpeechFramesThreshold "),
        ({"adjacentSpeechFramesThreshold": 0}, "agc.adjacentSpeechFramesThreshold "),
        ({"adjacentSpeechFramesThreshold": 20}, "agc.adjacentSpeechFramesThreshold "),
        ({"enableLimiter": 1}, "agc.enableLimiter "),
        ({"enableLimiter": "true"}, "agc.enableLimiter "),
        ({"enableLimiter": False}, "agc.enableLimiter "),
    ],
)
def test_bad_option_is_refused_with_its_key(option: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        make_gain_control(option)


@pytest.mark.parametrize("option", [None, [], "{}", 5])
def test_option_that_is_not_an_object_is_refused(option: Any) -> None:
    with pytest.raises(ValueError, match="agc must be a JSON object"):
        make_gain_control(option)


# -- cost when off ---------------------------------------------------------------------------


def test_importing_the_module_does_not_load_the_native_library() -> None:
    code = (
        "import sys, activecall.media.enhance as e\n"
        "assert 'pywebrtc_audio' not in sys.modules\n"
        "e.make_denoiser()\n"
        "assert 'pywebrtc_audio' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
