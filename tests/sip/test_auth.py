"""Digest authentication: RFC 2617 / RFC 7616 worked examples, httpx's independent digest
client as a peer, and the challenge → authorize → verify round trip over SIP messages."""

from __future__ import annotations

import httpx
import pytest

from activecall.sip.auth import (
    AuthError,
    DigestChallenge,
    DigestChallenger,
    DigestCredentials,
    answer_challenge,
    authorize,
    digest_response,
)
from activecall.sip.message import SipRequest, SipResponse, parse, response_to
from activecall.sip.uri import parse_uri
from tests.sip import rfc4475

# RFC 2617 §3.5 (password as in the RFC's errata-corrected example).
RFC2617_CHALLENGE = (
    'Digest realm="testrealm@host.com", qop="auth,auth-int", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)
RFC2617_AUTHORIZATION = (
    'Digest username="Mufasa", realm="testrealm@host.com", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, '
    'nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", '
    'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)

# RFC 7616 §3.9.1.
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


def rfc7616_challenge(algorithm: str) -> str:
    return (
        f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"'
    )


REGISTER = (
    b"REGISTER sip:registrar.biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP bobspc.biloxi.example.com:5060;branch=z9hG4bKnashds7;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Bob <sip:bob@biloxi.example.com>;tag=456248\r\n"
    b"Call-ID: 843817637684230@998sdasdh09\r\n"
    b"CSeq: 1826 REGISTER\r\n"
    b"Contact: <sip:bob@192.0.2.4>\r\n"
    b"Expires: 7200\r\n"
    b"Content-Length: 0\r\n\r\n"
)
PASSWORDS = {"bob": "zanzibar"}


def register() -> SipRequest:
    message = parse(REGISTER)
    assert isinstance(message, SipRequest)
    return message


def test_rfc2617_md5_example() -> None:
    challenge = DigestChallenge.parse(RFC2617_CHALLENGE)
    assert challenge.qop == ("auth", "auth-int") and challenge.algorithm == "MD5"
    assert challenge.opaque == "5ccc069c403ebaf9f0171e9517f40e41"
    credentials = answer_challenge(
        challenge,
        username="Mufasa",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce="0a4f113b",
    )
    assert credentials.response == "6629fae49393a05397450978507c4ef1"
    assert credentials == DigestCredentials.parse(RFC2617_AUTHORIZATION)


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_examples(algorithm: str, expected: str) -> None:
    challenge = DigestChallenge.parse(rfc7616_challenge(algorithm))
    credentials = answer_challenge(
        challenge,
        username="Mufasa",
        password="Circle of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce=RFC7616_CNONCE,
    )
    assert (credentials.response, credentials.nc, credentials.qop) == (expected, "00000001", "auth")
    assert credentials.opaque == RFC7616_OPAQUE and credentials.algorithm == algorithm
    assert DigestCredentials.parse(str(credentials)) == credentials


def _httpx_authorization(challenge: DigestChallenge, method: str, url: str) -> str:
    auth = httpx.DigestAuth("alice", "wonderland")
    flow = auth.sync_auth_flow(httpx.Request(method, url))
    first = next(flow)
    answer = httpx.Response(401, headers={"WWW-Authenticate": str(challenge)}, request=first)
    return flow.send(answer).headers["Authorization"]


@pytest.mark.parametrize(
    ("algorithm", "qop"),
    [
        ("MD5", "auth"),
        ("MD5-sess", "auth"),
        ("SHA-256", "auth"),
        ("SHA-256-sess", "auth"),
        ("MD5", None),
        ("SHA-256", None),
    ],
)
def test_httpx_digest_client_agrees_with_both_sides(algorithm: str, qop: str | None) -> None:
    challenger = DigestChallenger("sip.example.com", algorithms=(algorithm,), qop=qop)
    [challenge] = challenger.challenges(100.0)
    header = _httpx_authorization(challenge, "REGISTER", "http://sip.example.com/reg")
    credentials = DigestCredentials.parse(header)
    assert (credentials.algorithm, credentials.qop, credentials.uri) == (algorithm, qop, "/reg")
    # Our server accepts httpx's answer...
    result = challenger.check(credentials, method="REGISTER", password="wonderland", now=101.0)
    assert result.ok and result.username == "alice"
    wrong = challenger.check(credentials, method="REGISTER", password="wonderlanD", now=101.0)
    assert not wrong.ok and wrong.reason == "wrong response"
    # ...and our client side computes the same response from the same inputs.
    ours = digest_response(
        algorithm=algorithm,
        username="alice",
        realm="sip.example.com",
        password="wonderland",
        method="REGISTER",
        uri="/reg",
        nonce=challenge.nonce,
        qop=qop,
        nc=credentials.nc,
        cnonce=credentials.cnonce,
    )
    assert ours == credentials.response


def test_challenge_authorize_verify_round_trip() -> None:
    challenger = DigestChallenger("biloxi.example.com")
    request = register()
    challenge = challenger.challenge(request, 10.0)
    assert challenge.status == 401
    offers = [DigestChallenge.parse(v) for v in challenge.headers.get_all("www-authenticate")]
    assert [o.algorithm for o in offers] == ["SHA-256", "MD5"] and offers[0].qop == ("auth",)
    # Over the wire and back, as a UA would see it.
    wire = parse(challenge.serialize())
    assert isinstance(wire, SipResponse)
    retried = authorize(request, wire, username="bob", password="zanzibar")
    assert retried.cseq.seq == request.cseq.seq + 1
    assert retried.top_via.branch != request.top_via.branch
    assert retried.top_via.host == request.top_via.host and retried.top_via.wants_rport
    credentials = DigestCredentials.parse(retried.headers.get("authorization") or "")
    assert credentials.algorithm == "SHA-256"  # RFC 8760: the strongest offered
    assert credentials.uri == "sip:registrar.biloxi.example.com"
    received = parse(retried.serialize())
    assert isinstance(received, SipRequest)
    result = challenger.verify(received, PASSWORDS.get, 11.0)
    assert result.ok and result.username == "bob"


def test_verify_failures() -> None:
    challenger = DigestChallenger("biloxi.example.com", nonce_lifetime=300.0)
    request = register()
    challenge = challenger.challenge(request, 10.0)
    retried = authorize(request, challenge, username="bob", password="zanzibar")
    assert challenger.verify(retried, PASSWORDS.get, 11.0).ok
    # The same nonce count again is a replay.
    replayed = challenger.verify(retried, PASSWORDS.get, 12.0)
    assert not replayed.ok and replayed.reason == "nonce count replayed"
    wrong = authorize(request, challenge, username="bob", password="zanzibaR")
    assert challenger.verify(wrong, PASSWORDS.get, 11.0).reason == "wrong response"
    stranger = authorize(request, challenge, username="eve", password="x")
    assert challenger.verify(stranger, PASSWORDS.get, 11.0).reason == "unknown user"
    late = authorize(request, challenge, username="bob", password="zanzibar")
    stale = challenger.verify(late, PASSWORDS.get, 311.0)
    assert not stale.ok and stale.stale
    renewed = challenger.challenge(request, 311.0, stale=True).headers.get("www-authenticate")
    assert renewed is not None and DigestChallenge.parse(renewed).stale
    forged = authorize(
        request,
        DigestChallenger("biloxi.example.com").challenge(request, 10.0),
        username="bob",
        password="zanzibar",
    )
    assert challenger.verify(forged, PASSWORDS.get, 11.0).reason == "nonce not issued here"
    moved = authorize(request, challenge, username="bob", password="zanzibar")
    moved.uri = parse_uri("sip:other.biloxi.example.com")
    assert challenger.verify(moved, PASSWORDS.get, 11.0).reason == "uri does not match"
    elsewhere = DigestChallenger("atlanta.example.com")
    assert elsewhere.verify(retried, PASSWORDS.get, 11.0).reason == "no credentials for this realm"
    assert not challenger.verify(request, PASSWORDS.get, 11.0).ok


def test_unknown_scheme_is_not_accepted() -> None:
    # RFC 4475 §3.3.7: a registrar challenges a request with an unknown auth scheme.
    request = parse(rfc4475.REGAUT01)
    assert isinstance(request, SipRequest)
    challenger = DigestChallenger("example.com")
    result = challenger.verify(request, lambda _: "secret", 1.0)
    assert not result.ok
    assert challenger.challenge(request, 1.0).status == 401


def test_proxy_authentication_uses_407_and_proxy_headers() -> None:
    challenger = DigestChallenger("proxy.example.com", proxy=True, algorithms=("MD5",))
    request = register()
    challenge = challenger.challenge(request, 0.0)
    assert challenge.status == 407 and "proxy-authenticate" in challenge.headers
    retried = authorize(request, challenge, username="bob", password="zanzibar")
    assert "proxy-authorization" in retried.headers and "authorization" not in retried.headers
    assert challenger.verify(retried, PASSWORDS.get, 1.0).ok


def test_auth_int_covers_the_body() -> None:
    challenger = DigestChallenger("biloxi.example.com", qop="auth-int")
    request = register()
    request.body = b"v=0\r\n"
    retried = authorize(
        request, challenger.challenge(request, 0.0), username="bob", password="zanzibar"
    )
    assert DigestCredentials.parse(retried.headers.get("authorization") or "").qop == "auth-int"
    assert challenger.verify(retried, PASSWORDS.get, 1.0).ok
    retried.body = b"v=1\r\n"
    assert challenger.verify(retried, PASSWORDS.get, 1.0).reason == "wrong response"


def test_authorize_replaces_old_credentials_and_refuses_what_it_cannot_answer() -> None:
    challenger = DigestChallenger("biloxi.example.com", algorithms=("MD5",))
    request = register()
    first = authorize(request, challenger.challenge(request, 0.0), username="bob", password="z")
    second = authorize(first, challenger.challenge(first, 1.0), username="bob", password="zanzibar")
    assert len(second.headers.get_all("authorization")) == 1
    assert second.cseq.seq == request.cseq.seq + 2
    ok = response_to(request, 200)
    with pytest.raises(AuthError):
        authorize(request, ok, username="bob", password="x")
    only_unsupported = response_to(
        request,
        401,
        headers=[
            ("WWW-Authenticate", 'Basic realm="x"'),
            ("WWW-Authenticate", 'Digest realm="x", nonce="n", algorithm=SHA-512-256'),
            ("WWW-Authenticate", 'Digest realm="x", nonce="n", qop="auth-conf"'),
        ],
    )
    with pytest.raises(AuthError):
        authorize(request, only_unsupported, username="bob", password="x")


def test_proxy_credentials_survive_a_later_401() -> None:
    # RFC 3261 §22.3: after a 407 from a proxy and a 401 from the UAS, both are sent.
    proxy = DigestChallenger("proxy.example.com", proxy=True)
    uas = DigestChallenger("biloxi.example.com")
    request = register()
    first = authorize(request, proxy.challenge(request, 0.0), username="bob", password="zanzibar")
    second = authorize(first, uas.challenge(first, 1.0), username="bob", password="zanzibar")
    assert len(second.headers.get_all("proxy-authorization")) == 1
    assert len(second.headers.get_all("authorization")) == 1
    assert proxy.verify(second, PASSWORDS.get, 2.0).ok and uas.verify(second, PASSWORDS.get, 2.0).ok


def test_two_realms_get_two_credentials() -> None:
    request = register()
    a, b = DigestChallenger("a.example.com"), DigestChallenger("b.example.com")
    both = response_to(
        request,
        401,
        headers=[("WWW-Authenticate", str(c)) for c in (*a.challenges(0.0), *b.challenges(0.0))],
    )
    retried = authorize(request, both, username="bob", password="zanzibar")
    assert len(retried.headers.get_all("authorization")) == 2
    assert a.verify(retried, PASSWORDS.get, 1.0).ok and b.verify(retried, PASSWORDS.get, 1.0).ok


@pytest.mark.parametrize(
    "value",
    [
        'Basic realm="x"',
        'Digest username="u", realm="r", nonce="n", uri="/"',  # no response
        'Digest username="u", realm="r", nonce="n", uri="/", response="x", qop=auth',  # no nc
        'Digest username="u realm="r"',
        "Digest username=",
        "Digest ,,,",
        "",
    ],
)
def test_malformed_credentials_are_refused(value: str) -> None:
    with pytest.raises(AuthError):
        DigestCredentials.parse(value)


@pytest.mark.parametrize("value", ['Digest realm="r"', 'Digest nonce="n"', "Digest", 'NTLM x="y"'])
def test_malformed_challenges_are_refused(value: str) -> None:
    with pytest.raises(AuthError):
        DigestChallenge.parse(value)


def test_digest_response_refuses_what_it_cannot_compute() -> None:
    base = dict(username="u", realm="r", password="p", method="M", uri="/", nonce="n")
    with pytest.raises(AuthError):
        digest_response(algorithm="SHA-512-256", **base)
    with pytest.raises(AuthError):
        digest_response(algorithm="MD5", qop="auth", nc="00000001", **base)  # no cnonce
    with pytest.raises(AuthError):
        digest_response(algorithm="MD5", qop="auth-conf", nc="00000001", cnonce="c", **base)
    with pytest.raises(ValueError):
        DigestChallenger("r", algorithms=("SHA-1",))


def test_check_refuses_what_was_not_offered() -> None:
    challenger = DigestChallenger("r", algorithms=("SHA-256",), qop="auth")
    [challenge] = challenger.challenges(0.0)
    md5 = answer_challenge(
        DigestChallenge("r", challenge.nonce, "MD5", ("auth",)),
        username="u",
        password="p",
        method="OPTIONS",
        uri="sip:r",
    )
    assert challenger.check(md5, method="OPTIONS", password="p", now=1.0).reason == (
        "algorithm not offered"
    )
    no_qop = answer_challenge(
        DigestChallenge("r", challenge.nonce, "SHA-256"),
        username="u",
        password="p",
        method="OPTIONS",
        uri="sip:r",
    )
    assert no_qop.qop is None and no_qop.cnonce is None
    assert challenger.check(no_qop, method="OPTIONS", password="p", now=1.0).reason == (
        "qop not offered"
    )
    good = answer_challenge(challenge, username="u", password="p", method="OPTIONS", uri="sip:r")
    bad_nc = DigestCredentials(**{**_fields(good), "nc": "1"})
    assert challenger.check(bad_nc, method="OPTIONS", password="p", now=1.0).reason == (
        "bad nonce count"
    )


def _fields(credentials: DigestCredentials) -> dict[str, str | None]:
    return {name: getattr(credentials, name) for name in DigestCredentials.__slots__}


def test_replay_table_is_bounded() -> None:
    challenger = DigestChallenger("r", max_tracked_nonces=2)
    creds = []
    for now in (0.0, 1.0, 2.0):
        [challenge, _] = challenger.challenges(now)
        creds.append(
            answer_challenge(challenge, username="u", password="p", method="OPTIONS", uri="sip:r")
        )
    for c in creds:
        assert challenger.check(c, method="OPTIONS", password="p", now=3.0).ok
    # The oldest nonce was forgotten, so its count is accepted again; the newest is not.
    assert challenger.check(creds[0], method="OPTIONS", password="p", now=3.0).ok
    assert not challenger.check(creds[2], method="OPTIONS", password="p", now=3.0).ok
