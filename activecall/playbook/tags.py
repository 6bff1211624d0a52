"""Reading ``<name attr="value" .../>`` tags out of text that may still be arriving.

A core without I/O shared by the playbook parser (scene tags) and the reply parser (action
tags in the LLM's stream). :func:`scan_tag` reads one tag at a given offset and says whether it
is complete, not a tag at all, or needs more text, so a tag split over stream chunks is never
cut. Attribute values may be double- or single-quoted; a value that starts with ``{`` or ``[``
is read as balanced JSON first, so ``body='{"id": "1"}'`` and even ``body="{"id": "1"}"`` (inner
double quotes, which upstream cannot read) both give the JSON text. ``&quot;`` and the other
HTML entities in values are decoded.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["INCOMPLETE", "MAX_TAG_CHARS", "ScannedTag", "find_tags", "scan_tag"]

MAX_TAG_CHARS = 8192
"""A ``<`` that has not closed within this many characters is text, not a tag."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]*")
_ATTR = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]*")
_UNQUOTED = re.compile(r"[^\s>]+")
_SPACE = " \t\r\n"


@dataclass(frozen=True, slots=True)
class ScannedTag:
    """One complete tag: its name (lower case), attributes, and its span in the text."""

    name: str
    attrs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    start: int = 0
    end: int = 0
    closing: bool = False  # ``</name>``


class _Incomplete:
    """The text ends inside the tag: wait for more."""

    def __repr__(self) -> str:
        return "INCOMPLETE"


INCOMPLETE = _Incomplete()
"""What :func:`scan_tag` returns when the text ends before the tag does."""


def scan_tag(text: str, start: int, *, final: bool = False) -> ScannedTag | _Incomplete | None:
    """Read the tag at ``text[start]`` (a ``<``): the tag, :data:`INCOMPLETE`, or ``None``
    when this ``<`` does not open a tag (``a < b``, ``<3``). ``final``: no more text will come
    (a value that starts like JSON but never balances is then read up to its quote)."""
    i = start + 1
    n = len(text)
    closing = False
    if i < n and text[i] == "/":
        closing = True
        i += 1
    if i >= n:
        return INCOMPLETE
    name = _NAME.match(text, i)
    if name is None:
        return None
    i = name.end()
    if i >= n:
        return INCOMPLETE
    if text[i] not in _SPACE + "/>":
        return None
    attrs: dict[str, str] = {}
    while True:
        while i < n and text[i] in _SPACE:
            i += 1
        if i >= n:
            return _incomplete_or_text(text, start)
        ch = text[i]
        if ch == ">":
            return _tag(name.group(), attrs, start, i + 1, closing)
        if ch == "/":
            if i + 1 >= n:
                return INCOMPLETE
            if text[i + 1] == ">":
                return _tag(name.group(), attrs, start, i + 2, closing)
            return None
        attr = _ATTR.match(text, i)
        if attr is None:
            return None
        i = attr.end()
        while i < n and text[i] in _SPACE:
            i += 1
        if i >= n:
            return _incomplete_or_text(text, start)
        if text[i] != "=":
            attrs[attr.group().lower()] = ""  # a bare attribute
            continue
        i += 1
        while i < n and text[i] in _SPACE:
            i += 1
        if i >= n:
            return _incomplete_or_text(text, start)
        value = _value(text, i, final)
        if value is None:
            return _incomplete_or_text(text, start)
        raw, i = value
        attrs[attr.group().lower()] = html.unescape(raw)


def find_tags(text: str, names: frozenset[str] | set[str]) -> list[ScannedTag]:
    """Every complete tag in ``text`` whose name is in ``names``, in order."""
    out: list[ScannedTag] = []
    i = text.find("<")
    while i >= 0:
        tag = scan_tag(text, i, final=True)
        if isinstance(tag, ScannedTag):
            if tag.name in names:
                out.append(tag)
            i = text.find("<", tag.end)
        else:
            i = text.find("<", i + 1)
    return out


def _tag(name: str, attrs: dict[str, str], start: int, end: int, closing: bool) -> ScannedTag:
    return ScannedTag(name.lower(), MappingProxyType(attrs), start, end, closing)


def _incomplete_or_text(text: str, start: int) -> _Incomplete | None:
    return INCOMPLETE if len(text) - start < MAX_TAG_CHARS else None


def _value(text: str, i: int, final: bool) -> tuple[str, int] | None:
    """The attribute value at ``text[i]`` and the offset after it; ``None``: not complete."""
    n = len(text)
    quote = text[i]
    if quote not in "\"'":
        m = _UNQUOTED.match(text, i)
        if m is None:
            return "", i
        if m.end() >= n and not final:
            return None
        value, end = m.group(), m.end()
        if value.endswith("/") and end < n and text[end] == ">":
            value, end = value[:-1], end - 1  # ``url=http://x/y/>``: the / closes the tag
        return value, end
    body = i + 1
    if body < n and text[body] in "{[":
        json_end = _json_end(text, body)
        if json_end is None and not final:
            return None
        if json_end is not None and 0 < json_end < n and text[json_end] == quote:
            return text[body:json_end], json_end + 1
        if json_end == n and not final:
            return None  # the JSON is whole, its closing quote has not come yet
    close = text.find(quote, body)
    if close < 0:
        return None
    return text[body:close], close + 1


def _json_end(text: str, i: int) -> int | None:
    """The offset just after the balanced JSON value at ``text[i]``; ``None``: text ends first;
    -1: not balanced JSON (a stray closer)."""
    depth = 0
    in_string = False
    n = len(text)
    while i < n:
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
            if depth < 0:
                return -1
        i += 1
    return None
