"""Shared pieces of the RFC 3261 §25 grammar: tokens, quoted strings, generic parameters and
splitting a header value on a separator that is not inside quotes or ``<...>``.

Every scanner here walks its input once (the regular expressions are single character classes,
nothing that can backtrack), so the parsers built on them stay linear in the input size.
"""

from __future__ import annotations

import re

__all__ = [
    "GrammarError",
    "Params",
    "check_controls",
    "format_params",
    "has_param",
    "is_token",
    "param_value",
    "parse_params",
    "quote",
    "read_quoted",
    "split_unquoted",
    "unquote",
]

Params = tuple[tuple[str, str | None], ...]
"""Parameters in the order they appeared: ``(name, value)``, value ``None`` when absent."""

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# A generic-param value: token / host (IPv6 references too) / quoted-string; RFC 5118 §4.5 asks
# receivers to read a received= IPv6 address with or without brackets, hence ':' '[' ']'.
_PARAM_VALUE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+")
_QUOTED_SPECIAL = re.compile(r'["\\]')
_CONTROLS = re.compile(r'["\\\x00-\x08\x0a-\x1f\x7f]')
_WS = " \t"


class GrammarError(ValueError):
    """Text that does not match the SIP grammar it was read as."""


def is_token(text: str) -> bool:
    """True when ``text`` is a non-empty RFC 3261 ``token`` (ASCII only)."""
    return _TOKEN.fullmatch(text) is not None


def read_quoted(text: str, start: int) -> tuple[str, int]:
    """Read the quoted-string starting at ``text[start] == '"'``; return (content, end index).

    The content has its quoted-pairs resolved; ``end`` is the index just past the closing quote.
    """
    if start >= len(text) or text[start] != '"':
        raise GrammarError("expected a quoted string")
    parts: list[str] = []
    pos = start + 1
    while True:
        found = _QUOTED_SPECIAL.search(text, pos)
        if found is None:
            raise GrammarError("unterminated quoted string")
        at = found.start()
        parts.append(text[pos:at])
        if text[at] == '"':
            return "".join(parts), at + 1
        if at + 1 >= len(text):
            raise GrammarError("unterminated quoted string")
        escaped = text[at + 1]
        if escaped in "\r\n":
            raise GrammarError("CR or LF cannot be escaped in a quoted string")
        parts.append(escaped)
        pos = at + 2


def quote(text: str) -> str:
    """Quote ``text`` as a quoted-string, escaping ``"``, ``\\`` and control characters."""
    if "\r" in text or "\n" in text:
        raise GrammarError("a quoted string cannot hold CR or LF")
    out = ['"']
    for ch in text:
        if ch in '"\\' or (ch < " " and ch != "\t") or ch == "\x7f":
            out.append("\\")
        out.append(ch)
    out.append('"')
    return "".join(out)


def unquote(value: str) -> str:
    """The content of a quoted-string value, or ``value`` itself when it is not quoted."""
    if value.startswith('"'):
        content, end = read_quoted(value, 0)
        if end != len(value):
            raise GrammarError("text after the closing quote")
        return content
    return value


def check_controls(value: str) -> None:
    """Reject control characters except HTAB, unless escaped by a quoted-pair in quotes."""
    in_quotes = False
    skip = -1
    for found in _CONTROLS.finditer(value):
        at = found.start()
        if at == skip:
            continue
        ch = value[at]
        if ch == '"':
            in_quotes = not in_quotes
        elif ch == "\\":
            if in_quotes:
                if value[at + 1 : at + 2] in ("\r", "\n"):
                    raise GrammarError("CR or LF cannot be escaped in a quoted string")
                skip = at + 1
        else:
            raise GrammarError(f"control character 0x{ord(ch):02x} in a header value")


def split_unquoted(text: str, sep: str) -> list[str]:
    """Split on ``sep`` where it is not inside a quoted string or ``<...>``."""
    pattern = _SPLITTERS.get(sep)
    if pattern is None:
        pattern = _SPLITTERS[sep] = re.compile('["\\\\<>' + re.escape(sep) + "]")
    pieces: list[str] = []
    begin = 0
    in_quotes = False
    in_angle = False
    skip = -1
    for found in pattern.finditer(text):
        at = found.start()
        if at == skip:
            continue
        ch = text[at]
        if in_quotes:
            if ch == "\\":
                skip = at + 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == sep and not in_angle:
            pieces.append(text[begin:at])
            begin = at + 1
    pieces.append(text[begin:])
    return pieces


_SPLITTERS: dict[str, re.Pattern[str]] = {}


def parse_params(text: str) -> Params:
    """Parse ``*( SEMI generic-param )``: empty, or text starting with ``;``."""
    text = text.strip(_WS)
    if not text:
        return ()
    if not text.startswith(";"):
        raise GrammarError(f"expected ';' before parameters, got {text[:20]!r}")
    params: list[tuple[str, str | None]] = []
    for piece in split_unquoted(text[1:], ";"):
        name, eq, value = piece.partition("=")
        name = name.strip(_WS)
        if not is_token(name):
            raise GrammarError(f"bad parameter name {name!r}")
        if not eq:
            params.append((name, None))
            continue
        value = value.strip(_WS)
        if value.startswith('"'):
            unquote(value)  # validates: one quoted string and nothing after it
        elif _PARAM_VALUE.fullmatch(value) is None:
            raise GrammarError(f"bad value for parameter {name!r}")
        params.append((name, value))
    return tuple(params)


def param_value(params: Params, name: str) -> str | None:
    """The value of the first parameter called ``name`` (case-insensitive), unquoted."""
    lname = name.lower()
    for key, value in params:
        if key.lower() == lname:
            return None if value is None else unquote(value)
    return None


def has_param(params: Params, name: str) -> bool:
    """True when parameter ``name`` (case-insensitive) is present, with or without a value."""
    lname = name.lower()
    return any(key.lower() == lname for key, _ in params)


def format_params(params: Params) -> str:
    """Serialise parameters as ``;name=value;flag``."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)
