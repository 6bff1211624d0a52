"""SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966) and name-addr / addr-spec addresses.

URI parts keep the text they arrived with (escapes included), so a parsed URI serialises back
to the same characters; :func:`unescape` gives the decoded form when a comparison needs it.
Any other scheme is kept whole as an :class:`AbsoluteUri`: the parser accepts it and the
application answers 416 (RFC 4475 §3.3.2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from urllib.parse import unquote_to_bytes

from activecall.sip._grammar import (
    GrammarError,
    Params,
    format_params,
    has_param,
    is_token,
    param_value,
    parse_params,
    quote,
    read_quoted,
)

__all__ = [
    "AbsoluteUri",
    "Address",
    "SipUri",
    "TelUri",
    "Uri",
    "UriError",
    "parse_address",
    "parse_hostport",
    "parse_uri",
    "unescape",
]


class UriError(GrammarError):
    """A URI or address that does not match RFC 3261 / RFC 3966."""


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*):(.*)", re.DOTALL)
_ESC = r"%[0-9A-Fa-f]{2}"
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_USER = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/]|{_ESC})+")
_PASSWORD = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|{_ESC})*")
_PARAMCHARS = re.compile(rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESC})+")
_HNVCHARS = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESC})*")
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_\-.]*[A-Za-z0-9_.])?")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+\]")
_PORT = re.compile(r"[0-9]{1,5}")
_TEL_NUMBER = re.compile(r"[0-9A-Fa-f*#+\-.()]+")
# RFC 2396 uric plus '#' and '%' (escapes are not decoded in an opaque URI).
_OPAQUE = re.compile(r"[A-Za-z0-9\-_.!~*'();/?:@&=+$,%#\[\]]+")
_WS = " \t"


def unescape(text: str) -> str:
    """Decode %HH escapes (as UTF-8, invalid bytes kept as surrogate escapes)."""
    if "%" not in text:
        return text
    return unquote_to_bytes(text).decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class SipUri:
    """A ``sip:`` or ``sips:`` URI; user, password, params and headers keep their escapes."""

    host: str
    user: str | None = None
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()
    password: str | None = None
    scheme: str = "sip"

    def __str__(self) -> str:
        userinfo = ""
        if self.user is not None:
            userinfo = self.user
            if self.password is not None:
                userinfo += ":" + self.password
            userinfo += "@"
        port = "" if self.port is None else f":{self.port}"
        text = f"{self.scheme}:{userinfo}{self.host}{port}{format_params(self.params)}"
        if self.headers:
            text += "?" + "&".join(f"{k}={v}" for k, v in self.headers)
        return text

    def param(self, name: str) -> str | None:
        """The value of URI parameter ``name`` (case-insensitive), ``None`` if absent/valueless."""
        return param_value(self.params, name)

    def has_param(self, name: str) -> bool:
        """True when URI parameter ``name`` is present."""
        return has_param(self.params, name)

    def with_params(self, params: Params) -> SipUri:
        """A copy with ``params`` in place of the current parameters."""
        return replace(self, params=params)

    @property
    def secure(self) -> bool:
        """True for ``sips:``."""
        return self.scheme == "sips"


@dataclass(frozen=True, slots=True)
class TelUri:
    """A ``tel:`` URI (RFC 3966): the number as written and its parameters."""

    number: str
    params: Params = ()

    def __str__(self) -> str:
        return f"tel:{self.number}{format_params(self.params)}"

    @property
    def scheme(self) -> str:
        """Always ``tel``."""
        return "tel"


@dataclass(frozen=True, slots=True)
class AbsoluteUri:
    """A URI of a scheme this stack does not interpret (``http:``, ``urn:``...), kept whole."""

    scheme: str
    opaque: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"


Uri = SipUri | TelUri | AbsoluteUri


def parse_uri(text: str) -> Uri:
    """Parse an absolute URI; raise :class:`UriError` when it is malformed."""
    found = _SCHEME.fullmatch(text)
    if found is None:
        raise UriError(f"not a URI: {text[:60]!r}")
    scheme = found.group(1).lower()
    rest = found.group(2)
    if scheme in ("sip", "sips"):
        return _parse_sip(scheme, rest)
    if scheme == "tel":
        return _parse_tel(rest)
    if _OPAQUE.fullmatch(rest) is None:
        raise UriError(f"bad characters in a {scheme}: URI")
    return AbsoluteUri(scheme, rest)


def _parse_sip(scheme: str, rest: str) -> SipUri:
    user: str | None = None
    password: str | None = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        if _USER.fullmatch(user) is None:
            raise UriError(f"bad user part in {scheme}: URI")
        if colon:
            if _PASSWORD.fullmatch(pw) is None:
                raise UriError(f"bad password in {scheme}: URI")
            password = pw
    rest, qmark, header_text = rest.partition("?")
    hostport, semi, param_text = rest.partition(";")
    host, port = parse_hostport(hostport)
    params: list[tuple[str, str | None]] = []
    if semi:
        for piece in param_text.split(";"):
            name, eq, value = piece.partition("=")
            if _PARAMCHARS.fullmatch(name) is None or (eq and _PARAMCHARS.fullmatch(value) is None):
                raise UriError(f"bad URI parameter {piece[:40]!r}")
            params.append((name, value if eq else None))
    headers: list[tuple[str, str]] = []
    if qmark:
        for piece in header_text.split("&"):
            name, eq, value = piece.partition("=")
            if not eq or _HNVCHARS.fullmatch(name) is None or not name:
                raise UriError(f"bad URI header {piece[:40]!r}")
            if _HNVCHARS.fullmatch(value) is None:
                raise UriError(f"bad URI header value {piece[:40]!r}")
            headers.append((name, value))
    return SipUri(
        host=host,
        user=user,
        port=port,
        params=tuple(params),
        headers=tuple(headers),
        password=password,
        scheme=scheme,
    )


def parse_hostport(text: str) -> tuple[str, int | None]:
    """Parse ``host [":" port]`` (hostname, IPv4 or ``[IPv6]``); raise :class:`UriError`."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UriError("unterminated IPv6 reference")
        host, after = text[: end + 1], text[end + 1 :]
        if _IPV6.fullmatch(host) is None:
            raise UriError(f"bad IPv6 reference {host[:60]!r}")
    else:
        host, colon, port_text = text.partition(":")
        after = colon + port_text
        if _HOSTNAME.fullmatch(host) is None:
            raise UriError(f"bad host {host[:60]!r}")
    if not after:
        return host, None
    if not after.startswith(":") or _PORT.fullmatch(after[1:]) is None:
        raise UriError(f"bad port {after[:20]!r}")
    port = int(after[1:])
    if port > 65535:
        raise UriError(f"port {port} out of range")
    return host, port


def _parse_tel(rest: str) -> TelUri:
    number, semi, param_text = rest.partition(";")
    if _TEL_NUMBER.fullmatch(number) is None:
        raise UriError(f"bad tel: number {number[:40]!r}")
    params: list[tuple[str, str | None]] = []
    if semi:
        for piece in param_text.split(";"):
            name, eq, value = piece.partition("=")
            if _PARAMCHARS.fullmatch(name) is None or (eq and _PARAMCHARS.fullmatch(value) is None):
                raise UriError(f"bad tel: parameter {piece[:40]!r}")
            params.append((name, value if eq else None))
    return TelUri(number, tuple(params))


@dataclass(frozen=True, slots=True)
class Address:
    """A From/To/Contact/Route value: optional display name, URI and header parameters.

    ``display_name`` is the decoded text (quotes and quoted-pairs resolved). Parameter values
    keep their quotes when they had them.
    """

    uri: Uri
    display_name: str | None = None
    params: Params = ()

    def __str__(self) -> str:
        name = "" if self.display_name is None else quote(self.display_name) + " "
        return f"{name}<{self.uri}>{format_params(self.params)}"

    def param(self, name: str) -> str | None:
        """The value of header parameter ``name`` (case-insensitive), unquoted."""
        return param_value(self.params, name)

    def has_param(self, name: str) -> bool:
        """True when header parameter ``name`` is present."""
        return has_param(self.params, name)

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter (dialog identifier half), if any."""
        return self.param("tag")

    def with_param(self, name: str, value: str | None) -> Address:
        """A copy with parameter ``name`` set (replacing any existing one of that name)."""
        lname = name.lower()
        kept = tuple((k, v) for k, v in self.params if k.lower() != lname)
        return replace(self, params=(*kept, (name, value)))

    def with_tag(self, tag: str) -> Address:
        """A copy carrying ``;tag=tag``."""
        if not is_token(tag):
            raise UriError(f"a tag must be a token: {tag!r}")
        return self.with_param("tag", tag)


def parse_address(text: str) -> Address:
    """Parse a name-addr or addr-spec followed by header parameters (RFC 3261 §20.10)."""
    try:
        return _parse_address(text)
    except UriError:
        raise
    except GrammarError as exc:
        raise UriError(str(exc)) from exc


def _parse_address(text: str) -> Address:
    s = text.strip(_WS)
    if not s:
        raise UriError("empty address")
    display: str | None = None
    if s.startswith('"'):
        display, pos = read_quoted(s, 0)
        rest = s[pos:].lstrip(_WS)
        if not rest.startswith("<"):
            raise UriError("a quoted display name must be followed by <URI>")
        return _name_addr(display, rest)
    lt = s.find("<")
    if lt >= 0:
        words = s[:lt].split()
        if not all(is_token(w) for w in words):
            raise UriError("an unquoted display name must be tokens")
        if words:
            display = " ".join(words)
        return _name_addr(display, s[lt:])
    # addr-spec: parameters after the URI belong to the header (RFC 3261 §20.10), so the URI
    # itself cannot carry ';', ',' or '?' in this form.
    uri_text, semi, param_text = s.partition(";")
    uri_text = uri_text.rstrip(_WS)
    if "?" in uri_text or "," in uri_text:
        raise UriError("a URI with '?' or ',' must be enclosed in <>")
    return Address(parse_uri(uri_text), None, parse_params(semi + param_text))


def _name_addr(display: str | None, rest: str) -> Address:
    gt = rest.find(">")
    if gt < 0:
        raise UriError("'<' without '>'")
    inner = rest[1:gt]
    if inner != inner.strip(_WS) or not inner:
        raise UriError("whitespace inside <...>")
    return Address(parse_uri(inner), display, parse_params(rest[gt + 1 :]))
