"""RFC 4733 DTMF receive and send, and SIP INFO bodies."""

from __future__ import annotations

import itertools
import struct

import pytest

from activecall.rtp.dtmf import (
    DTMF_DIGITS,
    DtmfError,
    DtmfReceiver,
    DtmfSender,
    InfoDtmf,
    TelephoneEvent,
    digit_to_event,
    parse_info_dtmf,
)
from activecall.rtp.packet import PacketError, RtpPacket
from activecall.rtp.session import RtpSession

PT = 101


def event_packet(
    seq: int, ts: int, event: int, duration: int, *, end: bool = False, marker: bool = False
) -> RtpPacket:
    # RFC 4733 §2.3 by hand: event (8) | E R volume (6) | duration (16); volume -10 dBm0.
    payload = struct.pack("!BBH", event, (0x80 if end else 0) | 10, duration)
    return RtpPacket(PT, seq, ts, 0xCAFE, payload, marker)


def key_press(seq: int, ts: int, event: int, updates: int = 4) -> list[RtpPacket]:
    """How senders press one key: start with the marker, updates every 20 ms, and the end
    packet three times (each copy its own sequence number, same timestamp and duration)."""
    packets = [event_packet(seq, ts, event, 160, marker=True)]
    packets += [event_packet(seq + i, ts, event, 160 * (i + 1)) for i in range(1, updates)]
    end = 160 * (updates + 1)
    packets += [event_packet(seq + updates + i, ts, event, end, end=True) for i in range(3)]
    return packets


def digits_of(receiver: DtmfReceiver, packets: list[RtpPacket]) -> str:
    return "".join(d.digit for p in packets for d in receiver.handle(p))


def test_one_digit_per_key_press_despite_the_three_end_packets() -> None:
    receiver = DtmfReceiver()
    packets = key_press(100, 8000, 5)
    seen = [receiver.handle(p) for p in packets]
    assert [len(s) for s in seen] == [1, 0, 0, 0, 0, 0, 0]
    (digit,) = seen[0]
    assert (digit.digit, digit.timestamp, digit.volume) == ("5", 8000, 10)


def test_the_same_key_twice_is_two_presses() -> None:
    receiver = DtmfReceiver()
    packets = key_press(100, 8000, 1) + key_press(107, 8000 + 1600, 1)
    assert digits_of(receiver, packets) == "11"


def test_a_press_whose_start_and_updates_were_lost_still_counts_once() -> None:
    receiver = DtmfReceiver()
    packets = [p for p in key_press(100, 8000, 11) if p.payload[1] & 0x80]  # only the ends
    assert digits_of(receiver, packets) == "#"


def test_reordered_and_repeated_packets_of_a_press() -> None:
    receiver = DtmfReceiver()
    packets = key_press(100, 8000, 10)
    shuffled = [packets[0], packets[2], packets[1], packets[5], packets[3], packets[6], packets[4]]
    assert digits_of(receiver, shuffled + packets) == "*"


def test_a_long_press_split_into_segments_is_one_digit() -> None:
    # RFC 4733 §2.5.1.3: the duration field is full at 0xFFFF; the next segment starts
    # at the previous timestamp + 0xFFFF, without the marker bit.
    receiver = DtmfReceiver()
    first = [
        event_packet(1, 1000, 9, 160, marker=True),
        event_packet(2, 1000, 9, 0xFFFF),
        event_packet(3, 1000, 9, 0xFFFF, end=True),
    ]
    second = [event_packet(4, 1000 + 0xFFFF, 9, 160), event_packet(5, 1000 + 0xFFFF, 9, 320)]
    assert digits_of(receiver, first + second) == "9"
    # A new press (marker bit) at that same point would count.
    assert (
        digits_of(DtmfReceiver(), [*first, event_packet(4, 1000 + 0xFFFF, 9, 160, marker=True)])
        == "99"
    )


def test_packed_events_in_one_packet() -> None:
    blocks = (
        TelephoneEvent(1, True, 10, 800).serialize() + TelephoneEvent(2, True, 10, 800).serialize()
    )
    receiver = DtmfReceiver()
    digits = receiver.handle(RtpPacket(PT, 1, 5000, 1, blocks))
    assert [(d.digit, d.timestamp) for d in digits] == [("1", 5000), ("2", 5800)]


def test_other_events_are_not_digits() -> None:
    receiver = DtmfReceiver()
    assert receiver.handle(event_packet(1, 0, 16, 160, marker=True)) == []  # hook flash
    assert digits_of(receiver, key_press(2, 800, 0)) == "0"


@pytest.mark.parametrize("payload", [b"", b"\x05\x0a\x00", b"\x05\x0a\x00\xa0\x01"])
def test_bad_event_payload_is_a_packet_error(payload: bytes) -> None:
    with pytest.raises(PacketError, match="whole 4-byte blocks"):
        DtmfReceiver().handle(RtpPacket(PT, 1, 0, 1, payload))


def test_reset_forgets_past_events() -> None:
    receiver = DtmfReceiver()
    assert digits_of(receiver, key_press(1, 800, 3)) == "3"
    receiver.reset()
    assert digits_of(receiver, key_press(1, 800, 3)) == "3"


def run_sender(
    sender: DtmfSender, session: RtpSession, ticks: int
) -> tuple[list[bytes], list[bool]]:
    """Drive a sender every 20 ms as the media tick does; audio ticks send 160 samples."""
    datagrams: list[bytes] = []
    audio_ticks: list[bool] = []
    for tick in range(ticks):
        packets = sender.tick(session.timestamp)
        if packets is None:
            datagrams.append(session.send_audio(b"\xff" * 160, 160, tick * 20.0))
            audio_ticks.append(True)
        else:
            for p in packets:
                datagrams.append(
                    session.send_event(p.payload, PT, p.timestamp, p.marker, tick * 20.0)
                )
            session.skip(160)
            audio_ticks.append(False)
    return datagrams, audio_ticks


def test_send_then_receive_every_key() -> None:
    session = RtpSession(clock_rate=8000, payload_type=0, ssrc=1)
    sender = DtmfSender(PT, 8000)
    sender.send(DTMF_DIGITS)
    datagrams, _ = run_sender(sender, session, 16 * 10 + 5)
    assert not sender.busy
    packets = [RtpPacket.parse(d) for d in datagrams]
    events = [p for p in packets if p.payload_type == PT]
    receiver = DtmfReceiver()
    assert "".join(d.digit for p in events for d in receiver.handle(p)) == DTMF_DIGITS
    # Sequence numbers run on through audio and events alike.
    assert all(
        (b.sequence_number - a.sequence_number) % 65536 == 1 for a, b in itertools.pairwise(packets)
    )


def test_sent_packets_follow_rfc4733() -> None:
    session = RtpSession(clock_rate=8000, payload_type=0, ssrc=1)
    sender = DtmfSender(PT, 8000, duration_ms=100, pause_ms=100, volume=7)
    sender.send("7#")
    datagrams, audio = run_sender(sender, session, 20)
    packets = [RtpPacket.parse(d) for d in datagrams]
    first = [p for p in packets if p.payload_type == PT and p.payload[0] == 7]
    blocks = [TelephoneEvent.parse_payload(p.payload)[0] for p in first]
    # Start with the marker, 20 ms updates, then the end three times with the same duration.
    assert [p.marker for p in first] == [True] + [False] * 6
    assert [b.duration for b in blocks] == [160, 320, 480, 640, 800, 800, 800]
    assert [b.end for b in blocks] == [False] * 4 + [True] * 3
    assert {b.volume for b in blocks} == {7}
    assert len({p.timestamp for p in first}) == 1
    # 7 event ticks, 3 of pause with audio, then the next key; audio resumes with a marker.
    assert audio[:12] == [False] * 7 + [True] * 3 + [False] * 2
    resumed = packets[7]
    assert resumed.payload_type == 0 and resumed.marker
    second = [p for p in packets if p.payload_type == PT and p.payload[0] == 11]
    assert second[0].timestamp == first[0].timestamp + 10 * 160


def test_events_on_a_48khz_clock() -> None:
    sender = DtmfSender(110, 48000, duration_ms=60)
    sender.send("1")
    durations = []
    while sender.busy:
        packets = sender.tick(0)
        if packets:
            durations += [TelephoneEvent.parse_payload(p.payload)[0].duration for p in packets]
    assert durations == [960, 1920, 2880, 2880, 2880]


def test_sender_refuses_bad_requests_and_queues_nothing() -> None:
    sender = DtmfSender(PT, 8000)
    with pytest.raises(DtmfError, match="'x' is not a DTMF digit"):
        sender.send("12x")
    with pytest.raises(DtmfError, match="no digits"):
        sender.send("")
    assert not sender.busy and sender.tick(0) is None
    with pytest.raises(DtmfError, match="dynamic payload type"):
        DtmfSender(8, 8000)
    with pytest.raises(DtmfError, match="volume"):
        DtmfSender(PT, 8000, volume=64)
    with pytest.raises(DtmfError, match="overflows"):
        DtmfSender(PT, 48000, duration_ms=2000)
    with pytest.raises(DtmfError, match="at least one packet"):
        DtmfSender(PT, 8000, duration_ms=10)


def test_cancel_keeps_the_key_being_sent() -> None:
    sender = DtmfSender(PT, 8000)
    sender.send("123")
    sender.tick(0)
    sender.cancel()
    sent = set()
    while sender.busy:
        for p in sender.tick(0) or []:
            sent.add(p.payload[0])
    assert sent == {1}


def test_digit_codes() -> None:
    assert [digit_to_event(d) for d in "09*#AbcD"] == [0, 9, 10, 11, 12, 13, 14, 15]


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        ("Signal=5\r\nDuration=160\r\n", "application/dtmf-relay", InfoDtmf("5", 160)),
        ("signal= #\nduration = 250", "Application/DTMF-Relay; charset=utf-8", InfoDtmf("#", 250)),
        (b"Signal=*\r\n", "application/dtmf-relay", InfoDtmf("*")),
        ("Signal=11\r\nDuration=100\r\n", "application/dtmf-relay", InfoDtmf("#", 100)),
        ("Signal=a\r\n", "application/dtmf-relay", InfoDtmf("A")),
        ("5", "application/dtmf", InfoDtmf("5")),
        (b"10\r\n", "application/dtmf", InfoDtmf("*")),
    ],
)
def test_sip_info_bodies(body: str | bytes, content_type: str, expected: InfoDtmf) -> None:
    assert parse_info_dtmf(body, content_type) == expected


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        ("Signal=5", "text/plain", "not a DTMF INFO body"),
        ("Duration=160\r\n", "application/dtmf-relay", "no Signal= line"),
        ("Signal=X\r\n", "application/dtmf-relay", "'X' is not a DTMF digit"),
        ("Signal=\r\n", "application/dtmf-relay", "'' is not a DTMF digit"),
        ("Signal=16\r\n", "application/dtmf-relay", "'16' is not a DTMF digit"),
        ("Signal=1\r\nDuration=long\r\n", "application/dtmf-relay", "is not a number"),
        ("Signal=1\r\nDuration=-5\r\n", "application/dtmf-relay", "negative"),
        ("", "application/dtmf", "'' is not a DTMF digit"),
    ],
)
def test_bad_sip_info_bodies(body: str, content_type: str, message: str) -> None:
    with pytest.raises(DtmfError, match=message):
        parse_info_dtmf(body, content_type)
