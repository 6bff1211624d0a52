"""SIP messages (RFC 3261 §7): parse bytes into requests and responses, serialise them back.

:func:`parse` reads one datagram; :class:`SipStreamParser` frames a TCP/TLS byte stream by
Content-Length. Both reject malformed input with :class:`SipParseError`, which carries the
status to answer (400, 413, 505) and the Via/From/To/Call-ID/CSeq values it could read, so the
transport can answer a request it could not accept and drop a response it could not read.

Header values are kept as received (folded lines joined with one space) in a :class:`Headers`
list that preserves order and repetition; lookups are case-insensitive and understand the
compact forms. Header text is decoded as UTF-8 with surrogate escapes, so any byte sequence
survives a parse/serialise round trip.

What :func:`parse` checks: the start line, header syntax, the mandatory headers (Via, From,
To, Call-ID, CSeq; Max-Forwards is not required, for RFC 2543 peers), that single-valued
headers appear once, that the CSeq method matches the request method, every Via,
Contact, Route and Record-Route value, and Content-Length against the bytes that arrived.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from activecall.sip._grammar import GrammarError, check_controls, is_token, split_unquoted
from activecall.sip.headers import CSeq, Via, new_tag, parse_cseq, parse_via
from activecall.sip.uri import Address, SipUri, Uri, parse_address, parse_uri

__all__ = [
    "COMPACT_FORMS",
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_HEADER_FIELDS",
    "REASON_PHRASES",
    "Headers",
    "KeepAlive",
    "SipMessage",
    "SipParseError",
    "SipRequest",
    "SipResponse",
    "SipStreamParser",
    "canonical_name",
    "parse",
    "response_to",
]

MAX_HEADER_BYTES = 32 * 1024
"""Largest start line plus header section accepted (413 beyond)."""
MAX_BODY_BYTES = 64 * 1024
"""Largest body accepted (413 beyond); a UDP datagram cannot carry more anyway."""
MAX_HEADER_FIELDS = 256
"""Most header field lines accepted in one message (413 beyond)."""

COMPACT_FORMS = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}
"""Compact header names (RFC 3261 §7.3.3 and extensions) and the long names they stand for."""

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1); others (Date,
# WWW-Authenticate...) contain commas that do not separate values.
_LIST_HEADERS = frozenset(
    (
        "accept",
        "accept-contact",
        "accept-encoding",
        "accept-language",
        "alert-info",
        "allow",
        "allow-events",
        "call-info",
        "contact",
        "content-encoding",
        "content-language",
        "error-info",
        "in-reply-to",
        "p-asserted-identity",
        "path",
        "proxy-require",
        "reason",
        "record-route",
        "reject-contact",
        "require",
        "route",
        "service-route",
        "supported",
        "unsupported",
        "via",
        "warning",
    )
)
_SINGLE_HEADERS = (
    "call-id",
    "content-length",
    "content-type",
    "cseq",
    "from",
    "max-forwards",
    "to",
)
_ADDRESS_LIST_HEADERS = ("contact", "route", "record-route")
_DIALOG_CREATING = frozenset(("INVITE", "SUBSCRIBE", "REFER"))

REASON_PHRASES = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}
"""Default reason phrases (RFC 3261 §21)."""

_WS = " \t"
_VERSION = re.compile(r"SIP/([0-9]+)\.([0-9]+)", re.IGNORECASE)
_REQUEST_LINE = re.compile(r"([^ ]+) ([^ ]+) ([^ ]+)")
_STATUS_LINE = re.compile(r"([^ ]+) ([0-9]{3})(?: (.*))?", re.DOTALL)
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CALL_ID = re.compile(
    r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+(?:@[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+)?"
)
_DIGITS = re.compile(r"[0-9]+")
_CSEQ_LOOSE = re.compile(r"[0-9]+[ \t]+[A-Za-z0-9\-.!%*_+`'~]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NAME_CACHE: dict[str, str] = {}


def canonical_name(name: str) -> str:
    """The lower-case long form of a header name (compact forms expanded)."""
    canon = _NAME_CACHE.get(name)
    if canon is None:
        lower = name.lower()
        canon = COMPACT_FORMS.get(lower, lower)
        if len(_NAME_CACHE) < 4096:  # bounded: names come from the network
            _NAME_CACHE[name] = canon
    return canon


class Headers:
    """Header fields in order, repeated names kept; lookups ignore case and compact forms."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = list(items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        canon = canonical_name(name)
        return any(canonical_name(n) == canon for n, _ in self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def get(self, name: str) -> str | None:
        """The value of the first field called ``name``, or ``None``."""
        canon = canonical_name(name)
        for n, v in self._items:
            if canonical_name(n) == canon:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        """The value of every field line called ``name``, in order."""
        canon = canonical_name(name)
        return [v for n, v in self._items if canonical_name(n) == canon]

    def values(self, name: str) -> list[str]:
        """Every value of ``name``: field lines of list headers split on unquoted commas."""
        lines = self.get_all(name)
        if canonical_name(name) not in _LIST_HEADERS:
            return lines
        return [v.strip(_WS) for line in lines for v in split_unquoted(line, ",")]

    def add(self, name: str, value: str) -> None:
        """Append a field."""
        self._items.append((name, value))

    def prepend(self, name: str, value: str) -> None:
        """Insert a field before all others (a proxy's or UAC's new top Via)."""
        self._items.insert(0, (name, value))

    def set(self, name: str, value: str) -> None:
        """Replace the first field called ``name`` and drop the rest; append if absent."""
        canon = canonical_name(name)
        out: list[tuple[str, str]] = []
        done = False
        for n, v in self._items:
            if canonical_name(n) == canon:
                if not done:
                    out.append((n, value))
                    done = True
            else:
                out.append((n, v))
        if not done:
            out.append((name, value))
        self._items = out

    def remove(self, name: str) -> int:
        """Drop every field called ``name``; return how many were dropped."""
        canon = canonical_name(name)
        kept = [(n, v) for n, v in self._items if canonical_name(n) != canon]
        dropped = len(self._items) - len(kept)
        self._items = kept
        return dropped

    def copy(self) -> Headers:
        """An independent copy."""
        return Headers(self._items)


class _Accessors:
    """Typed views of the common headers, shared by requests and responses."""

    __slots__ = ()
    headers: Headers

    @property
    def call_id(self) -> str:
        """The Call-ID."""
        return self._required("call-id")

    @property
    def cseq(self) -> CSeq:
        """The CSeq, parsed."""
        return parse_cseq(self._required("cseq"))

    @property
    def from_addr(self) -> Address:
        """The From address."""
        return parse_address(self._required("from"))

    @property
    def to_addr(self) -> Address:
        """The To address."""
        return parse_address(self._required("to"))

    @property
    def from_tag(self) -> str | None:
        """The From tag, if any."""
        return self.from_addr.tag

    @property
    def to_tag(self) -> str | None:
        """The To tag, if any."""
        return self.to_addr.tag

    @property
    def vias(self) -> list[Via]:
        """Every Via, top first."""
        return [parse_via(v) for v in self.headers.values("via")]

    @property
    def top_via(self) -> Via:
        """The topmost Via."""
        values = self.headers.values("via")
        if not values:
            raise GrammarError("no Via header")
        return parse_via(values[0])

    @property
    def contacts(self) -> list[Address]:
        """Every Contact address (empty for none, and for the REGISTER wildcard ``*``)."""
        return [parse_address(v) for v in self.headers.values("contact") if v != "*"]

    @property
    def routes(self) -> list[Address]:
        """Every Route address, in order."""
        return [parse_address(v) for v in self.headers.values("route")]

    @property
    def record_routes(self) -> list[Address]:
        """Every Record-Route address, in order."""
        return [parse_address(v) for v in self.headers.values("record-route")]

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards, or ``None`` when absent."""
        value = self.headers.get("max-forwards")
        return None if value is None else int(value.strip(_WS))

    @property
    def content_type(self) -> str | None:
        """The media type of the body (``type/subtype`` in lower case), parameters dropped."""
        value = self.headers.get("content-type")
        return None if value is None else value.split(";", 1)[0].strip(_WS).lower()

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise GrammarError(f"no {name} header")
        return value


@dataclass(eq=True, slots=True)
class SipRequest(_Accessors):
    """A SIP request."""

    method: str
    uri: Uri
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def serialize(self) -> bytes:
        """The wire form, with Content-Length set to the body length.

        Raises :class:`GrammarError` for a header name that is not a token or a value holding
        CR or LF.
        """
        return _serialize(f"{self.method} {self.uri} SIP/2.0", self.headers, self.body)

    def stamp_source(self, host: str, port: int) -> None:
        """Record where the request came from in its top Via (RFC 3261 §18.2.1, RFC 3581)."""
        self.set_top_via(self.top_via.stamped(host, port))

    def set_top_via(self, via: Via) -> None:
        """Replace the topmost Via value, keeping any others on the same field line."""
        items = list(self.headers)
        for i, (name, value) in enumerate(items):
            if canonical_name(name) == "via":
                values = split_unquoted(value, ",")
                values[0] = str(via)
                items[i] = (name, ", ".join(v.strip(_WS) for v in values))
                self.headers._items = items  # in place: callers may hold the Headers object
                return
        self.headers.prepend("Via", str(via))


@dataclass(eq=True, slots=True)
class SipResponse(_Accessors):
    """A SIP response."""

    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def serialize(self) -> bytes:
        """The wire form, with Content-Length set to the body length (see SipRequest)."""
        return _serialize(f"SIP/2.0 {self.status} {self.reason}", self.headers, self.body)


SipMessage = SipRequest | SipResponse


def _serialize(start_line: str, headers: Headers, body: bytes) -> bytes:
    # Header values may come from API users (custom headers): a CR or LF would let them inject
    # header lines, so it is refused here rather than sent.
    if "\r" in start_line or "\n" in start_line:
        raise GrammarError("CR or LF in the start line")
    lines = [start_line]
    length_written = False
    for name, value in headers:
        if not is_token(name) or "\r" in value or "\n" in value:
            raise GrammarError(f"header {name[:40]!r} cannot be serialised")
        if canonical_name(name) == "content-length":
            if length_written:
                continue
            value = str(len(body))
            length_written = True
        lines.append(f"{name}: {value}")
    if not length_written:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """A CRLF CRLF keep-alive ping on a stream (RFC 5626 §4.4.1); answer with one CRLF."""


class SipParseError(Exception):
    """Input that is not an acceptable SIP message.

    ``status`` is what to answer a request with (400, 413 too large, 505 wrong version);
    responses are never answered, only dropped. The raw Via/From/To/Call-ID/CSeq values found
    are kept so :meth:`response` can build that answer. ``fatal`` is set by the stream parser
    when the byte stream lost its framing and the connection must be closed.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        *,
        start_line_parsed: bool = False,
        is_request: bool | None = None,
        method: str | None = None,
        fields: dict[str, list[str]] | None = None,
        fatal: bool = False,
    ) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.start_line_parsed = start_line_parsed
        self.is_request = is_request
        self.method = method
        self.fatal = fatal
        found = fields or {}
        self.via: tuple[str, ...] = tuple(found.get("via", ()))
        self.from_: str | None = _first(found, "from")
        self.to: str | None = _first(found, "to")
        self.call_id: str | None = _first(found, "call-id")
        self.cseq: str | None = _first(found, "cseq")

    def response(self, to_tag: str | None = None) -> SipResponse | None:
        """The error response to send back, or ``None`` when none can or may be sent.

        Only requests other than ACK are answered (RFC 3261 §17.2.1), and only when the Via
        and CSeq are readable: they are what the sender matches the answer with (§17.1.3).
        From, To (given a tag) and Call-ID are copied when they are readable (RFC 3261
        §8.2.6, RFC 4475 §3.3.1).
        """
        if not self.is_request or self.method == "ACK" or not self.via or not self.cseq:
            return None
        try:
            for line in self.via:
                for value in split_unquoted(line, ","):
                    parse_via(value)
        except GrammarError:
            return None  # the answer could not be routed
        # Copied as received even when the number overflows (RFC 4475 §3.1.2.4): the client
        # transaction matches on the branch and the method.
        if _CSEQ_LOOSE.fullmatch(self.cseq) is None:
            return None
        headers = Headers([("Via", line) for line in self.via])
        if self.from_ is not None and _readable_address(self.from_):
            headers.add("From", self.from_)
        if self.to is not None and _readable_address(self.to):
            tagged = parse_address(self.to).tag is not None
            headers.add("To", self.to if tagged else f"{self.to};tag={to_tag or new_tag()}")
        if self.call_id is not None and _CALL_ID.fullmatch(self.call_id) is not None:
            headers.add("Call-ID", self.call_id)
        headers.add("CSeq", self.cseq)
        # The standard phrase, not self.reason: that may quote what the peer sent.
        return SipResponse(self.status, REASON_PHRASES[self.status], headers)


def _readable_address(value: str) -> bool:
    try:
        parse_address(value)
    except GrammarError:
        return False
    return True


def _first(found: dict[str, list[str]], name: str) -> str | None:
    values = found.get(name)
    return values[0] if values else None


def response_to(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> SipResponse:
    """Build a response to ``request`` (RFC 3261 §8.2.6).

    Via (all, in order), From, Call-ID and CSeq are copied; To is copied and gets a tag unless
    it has one or the status is 100 (``to_tag`` or a fresh random tag). A 100 copies Timestamp;
    a 101-299 to a dialog-creating request copies Record-Route (§12.1.1).
    """
    copied = {"via", "from", "call-id", "cseq"}
    if status == 100:
        copied.add("timestamp")
    if 100 < status < 300 and request.method in _DIALOG_CREATING:
        copied.add("record-route")
    out = Headers()
    for name, value in request.headers:
        canon = canonical_name(name)
        if canon in copied:
            out.add(name, value)
        elif canon == "to":
            if status > 100 and request.to_tag is None:
                value = f"{value};tag={to_tag or new_tag()}"
            out.add(name, value)
    for name, value in headers:
        out.add(name, value)
    return SipResponse(status, reason or REASON_PHRASES.get(status, ""), out, body)


# --- parsing ---------------------------------------------------------------------------------


def parse(
    data: bytes,
    *,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> SipMessage:
    """Parse one datagram (UDP semantics: the body ends with the datagram when no
    Content-Length is given; bytes past Content-Length are discarded, RFC 3261 §18.3)."""
    start = _skip_crlf(data, 0)
    found = _HEAD_END.search(data, start)
    if found is None or found.start() - start > max_header_bytes:
        prefix = data[start : start + max_header_bytes]
        if len(data) - start > max_header_bytes:
            raise _error_from(prefix, 413, "header section too large", partial=True)
        raise _error_from(prefix, 400, "no empty line ends the header section", partial=True)
    head = _Head.parse(data[start : found.start()])
    body = data[found.end() :]
    length = head.content_length
    if length is None:
        if len(body) > max_body_bytes:
            raise head.error(413, "body too large")
    elif length > len(body):
        raise head.error(400, "Content-Length larger than the body received")
    elif length > max_body_bytes:
        raise head.error(413, "body too large")
    else:
        body = body[:length]
    return head.message(bytes(body))


def _skip_crlf(data: bytes | bytearray, pos: int) -> int:
    # RFC 3261 §7.5: CRLFs before the start line are ignored.
    while data[pos : pos + 2] == b"\r\n" or data[pos : pos + 1] == b"\n":
        pos += 2 if data[pos : pos + 1] == b"\r" else 1
    return pos


def _error_from(
    head: bytes | bytearray, status: int, reason: str, *, partial: bool
) -> SipParseError:
    """A SipParseError with whatever can be read from a header section that failed early."""
    lines = _decode_lines(head)
    if partial and lines:
        lines = lines[:-1]  # the last line may have been cut anywhere
    fields = _fields(lines[1:])[0] if lines else []
    start = _start_line(lines[0]) if lines else _BadStart(400, "empty", None, None)
    return SipParseError(
        status,
        reason,
        start_line_parsed=isinstance(start, _Start),
        is_request=start.method is not None if isinstance(start, _Start) else start.is_request,
        method=start.method,
        fields=_index(fields),
    )


def _decode_lines(head: bytes | bytearray) -> list[str]:
    text = bytes(head).decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    return [line[:-1] if line.endswith("\r") else line for line in lines]


@dataclass(frozen=True, slots=True)
class _Start:
    method: str | None
    uri: Uri | None
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class _BadStart:
    """Why a start line is unacceptable, and what kind of message it seems to start."""

    status: int
    reason: str
    is_request: bool | None
    method: str | None


def _is_sip_2_0(text: str) -> bool | None:
    """True for SIP/2.0, False for another well-formed version, None for no version at all."""
    found = _VERSION.fullmatch(text)
    if found is None:
        return None
    # Compared as digit strings: int() of a long digit run is slow and may raise.
    return (found.group(1).lstrip("0"), found.group(2).lstrip("0")) == ("2", "")


def _start_line(line: str) -> _Start | _BadStart:
    """The parsed start line, or why it is bad."""
    if line[:4].upper() == "SIP/":
        found = _STATUS_LINE.fullmatch(line)
        if found is None:
            return _BadStart(400, "bad status line", False, None)
        version = _is_sip_2_0(found.group(1))
        if not version:
            bad = "SIP version not supported" if version is False else "bad SIP version"
            return _BadStart(505 if version is False else 400, bad, False, None)
        status = int(found.group(2))
        reason = found.group(3) or ""
        if not 100 <= status <= 699:
            return _BadStart(400, "status code out of range", False, None)
        if _CONTROL.search(reason) is not None:
            return _BadStart(400, "control character in the reason phrase", False, None)
        return _Start(None, None, status, reason)
    # A line ending in a SIP version after a method token is taken for a request even when the
    # rest is malformed, so it can still be answered with 400 (RFC 4475 §3.1.2.7-9).
    words = line.split()
    seems_request = len(words) >= 3 and is_token(words[0]) and _VERSION.fullmatch(words[-1])
    kind, guess = (True, words[0]) if seems_request else (None, None)
    found = _REQUEST_LINE.fullmatch(line)
    if found is None:
        return _BadStart(400, "bad request line", kind, guess)
    method, uri_text, version_text = found.groups()
    if not is_token(method):
        return _BadStart(400, "bad method", None, None)
    version = _is_sip_2_0(version_text)
    if not version:
        bad = "SIP version not supported" if version is False else "bad SIP version"
        return _BadStart(505 if version is False else 400, bad, kind, method if kind else None)
    try:
        uri = parse_uri(uri_text)
    except GrammarError:
        return _BadStart(400, "bad Request-URI", True, method)
    if isinstance(uri, SipUri) and uri.headers:
        # RFC 3261 §19.1.5: headers are not allowed in a Request-URI (RFC 4475 §3.1.2.11).
        return _BadStart(400, "headers in the Request-URI", True, method)
    return _Start(method, uri, 0, "")


def _fields(lines: list[str]) -> tuple[list[tuple[str, str]], str | None]:
    """Unfold header lines into (name, value) pairs; also return the first syntax error.

    Lines that cannot be read are skipped so the error can still report what was readable.
    """
    fields: list[tuple[str, str]] = []
    pieces: list[str] = []
    name: str | None = None
    error: str | None = None
    for line in lines:
        if line[:1] in (" ", "\t"):
            if name is None:
                error = error or "continuation line without a header"
            else:
                pieces.append(line.strip(_WS))
            continue
        if name is not None:
            fields.append((name, _unfold(pieces)))
        name, pieces = None, []
        raw_name, colon, value = line.partition(":")
        raw_name = raw_name.rstrip(_WS)
        if not colon or not is_token(raw_name):
            error = error or f"bad header line {line[:40]!r}"
            continue
        name = raw_name
        pieces = [value.strip(_WS)]
    if name is not None:
        fields.append((name, _unfold(pieces)))
    return fields, error


def _unfold(pieces: list[str]) -> str:
    # RFC 3261 §7.3.1: a line fold (CRLF and leading whitespace) is equivalent to one SP.
    return " ".join(p for p in pieces if p)


def _index(fields: list[tuple[str, str]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in fields:
        canon = canonical_name(name)
        if canon in ("via", "from", "to", "call-id", "cseq", "content-length"):
            found.setdefault(canon, []).append(value)
    return found


@dataclass(slots=True)
class _Head:
    """A validated start line and header section."""

    start: _Start
    headers: Headers
    fields: dict[str, list[str]]
    content_length: int | None

    @classmethod
    def parse(cls, head: bytes | bytearray) -> _Head:
        lines = _decode_lines(head)
        fields, syntax_error = _fields(lines[1:])
        found = _index(fields)
        start = _start_line(lines[0])
        if isinstance(start, _BadStart):
            raise SipParseError(
                start.status,
                start.reason,
                is_request=start.is_request,
                method=start.method,
                fields=found,
            )

        def fail(reason: str, status: int = 400) -> SipParseError:
            return SipParseError(
                status,
                reason,
                start_line_parsed=True,
                is_request=start.method is not None,
                method=start.method,
                fields=found,
            )

        if syntax_error is not None:
            raise fail(syntax_error)
        if len(fields) > MAX_HEADER_FIELDS:
            raise fail("too many header fields", 413)
        try:
            for _, value in fields:
                check_controls(value)
        except GrammarError as exc:
            raise fail(str(exc)) from exc
        headers = Headers(fields)
        reason = _check_headers(headers, start.method)
        if reason is not None:
            raise fail(reason)
        length_text = headers.get("content-length")
        length = None if length_text is None else _length(length_text)
        return cls(start, headers, found, length)

    def error(self, status: int, reason: str, *, fatal: bool = False) -> SipParseError:
        return SipParseError(
            status,
            reason,
            start_line_parsed=True,
            is_request=self.start.method is not None,
            method=self.start.method,
            fields=self.fields,
            fatal=fatal,
        )

    def message(self, body: bytes) -> SipMessage:
        start = self.start
        if start.method is not None and start.uri is not None:
            return SipRequest(start.method, start.uri, self.headers, body)
        return SipResponse(start.status, start.reason, self.headers, body)


def _check_headers(headers: Headers, method: str | None) -> str | None:
    """Why the headers are unacceptable, or ``None`` when they are fine."""
    for name in ("via", "from", "to", "call-id", "cseq"):
        if name not in headers:
            return f"missing {name} header"
    for name in _SINGLE_HEADERS:
        if len(headers.get_all(name)) > 1:
            return f"more than one {name} header"
    try:
        vias = headers.values("via")
        for via in vias:
            parse_via(via)
        for name in ("from", "to"):
            parse_address(headers.get(name) or "")
        cseq = parse_cseq(headers.get("cseq") or "")
        for name in _ADDRESS_LIST_HEADERS:
            values = headers.values(name)
            for value in values:
                if not (value == "*" and name == "contact" and len(values) == 1):
                    parse_address(value)
    except GrammarError as exc:
        return str(exc)
    if _CALL_ID.fullmatch(headers.get("call-id") or "") is None:
        return "bad Call-ID"
    if method is not None and cseq.method != method:
        return "CSeq method does not match the request method"
    for name in ("content-length", "max-forwards"):
        number = headers.get(name)
        if number is not None and _DIGITS.fullmatch(number) is None:
            return f"{name} is not a number"
    max_forwards = headers.get("max-forwards")
    if max_forwards is not None and len(max_forwards.lstrip("0")) > 10:
        return "Max-Forwards is absurdly large"
    return None


def _length(digits: str) -> int:
    """A Content-Length value; absurdly long digit runs count as "more than anything"."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else 10**18


# --- stream framing --------------------------------------------------------------------------


StreamItem = SipRequest | SipResponse | SipParseError | KeepAlive


class SipStreamParser:
    """Frames SIP messages on a stream transport (TCP, TLS) by Content-Length.

    :meth:`feed` returns the messages completed by the new bytes, in order, with a
    :class:`SipParseError` in place of each malformed message whose length was still readable
    (the stream carries on) and :class:`KeepAlive` for each CRLF CRLF ping. An error with
    ``fatal`` set means the framing is lost: answer it if possible and close the connection;
    the parser accepts nothing more.
    """

    def __init__(
        self,
        *,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._buf = bytearray()
        self._scan_from = 0
        self._crlfs = 0
        self._pending: tuple[_Head | SipParseError, int, int] | None = None
        self._max_header = max_header_bytes
        self._max_body = max_body_bytes
        self.closed = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[StreamItem]:
        """Add received bytes; return what they completed."""
        if self.closed:
            return []
        self._buf += data
        out: list[StreamItem] = []
        while not self.closed:
            item = self._next()
            if item is None:
                break
            out.append(item)
        return out

    def _next(self) -> StreamItem | None:
        if self._pending is None:
            item = self._read_head()
            if item is not None or self._pending is None:
                return item
        head, body_start, length = self._pending
        if len(self._buf) < body_start + length:
            return None
        body = bytes(self._buf[body_start : body_start + length])
        del self._buf[: body_start + length]
        self._pending = None
        self._scan_from = 0
        return head if isinstance(head, SipParseError) else head.message(body)

    def _read_head(self) -> StreamItem | None:
        buf = self._buf
        while True:
            if buf[:2] == b"\r\n":
                del buf[:2]
            elif buf[:1] == b"\n":
                del buf[:1]
            elif buf == b"\r":
                return None  # maybe the first half of a CRLF
            else:
                break
            self._crlfs += 1
            if self._crlfs == 2:
                self._crlfs = 0
                return KeepAlive()
        if not buf:
            return None
        self._crlfs = 0
        found = _HEAD_END.search(buf, self._scan_from)
        if found is None:
            self._scan_from = max(0, len(buf) - 3)
            if len(buf) > self._max_header:
                return self._fatal(
                    _error_from(
                        buf[: self._max_header], 413, "header section too large", partial=True
                    )
                )
            return None
        if found.start() > self._max_header:
            return self._fatal(
                _error_from(buf[: self._max_header], 413, "header section too large", partial=True)
            )
        head_bytes = buf[: found.start()]
        try:
            head: _Head | SipParseError = _Head.parse(head_bytes)
        except SipParseError as exc:
            head = exc
        lengths = head.fields.get("content-length") if isinstance(head, _Head) else None
        if isinstance(head, SipParseError):
            lengths = _index(_fields(_decode_lines(head_bytes)[1:])[0]).get("content-length")
        if not lengths:
            return self._fatal(_as_error(head, 400, "no Content-Length on a stream"))
        if len(lengths) > 1 or _DIGITS.fullmatch(lengths[0].strip(_WS)) is None:
            return self._fatal(_as_error(head, 400, "unreadable Content-Length"))
        length = _length(lengths[0].strip(_WS))
        if length > self._max_body:
            return self._fatal(_as_error(head, 413, "body too large"))
        self._pending = (head, found.end(), length)
        return None

    def _fatal(self, error: SipParseError) -> SipParseError:
        error.fatal = True
        self.closed = True
        self._buf.clear()
        return error


def _as_error(head: _Head | SipParseError, status: int, reason: str) -> SipParseError:
    if isinstance(head, SipParseError):
        return head
    return head.error(status, reason)
