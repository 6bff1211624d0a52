"""SRTP/SRTCP contexts: round trips against libsrtp driven on its own, and bad datagrams."""

from __future__ import annotations

import os

import pylibsrtp
import pytest

from activecall.rtp.packet import (
    ReceiverReport,
    RtpPacket,
    SdesChunk,
    SourceDescription,
    parse_rtcp,
    serialize_rtcp,
)
from activecall.rtp.srtp import SUITES, SrtpError, SrtpSession, key_length

_P = pylibsrtp.Policy


def _peer(suite: str, key: bytes, ssrc_type: int) -> pylibsrtp.Session:
    """A libsrtp context made directly with pylibsrtp: the other end of the call."""
    return pylibsrtp.Session(policy=_P(key=key, ssrc_type=ssrc_type, srtp_profile=SUITES[suite][0]))


def _rtp(seq: int, ssrc: int = 0x1234ABCD) -> bytes:
    return RtpPacket(0, seq, seq * 160, ssrc, payload=bytes(range(160))).serialize()


def _rtcp(ssrc: int = 0x1234ABCD) -> bytes:
    return serialize_rtcp(
        [
            ReceiverReport(ssrc),
            SourceDescription((SdesChunk(ssrc, ((1, b"activecall@test"),)),)),
        ]
    )


@pytest.mark.parametrize("suite", list(SUITES))
def test_both_directions_round_trip_with_an_independent_libsrtp_peer(suite: str) -> None:
    ours, theirs = os.urandom(key_length(suite)), os.urandom(key_length(suite))
    session = SrtpSession(suite, ours, theirs)
    peer_in = _peer(suite, ours, _P.SSRC_ANY_INBOUND)
    peer_out = _peer(suite, theirs, _P.SSRC_ANY_OUTBOUND)
    for seq in range(1, 6):
        plain = _rtp(seq)
        sent = session.protect(plain)
        assert sent != plain and sent[:12] == plain[:12]  # header in clear, payload not
        assert peer_in.unprotect(sent) == plain
        received = peer_out.protect(_rtp(seq, ssrc=0x55))
        assert session.unprotect(received) == _rtp(seq, ssrc=0x55)
    report = _rtcp()
    assert peer_in.unprotect_rtcp(session.protect(report, rtcp=True)) == report
    their_report = _rtcp(0x55)
    # On a multiplexed port the packet type tells RTCP from RTP.
    unprotected = session.unprotect(peer_out.protect_rtcp(their_report))
    assert unprotected == their_report
    assert isinstance(parse_rtcp(unprotected)[0], ReceiverReport)
    assert session.stats.protected == 6 and session.stats.unprotected == 6
    assert session.stats.dropped == 0


def test_a_tampered_packet_is_dropped_and_counted_and_the_next_one_still_passes() -> None:
    suite = "AES_CM_128_HMAC_SHA1_80"
    ours, theirs = os.urandom(30), os.urandom(30)
    session = SrtpSession(suite, ours, theirs)
    peer_out = _peer(suite, theirs, _P.SSRC_ANY_OUTBOUND)
    first = bytearray(peer_out.protect(_rtp(1)))
    first[20] ^= 0x01  # one payload bit
    assert session.unprotect(bytes(first)) is None
    assert session.stats.auth_failures == 1
    report = bytearray(peer_out.protect_rtcp(_rtcp(0x55)))
    report[10] ^= 0x80
    assert session.unprotect(bytes(report), rtcp=True) is None
    assert session.stats.auth_failures == 2
    assert session.unprotect(peer_out.protect(_rtp(2))) == _rtp(2)
    assert session.stats.unprotected == 1


def test_a_packet_under_another_key_is_dropped() -> None:
    suite = "AES_CM_128_HMAC_SHA1_32"
    session = SrtpSession(suite, os.urandom(30), os.urandom(30))
    stranger = _peer(suite, os.urandom(30), _P.SSRC_ANY_OUTBOUND)
    assert session.unprotect(stranger.protect(_rtp(7))) is None
    assert session.stats.auth_failures == 1


def test_a_replayed_packet_is_dropped() -> None:
    suite = "AES_CM_128_HMAC_SHA1_80"
    theirs = os.urandom(30)
    session = SrtpSession(suite, os.urandom(30), theirs)
    packet = _peer(suite, theirs, _P.SSRC_ANY_OUTBOUND).protect(_rtp(3))
    assert session.unprotect(packet) == _rtp(3)
    assert session.unprotect(packet) is None
    assert session.stats.replays == 1 and session.stats.dropped == 1


@pytest.mark.parametrize("data", [b"", b"\x80", os.urandom(11), b"\x80\xc9" + os.urandom(6)])
def test_garbage_is_dropped_not_raised(data: bytes) -> None:
    session = SrtpSession("AES_CM_128_HMAC_SHA1_80", os.urandom(30), os.urandom(30))
    assert session.unprotect(data) is None
    assert session.stats.dropped == 1 and session.stats.unprotected == 0


def test_protecting_what_is_not_a_packet_is_a_clear_error() -> None:
    session = SrtpSession("AES_CM_128_HMAC_SHA1_80", os.urandom(30), os.urandom(30))
    with pytest.raises(SrtpError, match="cannot protect a 1-byte packet"):
        session.protect(b"\x80")


def test_bad_suites_and_key_lengths_are_clear_errors() -> None:
    with pytest.raises(SrtpError, match=r"F8_128_HMAC_SHA1_80.*not supported"):
        SrtpSession("F8_128_HMAC_SHA1_80", os.urandom(30), os.urandom(30))
    with pytest.raises(SrtpError, match="needs a 30-byte key and salt, got 16"):
        SrtpSession("AES_CM_128_HMAC_SHA1_80", os.urandom(16), os.urandom(30))
    with pytest.raises(SrtpError, match="needs a 28-byte key and salt, got 30"):
        SrtpSession("AEAD_AES_128_GCM", os.urandom(28), os.urandom(30))


def test_keyed_as_tells_a_kept_key_from_a_new_one() -> None:
    ours, theirs = os.urandom(30), os.urandom(30)
    session = SrtpSession("AES_CM_128_HMAC_SHA1_80", ours, theirs)
    assert session.keyed_as("AES_CM_128_HMAC_SHA1_80", ours, theirs)
    assert not session.keyed_as("AES_CM_128_HMAC_SHA1_80", ours, os.urandom(30))
    assert not session.keyed_as("AES_CM_128_HMAC_SHA1_32", ours, theirs)
