"""SIP message parsing and serialising, with the RFC 4475 torture tests as data."""

from __future__ import annotations

import pytest

from activecall.sip import GrammarError
from activecall.sip.headers import Via, parse_auth_header
from activecall.sip.message import (
    MAX_HEADER_BYTES,
    Headers,
    KeepAlive,
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    SipStreamParser,
    canonical_name,
    parse,
    response_to,
)
from activecall.sip.uri import AbsoluteUri, SipUri, parse_address, unescape
from tests.sip import rfc4475

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKnashds8;received=192.0.2.1\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Timestamp: 54\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def parse_request(data: bytes) -> SipRequest:
    message = parse(data)
    assert isinstance(message, SipRequest)
    return message


def parse_response(data: bytes) -> SipResponse:
    message = parse(data)
    assert isinstance(message, SipResponse)
    return message


def rejection(data: bytes) -> SipParseError:
    with pytest.raises(SipParseError) as caught:
        parse(data)
    return caught.value


# --- RFC 4475 §3.1.1 valid messages ------------------------------------------------------------


def test_wsinv_short_tortuous_invite() -> None:
    m = parse_request(rfc4475.WSINV)
    assert m.method == "INVITE"
    assert m.uri == SipUri("chair-dnrc.example.com", "vivekg", params=(("unknownparam", None),))
    assert m.to_addr.uri == SipUri("chair-dnrc.example.com", "vivekg")
    assert m.to_tag == "1918181833n"
    assert m.from_addr.display_name == 'J Rosenberg \\"'
    assert m.from_tag == "98asjd8"
    assert m.max_forwards == 68
    assert m.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert (m.cseq.seq, m.cseq.method) == (9, "INVITE")
    vias = m.vias
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert m.headers.get("subject") == ""
    assert m.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.headers.get("unknownheaderwithunusualvalue") == ";;,,;;,;"
    [route] = m.routes
    assert isinstance(route.uri, SipUri) and route.uri.has_param("lr")
    assert route.uri.params[-1] == ("unknown-no-value", None)
    [contact] = m.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    assert m.content_type == "application/sdp"
    assert len(m.body) == 150 and m.body.startswith(b"v=0\r\n")


def test_intmeth_wide_range_of_valid_characters() -> None:
    m = parse_request(rfc4475.INTMETH)
    assert m.method == rfc4475.INTMETH_METHOD
    assert m.cseq.method == rfc4475.INTMETH_METHOD
    assert (
        isinstance(m.uri, SipUri) and m.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    )
    assert m.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert m.to_addr.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.from_addr.display_name == "token1~` token2'+_ token3*%!.-"
    assert m.from_addr.param("fromParam''~+*_!.-%") == "работающий"
    assert m.from_tag == "_token~1'+`*%!-."
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.max_forwards == 255
    assert m.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_esc01_valid_escapes() -> None:
    m = parse_request(rfc4475.ESC01)
    assert isinstance(m.uri, SipUri) and unescape(m.uri.user or "") == "sips:user@example.com"
    to = m.to_addr.uri
    assert isinstance(to, SipUri) and unescape(to.user or "") == "user"
    assert m.call_id == "esc01.239409asdfakjkn23onasd0-3234"
    contact = m.contacts[0].uri
    assert isinstance(contact, SipUri)
    assert contact.params == (("%6C%72", None), ("n%61me", "v%61lue%25%34%31"))
    assert unescape("v%61lue%25%34%31") == "value%41"


def test_escnull_escaped_nulls() -> None:
    m = parse_request(rfc4475.ESCNULL)
    users = [c.uri.user for c in m.contacts if isinstance(c.uri, SipUri)]
    assert users == ["%00", "%00%00"]
    assert unescape(users[1]) == "\x00\x00"


def test_esc02_percent_is_not_an_escape_in_methods_and_header_names() -> None:
    m = parse_request(rfc4475.ESC02)
    assert m.method == "RE%47IST%45R" and m.cseq.method == "RE%47IST%45R"
    assert m.to_addr.display_name == "%Z%45"
    assert [str(c.uri) for c in m.contacts] == [
        "sip:alias1@host1.example.com",
        "sip:alias3@host3.example.com",
    ]
    assert m.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_longreq_long_values() -> None:
    m = parse_request(rfc4475.LONGREQ)
    assert [v.host for v in m.vias] == [*rfc4475.LONGREQ_VIA_HOSTS, "host.example.com"]
    assert m.vias[-1].received == "192.0.2.5"
    assert m.to_addr.display_name is not None and "extreme " * 10 in m.to_addr.display_name
    to = m.to_addr.uri
    assert isinstance(to, SipUri) and to.port == 6000 and len(to.params) == 3
    assert m.from_tag is not None and len(m.from_tag) > 150
    assert len(m.body) == 150


def test_dblreq_extra_octets_in_a_datagram_are_discarded() -> None:
    m = parse_request(rfc4475.DBLREQ)
    assert m.method == "REGISTER" and m.body == b""
    assert b"INVITE" not in m.serialize()


def test_dblreq_on_a_stream_is_two_messages() -> None:
    items = SipStreamParser().feed(rfc4475.DBLREQ)
    methods = [i.method for i in items if isinstance(i, SipRequest)]
    assert methods == ["REGISTER", "INVITE"]


def test_semiuri_semicolon_in_user_part() -> None:
    m = parse_request(rfc4475.SEMIURI)
    assert isinstance(m.uri, SipUri)
    assert (m.uri.user, m.uri.params) == ("user;par=u%40example.net", ())
    assert m.headers.values("accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]


def test_transports_varied_and_unknown() -> None:
    m = parse_request(rfc4475.TRANSPORTS)
    assert [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_mpart01_binary_body_is_framed_by_content_length() -> None:
    m = parse_request(rfc4475.MPART01)
    assert m.body == rfc4475.MPART01_BODY and b"\x00" in m.body
    assert m.content_type == "multipart/mixed"
    assert m.top_via.wants_rport and m.top_via.rport is None and m.top_via.port == 5070
    assert [str(r.uri) for r in m.routes] == ["sip:127.0.0.1:5080"]


def test_unreason_and_noreason_responses() -> None:
    unreason = parse_response(rfc4475.UNREASON)
    assert (unreason.status, unreason.reason) == (200, rfc4475.UNREASON_PHRASE)
    assert len(unreason.body) == 154
    noreason = parse_response(rfc4475.NOREASON)
    assert (noreason.status, noreason.reason) == (100, "")


@pytest.mark.parametrize("name", sorted(rfc4475.VALID))
def test_valid_messages_round_trip(name: str) -> None:
    first = parse(rfc4475.VALID[name])
    wire = first.serialize()
    second = parse(wire)
    assert second.serialize() == wire
    assert _without_length(second) == _without_length(first)
    assert second.body == first.body


def _without_length(m: SipMessage) -> list[tuple[str, str]]:
    return [(n, v) for n, v in m.headers if canonical_name(n) != "content-length"]


# --- RFC 4475 §3.2-3.4: accepted by the parser, handled above it ------------------------------


def test_application_layer_messages_parse() -> None:
    assert not parse_request(rfc4475.BADBRANCH).top_via.rfc3261_branch
    assert parse_request(rfc4475.BADDATE).headers.get("date") == "Fri, 01 Jan 2010 16:00:00 EST"
    assert parse_request(rfc4475.UNKSCM).uri == AbsoluteUri(
        "nobodyknowsthisscheme", "totallyopaquecontent"
    )
    novel = parse_request(rfc4475.NOVELSC).uri
    assert isinstance(novel, AbsoluteUri) and novel.scheme == "soap.beep"
    unksm2 = parse_request(rfc4475.UNKSM2)
    assert [type(a.uri) for a in (unksm2.to_addr, unksm2.from_addr, *unksm2.contacts)] == [
        AbsoluteUri,
        AbsoluteUri,
        AbsoluteUri,
    ]
    bext = parse_request(rfc4475.BEXT01)
    assert bext.headers.values("require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert len(bext.headers.values("proxy-require")) == 2
    invut = parse_request(rfc4475.INVUT)
    assert invut.content_type == "application/unknownformat" and len(invut.body) == 40
    auth = parse_auth_header(parse_request(rfc4475.REGAUT01).headers.get("authorization") or "")
    assert auth.scheme == "NoOneKnowsThisScheme" and auth.get("opaque-data") == "here"
    bcast = parse_response(rfc4475.BCAST)
    assert [v.host for v in bcast.vias] == ["192.0.2.198", "255.255.255.255"]
    assert parse_request(rfc4475.ZEROMF).max_forwards == 0
    assert parse_request(rfc4475.SDP01).headers.get("accept") == "text/nobodyKnowsThis"


def test_contact_parameters_and_escaped_headers() -> None:
    [c1] = parse_request(rfc4475.CPARAM01).contacts
    assert c1.params == (("unknownparam", None),)
    [c2] = parse_request(rfc4475.CPARAM02).contacts
    assert c2.params == () and isinstance(c2.uri, SipUri) and c2.uri.has_param("unknownparam")
    [c3] = parse_request(rfc4475.REGESCRT).contacts
    assert isinstance(c3.uri, SipUri) and c3.uri.headers == (
        ("Route", "%3Csip:sip.example.com%3E"),
    )


def test_inv2543_rfc2543_invite() -> None:
    m = parse_request(rfc4475.INV2543)
    assert m.max_forwards is None
    assert "content-length" not in m.headers
    assert len(m.body) == 105 and m.body.endswith(b"m=audio 49217 RTP/AVP 0\r\n")
    assert m.top_via.branch is None
    [rr] = m.record_routes
    assert isinstance(rr.uri, SipUri) and rr.uri.param("maddr") == "ss1.example.com"
    assert m.from_tag is None


def test_rfc5118_ipv6() -> None:
    m = parse_request(rfc4475.IPV6_REGISTER)
    assert isinstance(m.uri, SipUri) and m.uri.host == "[2001:db8::10]"
    assert m.top_via.host == "[2001:db8::9:1]"
    assert str(m.contacts[0].uri) == "sip:caller@[2001:db8::1]"


# --- RFC 4475 §3.1.2 and §3.3: rejected ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(rfc4475.REJECTED_REQUESTS))
def test_invalid_requests_are_rejected_with_the_documented_status(name: str) -> None:
    data, status = rfc4475.REJECTED_REQUESTS[name]
    error = rejection(data)
    assert error.status == status
    assert error.is_request is True
    response = error.response(to_tag="t1")
    if name == "badinv01":
        assert response is None  # its Via is the broken part: an answer could not be routed
        return
    assert response is not None
    wire = response.serialize()
    assert wire.startswith(b"SIP/2.0 %d " % status)
    assert response.headers.get_all("via") == list(error.via)
    assert response.headers.get("cseq") == error.cseq
    if name not in ("badaspec", "baddn", "quotbal", "insuf", "scalar02"):
        expected_tag = parse_address(error.to or "").tag or "t1"  # an existing tag is kept
        assert parse_response(wire).to_tag == expected_tag


def test_rejection_answers_carry_the_readable_headers() -> None:
    error = rejection(rfc4475.BADVERS)
    assert error.method == "OPTIONS" and error.status == 505
    response = error.response(to_tag="x9")
    assert response is not None
    assert response.reason == "Version Not Supported"  # the standard phrase, not our detail
    assert response.headers.get("to") == "T. Watson <sip:t.watson@example.org>;tag=x9"
    assert response.call_id == "badvers.31417@c.example.com"
    assert str(response.cseq) == "1 OPTIONS"
    # RFC 4475 §3.3.1: no From, To or Call-ID, still answerable by Via and CSeq.
    insuf = rejection(rfc4475.INSUF).response()
    assert insuf is not None
    assert [n for n, _ in insuf.headers] == ["Via", "CSeq"]
    # The bad To of RFC 4475 §3.1.2.6 is left out of the answer rather than copied.
    quotbal = rejection(rfc4475.QUOTBAL).response()
    assert (
        quotbal is not None and "to" not in quotbal.headers and quotbal.call_id == "quotbal.aksdj"
    )


@pytest.mark.parametrize("name", sorted(rfc4475.DROPPED_RESPONSES))
def test_invalid_responses_are_dropped(name: str) -> None:
    error = rejection(rfc4475.DROPPED_RESPONSES[name])
    assert error.is_request is False
    assert error.response() is None


def test_clerr_on_a_stream_waits_for_the_body() -> None:
    parser = SipStreamParser()
    assert parser.feed(rfc4475.CLERR) == []
    assert parser.buffered == len(rfc4475.CLERR) and not parser.closed


def test_ncl_on_a_stream_closes_the_connection() -> None:
    parser = SipStreamParser()
    [error] = parser.feed(rfc4475.NCL + INVITE)
    assert isinstance(error, SipParseError) and error.fatal and error.status == 400
    assert parser.closed and parser.feed(INVITE) == []


# --- other bad input, one test per kind --------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status", "is_request"),
    [
        (b"", 400, None),
        (b"\r\n\r\n", 400, None),
        (INVITE.replace(b"\r\n\r\n", b"\r\n"), 400, True),  # no empty line
        (INVITE.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505, True),
        (INVITE.replace(b"SIP/2.0\r\n", b"SIP/2\r\n", 1), 400, None),
        (INVITE.replace(b"INVITE sip", b"INV<ITE sip", 1), 400, None),
        (INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE"), 400, True),
        (INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 4294967296 INVITE"), 400, True),
        (INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: " + b"9" * 5000 + b" INVITE"), 400, True),
        (INVITE.replace(b"Content-Length: 4", b"Content-Length: five"), 400, True),
        (INVITE.replace(b"Content-Length: 4", b"Content-Length: " + b"9" * 5000), 400, True),
        (INVITE.replace(b"Content-Length: 4", b"Content-Length: 5"), 400, True),
        (INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: seventy"), 400, True),
        (INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: " + b"7" * 20), 400, True),
        (INVITE.replace(b"Call-ID: a84b", b"Call-ID: a 84b"), 400, True),
        (INVITE.replace(b"Timestamp: 54", b"Timestamp: 5\x004"), 400, True),
        (INVITE.replace(b"Timestamp: 54", b"Time stamp: 54"), 400, True),
        (INVITE.replace(b"Timestamp: 54", b"NoColon"), 400, True),
        (INVITE.replace(b"Timestamp: 54", b"X\xffY: 1"), 400, True),
        (INVITE.replace(b"Timestamp: 54", b'X-Q: "a\\\rb"'), 400, True),  # escaped CR
        (INVITE.replace(b"SIP/2.0\r\nVia", b"SIP/2.0\r\n folded\r\nVia", 1), 400, True),
        (INVITE.replace(b";branch=z9hG4bK776asdhds", b";;"), 400, True),
        (INVITE.replace(b"Contact: <sip:", b"Contact: <sip:>"), 400, True),
        (INVITE.replace(b"Via: SIP/2.0/UDP pc33", b"Via: SIP/2.0 UDP pc33"), 400, True),
        (INVITE.replace(b"To: Bob", b"To: Bob, Jr."), 400, True),
        (
            INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nTo: <sip:x@y>\r\n"),
            400,
            True,
        ),
        (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n", 400, False),
        (b"SIP/2.0 099 Low\r\n\r\n", 400, False),
        (b"SIP/3.0 200 OK\r\n\r\n", 505, False),
        (b"SIP/2.0 200 O\x07K\r\n\r\n", 400, False),
    ],
)
def test_bad_input_is_rejected(data: bytes, status: int, is_request: bool | None) -> None:
    error = rejection(data)
    assert (error.status, error.is_request) == (status, is_request)


def test_oversize_input_gets_413() -> None:
    head, _, body = INVITE.partition(b"\r\n\r\n")
    big_header = head + b"\r\nX-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n" + body
    error = rejection(big_header)
    assert error.status == 413 and error.is_request
    assert error.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert error.response() is not None
    many = head + b"".join(b"\r\nX-%d: v" % i for i in range(300)) + b"\r\n\r\n" + body
    assert rejection(many).status == 413
    huge_body = INVITE.replace(b"Content-Length: 4", b"Content-Length: 70000") + b"x" * 70000
    assert rejection(huge_body).status == 413
    assert parse(huge_body, max_body_bytes=100_000).body.startswith(b"v=0\nxx")


def test_leading_crlf_and_bare_lf_line_ends_are_accepted() -> None:
    assert parse_request(b"\r\n\r\n" + INVITE).call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    lf = INVITE.replace(b"\r\n", b"\n")
    assert parse_request(lf).body == b"v=0\n"


def test_invalid_utf8_in_a_value_survives_a_round_trip() -> None:
    data = INVITE.replace(b"Timestamp: 54", b"X-Note: caf\xc3\xa9 \xff\xfe")
    m = parse_request(data)
    assert m.serialize() == data


# --- serialising and building ------------------------------------------------------------------


def test_serialize_sets_content_length() -> None:
    m = parse_request(INVITE)
    m.body = b"v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\n"
    wire = m.serialize()
    assert b"Content-Length: %d\r\n" % len(m.body) in wire and wire.endswith(m.body)
    m.headers.remove("content-length")
    assert parse(m.serialize()).headers.get("content-length") == str(len(m.body))
    compact = SipRequest("OPTIONS", SipUri("example.com"), Headers([("l", "99"), ("l", "7")]))
    assert compact.serialize() == b"OPTIONS sip:example.com SIP/2.0\r\nl: 0\r\n\r\n"


def test_headers_lookup_is_case_insensitive_with_compact_forms() -> None:
    h = Headers([("v", "SIP/2.0/UDP a"), ("VIA", "SIP/2.0/UDP b, SIP/2.0/UDP c"), ("i", "x")])
    assert h.get("Via") == "SIP/2.0/UDP a" and h.get("call-ID") == "x"
    assert h.get_all("via") == ["SIP/2.0/UDP a", "SIP/2.0/UDP b, SIP/2.0/UDP c"]
    assert h.values("Via") == ["SIP/2.0/UDP a", "SIP/2.0/UDP b", "SIP/2.0/UDP c"]
    assert "i" in h and "Call-Id" in h and "to" not in h and 3 not in h
    assert {canonical_name(c) for c in "abcefikl"} >= {"content-type", "supported", "call-id"}


def test_list_values_split_outside_quotes_and_angle_brackets() -> None:
    h = Headers(
        [("Contact", '"Smith, J" <sip:j@x;a=b,c>;q=0.5, <sip:k@y>'), ("Date", "Sat, 15 Oct")]
    )
    assert h.values("m") == ['"Smith, J" <sip:j@x;a=b,c>;q=0.5', "<sip:k@y>"]
    assert h.values("date") == ["Sat, 15 Oct"]  # not a list header


def test_headers_editing() -> None:
    h = Headers([("A", "1"), ("B", "2"), ("a", "3")])
    h.set("a", "9")
    assert list(h) == [("A", "9"), ("B", "2")]
    h.prepend("Via", "v")
    h.add("C", "4")
    assert [n for n, _ in h] == ["Via", "A", "B", "C"]
    assert h.remove("b") == 1 and len(h) == 3
    copy = h.copy()
    copy.add("D", "5")
    assert "D" not in h and copy != h


def test_response_to_copies_the_transaction_headers() -> None:
    request = parse_request(INVITE)
    ringing = response_to(request, 180, to_tag="a6c85cf")
    assert (ringing.status, ringing.reason) == (180, "Ringing")
    assert ringing.headers.get_all("via") == request.headers.get_all("via")
    assert ringing.headers.get("from") == request.headers.get("from")
    assert ringing.to_tag == "a6c85cf" and ringing.call_id == request.call_id
    assert ringing.cseq == request.cseq and "timestamp" not in ringing.headers
    trying = response_to(request, 100)
    assert trying.to_tag is None and trying.headers.get("timestamp") == "54"
    busy = response_to(request, 486, headers=[("Retry-After", "60")])
    assert busy.reason == "Busy Here" and busy.to_tag and busy.headers.get("retry-after") == "60"
    assert parse(busy.serialize()).serialize() == busy.serialize()


def test_dialog_creating_responses_copy_record_route() -> None:
    request = parse_request(
        INVITE.replace(b"Timestamp: 54", b"Record-Route: <sip:p1.example.com;lr>, <sip:p2;lr>")
    )
    rr = ["<sip:p1.example.com;lr>, <sip:p2;lr>"]
    assert response_to(request, 180).headers.get_all("record-route") == rr
    assert response_to(request, 200).headers.get_all("record-route") == rr
    assert "record-route" not in response_to(request, 100).headers
    assert "record-route" not in response_to(request, 486).headers
    options = parse_request(
        INVITE.replace(b"INVITE sip", b"OPTIONS sip").replace(b"314159 INVITE", b"1 OPTIONS")
    )
    assert "record-route" not in response_to(options, 200).headers


def test_response_keeps_an_existing_to_tag() -> None:
    request = parse_request(
        INVITE.replace(b"To: Bob <sip:bob@biloxi.example.com>", b"t: <sip:b@c>;tag=x")
    )
    assert response_to(request, 200, to_tag="new").to_tag == "x"


def test_stamp_source_received_and_rport() -> None:
    # RFC 3581 §4 example: the request left 10.1.1.1:4540 through a NAT as 192.0.2.1:9988.
    request = parse_request(
        INVITE.replace(b"pc33.atlanta.example.com;branch", b"10.1.1.1:4540;rport;branch", 1)
    )
    request.stamp_source("192.0.2.1", 9988)
    top = request.top_via
    assert (top.received, top.rport, top.branch) == ("192.0.2.1", 9988, "z9hG4bK776asdhds")
    assert top.response_target() == ("192.0.2.1", 9988)
    assert len(request.vias) == 2
    plain = parse_request(INVITE)
    plain.stamp_source("192.0.2.7", 5060)
    assert plain.top_via.received == "192.0.2.7" and plain.top_via.rport is None
    same = parse_request(INVITE.replace(b"pc33.atlanta.example.com;branch", b"192.0.2.9;branch", 1))
    same.stamp_source("192.0.2.9", 5060)
    assert same.top_via.received is None


def test_via_response_target_rules() -> None:
    assert Via("UDP", "h.example.com").response_target() == ("h.example.com", 5060)
    assert Via("UDP", "h.example.com", 5070).response_target() == ("h.example.com", 5070)
    with_maddr = Via("UDP", "h", 5070, (("maddr", "239.1.1.1"), ("received", "192.0.2.1")))
    assert with_maddr.response_target() == ("239.1.1.1", 5070)
    received = Via("UDP", "h", 5070, (("received", "192.0.2.1"),))
    assert received.response_target() == ("192.0.2.1", 5070)
    new = Via.new("udp", "192.0.2.1", 5060)
    assert new.transport == "UDP" and new.rfc3261_branch and new.wants_rport


# --- stream framing ----------------------------------------------------------------------------


def test_stream_parser_frames_messages_fed_byte_by_byte() -> None:
    stream = INVITE + b"\r\n\r\n" + rfc4475.MPART01 + rfc4475.UNREASON
    parser = SipStreamParser()
    items = []
    for i in range(len(stream)):
        items += parser.feed(stream[i : i + 1])
    assert [type(i) for i in items] == [SipRequest, KeepAlive, SipRequest, SipResponse]
    assert items[0] == parse(INVITE)
    assert items[2] == parse(rfc4475.MPART01)
    assert parser.buffered == 0


def test_stream_parser_reports_a_bad_message_and_carries_on() -> None:
    bad = INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE")
    items = SipStreamParser().feed(bad + INVITE)
    assert isinstance(items[0], SipParseError) and not items[0].fatal
    assert items[0].response() is not None
    assert items[1] == parse(INVITE)


def test_stream_parser_needs_content_length() -> None:
    parser = SipStreamParser()
    [error] = parser.feed(INVITE.replace(b"Content-Length: 4\r\n", b""))
    assert isinstance(error, SipParseError) and error.fatal and parser.closed


def test_stream_parser_limits_what_it_buffers() -> None:
    parser = SipStreamParser(max_header_bytes=1000)
    chunk = b"INVITE sip:a@b SIP/2.0\r\nX: " + b"y" * 600
    assert parser.feed(chunk) == []
    [error] = parser.feed(b"z" * 600)
    assert isinstance(error, SipParseError) and error.status == 413 and error.fatal
    assert parser.buffered == 0
    big = SipStreamParser(max_body_bytes=10)
    [too_big] = big.feed(INVITE.replace(b"Content-Length: 4", b"Content-Length: 11"))
    assert isinstance(too_big, SipParseError) and too_big.status == 413 and too_big.fatal


def test_accessors_of_built_messages_say_what_is_missing() -> None:
    bare = SipRequest("OPTIONS", SipUri("example.com"))
    for name in ("call_id", "cseq", "from_addr", "to_addr", "top_via"):
        with pytest.raises(GrammarError):
            getattr(bare, name)
    assert bare.max_forwards is None and bare.content_type is None and bare.contacts == []
    bare.set_top_via(Via.new("UDP", "192.0.2.1", 5060, branch="z9hG4bKx"))
    assert bare.top_via.branch == "z9hG4bKx"
    with pytest.raises(GrammarError):
        SipRequest("OPTIONS", SipUri("example.com")).stamp_source("192.0.2.1", 5060)


def test_stream_parser_refuses_a_complete_but_oversize_header() -> None:
    head, _, body = INVITE.partition(b"\r\n\r\n")
    big = head + b"\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n" + body
    [error] = SipStreamParser(max_header_bytes=1000).feed(big)
    assert isinstance(error, SipParseError) and error.status == 413 and error.fatal
    assert error.call_id == "a84b4c76e66710@pc33.atlanta.example.com"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Custom", "a\r\nVia: SIP/2.0/UDP evil"),
        ("X-Custom", "a\nb"),
        ("Bad Name", "x"),
        ("", "x"),
    ],
)
def test_serialising_refuses_header_injection(name: str, value: str) -> None:
    m = parse_request(INVITE)
    m.headers.add(name, value)
    with pytest.raises(GrammarError):
        m.serialize()
    response = response_to(parse_request(INVITE), 200, "OK\r\nX: y")
    with pytest.raises(GrammarError):
        response.serialize()
