"""SIP/SIPS/tel URIs and name-addr/addr-spec addresses (RFC 3261 §19.1, §20.10; RFC 3966)."""

from __future__ import annotations

import pytest

from activecall.sip.uri import (
    AbsoluteUri,
    Address,
    SipUri,
    TelUri,
    UriError,
    parse_address,
    parse_hostport,
    parse_uri,
    unescape,
)


def test_sip_uri_parts() -> None:
    uri = parse_uri("sips:alice:secret@atlanta.example.com:5061;transport=tls;lr?subject=hi&x=1")
    assert isinstance(uri, SipUri)
    assert (uri.scheme, uri.user, uri.password) == ("sips", "alice", "secret")
    assert (uri.host, uri.port) == ("atlanta.example.com", 5061)
    assert uri.params == (("transport", "tls"), ("lr", None))
    assert uri.headers == (("subject", "hi"), ("x", "1"))
    assert uri.param("TRANSPORT") == "tls" and uri.has_param("lr") and uri.param("lr") is None
    assert uri.secure


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@atlanta.example.com",
        "sip:atlanta.example.com",
        "sip:+1-212-555-1212:1234@gateway.com;user=phone",
        "sips:1212@gateway.com",
        "sip:alice@192.0.2.4:5060",
        "sip:[2001:db8::10]:5070",
        "sip:[2001:db8::10:5070]",  # RFC 5118 §4.3: parses, the port is part of the address
        "sip:alice;day=tuesday@atlanta.com",
        "sip:user;par=u%40example.net@example.com",  # RFC 4475 §3.1.1.9
        "sip:sips%3Auser%40example.com@example.net",  # RFC 4475 §3.1.1.3
        "sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31",
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too."
        "(doesn't-it)@example.com",  # RFC 4475 §3.1.1.2
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
        "sip:host.example.com.;maddr=239.255.255.1;ttl=15",
        "tel:+1-201-555-0123",
        "tel:7042;phone-context=example.com",
        "http://www.example.com",
        "isbn:2983792873",
        "soap.beep://192.0.2.103:3002",
        "urn:service:sos",
    ],
)
def test_uri_serialises_back_to_its_text(text: str) -> None:
    assert str(parse_uri(text)) == text


def test_scheme_is_case_insensitive() -> None:
    uri = parse_uri("SIP:Alice@AtLanta.example.com")
    assert isinstance(uri, SipUri)
    assert uri.scheme == "sip" and uri.user == "Alice" and uri.host == "AtLanta.example.com"


def test_unusual_user_part_keeps_question_mark_and_semicolons() -> None:
    uri = parse_uri(
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too."
        "(doesn't-it)@example.com"
    )
    assert isinstance(uri, SipUri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com" and uri.params == () and uri.headers == ()


def test_escapes_are_kept_and_can_be_decoded() -> None:
    uri = parse_uri("sip:sips%3Auser%40example.com@example.net")
    assert isinstance(uri, SipUri)
    assert uri.user == "sips%3Auser%40example.com"
    assert unescape(uri.user) == "sips:user@example.com"
    assert unescape("%75se%72") == "user"
    assert unescape("null-%00-null") == "null-\x00-null"
    assert unescape("caf%C3%A9") == "café"
    # An invalid UTF-8 escape survives as a surrogate escape instead of raising.
    assert unescape("%ff").encode("utf-8", "surrogateescape") == b"\xff"


def test_ipv6_reference() -> None:
    uri = parse_uri("sip:caller@[2001:db8::1]:5080")
    assert isinstance(uri, SipUri)
    assert (uri.host, uri.port) == ("[2001:db8::1]", 5080)
    assert parse_hostport("[::1]") == ("[::1]", None)


def test_tel_and_opaque_uris() -> None:
    tel = parse_uri("tel:7042;phone-context=example.com")
    assert tel == TelUri("7042", (("phone-context", "example.com"),))
    assert tel.scheme == "tel"
    assert parse_uri("nobodyKnowsThisScheme:totallyopaquecontent") == AbsoluteUri(
        "nobodyknowsthisscheme", "totallyopaquecontent"
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sip",
        "sip:",
        "sip:@host.example.com",
        "sip:alice@",
        "sip:alice@host.example.com:99999",
        "sip:alice@host.example.com:123456",
        "sip:alice@host.example.com:port",
        "sip:alice@host.example.com:",
        "sip:alice@[2001:db8::1",
        "sip:alice@[zz::1]",
        "sip:alice@ho st.example.com",
        "sip:al ice@host.example.com",
        "sip:%zz@host.example.com",
        "sip:al%4@host.example.com",
        "sip:alice@-host-",
        "sip:alice@host.example.com;=x",
        "sip:alice@host.example.com;a b",
        "sip:alice@host.example.com;x=%G0",
        "sip:alice@host.example.com;",
        "sip:alice@host.example.com?=v",
        "sip:alice@host.example.com?h",
        "sip:alice@host.example.com?h=<x>",
        "sip:alice@2001:db8::10",  # RFC 5118 §4.2: IPv6 without brackets
        'sip:ali"ce@host.example.com',
        "sip:alice\x00@host.example.com",
        "<sip:alice@host.example.com>",
        "1sip:alice@host.example.com",
        ":alice@host",
        "tel:",
        "tel:+1 555",
        "tel:123;a b",
        "http:",
        "mailto:a b@example.com",
        "urn:x\x01",
    ],
)
def test_malformed_uris_are_rejected(text: str) -> None:
    with pytest.raises(UriError):
        parse_uri(text)


def test_name_addr_with_quoted_display_name() -> None:
    addr = parse_address('"J Rosenberg \\\\\\""  <sip:jdrosen@example.com> ;  tag = 98asjd8')
    assert addr.display_name == 'J Rosenberg \\"'
    assert addr.uri == SipUri("example.com", "jdrosen")
    assert addr.tag == "98asjd8"


def test_name_addr_with_token_display_name_and_no_space() -> None:
    # RFC 4475 §3.1.1.6: no LWS between the display name and '<'.
    assert parse_address("caller<sip:caller@example.com>;tag=323").display_name == "caller"
    multi = parse_address("token1~` token2'+_ token3*%!.- <sip:mundane@example.com>")
    assert multi.display_name == "token1~` token2'+_ token3*%!.-"


def test_addr_spec_parameters_belong_to_the_header() -> None:
    # RFC 4475 §3.3.12 / §3.3.13.
    outside = parse_address("sip:+19725552222@gw1.example.net;unknownparam")
    assert outside.params == (("unknownparam", None),)
    assert isinstance(outside.uri, SipUri) and outside.uri.params == ()
    inside = parse_address("<sip:+19725552222@gw1.example.net;unknownparam>")
    assert inside.params == ()
    assert isinstance(inside.uri, SipUri) and inside.uri.params == (("unknownparam", None),)


def test_uri_headers_need_angle_brackets() -> None:
    # RFC 4475 §3.3.14 (accepted) and §3.1.2.13 (rejected).
    inside = parse_address("<sip:user@example.com?Route=%3Csip:sip.example.com%3E>")
    assert isinstance(inside.uri, SipUri)
    assert inside.uri.headers == (("Route", "%3Csip:sip.example.com%3E"),)
    with pytest.raises(UriError):
        parse_address("sip:user@example.com?Route=%3Csip:sip.example.com%3E")


def test_quoted_parameter_values_keep_their_quotes() -> None:
    addr = parse_address('<sip:mundane@example.com>;fromParam="работающий";tag=_token~1')
    assert addr.params[0] == ("fromParam", '"работающий"')
    assert addr.param("fromparam") == "работающий"
    assert addr.tag == "_token~1"


@pytest.mark.parametrize(
    "text",
    [
        "",
        '"Mr. J. User <sip:j.user@example.com>',  # RFC 4475 §3.1.2.6
        "Watson, Thomas <sip:t.watson@example.org>",  # RFC 4475 §3.1.2.15
        '"Watson, Thomas" < sip:t.watson@example.org >',  # RFC 4475 §3.1.2.14
        '"Joe" <sip:joe@example.org>;;;;',  # RFC 4475 §3.1.2.1
        "<sip:joe@example.org",
        "<>",
        '"Joe" sip:joe@example.org',
        "<sip:joe@example.org> trailing",
        "<sip:joe@example.org>;tag=a b",
        '<sip:joe@example.org>;x="open',
        "<sip:joe@example.org>;=v",
        "sip:joe@example.org, sip:other@example.org",
    ],
)
def test_malformed_addresses_are_rejected(text: str) -> None:
    with pytest.raises(UriError):
        parse_address(text)


@pytest.mark.parametrize(
    "text",
    [
        '"Alice" <sip:alice@atlanta.example.com>;tag=9fxced76sl',
        "<sip:bob@biloxi.example.com>",
        "Bob <sip:bob@biloxi.example.com;transport=tcp>;expires=60;q=0.5",
        '"BEL:\\\x07 NUL:\\\x00 quote:\\" backslash:\\\\" <sip:x@example.com>',
        "tel:+15551234;tag=1",
        "<urn:service:sos>",
    ],
)
def test_address_round_trip(text: str) -> None:
    addr = parse_address(text)
    assert parse_address(str(addr)) == addr


def test_address_builders() -> None:
    addr = parse_address("<sip:bob@biloxi.example.com>;x=1")
    tagged = addr.with_tag("a6c85cf")
    assert tagged.tag == "a6c85cf" and tagged.param("x") == "1"
    assert tagged.with_tag("other").params == (("x", "1"), ("tag", "other"))
    assert (
        str(Address(SipUri("example.com", "x"), 'say "hi"')) == '"say \\"hi\\"" <sip:x@example.com>'
    )
    with pytest.raises(UriError):
        addr.with_tag("not a token")
