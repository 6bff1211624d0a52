"""RtpMediaPipeline: two call legs wired back to back over a simulated network."""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from activecall._native.dtmf import FREQUENCIES, KEYS
from activecall.rtp.dtmf import DtmfError
from activecall.rtp.media import (
    Datagram,
    DigitReceived,
    MediaReady,
    PipelineEvent,
    RemoteBye,
    RtpMediaPipeline,
)
from activecall.rtp.packet import PacketError, RtpPacket, is_rtcp
from activecall.rtp.sdp import NegotiatedMedia, answer, build_offer, parse_answer

A_ADDR = ("192.0.2.10", 4000)
B_ADDR = ("192.0.2.20", 5000)
WALL = 1_700_000_000.0


def negotiate(codecs: list[str]) -> tuple[NegotiatedMedia, NegotiatedMedia]:
    """A offers ``codecs``, B answers with the same list; both sides' media."""
    offer = build_offer(codecs, A_ADDR[0], A_ADDR[1], session_id=1)
    sdp, b_media = answer(offer, codecs, B_ADDR[0], B_ADDR[1], session_id=2)
    return parse_answer(offer, sdp), b_media


def tone_frames(
    freq: float, seconds: float, amplitude: float = 8000.0
) -> list[npt.NDArray[np.int16]]:
    t = np.arange(int(16000 * seconds)) / 16000
    pcm = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    return [pcm[i : i + 320] for i in range(0, len(pcm) - 319, 320)]


@dataclasses.dataclass
class Call:
    """Two legs and a network between them: each datagram arrives after ``delay()`` ms,
    unless ``drop(datagram)`` says one from A to B is lost."""

    a: RtpMediaPipeline
    b: RtpMediaPipeline
    delay: Callable[[], float] = lambda: 10.0
    drop: Callable[[Datagram], bool] = lambda d: False
    now: float = 0.0
    b_out: list[npt.NDArray[np.int16]] = dataclasses.field(default_factory=list)
    a_events: list[PipelineEvent] = dataclasses.field(default_factory=list)
    b_events: list[PipelineEvent] = dataclasses.field(default_factory=list)
    sent_by_b: list[Datagram] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self._wire: list[tuple[float, int, str, Datagram]] = []
        self._n = 0

    def _send(self, who: str, datagrams: list[Datagram]) -> None:
        for d in datagrams:
            if who == "b" or not self.drop(d):
                self._n += 1
                heapq.heappush(self._wire, (self.now + self.delay(), self._n, who, d))

    def _deliver(self) -> None:
        while self._wire and self._wire[0][0] <= self.now:
            at, _, who, d = heapq.heappop(self._wire)
            if who == "a":
                src = (A_ADDR[0], A_ADDR[1] + (1 if d.rtcp else 0))
                self.b_events += (self.b.receive_rtcp if d.rtcp else self.b.receive)(
                    d.data, src, at
                )
            else:
                src = (B_ADDR[0], B_ADDR[1] + (1 if d.rtcp else 0))
                self.a_events += (self.a.receive_rtcp if d.rtcp else self.a.receive)(
                    d.data, src, at
                )

    def run(
        self, a_audio: list[npt.NDArray[np.int16]] | None = None, ticks: int | None = None
    ) -> None:
        count = ticks if ticks is not None else len(a_audio or [])
        for i in range(count):
            self._deliver()
            frame = a_audio[i] if a_audio is not None and i < len(a_audio) else None
            out_a = self.a.tick(self.now, WALL + self.now / 1000, frame)
            out_b = self.b.tick(self.now, WALL + self.now / 1000, None)
            self._send("a", out_a.datagrams)
            self._send("b", out_b.datagrams)
            self.sent_by_b += out_b.datagrams
            self.b_out.append(out_b.pcm)
            self.a_events += out_a.events
            self.b_events += out_b.events
            self.now += 20.0
        self._deliver()


def call(codecs: list[str], **kwargs: object) -> Call:
    a_media, b_media = negotiate(codecs)
    a = RtpMediaPipeline(a_media, rng=random.Random(1))
    b = RtpMediaPipeline(b_media, rng=random.Random(2))
    return Call(a, b, **kwargs)  # type: ignore[arg-type]


def dominant(pcm: npt.NDArray[np.int16]) -> tuple[float, float]:
    """Frequency (Hz) and RMS of a 16 kHz signal."""
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * 16000 / len(pcm)), float(
        np.sqrt(np.mean(pcm.astype(float) ** 2))
    )


@pytest.mark.parametrize("codec", ["pcmu", "pcma", "g722", "opus"])
def test_audio_crosses_each_codec(codec: str) -> None:
    c = call([codec, "telephone-event"])
    assert c.a.media.codec == c.b.media.codec == codec
    c.run(tone_frames(1000, 2.0))
    received = np.concatenate(c.b_out[-50:])  # the last second
    freq, rms = dominant(received)
    assert abs(freq - 1000) < 5
    assert rms == pytest.approx(8000 / np.sqrt(2), rel=0.1)
    stats = c.b.stats()
    assert stats.session.receive.packets == 100 and stats.session.receive.lost == 0
    assert stats.jitter.lost == 0 and stats.concealed_packets == 0
    assert c.b_events.count(MediaReady()) == 1


def test_rfc4733_digits_both_ways() -> None:
    c = call(["pcmu", "telephone-event"])
    c.a.send_dtmf("1*9#")
    c.b.send_dtmf("0")
    c.run(ticks=100)
    assert [e for e in c.b_events if isinstance(e, DigitReceived)] == [
        DigitReceived(d, "rfc4733") for d in "1*9#"
    ]
    assert [e for e in c.a_events if isinstance(e, DigitReceived)] == [
        DigitReceived("0", "rfc4733")
    ]
    assert c.a.stats().digits_sent == 4 and c.b.stats().digits_received == 4


def test_inband_digits_when_no_telephone_event_was_negotiated() -> None:
    c = call(["pcmu"])
    assert c.b.media.receive_telephone_event is None
    with pytest.raises(DtmfError, match="did not negotiate telephone-event"):
        c.a.send_dtmf("1")
    audio: list[npt.NDArray[np.int16]] = []
    t = np.arange(1600) / 16000  # 100 ms keys, 100 ms apart
    for key in "2580":
        i = KEYS.index(key)
        pcm = 6000 * np.sin(2 * np.pi * FREQUENCIES[i // 4] * t) + 6000 * np.sin(
            2 * np.pi * FREQUENCIES[4 + i % 4] * t
        )
        audio += [f.astype(np.int16) for f in np.split(pcm, 5)] + [np.zeros(320, np.int16)] * 5
    c.run(audio + [np.zeros(320, np.int16)] * 20)
    assert [e for e in c.b_events if isinstance(e, DigitReceived)] == [
        DigitReceived(d, "inband") for d in "2580"
    ]


def test_lost_packets_are_concealed_and_counted() -> None:
    counter = iter(range(10**6))
    c = call(["pcmu"], drop=lambda d: not d.rtcp and next(counter) % 10 == 5)
    c.run(tone_frames(440, 2.0))
    stats = c.b.stats()
    assert stats.session.receive.lost == 10 and stats.jitter.lost == 10
    assert stats.concealed_packets == 10
    assert len(c.b_out) == 100 and all(len(f) == 320 for f in c.b_out)


def test_network_jitter_is_absorbed() -> None:
    rng = random.Random(5)
    c = call(["g722"], delay=lambda: 20 + rng.uniform(0, 60))
    c.run(tone_frames(700, 6.0))
    stats = c.b.stats()
    assert stats.jitter.target_delay_ms > 60 and stats.session.receive.jitter_ms > 10
    played = stats.jitter.played
    assert played >= 0.95 * 300
    freq, _ = dominant(np.concatenate(c.b_out[-100:]))
    assert abs(freq - 700) < 5


def test_hold_zeroes_the_remote_and_stops_sending() -> None:
    c = call(["pcmu"])
    c.run(tone_frames(440, 0.5))
    held = dataclasses.replace(c.b.media, on_hold=True, direction="recvonly")
    c.b.update(held)
    sent = len(c.sent_by_b)
    c.run(tone_frames(440, 0.5))
    assert all(not np.any(f) for f in c.b_out[-25:])
    assert [d for d in c.sent_by_b[sent:] if not is_rtcp(d.data)] == []
    c.b.update(dataclasses.replace(held, on_hold=False, direction="sendrecv"))
    c.run(tone_frames(440, 0.5))
    assert np.any(c.b_out[-1]) and len([d for d in c.sent_by_b[sent:] if not d.rtcp]) > 0


def test_a_new_source_mid_call_takes_over() -> None:
    c = call(["pcmu"])
    c.run(tone_frames(440, 1.0))
    # The far end is re-bridged (a transfer): same media, new SSRC, numbering and clock.
    c.a = RtpMediaPipeline(c.a.media, rng=random.Random(99))
    c.run(tone_frames(880, 1.0))
    freq, _ = dominant(np.concatenate(c.b_out[-25:]))
    assert abs(freq - 880) < 5
    assert c.b.stats().session.receive.ssrc_changes == 1


def test_reports_flow_and_bye_ends() -> None:
    a_media, b_media = negotiate(["pcma"])
    c = Call(
        RtpMediaPipeline(a_media, rtcp_interval_ms=1000, rng=random.Random(1)),
        RtpMediaPipeline(b_media, rtcp_interval_ms=1000, rng=random.Random(2)),
    )
    c.run(tone_frames(440, 4.0))
    for leg in (c.a, c.b):
        remote = leg.stats().session.remote
        assert remote is not None and remote.rtt_ms == pytest.approx(20.0, abs=1.0)
    c._send("a", c.a.close(c.now, WALL, "bye"))
    c.run(ticks=2)
    assert RemoteBye() in c.b_events
    sent = c.a.stats().session.send.packets
    assert c.b.stats().to_dict()["session"]["receive"]["packets"] == sent == 202


def test_codec_change_by_reinvite() -> None:
    c = call(["pcmu", "pcma"])
    c.run(tone_frames(440, 0.5))
    offer = build_offer(["pcma"], A_ADDR[0], A_ADDR[1], session_id=1, session_version=1)
    sdp, b_media = answer(offer, ["pcmu", "pcma"], B_ADDR[0], B_ADDR[1])
    c.a.update(parse_answer(offer, sdp))
    c.b.update(b_media)
    c.run(tone_frames(600, 1.0))
    assert c.a.media.codec == "pcma"
    freq, _ = dominant(np.concatenate(c.b_out[-25:]))
    assert abs(freq - 600) < 5


def test_packet_size_follows_ptime() -> None:
    a_media, _b_media = negotiate(["pcmu"])
    a = RtpMediaPipeline(dataclasses.replace(a_media, ptime=40), rng=random.Random(1))
    sent = [d for i in range(10) for d in a.tick(i * 20.0, WALL, np.zeros(320, np.int16)).datagrams]
    packets = [RtpPacket.parse(d.data) for d in sent if not d.rtcp]
    assert len(packets) == 5 and {len(p.payload) for p in packets} == {320}


def test_bad_datagrams_raise_and_change_nothing() -> None:
    c = call(["pcmu"])
    c.run(tone_frames(440, 0.2))
    before = c.b.stats().session.receive.packets
    with pytest.raises(PacketError):
        c.b.receive(b"\x80\x00\x00", A_ADDR, c.now)
    with pytest.raises(PacketError):
        c.b.receive(b"\x81\xc9\x00\x07", A_ADDR, c.now)
    stats = c.b.stats()
    assert stats.bad_datagrams == 2 and stats.session.receive.packets == before
    c.run(tone_frames(440, 0.2))
    assert c.b.stats().session.receive.packets > before
