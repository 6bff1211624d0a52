"""Providers by name: the built-in ones, and any package's through entry points.

A package adds a provider with an entry point in the group ``activecall.providers`` whose name
is ``<kind>.<provider name>`` (kind ``asr``, ``tts`` or ``llm``) and whose object is a
zero-argument factory returning the provider, e.g.
``"tts.myvoice" = "mypkg.tts:MyVoiceProvider"``. A factory runs once per worker process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Literal

__all__ = ["ENTRY_POINT_GROUP", "Kind", "ProviderRegistry", "UnknownProvider", "registry"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "activecall.providers"
Kind = Literal["asr", "tts", "llm"]

# kind.name -> "module:attribute" of the factory; imported only when first used
_BUILT_IN: dict[str, str] = {
    "asr.pocketsphinx": "activecall.providers.pocketsphinx:PocketsphinxAsr",
    "tts.piper": "activecall.providers.piper:PiperTts",
    "asr.openai": "activecall.providers.openai:OpenAiAsr",
    "tts.openai": "activecall.providers.openai:OpenAiTts",
    "llm.openai": "activecall.providers.openai:OpenAiLlm",
    "asr.deepgram": "activecall.providers.deepgram:DeepgramAsr",
    "tts.deepgram": "activecall.providers.deepgram:DeepgramTts",
    "asr.aliyun": "activecall.providers.aliyun:AliyunAsr",
    "tts.aliyun": "activecall.providers.aliyun:AliyunTts",
    "asr.tencent": "activecall.providers.tencent:TencentAsr",
    "tts.tencent": "activecall.providers.tencent:TencentTts",
}


class UnknownProvider(LookupError):
    """No provider of this kind has this name."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        listed = ", ".join(known) or "none"
        super().__init__(f"unknown {kind} provider {name!r} (known: {listed})")
        self.kind = kind
        self.name = name


class ProviderRegistry:
    """Factories by ``kind.name``; each provider is made once and then shared."""

    def __init__(self, built_in: dict[str, str] | None = None) -> None:
        self._specs: dict[str, str | Callable[[], Any]] = dict(built_in or _BUILT_IN)
        self._made: dict[str, Any] = {}
        self._scanned = False

    def register(self, kind: Kind, name: str, factory: Callable[[], Any] | str) -> None:
        """Add or replace a provider (a factory, or ``"module:attribute"`` naming one)."""
        key = f"{kind}.{name}"
        self._specs[key] = factory
        self._made.pop(key, None)

    def names(self, kind: Kind) -> list[str]:
        """The provider names of ``kind``, sorted."""
        self._scan()
        prefix = f"{kind}."
        return sorted(k[len(prefix) :] for k in self._specs if k.startswith(prefix))

    def get(self, kind: Kind, name: str) -> Any:
        """The provider ``name`` of ``kind`` (made on first use); UnknownProvider if none."""
        key = f"{kind}.{name}"
        made = self._made.get(key)
        if made is not None:
            return made
        self._scan()
        spec = self._specs.get(key)
        if spec is None:
            raise UnknownProvider(kind, name, self.names(kind))
        factory = _resolve(spec) if isinstance(spec, str) else spec
        made = factory()
        self._made[key] = made
        return made

    async def aclose(self) -> None:
        """Close every provider made so far (``aclose()`` or ``close()``) and forget them.

        A provider belongs to the event loop it was first used on: a worker closes them when
        it stops; tests close them before their loop ends.
        """
        made, self._made = self._made, {}
        for key, provider in made.items():
            try:
                closer = getattr(provider, "aclose", None)
                if closer is not None:
                    await closer()
                elif callable(getattr(provider, "close", None)):
                    provider.close()
            except Exception:  # one provider failing to close must not keep the others open
                log.exception("closing provider %s failed", key)

    def _scan(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            self._specs.setdefault(ep.name, ep.value)


def _resolve(spec: str) -> Callable[[], Any]:
    module, _, attr = spec.partition(":")
    obj: Any = import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    factory: Callable[[], Any] = obj
    return factory


registry = ProviderRegistry()
"""The process's registry (each worker has its own)."""
