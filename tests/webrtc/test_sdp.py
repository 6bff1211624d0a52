"""SDP text helpers: candidate parsing, IPv6 stripping, codec order, offer checks."""

from __future__ import annotations

import pytest

from activecall.webrtc.sdp import (
    audio_codecs,
    check_offer,
    order_codecs,
    parse_candidate,
    strip_ipv6_candidates,
)

# A Chrome-style offer, cut down, with an IPv6 address as the default candidate.
OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 46117 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "m=audio 50001 UDP/TLS/RTP/SAVPF 111 0 8 126",
        "c=IN IP6 2001:db8::7",
        "a=rtcp:9 IN IP6 ::",
        "a=candidate:1 1 udp 2122262783 2001:db8::7 50001 typ host generation 0",
        "a=candidate:2 1 udp 2122194687 192.0.2.7 50002 typ host generation 0",
        "a=candidate:3 1 tcp 1518283007 2001:db8::7 9 typ host tcptype active",
        "a=candidate:4 1 udp 2122194687 3f7c0b5e.local 50003 typ host",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:0123456789abcdefghijklmn",
        "a=fingerprint:sha-256 AA:BB",
        "a=setup:actpass",
        "a=mid:0",
        "a=sendrecv",
        "a=rtcp-mux",
        "a=rtpmap:126 telephone-event/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "",
    ]
)


def test_parse_candidate_reads_the_ice_fields() -> None:
    c = parse_candidate("candidate:2 1 UDP 2122194687 192.0.2.7 50002 typ host generation 0")
    assert (c.foundation, c.component, c.transport, c.priority) == ("2", 1, "udp", 2122194687)
    assert (c.address, c.port, c.type, c.is_ipv6) == ("192.0.2.7", 50002, "host", False)
    assert parse_candidate("a=candidate:1 1 udp 1 fe80::1%eth0 5 typ host").is_ipv6
    assert not parse_candidate("candidate:4 1 udp 1 3f7c0b5e.local 5 typ host").is_ipv6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not an ICE candidate"),
        ("candidate:1 1 udp 1 192.0.2.7 5", "not an ICE candidate"),
        ("candidate:1 1 udp 1 192.0.2.7 5 type host", "not an ICE candidate"),
        ("candidate:1 1 quic 1 192.0.2.7 5 typ host", "udp or tcp"),
        ("candidate:1 1 udp 1 192.0.2.7 5 typ local", "host, srflx"),
        ("candidate:1 x udp 1 192.0.2.7 5 typ host", "component must be a number"),
        ("candidate:1 1 udp -1 192.0.2.7 5 typ host", "priority must be a number"),
        ("candidate:1 1 udp 1 192.0.2.7 70000 typ host", "out of range"),
        ("candidate:1 0 udp 1 192.0.2.7 5 typ host", "out of range"),
    ],
)
def test_parse_candidate_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_candidate(text)


def test_strip_ipv6_keeps_ipv4_and_mdns_and_repoints_the_section() -> None:
    stripped = strip_ipv6_candidates(OFFER)
    candidates = [ln for ln in stripped.split("\r\n") if ln.startswith("a=candidate:")]
    assert candidates == [
        "a=candidate:2 1 udp 2122194687 192.0.2.7 50002 typ host generation 0",
        "a=candidate:4 1 udp 2122194687 3f7c0b5e.local 50003 typ host",
    ]
    assert "c=IN IP4 192.0.2.7" in stripped
    assert "m=audio 50002 UDP/TLS/RTP/SAVPF 111 0 8 126" in stripped
    assert "a=rtcp:50002 IN IP4 192.0.2.7" in stripped
    assert "IP6" not in stripped
    # Everything else is untouched, in order.
    others = [
        ln
        for ln in OFFER.split("\r\n")
        if ln and not ln.startswith(("a=candidate", "c=", "m=", "a=rtcp:"))
    ]
    assert [ln for ln in stripped.split("\r\n") if ln in others] == others


def test_strip_ipv6_with_nothing_left_points_nowhere() -> None:
    only6 = "\r\n".join(
        ln for ln in OFFER.split("\r\n") if "192.0.2.7" not in ln and ".local" not in ln
    )
    stripped = strip_ipv6_candidates(only6)
    assert "a=candidate:" not in stripped
    assert "c=IN IP4 0.0.0.0" in stripped
    assert "m=audio 9 UDP/TLS/RTP/SAVPF" in stripped


def test_strip_ipv6_leaves_an_ipv4_offer_alone() -> None:
    ipv4 = strip_ipv6_candidates(OFFER)
    assert strip_ipv6_candidates(ipv4) == ipv4


def test_codecs_follow_the_m_line_with_static_types_filled_in() -> None:
    assert audio_codecs(OFFER) == [
        "opus/48000/2",
        "PCMU/8000",
        "PCMA/8000",
        "telephone-event/8000",
    ]
    ordered = order_codecs(OFFER)
    rtpmaps = [ln for ln in ordered.split("\r\n") if ln.startswith("a=rtpmap:")]
    assert rtpmaps == [
        "a=rtpmap:111 opus/48000/2",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:126 telephone-event/8000",
    ]
    # Only the rtpmap lines moved.
    assert sorted(ordered.split("\r\n")) == sorted(
        (OFFER + "a=rtpmap:0 PCMU/8000\r\n").split("\r\n")
    )
    assert order_codecs(ordered) == ordered


def test_audio_codecs_of_sdp_without_audio() -> None:
    assert audio_codecs("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n") == []


@pytest.mark.parametrize(
    ("sdp", "message"),
    [
        ("", "empty"),
        ("   \r\n", "empty"),
        ("o=- 1 1 IN IP4 0.0.0.0\r\nv=0\r\n", "starts with 'v=0'"),
        (OFFER.replace("m=audio", "m=video"), "no audio section"),
        (OFFER.replace("a=ice-ufrag:abcd\r\n", ""), "ICE username fragment"),
        (OFFER.replace("a=ice-pwd:", "a=ice-pass:"), "ICE password"),
        (OFFER.replace("a=fingerprint:sha-256 AA:BB\r\n", ""), "DTLS fingerprint"),
        (OFFER.replace("50002 typ host", "50002 typ hots"), "host, srflx"),
    ],
)
def test_check_offer_says_what_is_missing(sdp: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_offer(sdp)


def test_check_offer_accepts_a_browser_offer() -> None:
    check_offer(OFFER)
    check_offer(OFFER.replace("\r\n", "\n"))
