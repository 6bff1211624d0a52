"""A deterministic corpus of broken SIP messages (seeded; no files, no network).

Kinds: every prefix of valid messages, bad start lines and versions, missing mandatory headers,
CSeq faults, absurd Content-Length values, bad URIs, header-line syntax faults, broken Via
values, binary noise, NUL bytes and invalid UTF-8 spliced into valid messages, random byte
edits, and huge or numerous headers. ``corpus()`` returns ``(kind, bytes)`` pairs.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

SEED = 4475

SDP = (
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\ns=-\r\n"
    b"c=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
)


def _msg(start: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [start, *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


INVITE_HEADERS = [
    ("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK74bf9;rport"),
    ("Max-Forwards", "70"),
    ("From", '"Alice" <sip:alice@atlanta.example.com>;tag=9fxced76sl'),
    ("To", "<sip:bob@biloxi.example.com>"),
    ("Call-ID", "3848276298220188511@atlanta.example.com"),
    ("CSeq", "1 INVITE"),
    ("Contact", "<sip:alice@192.0.2.10:5060;transport=udp>"),
    ("Record-Route", "<sip:p1.example.com;lr>, <sip:p2.example.com;lr>"),
    ("Content-Type", "application/sdp"),
    ("Content-Length", str(len(SDP))),
]
INVITE = _msg("INVITE sip:bob@biloxi.example.com SIP/2.0", INVITE_HEADERS, SDP)
REGISTER = _msg(
    "REGISTER sip:registrar.biloxi.example.com SIP/2.0",
    [
        ("Via", "SIP/2.0/TCP bobspc.biloxi.example.com:5060;branch=z9hG4bKnashds7"),
        ("Max-Forwards", "70"),
        ("To", "Bob <sip:bob@biloxi.example.com>"),
        ("From", "Bob <sip:bob@biloxi.example.com>;tag=456248"),
        ("Call-ID", "843817637684230@998sdasdh09"),
        ("CSeq", "1826 REGISTER"),
        ("Contact", "<sip:bob@192.0.2.4>;expires=7200"),
        (
            "Authorization",
            'Digest username="bob", realm="biloxi.example.com", nonce="abc", '
            'uri="sip:registrar.biloxi.example.com", response="0123456789abcdef"',
        ),
        ("Content-Length", "0"),
    ],
)
COMPACT_BYE = _msg(
    "BYE sip:alice@192.0.2.10 SIP/2.0",
    [
        ("v", "SIP/2.0/UDP 192.0.2.4;branch=z9hG4bKnashds8"),
        ("f", "<sip:bob@biloxi.example.com>;tag=8321234356"),
        ("t", "<sip:alice@atlanta.example.com>;tag=9fxced76sl"),
        ("i", "3848276298220188511@atlanta.example.com"),
        ("CSeq", "2 BYE"),
        ("Max-Forwards", "70"),
        ("l", "0"),
    ],
)
OK_200 = _msg(
    "SIP/2.0 200 OK",
    [
        ("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK74bf9;received=192.0.2.10;rport=5060"),
        ("From", '"Alice" <sip:alice@atlanta.example.com>;tag=9fxced76sl'),
        ("To", "<sip:bob@biloxi.example.com>;tag=8321234356"),
        ("Call-ID", "3848276298220188511@atlanta.example.com"),
        ("CSeq", "1 INVITE"),
        ("Contact", "<sip:bob@192.0.2.4>"),
        ("Content-Type", "application/sdp"),
        ("Content-Length", str(len(SDP))),
    ],
    SDP,
)
RINGING = _msg(
    "SIP/2.0 180 Ringing",
    [
        ("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK74bf9"),
        ("From", "<sip:alice@atlanta.example.com>;tag=9fxced76sl"),
        ("To", "<sip:bob@biloxi.example.com>;tag=8321234356"),
        ("Call-ID", "3848276298220188511@atlanta.example.com"),
        ("CSeq", "1 INVITE"),
        ("Content-Length", "0"),
    ],
)
BASES = [INVITE, REGISTER, COMPACT_BYE, OK_200, RINGING]
"""Valid messages the faults are made from."""


def _replace_header(base_headers: list[tuple[str, str]], name: str, value: str | None) -> bytes:
    headers = [(n, value if n == name else v) for n, v in base_headers if n != name or value]
    return _msg("INVITE sip:bob@biloxi.example.com SIP/2.0", headers, SDP)


def truncated() -> Iterator[tuple[str, bytes]]:
    """Every proper prefix of every base message."""
    for base in BASES:
        for cut in range(len(base)):
            yield "truncated", base[:cut]


def bad_start_lines() -> Iterator[tuple[str, bytes]]:
    """Request and status lines that break the grammar."""
    rest = INVITE[INVITE.index(b"\r\n") :]
    lines = [
        "",
        " ",
        "INVITE",
        "INVITE sip:bob@biloxi.example.com",
        "INVITE  sip:bob@biloxi.example.com SIP/2.0",
        "INVITE sip:bob@biloxi.example.com  SIP/2.0",
        "INVITE sip:bob@biloxi.example.com SIP/2.0 ",
        " INVITE sip:bob@biloxi.example.com SIP/2.0",
        "INVITE\tsip:bob@biloxi.example.com\tSIP/2.0",
        "INVITE sip:bob@biloxi.example.com SIP/2.0 extra",
        "INV ITE sip:bob@biloxi.example.com SIP/2.0",
        "INVITE: sip:bob@biloxi.example.com SIP/2.0",
        'INV"ITE sip:bob@biloxi.example.com SIP/2.0',
        "invite sip:bob@biloxi.example.com SIP/2.0",
        "INVITE <sip:bob@biloxi.example.com> SIP/2.0",
        "INVITE sip:bob@biloxi.example.com;lr; SIP/2.0",
        "INVITE sip:bob@biloxi.example.com?Subject=x SIP/2.0",
        "GET / HTTP/1.1",
        "SIP/2.0",
        "SIP/2.0 ",
        "SIP/2.0 200",
        "SIP/2.0 2000 OK",
        "SIP/2.0 20 OK",
        "SIP/2.0 099 Odd",
        "SIP/2.0 700 Too high",
        "SIP/2.0 4294967301 big",
        "SIP/2.0 -200 OK",
        "SIP/2.0 2OO OK",
        "SIP/2.0 200 O\x01K",
        "SIP/2.0  200 OK",
        "SIP/2.0 200  OK",
        "SIP/2.0\t200 OK",
        "\t",
        "\x00\x00\x00\x00",
        "SIP/",
        "sip:bob@biloxi.example.com",
    ]
    for line in lines:
        yield "bad start line", line.encode() + rest
    for response_rest in (OK_200[OK_200.index(b"\r\n") :], RINGING[RINGING.index(b"\r\n") :]):
        for line in lines[18:]:
            yield "bad start line", line.encode() + response_rest


def bad_versions() -> Iterator[tuple[str, bytes]]:
    """SIP versions that are wrong (505) or not versions at all (400)."""
    rest = INVITE[INVITE.index(b"\r\n") :]
    response_rest = OK_200[OK_200.index(b"\r\n") :]
    versions = [
        "SIP/3.0",
        "SIP/1.0",
        "SIP/2.1",
        "SIP/7.0",
        "SIP/20.0",
        "SIP/02.00",
        "SIP/2",
        "SIP/2.",
        "SIP/.0",
        "SIP2.0",
        "SIP/2.O",
        "SIP/a.b",
        "HTTP/1.1",
        "SIP/",
        "SIPS/2.0",
        "SIP/2.0.0",
        "SIP/" + "9" * 5000 + ".0",
        "SIP/2." + "0" * 5000,
        "SIP/-2.0",
        "SIP/2.0\x00",
    ]
    for version in versions:
        yield (
            "bad version",
            f"OPTIONS sip:bob@biloxi.example.com {version}".encode()
            + rest.replace(b"1 INVITE", b"1 OPTIONS"),
        )
        yield "bad version", f"{version} 200 OK".encode() + response_rest


def missing_headers() -> Iterator[tuple[str, bytes]]:
    """Each mandatory header dropped, and every pair of them."""
    names = ["Via", "From", "To", "Call-ID", "CSeq"]
    for name in names:
        yield "missing header", _replace_header(INVITE_HEADERS, name, None)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            kept = [(n, v) for n, v in INVITE_HEADERS if n not in (a, b)]
            yield "missing header", _msg("INVITE sip:bob@biloxi.example.com SIP/2.0", kept, SDP)
    for name in names:
        doubled = [*INVITE_HEADERS[:3], (name, dict(INVITE_HEADERS)[name]), *INVITE_HEADERS[3:]]
        if name != "Via":
            yield (
                "duplicated header",
                _msg("INVITE sip:bob@biloxi.example.com SIP/2.0", doubled, SDP),
            )
        yield "empty header", _replace_header(INVITE_HEADERS, name, " ")


def cseq_faults() -> Iterator[tuple[str, bytes]]:
    """CSeq values that are malformed or do not match the method."""
    values = [
        "1 BYE",
        "1 invite",
        "INVITE",
        "1",
        "1INVITE",
        "-1 INVITE",
        "1.5 INVITE",
        "x INVITE",
        "4294967296 INVITE",
        "36893488147419103232 INVITE",
        "9" * 5000 + " INVITE",
        "1 INVITE extra",
        "1 INV ITE",
        "1 INVITE;x",
        "0x10 INVITE",
        '1 "INVITE"',
        "",
        "1 INVITE\x00",
        "1 \u00e9",
    ]
    for value in values:
        yield "cseq", _replace_header(INVITE_HEADERS, "CSeq", value)


def content_length_faults() -> Iterator[tuple[str, bytes]]:
    """Absurd, negative, non-numeric, too-large and repeated Content-Length values."""
    values = [
        "-1",
        "-999",
        "five",
        "1.5",
        "0x10",
        "1 0",
        "+5",
        "",
        " ",
        "999999999999999999999999",
        "9" * 5000,
        str(len(SDP) + 1),
        str(len(SDP) + 10000),
        "4294967296",
        "1e3",
        str(len(SDP)) + ";x",
        "\u0665",
    ]
    for value in values:
        yield "content-length", _replace_header(INVITE_HEADERS, "Content-Length", value)
        yield (
            "content-length",
            _msg(
                "SIP/2.0 200 OK",
                [(n, value if n == "Content-Length" else v) for n, v in INVITE_HEADERS],
                SDP,
            ),
        )
    twice = [*INVITE_HEADERS, ("Content-Length", "5")]
    yield "content-length", _msg("INVITE sip:bob@biloxi.example.com SIP/2.0", twice, SDP)
    yield "content-length", INVITE.replace(b"Content-Length", b"l", 1) + b"extra"


def bad_uris() -> Iterator[tuple[str, bytes]]:
    """Malformed URIs in the Request-URI and in the address headers."""
    uris = [
        "sip:",
        "sip:@biloxi.example.com",
        "sip:bob@",
        "sip:bob@biloxi.example.com:99999",
        "sip:bob@biloxi.example.com:port",
        "sip:bob@[2001:db8::1",
        "sip:bob@[zz::1]",
        "sip:bob@bi loxi.example.com",
        "sip:%zz@biloxi.example.com",
        "sip:bob@-bad-.com",
        "sip:bob@biloxi.example.com;=x",
        "sip:bob@biloxi.example.com;a b",
        "sip:bob@biloxi.example.com?=v",
        "sip:bob@biloxi.example.com?h",
        ":bob@biloxi",
        "1sip:bob@biloxi.example.com",
        "sip:bob@2001:db8::10",
        "tel:",
        "tel:abc;x=y z",
        "sip:bob:pa ss@biloxi.example.com",
        "sip:bob@biloxi.example.com:",
        "http:",
        "sip:bob@biloxi.example.com;x=%G1",
        'sip:b"ob@biloxi.example.com',
        "sip:<bob>@x",
    ]
    for uri in uris:
        rest = INVITE[INVITE.index(b"\r\n") :]
        yield "bad uri", f"INVITE {uri} SIP/2.0".encode() + rest
        for name in ("To", "From", "Contact", "Record-Route"):
            yield "bad uri", _replace_header(INVITE_HEADERS, name, f"<{uri}>")
    for value in (
        '"unterminated <sip:bob@biloxi.example.com>',
        "Bob, Smith <sip:bob@biloxi.example.com>",
        "< sip:bob@biloxi.example.com >",
        "<sip:bob@biloxi.example.com",
        "sip:bob@biloxi.example.com>",
        "<sip:bob@biloxi.example.com>;;;",
        "<sip:bob@biloxi.example.com>;tag",
        '<sip:bob@biloxi.example.com>;tag="a',
        "<sip:bob@biloxi.example.com>;tag=a b",
        "<sip:bob@biloxi.example.com> junk",
        "sip:bob@biloxi.example.com?Route=x",
        '"Bob" sip:bob@biloxi.example.com',
        "<>",
        "",
    ):
        for name in ("To", "From", "Contact", "Record-Route"):
            yield "bad address", _replace_header(INVITE_HEADERS, name, value)


def header_syntax() -> Iterator[tuple[str, bytes]]:
    """Header lines without a colon, with bad names, stray continuations, bare CRs."""
    head, _, body = INVITE.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    faults = [
        b"NoColonHere",
        b": no name",
        b"Bad Name: x",
        b'Bad"Name: x',
        b"B\x00d: x",
        b"Name\x7f: x",
        b"\xff\xfe: x",
        b"X-Test: a\rb",
        b"X-Test: a\x1bb",
        b"X-Test: a\x00b",
        b" continuation-at-start",
        b"\tcontinuation",
        b'X-Test: "unterminated',
        b":",
        b"X-Test:\x0c",
        b"X-T\xc3\xa9st: x",
    ]
    for fault in faults:
        yield "header syntax", b"\r\n".join([lines[0], fault, *lines[1:]]) + b"\r\n\r\n" + body
        yield "header syntax", b"\r\n".join([*lines, fault]) + b"\r\n\r\n" + body
    yield "header syntax", b"\r\n".join([lines[0], b" folded start", *lines[1:]]) + b"\r\n\r\n"
    yield "header syntax", head.replace(b"\r\n", b"\r") + b"\r\r" + body
    yield "header syntax", head.replace(b"\r\n", b"\n") + b"\n\n" + body
    yield "header syntax", head + b"\r\n\r\n" + body + b"\r\n\r\nINVITE sip:x SIP/2.0"


def via_faults() -> Iterator[tuple[str, bytes]]:
    """Via values that break the grammar."""
    values = [
        "SIP/2.0/UDP",
        "SIP/2.0 UDP 192.0.2.10",
        "SIP/UDP 192.0.2.10",
        "SIP/2.0/UDP :5060",
        "SIP/2.0/UDP 192.0.2.10:99999",
        "SIP/2.0/UDP 192.0.2.10;;",
        "SIP/2.0/UDP 192.0.2.10;,",
        "SIP/2.0/UDP 192.0.2.10;branch",
        "SIP/2.0/UDP 192.0.2.10;branch=",
        "SIP/2.0/UDP host,",
        "SIP/2.0/UDP 192.0.2.10;rport=abc",
        "SIP/2.0/UDP 192.0.2.10;rport=" + "9" * 5000,
        'SIP/2.0/UDP 192.0.2.10;received="x',
        "SIP/2.0/U DP 192.0.2.10",
        "/2.0/UDP x",
        "SIP/2.0/UDP [2001:db8::1",
        "SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK a",
        ",",
        "SIP/2.0/UDP 192.0.2.10, ",
        "SIP/2.0/UDP 192.0.2.10 junk",
    ]
    for value in values:
        yield "via", _replace_header(INVITE_HEADERS, "Via", value)


def binary_noise(rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    """Random bytes of random length; some start like a SIP message."""
    for i in range(count):
        noise = rng.randbytes(rng.randint(0, 2048))
        prefix = (b"", b"INVITE ", b"SIP/2.0 ", b"INVITE sip:a@b SIP/2.0\r\n")[i % 4]
        yield "binary noise", prefix + noise


def _splice(rng: random.Random, base: bytes, insert: bytes) -> bytes:
    at = rng.randrange(len(base) + 1)
    return base[:at] + insert + base[at:]


def nul_bytes(rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    """NUL bytes inserted into, or overwriting bytes of, valid messages."""
    for i in range(count):
        base = BASES[i % len(BASES)]
        if i % 2:
            yield "nul", _splice(rng, base, b"\x00" * rng.randint(1, 4))
        else:
            at = rng.randrange(len(base))
            yield "nul", base[:at] + b"\x00" + base[at + 1 :]


INVALID_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"\xc3",
    b"\xc0\x80",
    b"\xe0\x80\x80",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\x80",
    b"\xbf\xbf",
    b"\xf8\x88\x80\x80\x80",
]


def invalid_utf8(rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    """Invalid UTF-8 sequences spliced into valid messages."""
    for i in range(count):
        yield "invalid utf-8", _splice(rng, BASES[i % len(BASES)], rng.choice(INVALID_UTF8))


def mutations(rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    """Random edits of valid messages: byte flips, deletions, duplications, separators."""
    specials = [
        b":",
        b";",
        b",",
        b"<",
        b">",
        b'"',
        b"\\",
        b"\r\n",
        b"\r\n ",
        b" ",
        b"@",
        b"%",
        b"=",
    ]
    for i in range(count):
        data = bytearray(BASES[i % len(BASES)])
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(4)
            at = rng.randrange(len(data))
            if op == 0:
                data[at] = rng.randrange(256)
            elif op == 1:
                del data[at : at + rng.randint(1, 8)]
            elif op == 2:
                data[at:at] = rng.choice(specials)
            else:
                end = min(len(data), at + rng.randint(1, 16))
                data[at:at] = data[at:end]
            if not data:
                break
        yield "mutation", bytes(data)


def huge() -> Iterator[tuple[str, bytes]]:
    """Huge header values, very many headers, long start lines, huge bodies."""
    head, _, body = INVITE.partition(b"\r\n\r\n")
    for size in (40_000, 100_000):
        yield "huge header", head + b"\r\nX-Big: " + b"a" * size + b"\r\n\r\n" + body
        yield (
            "huge start line",
            b"INVITE sip:"
            + b"b" * size
            + b"@x SIP/2.0"
            + head[head.index(b"\r\n") :]
            + b"\r\n\r\n"
            + body,
        )
    for count in (300, 5000):
        many = b"".join(b"\r\nX-H%d: v" % n for n in range(count))
        yield "many headers", head + many + b"\r\n\r\n" + body
    yield (
        "many vias",
        head
        + b"\r\nVia: "
        + b", ".join([b"SIP/2.0/UDP h%d" % n for n in range(3000)])
        + b"\r\n\r\n"
        + body,
    )
    big_body = b"x" * 100_000
    yield (
        "huge body",
        INVITE.replace(
            b"Content-Length: %d" % len(SDP), b"Content-Length: %d" % len(big_body)
        ).replace(SDP, big_body),
    )
    yield (
        "huge body",
        INVITE.replace(SDP, big_body).replace(b"Content-Length: %d\r\n" % len(SDP), b""),
    )
    yield "no end", head + b"\r\nX-Pad: " + b"p" * 50_000


def corpus(seed: int = SEED) -> list[tuple[str, bytes]]:
    """The whole corpus, in a fixed order for a given seed."""
    rng = random.Random(seed)
    items: list[tuple[str, bytes]] = []
    items += truncated()
    items += bad_start_lines()
    items += bad_versions()
    items += missing_headers()
    items += cseq_faults()
    items += content_length_faults()
    items += bad_uris()
    items += header_syntax()
    items += via_faults()
    items += binary_noise(rng, 500)
    items += nul_bytes(rng, 500)
    items += invalid_utf8(rng, 500)
    items += mutations(rng, 1200)
    items += huge()
    return items
