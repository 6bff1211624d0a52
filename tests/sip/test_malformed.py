"""The malformed-message corpus: each message is parsed or rejected with 400/413/505, never
anything else, and rejections that can be answered give a response that serialises."""

from __future__ import annotations

import contextlib
import random
import re
from collections import Counter

import pytest

from activecall.sip import GrammarError
from activecall.sip.headers import parse_cseq, parse_vias
from activecall.sip.message import (
    KeepAlive,
    SipParseError,
    SipRequest,
    SipResponse,
    SipStreamParser,
    parse,
)
from activecall.sip.uri import parse_address
from tests.sip import malformed

CORPUS = malformed.corpus()
VALID = malformed.INVITE


def test_corpus_is_large_deterministic_and_covers_every_kind() -> None:
    assert len(CORPUS) >= 5000
    assert malformed.corpus() == CORPUS
    assert malformed.corpus(seed=1) != CORPUS
    kinds = Counter(kind for kind, _ in CORPUS)
    for kind in (
        "truncated",
        "bad start line",
        "bad version",
        "missing header",
        "cseq",
        "content-length",
        "binary noise",
        "huge header",
        "many headers",
        "bad uri",
        "nul",
        "invalid utf-8",
    ):
        assert kinds[kind] > 0, kind


def test_every_message_is_parsed_or_rejected_cleanly() -> None:
    outcomes: Counter[object] = Counter()
    for kind, data in CORPUS:
        try:
            message = parse(data)
        except SipParseError as error:
            assert error.status in (400, 413, 505), (kind, data[:80])
            outcomes[error.status] += 1
            _check_answer(error, kind, data)
            continue
        outcomes["parsed"] += 1
        # Whatever is accepted serialises into something accepted again, unchanged.
        wire = message.serialize()
        assert parse(wire).serialize() == wire, (kind, data[:80])
    assert outcomes[400] > 4000 and outcomes[413] > 0 and outcomes[505] > 0
    assert outcomes["parsed"] > 0


def _check_answer(error: SipParseError, kind: str, data: bytes) -> None:
    response = error.response()
    if response is None:
        return
    assert error.is_request, (kind, data[:80])
    assert response.serialize().startswith(b"SIP/2.0 %d " % error.status)


def test_answers_are_built_when_via_from_to_call_id_and_cseq_are_readable() -> None:
    answered = 0
    for _, data in CORPUS:
        try:
            parse(data)
            continue
        except SipParseError as caught:
            error = caught
        if not error.is_request or error.method == "ACK":
            assert error.response() is None  # responses and ACKs are never answered
            continue
        if not _readable(error):
            continue
        response = error.response()
        assert response is not None
        back = parse(response.serialize())
        assert isinstance(back, SipResponse) and back.status == error.status
        assert (back.call_id, back.headers.get("cseq")) == (error.call_id, error.cseq)
        assert back.headers.get_all("via") == list(error.via)
        answered += 1
    assert answered > 100


# RFC 3261 §25.1: callid = word [ "@" word ].
_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
_CALL_ID = re.compile(f"{_WORD}(?:@{_WORD})?")


def _readable(error: SipParseError) -> bool:
    if not (error.via and error.from_ and error.to and error.call_id and error.cseq):
        return False
    try:
        for line in error.via:
            parse_vias(line)
        parse_address(error.from_)
        parse_address(error.to)
        parse_cseq(error.cseq)
    except GrammarError:
        return False
    return _CALL_ID.fullmatch(error.call_id) is not None


def test_the_stream_parser_survives_the_corpus_and_keeps_serving() -> None:
    rng = random.Random(malformed.SEED)
    for kind, data in CORPUS[::3]:
        parser = SipStreamParser()
        stream = data + b"\r\n" + VALID
        items: list[object] = []
        pos = 0
        while pos < len(stream):
            step = rng.randint(1, 700)
            items += parser.feed(stream[pos : pos + step])
            pos += step
        for item in items:
            assert isinstance(item, SipRequest | SipResponse | SipParseError | KeepAlive), kind
            if isinstance(item, SipParseError):
                assert item.status in (400, 413, 505)
        # The valid message came through, or the broken bytes were reported (possibly merged
        # with it into one bad message, or cutting the connection), or they declared a body
        # long enough to swallow what followed (RFC 4475 §3.1.2.2).
        served = any(isinstance(i, SipRequest) and i.call_id == _VALID_CALL_ID for i in items)
        reported = any(isinstance(i, SipParseError) for i in items)
        assert served or reported or parser.closed or parser.buffered > 0, (kind, data[:80])


_VALID_CALL_ID = "3848276298220188511@atlanta.example.com"


def test_datagrams_keep_being_served_between_broken_ones() -> None:
    for _, data in CORPUS[::50]:
        with contextlib.suppress(SipParseError):
            parse(data)
        assert isinstance(parse(VALID), SipRequest)


SHAPES = {
    "letters": b"a" * 1_000_000,
    "crlf": b"\r\n" * 500_000,
    "one header value": b"INVITE sip:a@b SIP/2.0\r\nX: " + b"v" * 1_000_000 + b"\r\n\r\n",
    "semicolons in Via": b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h"
    + b";" * 1_000_000
    + b"\r\n\r\n",
    "commas in Route": b"INVITE sip:a@b SIP/2.0\r\nRoute: " + b"," * 1_000_000 + b"\r\n\r\n",
    "quotes in To": b"INVITE sip:a@b SIP/2.0\r\nTo: " + b'"\\' * 500_000 + b"\r\n\r\n",
    "angles in Contact": b"INVITE sip:a@b SIP/2.0\r\nContact: " + b"<" * 1_000_000 + b"\r\n\r\n",
    "long URI": b"INVITE sip:" + b"u" * 1_000_000 + b"@b SIP/2.0\r\n\r\n",
    "many lines": b"INVITE sip:a@b SIP/2.0\r\n" + b"X: 1\r\n" * 160_000 + b"\r\n",
    "folds": b"INVITE sip:a@b SIP/2.0\r\nX: 1" + b"\r\n 1" * 300_000 + b"\r\n\r\n",
    "digits": b"INVITE sip:a@b SIP/2.0\r\nCSeq: " + b"9" * 1_000_000 + b" INVITE\r\n\r\n",
    "body": malformed.INVITE.replace(b"Content-Length: ", b"X-Old: ") + b"x" * 1_000_000,
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_one_megabyte_inputs(shape: str) -> None:
    data = SHAPES[shape]
    assert len(data) >= 900_000
    # With the default limits: refused as too large (or malformed) without looking further.
    with pytest.raises(SipParseError) as caught:
        parse(data)
    assert caught.value.status in (400, 413)
    # With the limits lifted the whole megabyte is parsed; a quadratic step would hang here.
    try:
        parse(data, max_header_bytes=2_000_000, max_body_bytes=2_000_000)
    except SipParseError as error:
        assert error.status in (400, 413)
    parser = SipStreamParser()
    items = [item for i in range(0, len(data), 65536) for item in parser.feed(data[i : i + 65536])]
    assert all(isinstance(i, SipParseError | KeepAlive) for i in items)
    assert parser.buffered <= 32 * 1024 + 65536
