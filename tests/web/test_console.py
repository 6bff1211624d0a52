"""The web console's files: served by name only, self-contained, ids and hooks consistent."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from importlib import resources

import pytest

from activecall.web import CONSOLE_FILES, console_file


class _Page(HTMLParser):
    """Collects element ids and the URLs the page loads."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(str(values["id"]))
        for name in ("src", "href"):
            if values.get(name):
                self.urls.append(str(values[name]))


def page() -> _Page:
    parser = _Page()
    parser.feed(console_file("console.html")[0].decode())
    return parser


def script() -> str:
    return console_file("console.js")[0].decode()


def test_console_files_are_served_by_name_only() -> None:
    for name, content_type in CONSOLE_FILES.items():
        data, served_type = console_file(name)
        assert data and served_type == content_type
    for name in ("../__init__.py", "__init__.py", "console.HTML", "/console.html", ""):
        with pytest.raises(KeyError):
            console_file(name)


def test_page_loads_only_its_own_files() -> None:
    urls = page().urls
    assert sorted(u for u in urls if not u.startswith("data:")) == ["console.css", "console.js"]
    css = console_file("console.css")[0].decode()
    assert "url(" not in css and "@import" not in css
    assert not re.search(r"""(import|importScripts)\s*\(?\s*["']https?:""", script())


def test_every_element_the_script_uses_is_on_the_page() -> None:
    used = set(re.findall(r"""\$\(\s*["']([\w-]+)["']\s*\)""", script()))
    used |= set(re.findall(r"""getElementById\(\s*["']([\w-]+)["']\s*\)""", script()))
    assert {"log", "call", "hangup", "status", "server", "token", "options"} <= used
    assert used <= page().ids, used - page().ids


def test_hooks_for_browser_tests_exist() -> None:
    js = script()
    for hook in ("window.activecallEvents", "window.activecallPc", "window.activecallWs"):
        assert f"{hook} =" in js
    assert "window.activecallEvents.push(event)" in js


def test_script_parses() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    path = resources.files("activecall.web") / "console.js"
    result = subprocess.run([node, "--check", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
