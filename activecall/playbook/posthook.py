"""After the call: a summary by the LLM and a report to the playbook's ``posthook.url``.

The request body is ``{"sessionId", "summary", "history": [{"role", "content"}],
"timestamp"}`` (reference §4.3 item 11; ``timestamp`` in epoch milliseconds, as every timestamp
of the API). ``summary`` is left out when the playbook asks for none, ``history`` when
``includeHistory`` is false.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from activecall.playbook.model import Posthook
from activecall.providers.base import ChatMessage, LlmOption, LlmProvider

__all__ = [
    "SUMMARY_PROMPTS",
    "message_text",
    "posthook_body",
    "send_posthook",
    "summarize",
    "transcript",
]

log = logging.getLogger(__name__)

SUMMARY_PROMPTS: Mapping[str, str] = {
    "short": "Summarize this phone call in one or two sentences.",
    "detailed": (
        "Write a detailed summary of this phone call: who called and why, what was said and"
        " decided, and anything left to do."
    ),
    "intent": "In a few words, what did the caller want? Reply with the intent only.",
    "json": (
        "Summarize this phone call as one JSON object with the keys intent, summary, sentiment"
        " and follow_up. Reply with the JSON object only."
    ),
}
"""The built-in summary kinds; any other ``posthook.summary`` is used as the prompt itself."""


def message_text(message: ChatMessage) -> str:
    """A history message as text: its content, then the tool calls it made, if any
    (``[called transfer_call {"callee": "sip:..."}]``)."""
    content = message.get("content")
    parts = [content.strip()] if isinstance(content, str) and content.strip() else []
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            arguments = str(function.get("arguments") or "").strip()
            parts.append(f"[called {function.get('name')} {arguments or '{}'}]")
    return " ".join(parts)


def transcript(history: Sequence[ChatMessage]) -> str:
    """The call's dialogue as ``role: text`` lines."""
    lines = []
    for message in history:
        text = message_text(message)
        if text:
            lines.append(f"{message.get('role', 'user')}: {text}")
    return "\n".join(lines)


async def summarize(
    kind: str, history: Sequence[ChatMessage], llm: LlmProvider, option: LlmOption
) -> str:
    """The summary of ``kind`` (a built-in kind or a custom prompt) of the call's dialogue."""
    prompt = SUMMARY_PROMPTS.get(kind, kind)
    messages = [
        {"role": "system", "content": prompt},
        {"role": "user", "content": transcript(history) or "(the caller said nothing)"},
    ]
    parts = [delta.content async for delta in llm.chat(messages, option)]
    return "".join(parts).strip()


def posthook_body(
    hook: Posthook,
    session_id: str,
    history: Sequence[ChatMessage],
    summary: str | None,
    timestamp_ms: int,
) -> dict[str, Any]:
    """The JSON body of the report."""
    body: dict[str, Any] = {"sessionId": session_id}
    if summary is not None:
        body["summary"] = summary
    if hook.include_history:
        body["history"] = [
            {"role": str(m.get("role")), "content": message_text(m)} for m in history
        ]
    body["timestamp"] = timestamp_ms
    return body


async def send_posthook(
    hook: Posthook,
    *,
    session_id: str,
    history: Sequence[ChatMessage],
    timestamp_ms: int,
    http: httpx.AsyncClient,
    llm: LlmProvider | None = None,
    option: LlmOption | None = None,
) -> int:
    """Summarize (when the hook asks and an LLM is given) and send the report; the HTTP status.

    Raises ``httpx.HTTPError`` when the report cannot be delivered; a failed summary is
    logged and the report goes without it.
    """
    summary = None
    if hook.summary and llm is not None:
        try:
            summary = await summarize(hook.summary, history, llm, option or LlmOption())
        except Exception as exc:  # the report matters more than its summary
            log.warning("posthook summary of %s failed: %s", session_id, exc)
    body = posthook_body(hook, session_id, history, summary, timestamp_ms)
    response = await http.request(
        hook.method, hook.url, json=body, headers=dict(hook.headers), timeout=hook.timeout_s
    )
    if response.status_code >= 400:
        log.warning("posthook %s answered %d", hook.url, response.status_code)
    return response.status_code
