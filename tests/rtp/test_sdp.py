"""SDP offer/answer against real descriptions: RFC 4317, baresip, SIPp, Chrome."""

from __future__ import annotations

import base64
import re

import pytest

from activecall.rtp.sdp import (
    Crypto,
    NotAcceptable,
    SdpError,
    SessionDescription,
    answer,
    build_offer,
    parse_answer,
    supported_codecs,
)

# RFC 4317 §2.1 (Alice's offer, Bob's answer). The RFC's subject lines hold a single space.
RFC4317_OFFER = """v=0
o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com
s=
c=IN IP4 host.atlanta.example.com
t=0 0
m=audio 49170 RTP/AVP 0 8 97
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:97 iLBC/8000
m=video 51372 RTP/AVP 31 32
a=rtpmap:31 H261/90000
a=rtpmap:32 MPV/90000
"""
RFC4317_ANSWER_2_1 = """v=0
o=bob 2808844564 2808844564 IN IP4 host.biloxi.example.com
s=
c=IN IP4 host.biloxi.example.com
t=0 0
m=audio 49174 RTP/AVP 0
a=rtpmap:0 PCMU/8000
m=video 49170 RTP/AVP 32
a=rtpmap:32 MPV/90000
"""
# §2.2: Bob accepts PCMU and PCMA and declines video.
RFC4317_ANSWER_2_2 = """v=0
o=bob 2808844564 2808844564 IN IP4 host.biloxi.example.com
s=
c=IN IP4 host.biloxi.example.com
t=0 0
m=audio 49172 RTP/AVP 0 8
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
m=video 0 RTP/AVP 31
a=rtpmap:31 H261/90000
"""
# §2.3: Bob answers with iLBC only, renumbered to 99.
RFC4317_ANSWER_2_3 = """v=0
o=bob 2808844564 2808844564 IN IP4 host.biloxi.example.com
s=
c=IN IP4 host.biloxi.example.com
t=0 0
m=audio 49172 RTP/AVP 99
a=rtpmap:99 iLBC/8000
m=video 51374 RTP/AVP 31
a=rtpmap:31 H261/90000
"""
# §2.4: an audio stream and a separate send-only telephone-event stream.
RFC4317_TWO_AUDIO = """v=0
o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com
s=
c=IN IP4 host.atlanta.example.com
t=0 0
m=audio 49170 RTP/AVP 0 97
a=rtpmap:0 PCMU/8000
a=rtpmap:97 iLBC/8000
m=audio 49172 RTP/AVP 98
a=rtpmap:98 telephone-event/8000
a=sendonly
"""
# §3.1: Alice's offer; Bob's second offer (unhold) drops his a=sendonly.
RFC4317_HOLD_OFFER = """v=0
o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com
s=
c=IN IP4 host.atlanta.example.com
t=0 0
m=audio 49170 RTP/AVP 0 97
a=rtpmap:0 PCMU/8000
a=rtpmap:97 iLBC/8000
"""
# §5.2 puts the stream on hold the RFC 2543 way: c=IN IP4 0.0.0.0. (Its codec is iLBC, which
# we do not run; the same offer with PCMU.)
RFC4317_BLACK_HOLE = """v=0
o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com
s=
c=IN IP4 0.0.0.0
t=0 0
m=audio 23442 RTP/AVP 0
a=rtpmap:0 PCMU/8000
"""

# A baresip 0.5.0 INVITE over IPv6: speex on dynamic types 96-101 (101 is speex here, not
# telephone-event), telephone-event on 102, and a video stream.
BARESIP_OFFER = """v=0
o=- 953559690 1743778263 IN IP6 fde1:c0fe::7
s=-
c=IN IP6 fde1:c0fe::7
t=0 0
a=tool:baresip 0.5.0
m=audio 17882 RTP/AVP 0 8 96 97 98 99 100 101 102
b=AS:128
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:96 speex/32000/2
a=fmtp:96 mode="6";vbr=off;cng=on
a=rtpmap:97 speex/16000/2
a=fmtp:97 mode="6";vbr=off;cng=on
a=rtpmap:98 speex/8000/2
a=fmtp:98 mode="3";vbr=off;cng=on
a=rtpmap:99 speex/32000
a=fmtp:99 mode="6";vbr=off;cng=on
a=rtpmap:100 speex/16000
a=fmtp:100 mode="6";vbr=off;cng=on
a=rtpmap:101 speex/8000
a=fmtp:101 mode="3";vbr=off;cng=on
a=rtpmap:102 telephone-event/8000
a=fmtp:102 0-15
a=sendrecv
a=label:1
a=rtcp-rsize
a=ssrc:1979608979 cname:sip:202@[fde1:c0fe::7]
a=rtcp-mux
a=ptime:20
m=video 9010 RTP/AVP 96
b=AS:384
a=rtpmap:96 VP8/90000
a=fmtp:96 max-fs=3600
a=sendrecv
a=label:2
a=rtcp-rsize
a=ssrc:59383982 cname:sip:202@[fde1:c0fe::7]
a=rtcp-mux
a=framerate:5
a=rtcp-fb:* nack pli
a=content:main
"""

# SIPp's built-in uac scenario body, with its [local_ip]/[media_port] fields filled in.
SIPP_OFFER = """v=0
o=user1 53655765 2353687637 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 6000 RTP/AVP 0
a=rtpmap:0 PCMU/8000
"""

# The shape of a Chrome offer: ICE and DTLS, Opus first, RED, G.722, G.711, CN and
# telephone-event at 48 and 8 kHz, c=0.0.0.0 with port 9 (the address comes from ICE).
CHROME_OFFER = (
    """v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
a=extmap-allow-mixed
a=msid-semantic: WMS
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:Bs+R
a=ice-pwd:PawJZpTr+YgVYXBsI5apmBh8
a=ice-options:trickle
a=fingerprint:sha-256 D2:CD:E4:B6:25:31:C3:2F:05:75:F5:AD:8B:13:6E:77:F2:F9:EE:C7:A8:D3:FE:10"""
    """:4E:51:24:87:DA:E4:53:B1
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=sendrecv
a=msid:- 750e164d-7709-4d6b-b17f-0b9d2e4ca9de
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:13 CN/8000
a=rtpmap:110 telephone-event/48000
a=rtpmap:126 telephone-event/8000
a=ssrc:1009384203 cname:nKXm1Y4g3wAKu91t
a=ssrc:1009384203 msid:- 750e164d-7709-4d6b-b17f-0b9d2e4ca9de
"""
)

ALL = ["pcmu", "pcma", "g722", "opus", "telephone-event"]


def lines(text: str) -> list[str]:
    return [line for line in text.replace("\r\n", "\n").split("\n") if line]


@pytest.mark.parametrize(
    "text", [RFC4317_OFFER, RFC4317_ANSWER_2_2, BARESIP_OFFER, SIPP_OFFER, CHROME_OFFER]
)
def test_parse_and_serialise_keep_every_line(text: str) -> None:
    sd = SessionDescription.parse(text)
    out = sd.serialize()
    assert out.endswith("\r\n") and "\n" not in out.replace("\r\n", "")
    assert lines(out) == lines(text)
    assert SessionDescription.parse(out) == sd
    assert SessionDescription.parse(text.encode()) == sd


def test_answer_to_rfc4317_picks_the_offers_first_codec_and_rejects_video() -> None:
    sdp, media = answer(RFC4317_OFFER, ["pcma", "pcmu"], "host.biloxi.example.com", 49174)
    # Offerer's preference: PCMU comes first in Alice's m-line, though we list PCMA first.
    assert (media.codec, media.payload_type, media.clock_rate) == ("pcmu", 0, 8000)
    assert (media.remote_address, media.remote_port) == ("host.atlanta.example.com", 49170)
    assert media.telephone_event is None and media.ptime == 20
    assert (media.direction, media.on_hold, media.media_index) == ("sendrecv", False, 0)
    audio, video = sdp.media
    assert (audio.port, audio.proto, audio.formats) == (49174, "RTP/AVP", ["0"])
    assert audio.attributes("rtpmap") == ["0 PCMU/8000"]
    # RFC 3264 §6: the declined stream keeps its place, with port 0.
    assert (video.media, video.port, video.formats) == ("video", 0, ["31", "32"])
    assert str(sdp.connection) == "IN IP4 host.biloxi.example.com"
    # And the answer is itself a description the offerer can read.
    assert parse_answer(RFC4317_OFFER, sdp.serialize()).codec == "pcmu"


def test_answer_as_offerer_rfc4317_2_1() -> None:
    media = parse_answer(RFC4317_OFFER, RFC4317_ANSWER_2_1)
    assert (media.codec, media.payload_type) == ("pcmu", 0)
    assert (media.remote_address, media.remote_port) == ("host.biloxi.example.com", 49174)
    assert media.remote_rtcp == ("host.biloxi.example.com", 49175)
    assert media.receive_codecs == ((0, "pcmu"),)


def test_answer_with_two_codecs_rfc4317_2_2() -> None:
    media = parse_answer(RFC4317_OFFER, RFC4317_ANSWER_2_2)
    # Our order decides (PCMU before PCMA in our offer); the remote may send either.
    assert (media.codec, media.payload_type, media.remote_port) == ("pcmu", 0, 49172)
    assert media.receive_codecs == ((0, "pcmu"), (8, "pcma"))


def test_answer_with_no_codec_of_ours_rfc4317_2_3() -> None:
    with pytest.raises(NotAcceptable, match=r"none of our codecs.*iLBC") as info:
        parse_answer(RFC4317_OFFER, RFC4317_ANSWER_2_3)
    assert info.value.status_code == 488


def test_second_audio_stream_for_events_is_declined_rfc4317_2_4() -> None:
    sdp, media = answer(RFC4317_TWO_AUDIO, ALL, "192.0.2.1", 30000)
    assert (media.codec, media.media_index, media.telephone_event) == ("pcmu", 0, None)
    assert [(m.media, m.port) for m in sdp.media] == [("audio", 30000), ("audio", 0)]


def test_baresip_offer_dynamic_payload_types_are_learned() -> None:
    sdp, media = answer(BARESIP_OFFER, ["g722", "pcma", "telephone-event"], "2001:db8::1", 40000)
    # PCMU is offered first but not supported here; PCMA is next in the offer's order.
    assert (media.codec, media.payload_type) == ("pcma", 8)
    # telephone-event is 102 in this offer; 101 is speex/8000 and must not be taken for it.
    assert media.telephone_event == 102 and media.receive_telephone_event == 102
    assert (media.remote_address, media.remote_port) == ("fde1:c0fe::7", 17882)
    assert media.rtcp_mux and media.remote_rtcp == ("fde1:c0fe::7", 17882)
    audio, video = sdp.media
    assert audio.formats == ["8", "102"] and audio.fmtp(102) == "0-15"
    assert "rtcp-mux" in [v for k, v in audio.lines if k == "a"]
    assert video.port == 0
    assert str(sdp.connection) == "IN IP6 2001:db8::1"
    assert str(sdp.origin).endswith("IN IP6 2001:db8::1")


def test_sipp_offer() -> None:
    sdp, media = answer(SIPP_OFFER, ALL, "127.0.0.1", 7000, session_id=42, session_version=1)
    assert (media.codec, media.payload_type, media.telephone_event) == ("pcmu", 0, None)
    assert (media.remote_address, media.remote_port) == ("127.0.0.1", 6000)
    assert sdp.serialize() == (
        "v=0\r\no=- 42 1 IN IP4 127.0.0.1\r\ns=activecall\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio 7000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    )


def test_sipp_offer_without_a_common_codec_is_488() -> None:
    with pytest.raises(NotAcceptable, match=r"no common codec \(offered 0 PCMU/8000\)") as info:
        answer(SIPP_OFFER, ["pcma", "g722"], "127.0.0.1", 7000)
    assert info.value.status_code == 488


def test_chrome_offer_needs_its_transport() -> None:
    with pytest.raises(NotAcceptable, match="UDP/TLS/RTP/SAVPF is not supported"):
        answer(CHROME_OFFER, ALL, "192.0.2.1", 30000)
    _, media = answer(CHROME_OFFER, ALL, "192.0.2.1", 30000, profiles=["UDP/TLS/RTP/SAVPF"])
    assert (media.codec, media.payload_type, media.clock_rate, media.channels) == (
        "opus",
        111,
        48000,
        2,
    )
    # telephone-event at the codec's clock: 110 (48 kHz), not 126 (8 kHz).
    assert media.telephone_event == 110
    assert media.fmtp == "minptime=10;useinbandfec=1"
    # c=0.0.0.0 with ICE is not a hold: the address comes from the candidates.
    assert not media.on_hold and media.direction == "sendrecv"


def test_chrome_offer_without_opus_takes_g722_and_the_8khz_event() -> None:
    _, media = answer(
        CHROME_OFFER, ["pcmu", "g722", "dtmf"], "192.0.2.1", 30000, profiles=["UDP/TLS/RTP/SAVPF"]
    )
    assert (media.codec, media.payload_type, media.telephone_event) == ("g722", 9, 126)
    assert media.sample_rate == 16000 and media.clock_rate == 8000


@pytest.mark.parametrize(
    ("offered", "ours", "on_hold"),
    [
        ("sendrecv", "sendrecv", False),
        ("sendonly", "recvonly", True),
        ("recvonly", "sendonly", False),
        ("inactive", "inactive", True),
    ],
)
def test_hold_and_unhold_by_direction(offered: str, ours: str, on_hold: bool) -> None:
    # A re-INVITE of RFC 4317 §3.1's offer, with a direction attribute added.
    reoffer = RFC4317_HOLD_OFFER.replace("2890844526 IN", "2890844527 IN") + f"a={offered}\n"
    sdp, media = answer(reoffer, ALL, "192.0.2.1", 30000)
    assert (media.direction, media.remote_direction, media.on_hold) == (ours, offered, on_hold)
    assert sdp.direction_of(sdp.media[0]) == ours
    assert media.sends == (ours in ("sendrecv", "sendonly"))


def test_session_level_direction_applies_to_streams() -> None:
    reoffer = RFC4317_HOLD_OFFER.replace("t=0 0\n", "t=0 0\na=inactive\n")
    _, media = answer(reoffer, ALL, "192.0.2.1", 30000)
    assert media.on_hold and media.direction == "inactive"


def test_black_hole_address_is_hold_rfc4317_5_2() -> None:
    _sdp, media = answer(RFC4317_BLACK_HOLE, ALL, "192.0.2.1", 30000)
    # We still receive, but do not send to 0.0.0.0.
    assert media.on_hold and media.direction == "recvonly" and not media.sends
    unhold = RFC4317_BLACK_HOLE.replace("IN IP4 0.0.0.0", "IN IP4 host.atlanta.example.com")
    _, media = answer(unhold, ALL, "192.0.2.1", 30000)
    assert not media.on_hold and media.direction == "sendrecv"


def test_our_own_direction_limits_the_answer() -> None:
    _, media = answer(SIPP_OFFER, ALL, "127.0.0.1", 7000, direction="recvonly")
    assert media.direction == "recvonly" and not media.sends and media.receives


def test_answer_with_hold_from_the_answerer_rfc4317_3_1() -> None:
    offer = build_offer(["pcmu"], "host.atlanta.example.com", 49170, session_id=1)
    held = (
        "v=0\no=bob 2808844564 2808844564 IN IP4 host.biloxi.example.com\ns= \n"
        "c=IN IP4 placeholder.biloxi.example.com\nt=0 0\nm=audio 49172 RTP/AVP 0\n"
        "a=rtpmap:0 PCMU/8000\na=sendonly\n"
    )
    media = parse_answer(offer, held)
    assert media.on_hold and media.direction == "recvonly"
    assert media.remote_address == "placeholder.biloxi.example.com"


def test_our_offer_lists_codecs_in_configuration_order() -> None:
    sd = build_offer(
        ["pcmu", "pcma", "g722", "g729", "telephone_event", "opus"],
        "192.0.2.1",
        4000,
        session_id=7,
    )
    (audio,) = sd.media
    assert audio.formats == ["0", "8", "9", "101", "110", "111"]
    maps = audio.rtpmaps()
    assert str(maps[101]) == "101 telephone-event/8000"
    assert str(maps[110]) == "110 telephone-event/48000"
    assert str(maps[111]) == "111 opus/48000/2"
    assert audio.attribute("ptime") == "20" and sd.direction_of(audio) == "sendrecv"
    assert str(sd.origin) == "- 7 0 IN IP4 192.0.2.1"


def test_offerer_takes_its_own_first_codec_present_in_the_answer() -> None:
    offer = build_offer(["pcmu", "pcma", "opus", "dtmf"], "192.0.2.1", 4000, session_id=1)
    # The answer lists PCMA first, learns Opus on 96 and telephone-event on 100.
    reply = (
        "v=0\no=- 5 5 IN IP4 198.51.100.7\ns=-\nc=IN IP4 198.51.100.7\nt=0 0\n"
        "m=audio 5004 RTP/AVP 8 96 0 100\na=rtpmap:96 opus/48000/2\na=rtpmap:100 "
        "telephone-event/8000\na=ptime:40\n"
    )
    media = parse_answer(offer, reply)
    assert (media.codec, media.payload_type, media.ptime) == ("pcmu", 0, 40)
    assert media.telephone_event == 100 and media.receive_telephone_event == 101
    assert media.receive_codecs == ((0, "pcmu"), (8, "pcma"))
    opus_only = reply.replace("m=audio 5004 RTP/AVP 8 96 0 100", "m=audio 5004 RTP/AVP 96 100")
    media = parse_answer(offer, opus_only)
    # Sent with the answer's number (96), received with ours (111).
    assert (media.codec, media.payload_type, media.receive_codecs) == ("opus", 96, ((111, "opus"),))
    assert media.telephone_event is None  # 100 is at 8 kHz, Opus runs a 48 kHz clock


@pytest.mark.parametrize(("offered", "sent"), [(None, 20), ("30", 20), ("40", 40), ("60", 60)])
def test_ptime(offered: str | None, sent: int) -> None:
    text = SIPP_OFFER + (f"a=ptime:{offered}\n" if offered else "")
    _, media = answer(text, ALL, "127.0.0.1", 7000)
    assert media.ptime == sent


def test_supported_codec_names() -> None:
    assert supported_codecs(["PCMU", "2833", "g729", "dtmf", "opus"]) == [
        "pcmu",
        "telephone-event",
        "opus",
    ]
    with pytest.raises(ValueError, match="unknown codec 'amr'"):
        supported_codecs(["pcmu", "amr"])
    with pytest.raises(ValueError, match="no audio codec"):
        build_offer(["dtmf"], "192.0.2.1", 4000)
    with pytest.raises(ValueError, match="no audio codec"):
        answer(SIPP_OFFER, ["g729"], "127.0.0.1", 7000)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty session description"),
        ("o=- 1 1 IN IP4 1.2.3.4\n", "must start with v=0"),
        ("v=1\no=- 1 1 IN IP4 1.2.3.4\n", "must start with v=0"),
        ("v=0\nno equals sign\n", "line 2 is not <type>=<value>"),
        ("v=0\nv=0\n", "a second v= line"),
        ("v=0\ns=-\n", "no o= line"),
        ("v=0\no=- x 1 IN IP4 1.2.3.4\n", "must be numbers"),
        ("v=0\no=- 1 1 IN IP4\n", "o= line needs 6 fields"),
        ("v=0\no=- 1 1 IN IP4 1.2.3.4\nc=IN IP4\n", "c= line needs 3 fields"),
        ("v=0\no=- 1 1 IN IP4 1.2.3.4\nm=audio x RTP/AVP 0\n", "port is not a number"),
        ("v=0\no=- 1 1 IN IP4 1.2.3.4\nm=audio 70000 RTP/AVP 0\n", "out of range"),
        ("v=0\no=- 1 1 IN IP4 1.2.3.4\nm=audio 5000 RTP/AVP\n", "needs media, port"),
        (b"v=0\no=\xff\n", "not UTF-8"),
    ],
)
def test_malformed_descriptions_raise_sdp_errors(text: str | bytes, message: str) -> None:
    with pytest.raises(SdpError, match=message):
        SessionDescription.parse(text)


@pytest.mark.parametrize(
    ("media_lines", "message"),
    [
        ("m=audio 5000 RTP/AVP 0 x\n", "not payload types"),
        ("m=audio 5000 RTP/AVP 200\n", "must be 0-127"),
        ("m=audio 5000 RTP/AVP 96\na=rtpmap:96 opus\n", "malformed a=rtpmap:96 opus"),
        ("m=audio 5000 RTP/AVP 0\na=ptime:abc\n", "a=ptime:abc is not a number"),
        ("m=audio 5000 RTP/AVP 0\na=rtcp:x\n", "malformed a=rtcp:x"),
    ],
)
def test_malformed_streams_in_an_offer(media_lines: str, message: str) -> None:
    text = "v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nc=IN IP4 1.2.3.4\nt=0 0\n" + media_lines
    with pytest.raises(SdpError, match=message):
        answer(text, ALL, "127.0.0.1", 7000)


def test_offers_we_cannot_take() -> None:
    with pytest.raises(NotAcceptable, match="no audio stream"):
        answer("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nt=0 0\n", ALL, "127.0.0.1", 7000)
    with pytest.raises(SdpError, match="no c= line"):
        answer("v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nt=0 0\nm=audio 4 RTP/AVP 0\n", ALL, "h", 7)
    offer = build_offer(["pcmu"], "192.0.2.1", 4000)
    with pytest.raises(SdpError, match="the answer has 2 m-lines for the offer's 1"):
        parse_answer(offer, RFC4317_ANSWER_2_1)
    with pytest.raises(NotAcceptable, match="rejected audio stream 0"):
        parse_answer(RFC4317_OFFER, RFC4317_ANSWER_2_1.replace("m=audio 49174", "m=audio 0"))


def test_unknown_lines_keep_their_place() -> None:
    # RFC 4566 order, with types this parser has no field for, and one it does not know.
    text = (
        SIPP_OFFER.replace("s=-\n", "s=-\ni=info\nu=http://x\ne=a@b\n")
        .replace("t=0 0\n", "b=AS:64\nt=0 0\nz=0 0\ny=unknown\na=x-session\n")
        .replace("m=audio 6000 RTP/AVP 0\n", "m=audio 6000 RTP/AVP 0\ni=voice\nk=prompt\n")
    ) + "a=x-custom:1\n"
    out = SessionDescription.parse(text).serialize()
    assert lines(out) == lines(text)


# ------------------------------------------------------------------------ SDES-SRTP (RFC 4568)

# RFC 4568 §5.1's offer, with a second crypto line (no MKI) that we can run: the first one's
# MKI needs a key table (not supported), so tag 2 is chosen.
RFC4568_CRYPTO_1 = (
    "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4"
    " FEC_ORDER=FEC_SRTP"
)
SDES_OFFER = f"""v=0
o=sam 2890844526 2890844526 IN IP4 10.47.16.5
s=SRTP Discussion
c=IN IP4 168.2.17.12
t=2873397526 2873404696
m=audio 49170 RTP/SAVP 0
a=crypto:{RFC4568_CRYPTO_1}
a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj|2^20
"""


def test_an_sdes_offer_is_answered_with_our_own_key_for_its_first_usable_suite() -> None:
    sdp, media = answer(SDES_OFFER, ["pcmu"], "192.0.2.1", 40000)
    section = sdp.media[0]
    assert section.proto == "RTP/SAVP"
    (line,) = section.attributes("crypto")
    tag, suite, key_params = line.split()
    assert (tag, suite) == ("2", "AES_CM_128_HMAC_SHA1_32")
    assert media.srtp is not None
    assert media.srtp.suite == "AES_CM_128_HMAC_SHA1_32" and media.srtp.tag == 2
    assert media.srtp.remote_key == base64.b64decode("NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj")
    assert len(media.srtp.local_key) == 30 and media.srtp.local_key != media.srtp.remote_key
    assert key_params == "inline:" + base64.b64encode(media.srtp.local_key).decode()
    # What we wrote parses back to the key we will send with.
    (ours,) = SessionDescription.parse(sdp.serialize()).cryptos(section)
    assert ours.key == media.srtp.local_key and ours.usable


def test_an_sdes_offer_with_no_suite_we_can_run_is_488() -> None:
    unusable = SDES_OFFER.replace(
        "a=crypto:2 AES_CM_128_HMAC_SHA1_32", "a=crypto:2 F8_128_HMAC_SHA1_80"
    )
    with pytest.raises(NotAcceptable, match="no usable SRTP crypto suite") as caught:
        answer(unusable, ["pcmu"], "192.0.2.1", 40000)
    assert caught.value.status_code == 488
    assert "F8_128_HMAC_SHA1_80" in str(caught.value)
    no_lines = "\n".join(line for line in SDES_OFFER.splitlines() if "crypto" not in line)
    with pytest.raises(NotAcceptable, match=r"no usable SRTP crypto suite \(offered none\)"):
        answer(no_lines + "\n", ["pcmu"], "192.0.2.1", 40000)


@pytest.mark.parametrize(
    ("crypto", "message"),
    [
        ("1 AES_CM_128_HMAC_SHA1_80 inline:not*base64!", "is not base64"),
        (
            "1 AES_CM_128_HMAC_SHA1_80 inline:AAAAAAAAAAAAAAAAAAAAAA==",
            "is 16 bytes, the suite needs 30",
        ),
        ("1 AES_CM_128_HMAC_SHA1_80 uri:https://kms.example/k", "key-params must be inline"),
        ("x AES_CM_128_HMAC_SHA1_80 inline:AAAA", "is not '<tag> <suite> <key-params>'"),
        ("1 AES_CM_128_HMAC_SHA1_80", "is not '<tag> <suite> <key-params>'"),
    ],
)
def test_a_bad_crypto_line_is_a_clear_sdp_error(crypto: str, message: str) -> None:
    offer = SDES_OFFER.replace(
        "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj|2^20",
        f"a=crypto:{crypto}",
    )
    with pytest.raises(SdpError, match=re.escape(message)) as caught:
        answer(offer, ["pcmu"], "192.0.2.1", 40000)
    assert not isinstance(caught.value, NotAcceptable)  # malformed, not merely refused


def test_our_srtp_offer_and_the_answer_to_it_agree_on_mirrored_keys() -> None:
    offer = build_offer(["pcmu", "telephone_event"], "192.0.2.1", 30000, srtp=True)
    section = offer.media[0]
    assert section.proto == "RTP/SAVP"
    lines = offer.cryptos(section)
    assert [(c.tag, c.suite) for c in lines] == [
        (1, "AES_CM_128_HMAC_SHA1_80"),
        (2, "AES_CM_128_HMAC_SHA1_32"),
    ]
    assert lines[0].key != lines[1].key and all(c.usable for c in lines)
    answer_sdp, theirs = answer(offer.serialize(), ["pcmu"], "192.0.2.9", 40000)
    mine = parse_answer(offer, answer_sdp.serialize())
    assert mine.srtp is not None and theirs.srtp is not None
    assert mine.srtp.suite == theirs.srtp.suite == "AES_CM_128_HMAC_SHA1_80"
    assert mine.srtp.local_key == theirs.srtp.remote_key == lines[0].key
    assert mine.srtp.remote_key == theirs.srtp.local_key


def test_answers_that_do_not_match_our_srtp_offer_are_refused() -> None:
    offer = build_offer(["pcmu"], "192.0.2.1", 30000, srtp=True)
    answer_sdp, _ = answer(offer.serialize(), ["pcmu"], "192.0.2.9", 40000)
    text = answer_sdp.serialize()
    with pytest.raises(NotAcceptable, match="RTP/AVP to our SRTP offer"):
        parse_answer(offer, text.replace("RTP/SAVP", "RTP/AVP"))
    with pytest.raises(NotAcceptable, match="no crypto line matching our offer"):
        parse_answer(offer, text.replace("a=crypto:1 ", "a=crypto:7 "))
    plain = build_offer(["pcmu"], "192.0.2.1", 30000)
    with pytest.raises(NotAcceptable, match="RTP/SAVP to our RTP/AVP"):
        parse_answer(plain, text)


def test_a_plain_offer_with_crypto_lines_gets_srtp_only_when_we_want_it() -> None:
    best_effort = SDES_OFFER.replace("RTP/SAVP", "RTP/AVP")
    sdp, media = answer(best_effort, ["pcmu"], "192.0.2.1", 40000)
    assert media.srtp is None and not sdp.media[0].attributes("crypto")
    sdp, media = answer(best_effort, ["pcmu"], "192.0.2.1", 40000, srtp=True)
    assert media.srtp is not None and sdp.media[0].proto == "RTP/AVP"
    assert sdp.media[0].attributes("crypto")[0].startswith("2 AES_CM_128_HMAC_SHA1_32 inline:")


def test_a_re_offer_keeps_our_key() -> None:
    _, first = answer(SDES_OFFER, ["pcmu"], "192.0.2.1", 40000)
    sdp, again = answer(SDES_OFFER, ["pcmu"], "192.0.2.1", 40000, srtp_key=first.srtp)
    assert again.srtp == first.srtp
    assert base64.b64encode(first.srtp.local_key).decode() in sdp.serialize()  # type: ignore[union-attr]


def test_crypto_lines_write_back_lifetime_mki_and_params_unchanged() -> None:
    value = RFC4568_CRYPTO_1
    crypto = Crypto.parse(value)
    assert (crypto.lifetime, crypto.mki, crypto.session_params) == (
        "2^20",
        "1:4",
        ("FEC_ORDER=FEC_SRTP",),
    )
    assert not crypto.usable and str(crypto) == value
    unknown = Crypto.parse("3 AES_192_CM_HMAC_SHA1_80 inline:whatever")
    assert not unknown.usable and str(unknown) == "3 AES_192_CM_HMAC_SHA1_80 inline:whatever"
