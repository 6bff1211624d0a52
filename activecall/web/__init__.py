"""The built-in web console (``GET /``): plain HTML, JS and CSS files, no build step.

``console.html`` loads ``console.js`` and ``console.css`` by relative URL, so the three are
served side by side (``/`` plus ``/console.js`` and ``/console.css``, or all under one prefix).
"""

from __future__ import annotations

from importlib import resources

__all__ = ["CONSOLE_FILES", "console_file"]

CONSOLE_FILES = {
    "console.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
"""The console's files and their ``Content-Type``."""


def console_file(name: str) -> tuple[bytes, str]:
    """The bytes and ``Content-Type`` of one console file; ``KeyError`` for any other name."""
    content_type = CONSOLE_FILES[name]  # only these names: no path ever reaches the disk
    return resources.files(__name__).joinpath(name).read_bytes(), content_type
