"""The posthook report: summary kinds through the LLM fake, the body, delivery failures."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from activecall.playbook.model import Posthook
from activecall.playbook.posthook import (
    SUMMARY_PROMPTS,
    posthook_body,
    send_posthook,
    summarize,
    transcript,
)
from activecall.providers.base import LlmOption
from activecall.providers.openai import OpenAiLlm
from tests.playbook.scripted import KEY, Recorder, ScriptedOpenAi

HISTORY = [
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Book me for Friday."},
    {"role": "system", "content": "HTTP GET ... answered 200"},
]


@pytest.mark.parametrize("kind", ["short", "detailed", "intent", "json", "Who called, and why?"])
def test_each_summary_kind_asks_the_llm_its_way(kind: str) -> None:
    async def main() -> tuple[str, dict[str, object]]:
        async with ScriptedOpenAi(['{"intent": ', '"booking"}']) as fake:
            llm = OpenAiLlm()
            summary = await summarize(kind, HISTORY, llm, LlmOption(base_url=fake.url, api_key=KEY))
            await llm.aclose()
            return summary, fake.chats()[0]

    summary, chat = asyncio.run(main())
    assert summary == '{"intent": "booking"}'
    system, transcript = chat["messages"]  # type: ignore[misc]
    assert system == {"role": "system", "content": SUMMARY_PROMPTS.get(kind, kind)}
    assert transcript["content"] == (
        "assistant: Hello.\nuser: Book me for Friday.\nsystem: HTTP GET ... answered 200"
    )


def test_the_body_without_summary_or_history() -> None:
    hook = Posthook(url="http://x", include_history=False)
    assert posthook_body(hook, "s9", HISTORY, None, 123) == {"sessionId": "s9", "timestamp": 123}


def test_delivery_failures() -> None:
    async def main() -> tuple[int, str]:
        async with Recorder({"error": "down"}, status=503) as server, httpx.AsyncClient() as http:
            hook = Posthook(url=f"{server.url}/x")
            status = await send_posthook(
                hook, session_id="s", history=[], timestamp_ms=1, http=http
            )
        async with httpx.AsyncClient() as http:
            try:
                await send_posthook(
                    Posthook(url="http://127.0.0.1:9/x", timeout_s=2),
                    session_id="s",
                    history=[],
                    timestamp_ms=1,
                    http=http,
                )
            except httpx.HTTPError as exc:
                return status, type(exc).__name__
        return status, "delivered?"

    status, failure = asyncio.run(main())
    assert status == 503
    assert failure == "ConnectError"


def test_tool_calls_are_written_out_in_the_history_and_the_transcript() -> None:
    history = [
        {"role": "user", "content": "Sales, please."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "transfer_call", "arguments": '{"callee": "sip:s@x"}'},
                },
                {"id": "c2", "type": "function", "function": {"name": "hangup_call"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "Transferring."},
    ]
    body = posthook_body(Posthook(url="http://x"), "s1", history, None, 5)
    assert body["history"] == [
        {"role": "user", "content": "Sales, please."},
        {
            "role": "assistant",
            "content": '[called transfer_call {"callee": "sip:s@x"}] [called hangup_call {}]',
        },
        {"role": "tool", "content": "Transferring."},
    ]
    assert transcript(history).splitlines()[1] == (
        'assistant: [called transfer_call {"callee": "sip:s@x"}] [called hangup_call {}]'
    )
