"""The ``webhook`` invite handler: POST each inbound INVITE to the application (reference §2.10).

The payload names the dialog id the application then connects with (``/call/sip?id=``), the
caller and callee, the INVITE's header lines and its SDP offer. ``urls`` are used round-robin;
the method and the static request headers come from the ``[handler]`` table. A non-2xx answer,
a timeout or a connection error is a :class:`WebhookError` (the INVITE then gets 503).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import httpx

from activecall.config import WebhookHandler
from activecall.media.dump import rfc3339

__all__ = ["Webhook", "WebhookError", "invite_payload"]


class WebhookError(Exception):
    """The application did not take the call (non-2xx, timeout, unreachable)."""


def invite_payload(
    *,
    dialog_id: str,
    created_at: datetime,
    caller: str,
    callee: str,
    headers: Sequence[str],
    offer: str,
) -> dict[str, Any]:
    """The JSON body of the webhook request for one inbound INVITE (§2.10)."""
    return {
        "dialogId": dialog_id,
        "createdAt": rfc3339(created_at),
        "caller": caller,
        "callee": callee,
        "event": "invite",
        "headers": list(headers),
        "offer": offer,
    }


class Webhook:
    """The configured webhook endpoints, called in turn."""

    def __init__(
        self,
        handler: WebhookHandler,
        *,
        timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not handler.endpoints:
            raise ValueError("a webhook handler needs url or urls")
        self.handler = handler
        self._urls = itertools.cycle(handler.endpoints)
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout)

    async def notify(self, payload: dict[str, Any]) -> str:
        """Send ``payload`` to the next endpoint; the URL it went to. :class:`WebhookError`
        when the application did not answer 2xx."""
        url = next(self._urls)
        headers = {"Content-Type": "application/json"}
        headers.update(dict(self.handler.headers))
        try:
            response = await self._client.request(
                self.handler.method, url, json=payload, headers=headers
            )
        except httpx.HTTPError as exc:
            raise WebhookError(f"{url}: {type(exc).__name__}: {exc}") from None
        if not 200 <= response.status_code < 300:
            raise WebhookError(f"{url} answered {response.status_code}")
        return url

    async def aclose(self) -> None:
        """Close the HTTP client (if this object made it)."""
        if self._own_client:
            await self._client.aclose()
