"""The playbook REST API (reference §2.11): the playbook folder over HTTP, and playbook runs.

==============================  ===============================================================
``GET /api/playbooks``          200 ``[{"name", "updated"}]``: the folder's ``*.md`` files, by
                                name; ``updated`` is the file's mtime (RFC 3339, UTC)
``GET /api/playbooks/{name}``   200 the text (``text/markdown``); 404 ``not_found``
``POST /api/playbooks/{name}``  body = the playbook's text; 200 ``{"status":"saved","name",
                                "warnings"}``; 400 ``invalid`` with ``problems`` (each
                                ``{line, message, severity}``) when it does not pass the check
``POST /api/playbook/run``      body ``{"playbook":"x.md"}`` or ``{"content":"---..."}``, plus
                                ``type?``, ``to?``; 200 ``{"session_id":"s.<uuid>"}``; the next
                                call WebSocket with that ``id`` (within 300 s) runs it, the
                                client still sending ``invite``. 400 for a broken playbook, 404
                                for an unknown name
==============================  ===============================================================

A name is one file of the folder: it ends ``.md`` and has no ``/``, ``\\``, ``..`` or control
character, so no request reaches outside the folder (400 otherwise). Every error body is
``{"status", "error"}`` as elsewhere in the API. ``type`` and ``to`` of a run are checked to be
strings and otherwise unused, as upstream.

:class:`PlaybookApi` holds the logic (request in, response out; the file work runs off the
loop); :class:`PendingRuns` keeps the runs until their WebSocket comes, for
:meth:`CallDirectory.open_call <activecall.supervisor.directory.CallDirectory.open_call>`.
"""

from __future__ import annotations

import asyncio
import os
import time
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson

from activecall.playbook.handler import PLAYBOOK_DIR
from activecall.playbook.parser import PlaybookProblem, check_playbook, read_playbook
from activecall.supervisor.http import HttpRequest, HttpResponse
from activecall.supervisor.sessions import new_session_id

__all__ = ["RUN_TTL_S", "PendingRuns", "PlaybookApi", "check_name"]

RUN_TTL_S = 300.0
"""How long a ``POST /api/playbook/run`` waits for its WebSocket (seconds, as upstream)."""

_MAX_PENDING = 10_000  # runs nobody joins must not grow without bound
_CALL_TYPES = frozenset({"websocket", "webrtc", "sip"})


class PendingRuns:
    """Playbook runs waiting for the call that joins them, by session id."""

    def __init__(self, ttl: float = RUN_TTL_S, limit: int = _MAX_PENDING) -> None:
        self.ttl = ttl
        self.limit = limit
        self._runs: dict[str, tuple[dict[str, Any], float]] = {}

    def __len__(self) -> int:
        return len(self._runs)

    def add(self, params: dict[str, Any], now: float) -> str | None:
        """Keep ``params`` (open params: ``playbook``) under a new ``s.<uuid>`` id until
        ``now + ttl``; ``None`` when too many runs wait already."""
        self._expire(now)
        if len(self._runs) >= self.limit:
            return None
        session_id = new_session_id()
        self._runs[session_id] = (params, now + self.ttl)
        return session_id

    def take(self, session_id: str, now: float) -> dict[str, Any]:
        """The open params of the run with this id (once), ``{}`` if none or expired."""
        found = self._runs.pop(session_id, None)
        if found is None or found[1] < now:
            return {}
        return found[0]

    def _expire(self, now: float) -> None:
        for session_id in [k for k, (_, until) in self._runs.items() if until < now]:
            del self._runs[session_id]


class BadName(ValueError):
    """A playbook name that is not one ``.md`` file of the folder."""


def check_name(name: str) -> str:
    """``name`` if it is one ``.md`` file of the playbook folder; else :class:`BadName`."""
    if not name.endswith(".md") or name == ".md":
        raise BadName(f"a playbook name ends with .md: {name!r}")
    if "/" in name or "\\" in name or ".." in name:
        raise BadName(f"a playbook name has no '/', '\\' or '..': {name!r}")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise BadName(f"a playbook name has no control characters: {name!r}")
    return name


def _error(status: int, kind: str, message: str, **more: Any) -> HttpResponse:
    return HttpResponse.json(status, {"status": kind, "error": message, **more})


def _problems(problems: tuple[PlaybookProblem, ...]) -> list[dict[str, Any]]:
    return [
        {"line": p.line, "message": p.message, "severity": p.severity}
        if p.line is not None
        else {"message": p.message, "severity": p.severity}
        for p in problems
    ]


def _invalid(problems: tuple[PlaybookProblem, ...]) -> HttpResponse:
    errors = tuple(p for p in problems if p.severity == "error")
    message = "the playbook does not pass the check:\n" + "\n".join(str(p) for p in errors)
    return _error(400, "invalid", message, problems=_problems(problems))


class PlaybookApi:
    """``/api/playbooks[/name]`` and ``/api/playbook/run`` over ``folder``; see the module."""

    def __init__(self, folder: Path = PLAYBOOK_DIR, runs: PendingRuns | None = None) -> None:
        self.folder = folder
        self.runs = runs if runs is not None else PendingRuns()

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """Answer any ``/api/...`` request (the file work runs in a thread)."""
        return await asyncio.to_thread(self.answer, request.method, request.path, request.body)

    def answer(self, method: str, path: str, body: bytes) -> HttpResponse:
        """The response to ``method path`` with ``body`` (blocking: reads and writes files)."""
        parts = path.strip("/").split("/", 2)
        if parts[:2] == ["api", "playbooks"] and len(parts) == 2:
            return self._allow(method, "GET") or self.list()
        if parts[:2] == ["api", "playbooks"] and len(parts) == 3:
            name = unquote(parts[2])
            if method == "GET":
                return self.read(name)
            return self._allow(method, "POST") or self.write(name, body)
        if parts == ["api", "playbook", "run"]:
            return self._allow(method, "POST") or self.run(body, time.monotonic())
        return _error(404, "not_found", f"no such endpoint: {path}")

    @staticmethod
    def _allow(method: str, allowed: str) -> HttpResponse | None:
        if method == allowed:
            return None
        response = _error(405, "method_not_allowed", f"this endpoint accepts {allowed} only")
        return HttpResponse(
            response.status, response.body, response.content_type, (("Allow", allowed),)
        )

    def list(self) -> HttpResponse:
        """``GET /api/playbooks``."""
        entries = []
        try:
            files = sorted(self.folder.glob("*.md"))
        except OSError:
            files = []
        for path in files:
            try:
                stat = path.stat()
            except OSError:
                continue  # removed meanwhile
            if path.is_file():
                updated = datetime.fromtimestamp(stat.st_mtime, UTC).isoformat()
                entries.append({"name": path.name, "updated": updated})
        return HttpResponse.json(200, entries)

    def read(self, name: str) -> HttpResponse:
        """``GET /api/playbooks/{name}``."""
        try:
            path = self.folder / check_name(name)
            text = path.read_bytes()
        except BadName as exc:
            return _error(400, "invalid", str(exc))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return _error(404, "not_found", f"no playbook {name!r}")
        return HttpResponse(200, text, "text/markdown; charset=utf-8")

    def write(self, name: str, body: bytes) -> HttpResponse:
        """``POST /api/playbooks/{name}``: saved only when it passes the check."""
        try:
            check_name(name)
            text = body.decode("utf-8")
        except BadName as exc:
            return _error(400, "invalid", str(exc))
        except UnicodeDecodeError as exc:
            return _error(400, "invalid", f"the playbook is not UTF-8 text: {exc}")
        playbook, problems = read_playbook(text, source=name)
        if playbook is None:
            return _invalid(problems)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / name
        partial = self.folder / f".{name}.{os.getpid()}.partial"
        # a reader (a call starting now) sees the old text or the new one, never half
        partial.write_bytes(body)
        os.replace(partial, path)
        warnings = [str(p) for p in problems if p.severity == "warning"]
        return HttpResponse.json(200, {"status": "saved", "name": name, "warnings": warnings})

    def run(self, body: bytes, now: float) -> HttpResponse:
        """``POST /api/playbook/run``: a session id whose next WebSocket runs the playbook."""
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _error(400, "invalid", f"the body is not JSON: {exc}")
        if not isinstance(request, dict):
            return _error(400, "invalid", "the body must be a JSON object")
        for key in ("type", "to"):
            if key in request and not isinstance(request[key], str):
                return _error(400, "invalid", f"{key} must be a string")
        kind = request.get("type")
        if isinstance(kind, str) and kind.lower() not in _CALL_TYPES:
            return _error(400, "invalid", f"type must be websocket, webrtc or sip, not {kind!r}")
        name, content = request.get("playbook"), request.get("content")
        if (name is None) == (content is None):
            return _error(400, "invalid", "give either playbook (a name) or content (the text)")
        if content is not None:
            if not isinstance(content, str) or not content.lstrip("\ufeff").startswith("---"):
                return _error(400, "invalid", "content must be a playbook's text, starting ---")
            playbook, problems = read_playbook(content)
            spec = content
        else:
            if not isinstance(name, str):
                return _error(400, "invalid", "playbook must be a name such as support.md")
            try:
                path = self.folder / check_name(name)
            except BadName as exc:
                return _error(400, "invalid", str(exc))
            if not path.is_file():
                return _error(404, "not_found", f"no playbook {name!r}")
            playbook, problems = check_playbook(path)
            spec = str(path.resolve())
        if playbook is None:
            return _invalid(problems)
        session_id = self.runs.add({"playbook": spec}, now)
        if session_id is None:
            return _error(503, "unavailable", "too many playbook runs are waiting")
        return HttpResponse.json(200, {"session_id": session_id})
