"""VAD event logic (reference §5.4) driven with scripted per-chunk decisions."""

from __future__ import annotations

import pytest

from activecall.media.vad import Silence, Speaking, VadEvent, VadOption, VadProcessor

CHUNK_MS = 32


def run(pattern: str, option: VadOption | None = None, t0: int = 1000) -> list[VadEvent]:
    """Feed one decision per character ('#' voice, '.' silence), 32 ms apart."""
    vad = VadProcessor(option)
    events: list[VadEvent] = []
    for i, c in enumerate(pattern):
        events += vad.decide(c == "#", t0 + i * CHUNK_MS)
    return events


def test_speech_segment_gives_speaking_then_silence() -> None:
    # 20 voiced chunks (640 ms) then silence; defaults 250 / 100 ms.
    events = run("." * 5 + "#" * 20 + "." * 10)
    start = 1000 + 5 * CHUNK_MS
    assert events == [Speaking(start), Silence(start, 20 * CHUNK_MS)]


def test_speaking_waits_for_speech_padding() -> None:
    vad = VadProcessor(VadOption(speech_padding=250))
    emitted_at = [i for i in range(20) if vad.decide(True, i * CHUNK_MS)]
    # First chunk whose start is >= 250 ms after the speech start: 8 * 32 = 256.
    assert emitted_at == [8]


def test_zero_speech_padding_speaks_on_first_voiced_chunk() -> None:
    vad = VadProcessor(VadOption(speech_padding=0))
    assert vad.decide(True, 0) == [Speaking(0)]
    assert vad.decide(True, 32) == []


def test_short_blip_is_dropped_silently() -> None:
    assert run("#" * 5 + "." * 20) == []


def test_gap_shorter_than_silence_padding_is_bridged() -> None:
    # Two voiced runs separated by 2 silent chunks (64 ms < 100 ms) are one segment.
    events = run("#" * 10 + ".." + "#" * 10 + "." * 10)
    assert events == [Speaking(1000), Silence(1000, 22 * CHUNK_MS)]


def test_gap_longer_than_silence_padding_splits_segments() -> None:
    events = run("#" * 10 + "." * 5 + "#" * 10 + "." * 5)
    second = 1000 + 15 * CHUNK_MS
    assert events == [
        Speaking(1000),
        Silence(1000, 10 * CHUNK_MS),
        Speaking(second),
        Silence(second, 10 * CHUNK_MS),
    ]


def test_silence_emitted_after_silence_padding_not_before() -> None:
    vad = VadProcessor(VadOption(silence_padding=100))
    for i in range(10):
        vad.decide(True, i * CHUNK_MS)
    first_silent = 10 * CHUNK_MS
    assert vad.decide(False, first_silent) == []
    assert vad.decide(False, first_silent + 32) == []
    assert vad.decide(False, first_silent + 64) == []
    assert vad.decide(False, first_silent + 96) == []
    # 128 ms after the first silent chunk >= 100 ms.
    assert vad.decide(False, first_silent + 128) == [Silence(0, first_silent)]
    assert not vad.triggered


def test_every_silence_segment_is_announced() -> None:
    # Last voiced chunk starts at 224 ms (< 250) but the speech length is 256 ms (>= 250):
    # upstream would send a silence with no speaking; we announce it first.
    events = run("#" * 8 + "." * 6, t0=0)
    assert events == [Speaking(0), Silence(0, 256)]


def test_silence_timeout_repeats_while_silent() -> None:
    option = VadOption(silence_timeout=500)
    events = run("." * 40, option, t0=0)
    # Silence starts at 0; ticks at 512 (16 chunks), then 512 ms after each tick.
    assert events == [
        Silence(0, 512, timeout=True),
        Silence(512, 512, timeout=True),
    ]


def test_silence_timeout_counts_from_end_of_segment() -> None:
    option = VadOption(silence_timeout=300)
    events = run("#" * 10 + "." * 20, option, t0=0)
    # Segment ends when the silence reaches 100 ms: at chunk 14 (448 ms).
    assert events[:2] == [Speaking(0), Silence(0, 320)]
    assert events[2] == Silence(448, 320, timeout=True)


def test_speech_resets_silence_timeout() -> None:
    option = VadOption(silence_timeout=300, speech_padding=0)
    events = run("." * 8 + "#" + "." * 8, option, t0=0)
    assert all(not (isinstance(e, Silence) and e.timeout) for e in events)


def test_probability_threshold() -> None:
    vad = VadProcessor(VadOption(voice_threshold=0.6, speech_padding=0))
    assert vad.process(0.6, 0) == []  # strictly greater than the threshold
    assert vad.process(0.61, 32) == [Speaking(32)]


def test_reset_forgets_segment() -> None:
    vad = VadProcessor(VadOption(speech_padding=0))
    vad.decide(True, 0)
    vad.reset()
    assert not vad.triggered
    assert [vad.decide(False, t) for t in range(32, 400, 32)] == [[]] * 12


def test_option_from_json_camel_case_and_unknown_keys() -> None:
    option = VadOption.from_json(
        {
            "type": "silero",
            "speechPadding": 300,
            "silencePadding": 200,
            "voiceThreshold": 0.7,
            "silenceTimeout": 5000,
            "ratio": 0.5,
            "somethingNew": True,
        }
    )
    assert option == VadOption(300, 200, 0.7, 5000)
    assert VadOption.from_json({}) == VadOption()


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"speechPadding": -1}, "speechPadding"),
        ({"speechPadding": "250"}, "speechPadding"),
        ({"silencePadding": 1.5}, "silencePadding"),
        ({"voiceThreshold": 2}, "voiceThreshold"),
        ({"voiceThreshold": "high"}, "voiceThreshold"),
        ({"silenceTimeout": 0}, "silenceTimeout"),
        ({"silenceTimeout": True}, "silenceTimeout"),
    ],
)
def test_option_rejects_bad_values_naming_the_field(obj: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        VadOption.from_json(obj)
