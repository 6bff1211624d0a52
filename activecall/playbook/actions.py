"""What the LLM can make a call do: action tags, JSON tool replies and function calls, as values.

Three spellings reach the same actions (reference §4.3): tags in the reply stream
(``<refer to="sip:..."/>``), a JSON reply (``{"text": ..., "tools": [{"name": "refer", ...}]}``)
and function calls of the realtime model (``transfer_call``). Each reader checks what it is
given and raises :class:`ActionError` with a sentence the runner can report.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "ACTION_TAGS",
    "Accept",
    "Action",
    "ActionError",
    "Collect",
    "Goto",
    "Hangup",
    "Http",
    "Message",
    "Play",
    "Rag",
    "Refer",
    "Reject",
    "SetVar",
    "action_from_call",
    "action_from_tag",
    "action_from_tool",
]

ACTION_TAGS = frozenset(
    {"hangup", "refer", "play", "goto", "set_var", "http", "collect", "message"}
)
"""Tag names the runner acts on when the LLM writes them."""


class ActionError(ValueError):
    """An action the runner cannot carry out as written (a missing or bad attribute)."""


@dataclass(frozen=True, slots=True)
class Hangup:
    """End the call once the reply has been heard."""


@dataclass(frozen=True, slots=True)
class Refer:
    """Transfer the caller to ``to`` (a SIP URI) once the reply has been heard."""

    to: str


@dataclass(frozen=True, slots=True)
class Play:
    """Play an audio file or URL once the reply has been heard."""

    file: str


@dataclass(frozen=True, slots=True)
class Goto:
    """Switch to scene ``scene``: its prompt becomes the system prompt."""

    scene: str


@dataclass(frozen=True, slots=True)
class SetVar:
    """Remember ``key`` = ``value`` for the call's templates (and the call record's extras)."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class Http:
    """An HTTP request whose answer goes back to the LLM."""

    url: str
    method: str = "GET"
    body: str | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Collect:
    """Collect digits from the keypad with collector ``type`` into variable ``var``."""

    type: str
    var: str
    prompt: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """Send an in-dialog SIP MESSAGE."""

    body: str
    content_type: str | None = None
    refer: bool = False


@dataclass(frozen=True, slots=True)
class Accept:
    """Answer a pending inbound call."""


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse a pending inbound call."""

    reason: str = "rejected"
    code: int | None = None


@dataclass(frozen=True, slots=True)
class Rag:
    """Look something up in a knowledge base (none is built in)."""

    query: str


Action = Hangup | Refer | Play | Goto | SetVar | Http | Collect | Message | Accept | Reject | Rag


def action_from_tag(name: str, attrs: Mapping[str, str]) -> Action:
    """The action of tag ``<name attrs/>`` (one of :data:`ACTION_TAGS`)."""
    return _build(name, dict(attrs), f"<{name}>")


def action_from_tool(tool: Any) -> Action:
    """The action of one entry of a JSON reply's ``tools`` list."""
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
        raise ActionError("a tool must be an object with a 'name'")
    name: str = tool["name"]
    args = {k: v for k, v in tool.items() if k != "name"}
    if isinstance(tool.get("arguments"), dict):  # {"name": ..., "arguments": {...}}
        args.update(tool["arguments"])
    # the function names of native tool calling are understood here too
    return _build(_CALL_NAMES.get(name, name), args, f"tool '{name}'")


_CALL_NAMES = {
    "hangup_call": "hangup",
    "transfer_call": "refer",
    "refer_call": "refer",
    "goto_scene": "goto",
}


def action_from_call(name: str, arguments: str | Mapping[str, Any]) -> Action:
    """The action of a function call (``hangup_call``, ``transfer_call``/``refer_call``,
    ``goto_scene``, or any tool name) with JSON ``arguments``."""
    if isinstance(arguments, str):
        try:
            args = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise ActionError(f"function '{name}': arguments are not JSON") from None
    else:
        args = dict(arguments)
    if not isinstance(args, dict):
        raise ActionError(f"function '{name}': arguments must be a JSON object")
    return _build(_CALL_NAMES.get(name, name), args, f"function '{name}'")


def _build(name: str, args: dict[str, Any], what: str) -> Action:
    kind = name.lower()
    if kind == "hangup":
        return Hangup()
    if kind in ("refer", "transfer"):
        return Refer(_required(args, what, "to", "callee", "callee_uri", "target"))
    if kind == "play":
        return Play(_required(args, what, "file", "url"))
    if kind == "goto":
        return Goto(_required(args, what, "scene"))
    if kind == "set_var":
        return SetVar(_required(args, what, "key"), _text(args.get("value"), what, "value"))
    if kind == "http":
        return _http(args, what)
    if kind == "collect":
        prompt = args.get("prompt")
        return Collect(
            _required(args, what, "type"),
            _required(args, what, "var"),
            _text(prompt, what, "prompt") if prompt is not None else None,
        )
    if kind == "message":
        content_type = args.get("contenttype", args.get("contentType", args.get("content_type")))
        return Message(
            _required(args, what, "body", "text"),
            _text(content_type, what, "contentType") if content_type is not None else None,
            _truthy(args.get("refer")),
        )
    if kind == "accept":
        return Accept()
    if kind == "reject":
        code = args.get("code")
        try:
            number = int(code) if code is not None else None
        except (TypeError, ValueError):
            raise ActionError(f"{what}: code must be a number") from None
        return Reject(str(args.get("reason") or "rejected"), number)
    if kind == "rag":
        return Rag(_required(args, what, "query", "text"))
    raise ActionError(f"unknown action {what}")


def _http(args: dict[str, Any], what: str) -> Http:
    url = _required(args, what, "url")
    if not url.startswith(("http://", "https://")):
        raise ActionError(f"{what}: url must be http(s), got {url!r}")
    body = args.get("body")
    if body is not None and not isinstance(body, str):
        body = json.dumps(body)  # a JSON tool's body object
    headers = args.get("headers") or {}
    if isinstance(headers, str):
        try:
            headers = json.loads(headers)
        except ValueError:
            raise ActionError(f"{what}: headers must be a JSON object") from None
    if not isinstance(headers, dict):
        raise ActionError(f"{what}: headers must be an object")
    method = str(args.get("method") or ("POST" if body else "GET")).upper()
    if method not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"):
        raise ActionError(f"{what}: unsupported method {method}")
    return Http(url, method, body, MappingProxyType({str(k): str(v) for k, v in headers.items()}))


def _required(args: Mapping[str, Any], what: str, *names: str) -> str:
    for name in names:
        value = args.get(name)
        if value is not None and value != "":
            return _text(value, what, name)
    raise ActionError(f"{what} needs {names[0]}")


def _text(value: Any, what: str, name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        raise ActionError(f"{what}: {name} must be text")
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)
