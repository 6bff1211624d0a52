"""Providers by name: built-ins, registered factories, and packages' entry points."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from activecall.providers.registry import ENTRY_POINT_GROUP, ProviderRegistry, UnknownProvider

PLUGIN = '''
class EchoTts:
    """A provider a user installs with pip."""

    name = "echo"
    made = 0

    def __init__(self):
        EchoTts.made += 1
'''


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution on sys.path with an ``activecall.providers`` entry point, as pip leaves it."""
    (tmp_path / "echo_voice.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "echo_voice-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-voice\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\ntts.echo = echo_voice:EchoTts\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    sys.modules.pop("echo_voice", None)


def test_a_pip_installed_provider_is_found_by_its_entry_point(installed_plugin: Path) -> None:
    providers = ProviderRegistry()
    assert "echo" in providers.names("tts")
    first = providers.get("tts", "echo")
    assert type(first).__name__ == "EchoTts"
    assert providers.get("tts", "echo") is first  # made once, then shared
    assert type(first).made == 1


def test_built_in_names_are_listed_and_made_lazily() -> None:
    providers = ProviderRegistry()
    assert {"piper", "openai", "deepgram", "aliyun", "tencent"} <= set(providers.names("tts"))
    assert {"pocketsphinx", "openai", "deepgram", "aliyun", "tencent"} <= set(
        providers.names("asr")
    )
    assert "openai" in providers.names("llm")


def test_an_unknown_name_says_which_exist() -> None:
    providers = ProviderRegistry()
    with pytest.raises(UnknownProvider) as unknown:
        providers.get("tts", "nope")
    assert "unknown tts provider 'nope'" in str(unknown.value)
    assert "piper" in str(unknown.value)


def test_register_replaces_a_provider() -> None:
    class Fixed:
        name = "fixed"

    providers = ProviderRegistry()
    providers.register("asr", "pocketsphinx", Fixed)
    assert isinstance(providers.get("asr", "pocketsphinx"), Fixed)
