"""An LLM reply as it streams: sentences to speak and action tags, in order; or a JSON reply.

A core without I/O. :class:`ReplyParser` is pushed the reply's text deltas and returns
:class:`Speech` (a complete sentence, or the text before a tag) and :class:`ActionTag` items as
soon as they are known. A tag is only ever returned whole: text that may still become a tag is
held back until its ``>`` arrives (a URL's ``.`` or a JSON body's ``"`` inside a tag never cuts
it), and sentences are cut only outside tags. Complete tags the runner does not act on
(``<b>``, ``</hangup>``) are markup and are not spoken.

A reply whose first non-blank character is ``{`` or a code fence is JSON mode (reference §4.3
item 6): nothing is spoken while it streams, and :meth:`ReplyParser.finish` returns one
:class:`JsonReply`; if it turns out not to be a JSON object it is read as text after all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from activecall.playbook.actions import ACTION_TAGS
from activecall.playbook.tags import INCOMPLETE, ScannedTag, scan_tag
from activecall.providers.text import SentenceSplitter

__all__ = ["ActionTag", "JsonReply", "ReplyItem", "ReplyParser", "Speech", "parse_json_reply"]

_FENCE = re.compile(r"\A```[A-Za-z0-9_-]*\s*(.*?)\s*```\s*\Z", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Speech:
    """Text to speak (a sentence, or the words before a tag)."""

    text: str


@dataclass(frozen=True, slots=True)
class ActionTag:
    """A complete action tag of the reply."""

    name: str
    attrs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class JsonReply:
    """A JSON-mode reply: text to speak, an input timeout, and tool entries to act on."""

    text: str | None = None
    wait_input_timeout: int | None = None
    tools: tuple[Any, ...] = ()


ReplyItem = Speech | ActionTag | JsonReply


class ReplyParser:
    """Split one streamed reply into speech and action tags (see the module docstring)."""

    def __init__(self, tags: frozenset[str] = ACTION_TAGS) -> None:
        self._tags = tags
        self._splitter = SentenceSplitter()
        self._text: list[str] = []  # everything pushed
        self._pending = ""  # text not yet handed to the splitter (may open a tag)
        self._mode: str | None = None  # None until the first non-blank character: text | json

    @property
    def text(self) -> str:
        """The whole reply as pushed so far."""
        return "".join(self._text)

    @property
    def json_mode(self) -> bool:
        """True when the reply is being read as JSON."""
        return self._mode == "json"

    def push(self, text: str) -> list[ReplyItem]:
        """Add a delta of the reply; return the items it completed."""
        self._text.append(text)
        if self._mode is None:
            head = self.text.lstrip()
            if not head:
                return []
            self._mode = "json" if head[0] in "{`" else "text"
            text = self.text  # replay what was held back while undecided
        if self._mode == "json":
            return []
        self._pending += text
        return self._scan(final=False)

    def finish(self) -> list[ReplyItem]:
        """The reply is complete: return the remaining items."""
        if self._mode == "json":
            reply = parse_json_reply(self.text)
            if reply is not None:
                return [reply]
            self._mode = "text"  # not JSON after all: speak it
            self._pending = self.text
        out = self._scan(final=True)
        rest = self._splitter.flush()
        if rest:
            out.append(_speech(rest))
        return out

    def _scan(self, *, final: bool) -> list[ReplyItem]:
        out: list[ReplyItem] = []
        buf = self._pending
        i = 0
        while True:
            j = buf.find("<", i)
            if j < 0:
                self._speak(buf[i:], out)
                buf = ""
                break
            self._speak(buf[i:j], out)
            tag = scan_tag(buf, j, final=final)
            if tag is INCOMPLETE:
                # a tag cut off by the end of the reply is markup: never spoken
                buf = "" if final else buf[j:]
                break
            if not isinstance(tag, ScannedTag):
                self._speak("<", out)  # ``a < b``: text
                i = j + 1
                continue
            if tag.name in self._tags and not tag.closing:
                rest = self._splitter.flush()
                if rest:
                    out.append(_speech(rest))
                out.append(ActionTag(tag.name, tag.attrs))
            i = tag.end
        self._pending = buf
        return out

    def _speak(self, text: str, out: list[ReplyItem]) -> None:
        if text:
            out.extend(_speech(s) for s in self._splitter.push(text))


def _speech(text: str) -> Speech:
    # markup taken out of a sentence leaves its spaces behind
    return Speech(" ".join(text.split()))


def parse_json_reply(text: str) -> JsonReply | None:
    """``text`` as a JSON reply (bare or in a code fence); ``None`` when it is not one."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced is not None:
        body = fenced[1]
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    spoken = obj.get("text")
    wait = obj.get("waitInputTimeout")
    tools = obj.get("tools")
    return JsonReply(
        text=spoken if isinstance(spoken, str) and spoken.strip() else None,
        wait_input_timeout=wait if isinstance(wait, int) and not isinstance(wait, bool) else None,
        tools=tuple(tools) if isinstance(tools, list) else (),
    )
