"""SIP dialogs (RFC 3261 §12, §13.2.2.4, §15), without I/O.

A :class:`Dialog` is created from an INVITE and a response carrying a To tag, on either side
(:meth:`Dialog.from_uac`, :meth:`Dialog.from_uas`). It holds the dialog state RFC 3261 §12
lists (Call-ID, local and remote tags and URIs, local and remote CSeq, route set, remote
target, secure flag), builds in-dialog requests (:meth:`Dialog.create_request`, and
:meth:`Dialog.create_ack` for a 2xx) and checks received requests (CSeq ordering: an
out-of-order request is answered 500).

The states, in one place (:data:`DIALOG_TRANSITIONS`):

=============  =========================================================  ============
state          event                                                      next
=============  =========================================================  ============
Early          1xx with To tag to the INVITE (refreshes the target)       Early
Early          2xx to the INVITE (route set and target recomputed)        Confirmed
Early          3xx-6xx to the INVITE                                      Terminated
Confirmed      2xx to a re-INVITE / UPDATE (target refresh)               Confirmed
Early, Conf.   BYE sent or received                                       Terminated
Early, Conf.   481 or 408 to an in-dialog request (§12.2.1.2)             Terminated
=============  =========================================================  ============
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import Enum

from activecall.sip.headers import Via
from activecall.sip.message import Headers, SipRequest, SipResponse
from activecall.sip.uri import Address, SipUri, Uri

__all__ = [
    "DIALOG_TRANSITIONS",
    "Dialog",
    "DialogError",
    "DialogEvent",
    "DialogId",
    "DialogState",
    "request_dialog_id",
    "response_dialog_id",
]

TARGET_REFRESH = frozenset(("INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"))
"""Methods whose Contact replaces the remote target (RFC 3261 §12.2, RFC 3311, RFC 6665)."""


class DialogError(ValueError):
    """A message that cannot create or update this dialog."""


class DialogState(Enum):
    """Dialog states (RFC 3261 §12)."""

    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class DialogEvent(Enum):
    """What moves a dialog between states."""

    PROVISIONAL = "1xx to the INVITE"
    ESTABLISHED = "2xx to the INVITE"
    REJECTED = "3xx-6xx to the INVITE"
    REFRESHED = "2xx to a target refresh"
    BYE = "BYE sent or received"
    GONE = "481 or 408 to an in-dialog request"


DIALOG_TRANSITIONS: dict[tuple[DialogState, DialogEvent], DialogState] = {
    (DialogState.EARLY, DialogEvent.PROVISIONAL): DialogState.EARLY,
    (DialogState.EARLY, DialogEvent.ESTABLISHED): DialogState.CONFIRMED,
    (DialogState.EARLY, DialogEvent.REJECTED): DialogState.TERMINATED,
    (DialogState.EARLY, DialogEvent.BYE): DialogState.TERMINATED,
    (DialogState.EARLY, DialogEvent.GONE): DialogState.TERMINATED,
    (DialogState.CONFIRMED, DialogEvent.REFRESHED): DialogState.CONFIRMED,
    (DialogState.CONFIRMED, DialogEvent.ESTABLISHED): DialogState.CONFIRMED,
    (DialogState.CONFIRMED, DialogEvent.BYE): DialogState.TERMINATED,
    (DialogState.CONFIRMED, DialogEvent.GONE): DialogState.TERMINATED,
}
"""Every dialog transition; other (state, event) pairs leave the state unchanged."""


@dataclass(frozen=True, slots=True)
class DialogId:
    """Call-ID and the two tags, from this side's point of view."""

    call_id: str
    local_tag: str
    remote_tag: str


def request_dialog_id(request: SipRequest) -> DialogId:
    """The id of the dialog a received request belongs to (we are its UAS: local = To tag)."""
    return DialogId(request.call_id, request.to_tag or "", request.from_tag or "")


def response_dialog_id(response: SipResponse) -> DialogId:
    """The id of the dialog a received response belongs to (we sent the request)."""
    return DialogId(response.call_id, response.from_tag or "", response.to_tag or "")


@dataclass(slots=True)
class Dialog:
    """The state of one dialog, and the requests it sends."""

    call_id: str
    local: Address
    remote: Address
    remote_target: Uri
    route_set: list[Address]
    local_seq: int | None
    remote_seq: int | None
    state: DialogState
    secure: bool = False
    local_target: Uri | None = None

    @property
    def id(self) -> DialogId:
        """Call-ID, local tag, remote tag."""
        return DialogId(self.call_id, self.local.tag or "", self.remote.tag or "")

    @classmethod
    def from_uac(cls, request: SipRequest, response: SipResponse) -> Dialog:
        """The dialog a UAC gets from its INVITE and a 101-299 response with a To tag
        (RFC 3261 §12.1.2): route set from Record-Route reversed, target from Contact."""
        if not 101 <= response.status <= 299 or response.to_tag is None:
            raise DialogError("only a 101-299 response with a To tag creates a dialog")
        contacts = response.contacts
        local_contacts = request.contacts
        return cls(
            call_id=request.call_id,
            local=request.from_addr,
            remote=response.to_addr,
            remote_target=contacts[0].uri if contacts else request.uri,
            route_set=list(reversed(response.record_routes)),
            local_seq=request.cseq.seq,
            remote_seq=None,
            state=DialogState.CONFIRMED if response.status >= 200 else DialogState.EARLY,
            secure=isinstance(request.uri, SipUri) and request.uri.secure,
            local_target=local_contacts[0].uri if local_contacts else None,
        )

    @classmethod
    def from_uas(cls, request: SipRequest, response: SipResponse) -> Dialog:
        """The dialog a UAS gets when it answers ``request`` with a 101-299 ``response`` that
        carries its To tag (RFC 3261 §12.1.1): route set from Record-Route in order, target
        from the request's Contact."""
        if not 101 <= response.status <= 299 or response.to_tag is None:
            raise DialogError("only a 101-299 response with a To tag creates a dialog")
        contacts = request.contacts
        if not contacts:
            raise DialogError("a dialog-creating request needs a Contact")
        local_contacts = response.contacts
        return cls(
            call_id=request.call_id,
            local=response.to_addr,
            remote=request.from_addr,
            remote_target=contacts[0].uri,
            route_set=list(request.record_routes),
            local_seq=None,
            remote_seq=request.cseq.seq,
            state=DialogState.CONFIRMED if response.status >= 200 else DialogState.EARLY,
            secure=isinstance(request.uri, SipUri) and request.uri.secure,
            local_target=local_contacts[0].uri if local_contacts else None,
        )

    def _move(self, event: DialogEvent) -> None:
        self.state = DIALOG_TRANSITIONS.get((self.state, event), self.state)

    def receive_response(self, response: SipResponse) -> None:
        """Update from a response to a request this side sent in the dialog (UAC role)."""
        if response_dialog_id(response) != self.id and not (
            self.state is DialogState.EARLY and response.status >= 300
        ):
            raise DialogError("response does not belong to this dialog")
        status, method = response.status, response.cseq.method
        if status in (408, 481):
            self._move(DialogEvent.GONE)
            return
        if method == "INVITE" and self.state is DialogState.EARLY:
            if status >= 300:
                self._move(DialogEvent.REJECTED)
                return
            if status >= 200:
                # RFC 3261 §13.2.2.4: the 2xx fixes the route set for good.
                self.route_set = list(reversed(response.record_routes))
                self._move(DialogEvent.ESTABLISHED)
            else:
                self._move(DialogEvent.PROVISIONAL)
        elif 200 <= status < 300 and method in TARGET_REFRESH:
            self._move(DialogEvent.REFRESHED)
        if 101 <= status < 300 and method in TARGET_REFRESH:
            contacts = response.contacts
            if contacts:
                self.remote_target = contacts[0].uri

    def sent_response(self, response: SipResponse) -> None:
        """Update from a response this side sent to the dialog's INVITE (UAS role)."""
        if response.cseq.method != "INVITE" or self.state is not DialogState.EARLY:
            return
        if response.status >= 300:
            self._move(DialogEvent.REJECTED)
        elif response.status >= 200:
            self._move(DialogEvent.ESTABLISHED)

    def receive_request(self, request: SipRequest) -> int | None:
        """Check and absorb an in-dialog request (RFC 3261 §12.2.2).

        Returns ``None`` to accept it, or the status to reject it with: 500 for a CSeq lower
        than the last one (out of order), 481 for a request of another dialog.
        """
        if request_dialog_id(request) != self.id:
            return 481
        if request.method in ("ACK", "CANCEL"):
            return None  # they reuse the INVITE's CSeq number
        seq = request.cseq.seq
        if self.remote_seq is not None and seq < self.remote_seq:
            return 500
        self.remote_seq = seq
        if request.method in TARGET_REFRESH:
            contacts = request.contacts
            if contacts:
                self.remote_target = contacts[0].uri
        if request.method == "BYE":
            self._move(DialogEvent.BYE)
        return None

    def create_request(
        self,
        method: str,
        *,
        via: Via,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> SipRequest:
        """A new in-dialog request (RFC 3261 §12.2.1.1): next local CSeq, route set applied,
        Contact on target refreshes. Sending BYE ends the dialog (§15.1.1)."""
        if method in ("ACK", "CANCEL"):
            raise DialogError(f"{method} is not built by the dialog; use create_ack/cancel_for")
        if self.state is DialogState.TERMINATED:
            raise DialogError("the dialog is terminated")
        self.local_seq = 1 if self.local_seq is None else self.local_seq + 1
        request = self._build(method, self.local_seq, via, body, content_type, headers)
        if method == "BYE":
            self._move(DialogEvent.BYE)
        return request

    def create_ack(
        self,
        invite_seq: int,
        *,
        via: Via,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> SipRequest:
        """The ACK for a 2xx to the INVITE with CSeq ``invite_seq`` (RFC 3261 §13.2.2.4).

        Built like any in-dialog request but with the INVITE's CSeq number; pass the INVITE's
        credentials in ``headers`` when it carried any.
        """
        return self._build("ACK", invite_seq, via, body, content_type, headers)

    def terminate(self) -> None:
        """End the dialog (BYE sent or received outside these methods, or a timeout)."""
        self._move(DialogEvent.BYE)

    def _build(
        self,
        method: str,
        seq: int,
        via: Via,
        body: bytes,
        content_type: str | None,
        extra: Iterable[tuple[str, str]],
    ) -> SipRequest:
        target, routes = self._request_target()
        out = Headers()
        out.add("Via", str(via))
        out.add("Max-Forwards", "70")
        for route in routes:
            out.add("Route", str(route))
        out.add("From", str(self.local))
        out.add("To", str(self.remote))
        out.add("Call-ID", self.call_id)
        out.add("CSeq", f"{seq} {method}")
        if method in TARGET_REFRESH and self.local_target is not None:
            out.add("Contact", f"<{self.local_target}>")
        for name, value in extra:
            out.add(name, value)
        if body and content_type:
            out.add("Content-Type", content_type)
        return SipRequest(method, target, out, body)

    def _request_target(self) -> tuple[Uri, list[Address]]:
        """Request-URI and Route headers from the route set (RFC 3261 §12.2.1.1)."""
        if not self.route_set:
            return self.remote_target, []
        first = self.route_set[0]
        if isinstance(first.uri, SipUri) and first.uri.has_param("lr"):
            return self.remote_target, list(self.route_set)
        # Strict routing (RFC 2543 proxies): the first route becomes the Request-URI, minus
        # what a Request-URI may not carry, and the remote target goes last in the Route set.
        uri = first.uri
        if isinstance(uri, SipUri):
            params = tuple((k, v) for k, v in uri.params if k.lower() != "method")
            uri = replace(uri, params=params, headers=())
        return uri, [*self.route_set[1:], Address(self.remote_target)]
