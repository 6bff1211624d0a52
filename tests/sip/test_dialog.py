"""Dialogs (RFC 3261 §12): creation on both sides, route sets, CSeq ordering, in-dialog requests.

The two sides talk through serialised bytes, as they would through a transport.
"""

from __future__ import annotations

import pytest

from activecall.sip.dialog import (
    DIALOG_TRANSITIONS,
    Dialog,
    DialogError,
    DialogEvent,
    DialogState,
    request_dialog_id,
    response_dialog_id,
)
from activecall.sip.headers import Via
from activecall.sip.message import SipMessage, SipRequest, SipResponse, parse, response_to
from activecall.sip.uri import SipUri, parse_uri

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Record-Route: <sip:p2.biloxi.example.com;lr>\r\n"
    b"Record-Route: <sip:p1.atlanta.example.com;lr>\r\n"
    b"Content-Length: 0\r\n\r\n"
)
ALICE_VIA = Via("UDP", "pc33.atlanta.example.com", params=(("branch", "z9hG4bKa2"),))
BOB_VIA = Via("UDP", "192.0.2.4", 5060, (("branch", "z9hG4bKb2"),))


def wire(message: SipMessage) -> SipMessage:
    return parse(message.serialize())


def invite() -> SipRequest:
    message = parse(INVITE)
    assert isinstance(message, SipRequest)
    return message


def answer(request: SipRequest, status: int, *, tag: str = "a6c85cf") -> SipResponse:
    response = response_to(
        request,
        status,
        to_tag=tag,
        headers=[("Contact", "<sip:bob@192.0.2.4>")],  # Record-Route is copied by response_to
    )
    back = wire(response)
    assert isinstance(back, SipResponse)
    return back


def both_sides() -> tuple[Dialog, Dialog]:
    request = invite()
    ok = answer(request, 200)
    return Dialog.from_uac(request, ok), Dialog.from_uas(request, ok)


def test_uac_and_uas_dialogs_mirror_each_other() -> None:
    alice, bob = both_sides()
    assert alice.state is bob.state is DialogState.CONFIRMED
    assert alice.id.call_id == bob.id.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert (alice.id.local_tag, alice.id.remote_tag) == ("1928301774", "a6c85cf")
    assert (bob.id.local_tag, bob.id.remote_tag) == ("a6c85cf", "1928301774")
    # RFC 3261 §12.1: the UAS keeps Record-Route in order, the UAC reverses it.
    assert [str(r.uri) for r in bob.route_set] == [
        "sip:p2.biloxi.example.com;lr",
        "sip:p1.atlanta.example.com;lr",
    ]
    assert [str(r.uri) for r in alice.route_set] == [
        "sip:p1.atlanta.example.com;lr",
        "sip:p2.biloxi.example.com;lr",
    ]
    assert str(alice.remote_target) == "sip:bob@192.0.2.4"
    assert str(bob.remote_target) == "sip:alice@pc33.atlanta.example.com"
    assert (alice.local_seq, alice.remote_seq) == (314159, None)
    assert (bob.local_seq, bob.remote_seq) == (None, 314159)


def test_in_dialog_bye_from_the_caller() -> None:
    alice, bob = both_sides()
    bye = alice.create_request("BYE", via=ALICE_VIA)
    assert alice.state is DialogState.TERMINATED
    received = wire(bye)
    assert isinstance(received, SipRequest)
    assert str(received.uri) == "sip:bob@192.0.2.4"  # loose routing: the remote target
    assert received.headers.get_all("route") == [
        "<sip:p1.atlanta.example.com;lr>",
        "<sip:p2.biloxi.example.com;lr>",
    ]
    assert (received.cseq.seq, received.cseq.method) == (314160, "BYE")
    assert received.from_tag == "1928301774" and received.to_tag == "a6c85cf"
    assert "contact" not in received.headers and received.max_forwards == 70
    assert request_dialog_id(received) == bob.id
    assert bob.receive_request(received) is None
    assert bob.state is DialogState.TERMINATED and bob.remote_seq == 314160
    with pytest.raises(DialogError):
        alice.create_request("INFO", via=ALICE_VIA)


def test_callee_requests_start_their_own_cseq_space() -> None:
    alice, bob = both_sides()
    info = bob.create_request(
        "INFO", via=BOB_VIA, body=b"Signal=5\r\n", content_type="application/dtmf-relay"
    )
    again = bob.create_request("MESSAGE", via=BOB_VIA, body=b"hi", content_type="text/plain")
    assert (info.cseq.seq, again.cseq.seq) == (1, 2)
    assert str(info.uri) == "sip:alice@pc33.atlanta.example.com"
    assert info.headers.get_all("route")[0] == "<sip:p2.biloxi.example.com;lr>"
    received = wire(info)
    assert isinstance(received, SipRequest)
    assert received.body == b"Signal=5\r\n" and received.content_type == "application/dtmf-relay"
    assert alice.receive_request(received) is None and alice.remote_seq == 1


def test_out_of_order_requests_get_500_and_others_481() -> None:
    alice, bob = both_sides()
    first = alice.create_request("INFO", via=ALICE_VIA)
    second = alice.create_request("INFO", via=ALICE_VIA)
    assert bob.receive_request(second) is None
    assert bob.receive_request(first) == 500  # lower CSeq than the last one
    assert bob.remote_seq == second.cseq.seq
    assert bob.receive_request(second) is None  # equal is not lower (RFC 3261 §12.2.2)
    stranger = invite()
    stranger.headers.set("To", "<sip:bob@biloxi.example.com>;tag=other")
    assert bob.receive_request(stranger) == 481


def test_reinvite_refreshes_the_target_and_ack_reuses_the_invite_cseq() -> None:
    alice, bob = both_sides()
    alice.local_target = parse_uri("sip:alice@192.0.2.99:5062")
    reinvite = alice.create_request(
        "INVITE", via=ALICE_VIA, body=b"v=0\r\n", content_type="application/sdp"
    )
    assert reinvite.headers.get("contact") == "<sip:alice@192.0.2.99:5062>"
    received = wire(reinvite)
    assert isinstance(received, SipRequest)
    assert bob.receive_request(received) is None
    assert str(bob.remote_target) == "sip:alice@192.0.2.99:5062"
    # Bob answers from a new address; Alice's target follows (RFC 3261 §12.2.1.2).
    ok = response_to(received, 200, headers=[("Contact", "<sip:bob@198.51.100.7>")])
    back = wire(ok)
    assert isinstance(back, SipResponse)
    alice.receive_response(back)
    assert str(alice.remote_target) == "sip:bob@198.51.100.7"
    ack = alice.create_ack(reinvite.cseq.seq, via=Via("UDP", "pc33.atlanta.example.com"))
    assert (ack.method, ack.cseq.seq, ack.cseq.method) == ("ACK", reinvite.cseq.seq, "ACK")
    assert str(ack.uri) == "sip:bob@198.51.100.7" and "contact" not in ack.headers
    assert alice.local_seq == reinvite.cseq.seq  # the ACK took no new number
    assert bob.receive_request(ack) is None


def test_early_dialog_is_confirmed_by_2xx_with_a_recomputed_route_set() -> None:
    request = invite()
    ringing = answer(request, 180)
    alice = Dialog.from_uac(request, ringing)
    assert alice.state is DialogState.EARLY
    ok = response_to(request, 200, to_tag="a6c85cf", headers=[("Contact", "<sip:bob@203.0.113.5>")])
    # The 2xx came along another path than the 180 (a forking proxy, say).
    ok.headers.set("Record-Route", "<sip:p9.example.com;lr>")
    back = wire(ok)
    assert isinstance(back, SipResponse)
    alice.receive_response(back)
    assert alice.state is DialogState.CONFIRMED
    assert [str(r.uri) for r in alice.route_set] == ["sip:p9.example.com;lr"]
    assert str(alice.remote_target) == "sip:bob@203.0.113.5"


def test_early_dialog_ends_on_a_failure_and_confirmed_one_on_481() -> None:
    request = invite()
    early = Dialog.from_uac(request, answer(request, 183))
    early.receive_response(answer(request, 486, tag="some-other-fork"))
    assert early.state is DialogState.TERMINATED
    alice, _ = both_sides()
    info = alice.create_request("INFO", via=ALICE_VIA)
    gone = wire(response_to(info, 481))
    assert isinstance(gone, SipResponse)
    alice.receive_response(gone)
    assert alice.state is DialogState.TERMINATED


def test_uas_dialog_follows_its_own_final_response() -> None:
    request = invite()
    ringing = answer(request, 180)
    bob = Dialog.from_uas(request, ringing)
    assert bob.state is DialogState.EARLY
    bob.sent_response(answer(request, 200))
    assert bob.state is DialogState.CONFIRMED
    declined = Dialog.from_uas(request, ringing)
    declined.sent_response(answer(request, 603))
    assert declined.state is DialogState.TERMINATED


def test_strict_route_puts_the_first_route_in_the_request_uri() -> None:
    record_route = "<sip:strict.example.com;method=INVITE?X=1>, <sip:p1.example.com;lr>"
    request = invite()
    request.headers.remove("record-route")
    request.headers.add("Record-Route", record_route)
    ok = response_to(request, 200, to_tag="t", headers=[("Contact", "<sip:bob@192.0.2.4>")])
    back = wire(ok)
    assert isinstance(back, SipResponse)
    alice = Dialog.from_uac(request, back)
    # Alice's route set is reversed: p1 (loose) first, so loose routing applies...
    assert str(alice.create_request("BYE", via=ALICE_VIA).uri) == "sip:bob@192.0.2.4"
    # ...while Bob's first route is the strict one (RFC 3261 §12.2.1.1): it becomes the
    # Request-URI without its method parameter and headers, and the target goes last.
    bob = Dialog.from_uas(request, back)
    bye = bob.create_request("BYE", via=BOB_VIA)
    assert bye.uri == SipUri("strict.example.com")
    assert bye.headers.get_all("route") == [
        "<sip:p1.example.com;lr>",
        "<sip:alice@pc33.atlanta.example.com>",
    ]
    assert isinstance(wire(bye), SipRequest)


def test_dialog_ids_of_requests_and_responses() -> None:
    request = invite()
    ok = answer(request, 200)
    alice = Dialog.from_uac(request, ok)
    assert response_dialog_id(ok) == alice.id


@pytest.mark.parametrize("status", [100, 300, 486])
def test_only_101_to_299_with_a_tag_creates_a_dialog(status: int) -> None:
    request = invite()
    with pytest.raises(DialogError):
        Dialog.from_uac(request, answer(request, status))
    no_tag = response_to(request, 180)
    no_tag.headers.set("To", "Bob <sip:bob@biloxi.example.com>")
    with pytest.raises(DialogError):
        Dialog.from_uac(request, no_tag)


def test_uas_needs_a_contact_and_dialogs_refuse_ack_and_cancel() -> None:
    request = invite()
    request.headers.remove("contact")
    with pytest.raises(DialogError):
        Dialog.from_uas(request, answer(request, 200))
    alice, _ = both_sides()
    for method in ("ACK", "CANCEL"):
        with pytest.raises(DialogError):
            alice.create_request(method, via=ALICE_VIA)
    with pytest.raises(DialogError):
        alice.receive_response(answer(invite(), 200, tag="not-this-dialog"))


def test_transition_table_has_no_way_out_of_terminated() -> None:
    assert not any(state is DialogState.TERMINATED for state, _ in DIALOG_TRANSITIONS)
    assert DIALOG_TRANSITIONS[(DialogState.EARLY, DialogEvent.ESTABLISHED)] is DialogState.CONFIRMED


def test_without_a_route_set_requests_go_straight_to_the_target() -> None:
    request = invite()
    request.headers.remove("record-route")
    ok = response_to(request, 200, to_tag="t", headers=[("Contact", "<sip:bob@192.0.2.4>")])
    alice = Dialog.from_uac(request, ok)
    assert alice.route_set == []
    ack = alice.create_ack(
        request.cseq.seq, via=ALICE_VIA, headers=[("Authorization", 'Digest username="a"')]
    )
    assert str(ack.uri) == "sip:bob@192.0.2.4" and "route" not in ack.headers
    assert ack.headers.get("authorization") == 'Digest username="a"'


def test_early_dialog_takes_more_provisionals_and_terminate_ends_it() -> None:
    request = invite()
    alice = Dialog.from_uac(request, answer(request, 180))
    session_progress = response_to(
        request, 183, to_tag="a6c85cf", headers=[("Contact", "<sip:bob@198.51.100.9>")]
    )
    alice.receive_response(session_progress)
    assert alice.state is DialogState.EARLY
    assert str(alice.remote_target) == "sip:bob@198.51.100.9"
    alice.terminate()
    assert alice.state is DialogState.TERMINATED
