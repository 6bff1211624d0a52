"""The playbook REST API: :class:`PlaybookApi` on a real folder, then over HTTP on a live node
(``/api/playbooks[/name]``, ``/api/playbook/run`` joined by a ``/call`` WebSocket)."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from yarl import URL

from activecall.supervisor.playbooks import RUN_TTL_S, PendingRuns, PlaybookApi, check_name
from tests.playbook.scripted import ScriptedOpenAi
from tests.supervisor.test_playbook_handler import PlaybookNode, llm, playbook_text

__all__ = ["llm"]  # the fixture, shared with the handler tests

BROKEN = "---\nllm:\n  model: [unclosed\n---\nHello\n"
GOOD = playbook_text("http://127.0.0.1:9/v1")


@pytest.fixture
def api(tmp_path: Path) -> PlaybookApi:
    return PlaybookApi(tmp_path / "playbook")


def body(response: Any) -> Any:
    return json.loads(response.body)


# --- the API without a socket ---------------------------------------------------------------------


def test_list_read_write_round_trip(api: PlaybookApi) -> None:
    assert body(api.answer("GET", "/api/playbooks", b"")) == []  # no folder yet
    saved = api.answer("POST", "/api/playbooks/b.md", GOOD.encode())
    assert saved.status == 200 and body(saved) == {
        "status": "saved",
        "name": "b.md",
        "warnings": [],
    }
    assert api.answer("POST", "/api/playbooks/a.md", GOOD.encode()).status == 200
    (api.folder / "notes.txt").write_text("not a playbook")
    listed = body(api.answer("GET", "/api/playbooks", b""))
    assert [e["name"] for e in listed] == ["a.md", "b.md"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00", e["updated"]) for e in listed)
    read = api.answer("GET", "/api/playbooks/b.md", b"")
    assert read.status == 200 and read.body == GOOD.encode()
    assert read.content_type.startswith("text/markdown")
    assert sorted(p.name for p in api.folder.iterdir()) == ["a.md", "b.md", "notes.txt"]


def test_a_saved_playbook_with_warnings_reports_them(api: PlaybookApi) -> None:
    text = GOOD.replace("greeting:", "colour: blue\ngreeting:")
    saved = body(api.answer("POST", "/api/playbooks/w.md", text.encode()))
    assert saved["status"] == "saved"
    assert len(saved["warnings"]) == 1 and "colour" in saved["warnings"][0]


@pytest.mark.parametrize(
    "name",
    ["../x.md", "..%2Fx.md", "a%5Cb.md", "a/b.md", "x.txt", ".md", "..md", "a%00.md", "x.md%2F"],
)
def test_names_that_could_leave_the_folder_are_400(api: PlaybookApi, name: str) -> None:
    api.folder.mkdir()
    outside = api.folder.parent / "x.md"
    outside.write_text(GOOD)
    for method, payload in (("GET", b""), ("POST", BROKEN.encode()), ("POST", GOOD.encode())):
        response = api.answer(method, f"/api/playbooks/{name}", payload)
        assert response.status == 400, (method, name)
        assert body(response)["status"] == "invalid"
    assert outside.read_text() == GOOD  # untouched
    assert list(api.folder.iterdir()) == []


def test_check_name_says_what_is_wrong() -> None:
    assert check_name("ok.md") == "ok.md"
    with pytest.raises(ValueError, match=r"ends with \.md"):
        check_name("x.yaml")
    with pytest.raises(ValueError, match=re.escape("has no '/', '\\' or '..': 'a..b.md'")):
        check_name("a..b.md")


def test_unknown_playbooks_and_paths_are_404_other_methods_405(api: PlaybookApi) -> None:
    assert api.answer("GET", "/api/playbooks/nope.md", b"").status == 404
    assert api.answer("GET", "/api/other", b"").status == 404
    listing = api.answer("POST", "/api/playbooks", b"")
    assert listing.status == 405 and ("Allow", "GET") in listing.headers
    assert api.answer("DELETE", "/api/playbooks/a.md", b"").status == 405
    assert api.answer("GET", "/api/playbook/run", b"").status == 405


def test_a_playbook_that_does_not_pass_the_check_is_not_saved(api: PlaybookApi) -> None:
    assert api.answer("POST", "/api/playbooks/a.md", GOOD.encode()).status == 200
    for payload in (BROKEN.encode(), b"---\ngreeting: hi\n---\nno llm\n"):
        response = api.answer("POST", "/api/playbooks/a.md", payload)
        assert response.status == 400
        problems = body(response)["problems"]
        assert problems and all(p["severity"] in ("error", "warning") for p in problems)
    (problem,) = body(api.answer("POST", "/api/playbooks/b.md", BROKEN.encode()))["problems"]
    assert problem["line"] == 3 and problem["severity"] == "error"
    assert problem["message"].startswith("invalid YAML")
    not_utf8 = api.answer("POST", "/api/playbooks/a.md", b"---\n\xff\xfe\n---\n")
    assert not_utf8.status == 400 and "UTF-8" in body(not_utf8)["error"]
    assert (api.folder / "a.md").read_text() == GOOD  # the old text stays
    assert sorted(p.name for p in api.folder.iterdir()) == ["a.md"]


def test_run_keeps_the_playbook_for_the_next_call_with_its_id(api: PlaybookApi) -> None:
    api.answer("POST", "/api/playbooks/a.md", GOOD.encode())
    by_name = api.run(json.dumps({"playbook": "a.md", "type": "websocket"}).encode(), 100.0)
    assert by_name.status == 200
    session_id = body(by_name)["session_id"]
    assert re.fullmatch(r"s\.[0-9a-f-]{36}", session_id)
    assert api.runs.take(session_id, 101.0) == {"playbook": str((api.folder / "a.md").resolve())}
    assert api.runs.take(session_id, 101.0) == {}  # once
    by_text = body(api.run(json.dumps({"content": GOOD, "to": "sip:x@y"}).encode(), 100.0))
    assert api.runs.take(by_text["session_id"], 100.0 + RUN_TTL_S) == {"playbook": GOOD}


@pytest.mark.parametrize(
    ("request_body", "status", "says"),
    [
        (b"{not json", 400, "not JSON"),
        (b"[1]", 400, "JSON object"),
        (b"{}", 400, "either playbook"),
        (json.dumps({"playbook": "a.md", "content": GOOD}).encode(), 400, "either playbook"),
        (json.dumps({"playbook": 5}).encode(), 400, "a name"),
        (json.dumps({"playbook": "../a.md"}).encode(), 400, "'..'"),
        (json.dumps({"playbook": "nope.md"}).encode(), 404, "nope.md"),
        (json.dumps({"content": "Hello"}).encode(), 400, "starting ---"),
        (json.dumps({"content": BROKEN}).encode(), 400, "invalid YAML"),
        (json.dumps({"content": GOOD, "type": "fax"}).encode(), 400, "type must be"),
        (json.dumps({"content": GOOD, "to": 7}).encode(), 400, "to must be a string"),
    ],
)
def test_bad_run_requests_are_refused_and_nothing_waits(
    api: PlaybookApi, request_body: bytes, status: int, says: str
) -> None:
    api.answer("POST", "/api/playbooks/a.md", GOOD.encode())
    response = api.answer("POST", "/api/playbook/run", request_body)
    assert response.status == status
    assert says in body(response)["error"]
    assert len(api.runs) == 0


def test_runs_expire_after_300_s_and_are_bounded() -> None:
    runs = PendingRuns(limit=2)
    first = runs.add({"playbook": "a"}, 0.0)
    second = runs.add({"playbook": "b"}, 1.0)
    assert first and second and runs.add({"playbook": "c"}, 2.0) is None  # full
    assert runs.take(first, RUN_TTL_S + 0.5) == {}  # expired
    assert runs.add({"playbook": "c"}, RUN_TTL_S + 2.0) is not None  # second expired: room
    assert len(runs) == 1


# --- over HTTP on a live node ---------------------------------------------------------------------


async def http(
    node: PlaybookNode, method: str, path: str, data: bytes | None = None
) -> tuple[int, bytes]:
    url = URL(f"http://127.0.0.1:{node.http_port}{path}", encoded=True)  # sent as written
    async with aiohttp.ClientSession() as session, session.request(method, url, data=data) as r:
        return r.status, await r.read()


async def run_call(node: PlaybookNode, session_id: str) -> tuple[list[dict[str, Any]], int]:
    """A ``/call`` client joining the run: ``invite``, then hang up after the greeting."""
    events: list[dict[str, Any]] = []
    audio = 0
    url = f"ws://127.0.0.1:{node.http_port}/call?id={session_id}"
    async with asyncio.timeout(30), connect(url) as ws:
        await ws.send(json.dumps({"command": "invite", "option": {"codec": "pcm"}}))
        async for message in ws:
            if isinstance(message, bytes):
                audio += len(message)
                continue
            events.append(json.loads(message))
            if events[-1]["event"] == "trackEnd" and events[-1].get("playId"):
                await ws.send(json.dumps({"command": "hangup"}))
    return events, audio


def test_the_api_over_http_and_a_websocket_joining_a_run(
    tmp_path: Path, llm: ScriptedOpenAi
) -> None:
    text = playbook_text(llm.url, "Welcome to the playbook run.")
    secret = tmp_path / "secret.md"
    secret.write_text("outside the folder")
    node = PlaybookNode(tmp_path, "")

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["save"] = await http(node, "POST", "/api/playbooks/greet.md", text.encode())
        out["broken"] = await http(node, "POST", "/api/playbooks/bad.md", BROKEN.encode())
        out["list"] = await http(node, "GET", "/api/playbooks")
        out["read"] = await http(node, "GET", "/api/playbooks/greet.md")
        out["unknown"] = await http(node, "GET", "/api/playbooks/nope.md")
        out["escape"] = [
            await http(node, "GET", "/api/playbooks/..%2F..%2Fsecret.md"),
            await http(node, "GET", "/api/playbooks/../../secret.md"),
            await http(node, "POST", "/api/playbooks/..%2F..%2Fsecret.md", text.encode()),
            await http(node, "POST", "/api/playbooks/..%5C..%5Csecret.md", text.encode()),
        ]
        status, run = await http(node, "POST", "/api/playbook/run", b'{"playbook":"greet.md"}')
        assert status == 200, run  # 404 here: the node serves no /api/ routes
        out["run"] = status
        out["call"] = await run_call(node, json.loads(run)["session_id"])
        return out

    try:
        out = asyncio.run(scenario())
    finally:
        assert node.stop() == 0, node.logs()
    assert out["save"][0] == 200
    assert out["broken"][0] == 400 and b"invalid YAML" in out["broken"][1]
    assert out["list"][0] == 200
    assert [e["name"] for e in json.loads(out["list"][1])] == ["greet.md"]
    assert out["read"] == (200, text.encode())
    assert out["unknown"][0] == 404
    assert [status for status, _ in out["escape"]] == [400, 400, 400, 400]
    assert secret.read_text() == "outside the folder"
    assert sorted(os.listdir(tmp_path / "config" / "playbook")) == ["greet.md"]
    assert out["run"] == 200
    events, audio = out["call"]
    names = [e["event"] for e in events]
    assert "error" not in names, events
    (start,) = [e for e in events if e["event"] == "trackStart" and e.get("playId")]
    (end,) = [e for e in events if e["event"] == "trackEnd" and e.get("playId")]
    assert start["playId"] == end["playId"]
    assert names[-1] == "hangup"
    assert audio > 32000  # the greeting was spoken: more than a second of 16 kHz PCM
