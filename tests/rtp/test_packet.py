"""RTP and RTCP packets: RFC 3550 layouts, round trips, real captures, and bad datagrams."""

from __future__ import annotations

import random
import struct

import pytest

from activecall.rtp.packet import (
    RTCP_SR,
    SDES_CNAME,
    Bye,
    PacketError,
    ReceiverReport,
    ReportBlock,
    RtcpUnknown,
    RtpExtension,
    RtpPacket,
    SdesChunk,
    SenderReport,
    SourceDescription,
    is_rtcp,
    parse_rtcp,
    serialize_rtcp,
)

# pion/rtp's test packet: V=2, X=1, M=1, PT=96, seq 27023, ts 3653407706, SSRC 476325762,
# a one-word extension with profile 1, five payload bytes.
PION_RTP = bytes.fromhex("90e0698fd9c293da1c64278200010001ffffffff9836be889e")

# An RTCP compound from a packet dump (pion's network tests): RR, SDES, BYE, PLI, RRR.
DUMP_RTCP = bytes.fromhex(
    "81c90007"
    "902f9e2e"
    "bc5e9a40"
    "00000000"
    "000046e1"
    "00000111"
    "09f36432"
    "00024a79"
    "81ca000c"
    "902f9e2e"
    "0126" + b"{9c00eb92-1afb-9d49-a47d-91f64eee69f5}".hex() + "00000000"
    "81cb0001"
    "902f9e2e"
    "81ce0002"
    "902f9e2e"
    "902f9e2e"
    "85cd0002"
    "902f9e2e"
    "902f9e2e"
)


def test_parses_a_real_rtp_packet_and_writes_it_back() -> None:
    packet = RtpPacket.parse(PION_RTP)
    assert packet == RtpPacket(
        payload_type=96,
        sequence_number=27023,
        timestamp=3653407706,
        ssrc=476325762,
        payload=bytes.fromhex("9836be889e"),
        marker=True,
        extension=RtpExtension(1, b"\xff\xff\xff\xff"),
    )
    assert packet.serialize() == PION_RTP


def test_fixed_header_layout_of_rfc3550() -> None:
    # Laid out by hand from RFC 3550 §5.1: V=2 P=1 X=0 CC=2 | M=0 PT=8 | seq | ts | SSRC |
    # two CSRCs | payload | 3 bytes of padding, the last one counting them.
    first = (2 << 6) | (1 << 5) | (0 << 4) | 2
    header = struct.pack("!BBHII", first, 8, 0xFFFF, 0x80000000, 0x01020304)
    data = header + struct.pack("!II", 7, 9) + b"\xd5" * 160 + b"\x00\x00\x03"
    packet = RtpPacket.parse(data)
    assert (packet.payload_type, packet.sequence_number, packet.timestamp) == (8, 65535, 1 << 31)
    assert packet.ssrc == 0x01020304 and packet.csrc == (7, 9)
    assert packet.payload == b"\xd5" * 160 and packet.padding == 3 and not packet.marker
    assert packet.serialize() == data


def test_round_trips_every_header_feature() -> None:
    rng = random.Random(3550)
    for _ in range(300):
        packet = RtpPacket(
            payload_type=rng.randrange(128),
            sequence_number=rng.randrange(1 << 16),
            timestamp=rng.randrange(1 << 32),
            ssrc=rng.randrange(1 << 32),
            payload=rng.randbytes(rng.randrange(0, 200)),
            marker=rng.random() < 0.5,
            csrc=tuple(rng.randrange(1 << 32) for _ in range(rng.randrange(16))),
            extension=(
                RtpExtension(rng.randrange(1 << 16), rng.randbytes(4 * rng.randrange(4)))
                if rng.random() < 0.5
                else None
            ),
            padding=rng.choice([0, 1, 4, 255]),
        )
        data = packet.serialize()
        assert RtpPacket.parse(data) == packet
        assert RtpPacket.parse(bytearray(data)) == packet
        assert RtpPacket.parse(memoryview(data)) == packet


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than the 12-byte header"),
        (PION_RTP[:11], "shorter than the 12-byte header"),
        (b"\x40" + PION_RTP[1:], "RTP version 1"),
        (b"\x00" * 12, "RTP version 0"),
        (b"\x83" + PION_RTP[1:12], "announces 3 CSRCs"),
        (PION_RTP[:14], "extension is truncated"),
        (PION_RTP[:12] + b"\x00\x01\x00\x05\xff\xff", "runs past the packet"),
        (b"\xa0" + PION_RTP[1:12] + b"abc\x00", "padding count 0"),
        (b"\xa0" + PION_RTP[1:12] + b"ab\x09", "padding count 9"),
    ],
)
def test_bad_rtp_datagrams_raise_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(PacketError, match=message):
        RtpPacket.parse(data)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"payload_type": 128}, "payload type 128"),
        ({"sequence_number": 1 << 16}, "sequence number"),
        ({"timestamp": -1}, "timestamp"),
        ({"ssrc": 1 << 32}, "SSRC"),
        ({"csrc": tuple(range(16))}, "at most 15 CSRCs"),
        ({"padding": 256}, "padding 256"),
    ],
)
def test_out_of_range_fields_are_refused(fields: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"payload_type": 0, "sequence_number": 0, "timestamp": 0, "ssrc": 0}
    with pytest.raises(PacketError, match=message):
        RtpPacket(**{**base, **fields})  # type: ignore[arg-type]
    with pytest.raises(PacketError, match="whole 32-bit words"):
        RtpExtension(1, b"abc")


def test_parses_a_real_compound_rtcp_packet_and_writes_it_back() -> None:
    packets = parse_rtcp(DUMP_RTCP)
    assert packets == [
        ReceiverReport(
            0x902F9E2E,
            (ReportBlock(0xBC5E9A40, 0, 0, 0x46E1, 273, 0x9F36432, 150137),),
        ),
        SourceDescription(
            (SdesChunk(0x902F9E2E, ((SDES_CNAME, b"{9c00eb92-1afb-9d49-a47d-91f64eee69f5}"),)),)
        ),
        Bye((0x902F9E2E,)),
        RtcpUnknown(206, 1, bytes.fromhex("902f9e2e902f9e2e")),  # PSFB PLI
        RtcpUnknown(205, 5, bytes.fromhex("902f9e2e902f9e2e")),  # RTPFB RRR
    ]
    assert packets[1].chunks[0].cname == "{9c00eb92-1afb-9d49-a47d-91f64eee69f5}"  # type: ignore[union-attr]
    assert serialize_rtcp(packets) == DUMP_RTCP


def test_sender_report_layout_of_rfc3550() -> None:
    # RFC 3550 §6.4.1 by hand: V=2 P=0 RC=1 | PT=200 | length 12 | SSRC | NTP (64) | RTP ts |
    # packet count | octet count | one report block (cumulative lost is signed 24-bit).
    block = struct.pack("!IBBHIIII", 0xBC5E9A40, 64, 0xFF, 0xFFFE, 0x000146E1, 273, 7, 65536)
    data = (
        struct.pack("!BBH", 0x81, RTCP_SR, 12)
        + struct.pack("!IQIII", 0x902F9E2E, 0xDA8BD1FCDDDDA05A, 0xAAF4EDD5, 1, 2)
        + block
    )
    (sr,) = parse_rtcp(data)
    assert sr == SenderReport(
        0x902F9E2E,
        0xDA8BD1FCDDDDA05A,
        0xAAF4EDD5,
        1,
        2,
        (ReportBlock(0xBC5E9A40, 64, -2, 0x146E1, 273, 7, 65536),),
    )
    assert serialize_rtcp([sr]) == data


def test_rtcp_round_trips_with_reason_and_profile_extension() -> None:
    packets = [
        SenderReport(1, 2**63, 3, 4, 5, (ReportBlock(9, 255, -0x800000, 1, 2, 3, 4),), b"ext!"),
        ReceiverReport(2, tuple(ReportBlock(i, i, i) for i in range(31))),
        SourceDescription((SdesChunk(1, ((SDES_CNAME, b"a@b"), (6, b"tool"))), SdesChunk(2, ()))),
        Bye((1, 2), "call ended"),
        Bye(()),
    ]
    assert parse_rtcp(serialize_rtcp(packets)) == packets


def test_padding_on_the_last_rtcp_packet_is_removed() -> None:
    bye = serialize_rtcp([Bye((5,))])
    padded = bytes([bye[0] | 0x20, bye[1], 0, 2]) + bye[4:] + b"\x00\x00\x00\x04"
    assert parse_rtcp(padded) == [Bye((5,))]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x81\xc9\x00", "shorter than the 4-byte header"),
        (b"\x41\xc9\x00\x01" + bytes(4), "RTCP version 1"),
        (DUMP_RTCP[:30], "is truncated"),
        (DUMP_RTCP + b"\x81", "stray bytes"),
        (b"\x81\xc9\x00\x01" + bytes(4), "RR with 1 reports needs 28 bytes"),
        (b"\x81\xc8\x00\x01" + bytes(4), "SR with 1 reports needs 48 bytes"),
        (b"\xa0\xcb\x00\x00" + DUMP_RTCP, "padding on a packet that is not the last"),
        (b"\xa0\xcb\x00\x01\x00\x00\x00\x09", "padding count 9"),
        (b"\x81\xca\x00\x02" + bytes.fromhex("0000000101"), "type 202 of 12 bytes is truncated"),
        (b"\x81\xca\x00\x02" + bytes.fromhex("0000000101056162"), "item type 1 is truncated"),
        (b"\x81\xca\x00\x01" + bytes.fromhex("00000001"), "no end-of-items byte"),
        (b"\x82\xca\x00\x02" + bytes.fromhex("0000000100000000"), "holds fewer"),
        (b"\x82\xcb\x00\x01" + bytes(4), "BYE with 2 sources needs 8 bytes"),
        (b"\x81\xcb\x00\x02" + bytes(4) + b"\x09abc", "reason runs past"),
    ],
)
def test_bad_rtcp_datagrams_raise_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(PacketError, match=message):
        parse_rtcp(data)


def test_unwritable_rtcp_is_refused() -> None:
    with pytest.raises(PacketError, match="at most 31"):
        serialize_rtcp([ReceiverReport(1, tuple(ReportBlock(i) for i in range(32)))])
    with pytest.raises(PacketError, match="longer than 255"):
        serialize_rtcp([Bye((1,), "x" * 256)])
    with pytest.raises(PacketError, match="out of range"):
        serialize_rtcp([SenderReport(1 << 32, 0, 0, 0, 0)])
    with pytest.raises(PacketError, match="whole 32-bit words"):
        serialize_rtcp([RtcpUnknown(204, 0, b"abc")])
    with pytest.raises(PacketError, match="cumulative lost"):
        ReportBlock(1, cumulative_lost=0x800000)


def test_rtcp_mux_demultiplexing() -> None:
    assert all(is_rtcp(p) for p in (DUMP_RTCP, serialize_rtcp([Bye((1,))])))
    assert not is_rtcp(PION_RTP)
    assert not is_rtcp(RtpPacket(0, 1, 2, 3, marker=True).serialize())
    assert not is_rtcp(b"\x80")
