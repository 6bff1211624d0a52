"""Structured header values: Via (branch, rport, received), CSeq and the auth-param lists of
WWW-Authenticate / Authorization (RFC 3261 §20, §22; RFC 3581).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, replace

from activecall.sip._grammar import (
    GrammarError,
    Params,
    format_params,
    has_param,
    is_token,
    param_value,
    parse_params,
    quote,
    split_unquoted,
    unquote,
)
from activecall.sip.uri import parse_hostport

__all__ = [
    "MAGIC_COOKIE",
    "MAX_CSEQ",
    "AuthHeader",
    "CSeq",
    "Via",
    "new_branch",
    "new_tag",
    "parse_auth_header",
    "parse_cseq",
    "parse_via",
    "parse_vias",
]

MAGIC_COOKIE = "z9hG4bK"
"""Branch prefix of RFC 3261 transaction identifiers (§8.1.1.7)."""

MAX_CSEQ = 2**32 - 1
"""CSeq numbers are 32-bit unsigned (RFC 3261 §8.1.1.5)."""

_WS = " \t"
_TRANSPORT_AND_REST = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+)[ \t]+(.*)", re.DOTALL)
_CSEQ = re.compile(r"([0-9]+)[ \t]+(\S+)")
_DIGITS = re.compile(r"[0-9]+")
_SCHEME_AND_REST = re.compile(r"(\S+)(?:[ \t]+(.*))?", re.DOTALL)


def new_branch() -> str:
    """A fresh RFC 3261 branch: the magic cookie and 64 random bits."""
    return MAGIC_COOKIE + secrets.token_hex(8)


def new_tag() -> str:
    """A fresh From/To tag with 64 random bits (RFC 3261 §19.3 asks for at least 32)."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value: ``SIP/2.0/<transport> host[:port];params``."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    protocol: str = "SIP/2.0"

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {self.host}{port}{format_params(self.params)}"

    @classmethod
    def new(
        cls,
        transport: str,
        host: str,
        port: int | None = None,
        *,
        branch: str | None = None,
        rport: bool = True,
    ) -> Via:
        """A Via for a request we send, with a fresh branch and (by default) an empty rport."""
        params: list[tuple[str, str | None]] = [("branch", branch or new_branch())]
        if rport:
            params.append(("rport", None))
        return cls(transport.upper(), host, port, tuple(params))

    def param(self, name: str) -> str | None:
        """The value of parameter ``name`` (case-insensitive), unquoted."""
        return param_value(self.params, name)

    def has_param(self, name: str) -> bool:
        """True when parameter ``name`` is present."""
        return has_param(self.params, name)

    @property
    def branch(self) -> str | None:
        """The transaction identifier, if any."""
        return self.param("branch")

    @property
    def received(self) -> str | None:
        """The source address the next hop saw (RFC 3261 §18.2.1)."""
        return self.param("received")

    @property
    def maddr(self) -> str | None:
        """The ``maddr`` parameter, if any."""
        return self.param("maddr")

    @property
    def rport(self) -> int | None:
        """The source port filled in by the next hop (RFC 3581), or ``None``."""
        value = self.param("rport")
        return int(value) if value else None

    @property
    def wants_rport(self) -> bool:
        """True when the sender asked for symmetric response routing (``rport`` present)."""
        return self.has_param("rport")

    @property
    def rfc3261_branch(self) -> bool:
        """True when the branch carries the magic cookie and an identifier after it."""
        branch = self.branch
        return branch is not None and branch.startswith(MAGIC_COOKIE) and len(branch) > 7

    def with_param(self, name: str, value: str | None) -> Via:
        """A copy with parameter ``name`` set, in place if present, else appended."""
        lname = name.lower()
        params = list(self.params)
        for i, (key, _) in enumerate(params):
            if key.lower() == lname:
                params[i] = (key, value)
                return replace(self, params=tuple(params))
        return replace(self, params=(*self.params, (name, value)))

    def stamped(self, source_host: str, source_port: int) -> Via:
        """The Via a server records on receipt (RFC 3261 §18.2.1, RFC 3581 §4).

        ``received`` is added when the source address differs from sent-by, or always when
        the sender asked for ``rport``, whose value becomes the source port.
        """
        via = self
        if self.wants_rport:
            via = via.with_param("rport", str(source_port)).with_param("received", source_host)
        elif source_host != self.host.strip("[]"):
            via = via.with_param("received", source_host)
        return via

    def response_target(self, default_port: int = 5060) -> tuple[str, int]:
        """Where a response to this hop goes over an unreliable transport (RFC 3261 §18.2.2).

        ``maddr`` first, then ``received`` (with ``rport`` if filled), then sent-by.
        """
        port = self.port if self.port is not None else default_port
        if self.maddr:
            return self.maddr, port
        received = self.received
        if received:
            return received.strip("[]"), self.rport or port
        return self.host.strip("[]"), self.rport or port


def parse_via(text: str) -> Via:
    """Parse one Via value (``SIP / 2.0 / UDP host:port ;params``, LWS allowed around '/')."""
    pieces = text.strip(_WS).split("/", 2)
    if len(pieces) != 3:
        raise GrammarError("Via needs protocol/version/transport")
    name, version = pieces[0].strip(_WS), pieces[1].strip(_WS)
    if not is_token(name) or not is_token(version):
        raise GrammarError("bad Via protocol")
    found = _TRANSPORT_AND_REST.fullmatch(pieces[2].lstrip(_WS))
    if found is None:
        raise GrammarError("bad Via transport or missing sent-by")
    transport, rest = found.group(1), found.group(2)
    sent_by, semi, param_text = rest.partition(";")
    host, port = parse_hostport(sent_by.strip(_WS))
    params = parse_params(semi + param_text)
    rport = param_value(params, "rport")
    if rport is not None and (
        _DIGITS.fullmatch(rport) is None or len(rport) > 5 or int(rport) > 65535
    ):
        raise GrammarError("bad rport")
    branch = param_value(params, "branch")
    if has_param(params, "branch") and (branch is None or not is_token(branch)):
        raise GrammarError("bad branch")
    return Via(transport.upper(), host, port, params, f"{name.upper()}/{version}")


def parse_vias(value: str) -> list[Via]:
    """Parse a Via header field value holding one or more comma-separated Vias."""
    return [parse_via(piece) for piece in split_unquoted(value, ",")]


@dataclass(frozen=True, slots=True)
class CSeq:
    """The CSeq header: sequence number and method."""

    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(text: str) -> CSeq:
    """Parse ``1*DIGIT LWS Method``; the number must fit in 32 bits."""
    found = _CSEQ.fullmatch(text.strip(_WS))
    if found is None or not is_token(found.group(2)):
        raise GrammarError("CSeq must be a number and a method")
    digits = found.group(1).lstrip("0") or "0"
    if len(digits) > 10 or int(digits) > MAX_CSEQ:  # checked first: int() of a long run raises
        raise GrammarError("CSeq number larger than 2**32-1")
    return CSeq(int(digits), found.group(2))


@dataclass(frozen=True, slots=True)
class AuthHeader:
    """A challenge or credentials header: scheme and ``name=value`` auth-params (raw values)."""

    scheme: str
    params: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        """The unquoted value of auth-param ``name`` (case-insensitive), if present."""
        lname = name.lower()
        for key, value in self.params:
            if key.lower() == lname:
                return unquote(value)
        return None

    def __str__(self) -> str:
        return self.scheme + " " + ", ".join(f"{k}={v}" for k, v in self.params)

    @classmethod
    def build(cls, scheme: str, items: list[tuple[str, str, bool]]) -> AuthHeader:
        """Build from ``(name, value, quoted)`` triples, quoting the values that need it."""
        return cls(scheme, tuple((k, quote(v) if q else v) for k, v, q in items))


def parse_auth_header(value: str) -> AuthHeader:
    """Parse ``scheme LWS auth-param *("," auth-param)`` (RFC 3261 §25.1, RFC 7235)."""
    found = _SCHEME_AND_REST.fullmatch(value.strip(_WS))
    if found is None:
        raise GrammarError("bad authentication scheme")
    scheme, rest = found.group(1), found.group(2)
    if not is_token(scheme):
        raise GrammarError("bad authentication scheme")
    params: list[tuple[str, str]] = []
    for piece in split_unquoted(rest or "", ","):
        piece = piece.strip(_WS)
        if not piece:
            continue
        name, eq, raw = piece.partition("=")
        name, raw = name.strip(_WS), raw.strip(_WS)
        if not eq or not is_token(name):
            raise GrammarError(f"bad auth-param {piece[:40]!r}")
        if raw.startswith('"'):
            unquote(raw)
        elif not is_token(raw):
            raise GrammarError(f"bad value for auth-param {name!r}")
        params.append((name, raw))
    return AuthHeader(scheme, tuple(params))
