"""The SIP user agent core, driven with bytes: calls in and out, in-dialog requests, timers.

The peer side is written by hand (raw SIP text) or built with the same core's message
functions; the agent's answers are parsed back from the bytes it would send.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from activecall.sip.agent import (
    CALL_TRANSITIONS,
    REGISTER_RETRY_S,
    CallGone,
    CallSignal,
    CallState,
    IncomingCall,
    Output,
    RegistrationState,
    SipAgent,
    Transmit,
)
from activecall.sip.auth import DigestChallenger
from activecall.sip.message import SipRequest, SipResponse, parse, response_to

PEER = ("UDP", "192.0.2.1", 5060)
NODE = "192.0.2.9"
OFFER = (
    "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)
ANSWER = OFFER.replace("40000", "40002")


def make_agent(**kwargs: Any) -> SipAgent:
    return SipAgent(contact_host=lambda host: NODE, port=5080, user_agent="ac-test", **kwargs)


def request(
    method: str,
    *,
    call_id: str = "call-1@192.0.2.1",
    branch: str = "z9hG4bKaaa1",
    cseq: int = 1,
    to_tag: str | None = None,
    body: str = "",
    content_type: str = "application/sdp",
    extra: tuple[str, ...] = (),
    contact: bool = True,
) -> bytes:
    lines = [
        f"{method} sip:bob@{NODE}:5080 SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch};rport",
        "Max-Forwards: 70",
        "From: Alice <sip:alice@192.0.2.1>;tag=alice1",
        f"To: <sip:bob@{NODE}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        *(["Contact: <sip:alice@192.0.2.1:5060>"] if contact else []),
        *extra,
    ]
    if body:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def sent(outputs: list[Output]) -> list[Any]:
    """The messages the agent sends, parsed back from their bytes."""
    return [parse(o.data) for o in outputs if isinstance(o, Transmit)]


def statuses(outputs: list[Output]) -> list[int]:
    return [m.status for m in sent(outputs) if isinstance(m, SipResponse)]


def signals(outputs: list[Output]) -> list[dict[str, Any]]:
    return [dict(o.fields) for o in outputs if isinstance(o, CallSignal)]


def incoming(agent: SipAgent, data: bytes | None = None, now: float = 0.0) -> IncomingCall:
    out = agent.receive(data or request("INVITE", body=OFFER, extra=("X-Case: a1",)), PEER, now)
    assert statuses(out) == [100]
    (call,) = [o for o in out if isinstance(o, IncomingCall)]
    return call


def answered(agent: SipAgent) -> tuple[str, str]:
    """An inbound call accepted and acknowledged: (session id, our tag)."""
    call = incoming(agent)
    (ok,) = sent(agent.accept(call.session_id, ANSWER, 0.1))
    assert agent.receive(request("ACK", to_tag=ok.to_tag, branch="z9hG4bKack"), PEER, 0.2) == []
    return call.session_id, ok.to_tag


# --- inbound ------------------------------------------------------------------------------


def test_inbound_invite_is_offered_to_the_handler_then_rung_and_accepted() -> None:
    agent = make_agent()
    call = incoming(agent)
    assert call.caller == "sip:alice@192.0.2.1" and call.callee == f"sip:bob@{NODE}"
    assert call.offer == OFFER and call.extra == {"X-Case": "a1"}
    assert "X-Case: a1" in call.headers and call.source == PEER
    assert call.session_id.startswith("call-1@192.0.2.1-alice1-")
    (ringing,) = sent(agent.ringing(call.session_id, None, 0.1))
    assert ringing.status == 180 and ringing.body == b""
    (progress,) = sent(agent.ringing(call.session_id, ANSWER, 0.2))
    assert progress.status == 183 and progress.body == ANSWER.encode()
    assert progress.to_tag == ringing.to_tag == call.session_id.rsplit("-", 1)[1]
    (ok,) = sent(agent.accept(call.session_id, ANSWER, 0.3))
    assert ok.status == 200 and ok.body == ANSWER.encode()
    assert ok.content_type == "application/sdp"
    assert str(ok.contacts[0].uri) == f"sip:activecall@{NODE}:5080"
    assert agent.state(call.session_id) is CallState.ANSWERED
    # The 2xx is resent until the ACK comes, then never again.
    assert statuses(agent.tick(0.3 + 0.5)) == [200]
    assert agent.receive(request("ACK", to_tag=ok.to_tag, branch="z9hG4bKack"), PEER, 1.0) == []
    assert statuses(agent.tick(10.0)) == []


def test_a_retransmitted_invite_gets_the_last_answer_again() -> None:
    agent = make_agent()
    call = incoming(agent)
    agent.ringing(call.session_id, None, 0.1)
    again = agent.receive(request("INVITE", body=OFFER), PEER, 0.2)
    assert statuses(again) == [180] and not [o for o in again if isinstance(o, IncomingCall)]


def test_reject_and_hangup_of_a_pending_invite() -> None:
    agent = make_agent()
    call = incoming(agent)
    out = agent.reject(call.session_id, 486, "Busy Here", 0.1)
    (busy,) = sent(out)
    assert (busy.status, busy.reason) == (486, "Busy Here")
    assert CallGone(call.session_id) in out and call.session_id not in agent
    other = incoming(agent, request("INVITE", call_id="call-2", branch="z9hG4bKb", body=OFFER))
    out = agent.hangup(other.session_id, 0.2)
    assert statuses(out) == [480] and signals(out) == []  # the session itself hung up


def test_accept_timeout_answers_408_and_tells_the_session() -> None:
    agent = make_agent(accept_timeout=5.0)
    call = incoming(agent)
    assert agent.next_deadline() == pytest.approx(5.0)
    assert agent.tick(4.9) == []
    out = agent.tick(5.0)
    assert statuses(out) == [408]
    assert signals(out) == [{"event": "cancelled", "reason": "timeout"}]
    assert CallGone(call.session_id) in out


def test_cancel_ends_a_pending_invite_with_487() -> None:
    agent = make_agent()
    call = incoming(agent)
    out = agent.receive(request("CANCEL", extra=()), PEER, 0.5)
    assert sorted(statuses(out)) == [200, 487]
    assert signals(out) == [{"event": "cancelled", "reason": "caller"}]
    assert CallGone(call.session_id) in out
    unknown = agent.receive(request("CANCEL", branch="z9hG4bKnone"), PEER, 0.6)
    assert statuses(unknown) == [481]


def test_a_cancel_after_the_answer_changes_nothing() -> None:
    agent = make_agent()
    call = incoming(agent)
    agent.accept(call.session_id, ANSWER, 0.1)
    out = agent.receive(request("CANCEL"), PEER, 0.2)
    assert statuses(out) == [200] and signals(out) == []
    assert agent.state(call.session_id) is CallState.ANSWERED


def test_invite_refusals_without_a_usable_offer_or_while_draining() -> None:
    agent = make_agent()
    no_sdp = agent.receive(request("INVITE"), PEER, 0)
    assert statuses(no_sdp) == [100, 488]
    text = request("INVITE", branch="z9hG4bKt", body="hello", content_type="text/plain")
    assert statuses(agent.receive(text, PEER, 0)) == [100, 415]
    no_contact = request("INVITE", branch="z9hG4bKc", body=OFFER, contact=False)
    assert statuses(agent.receive(no_contact, PEER, 0)) == [100, 400]
    agent.drain()
    draining = agent.receive(request("INVITE", branch="z9hG4bKd", body=OFFER), PEER, 0)
    (_, refused) = sent(draining)
    assert (refused.status, refused.reason) == (503, "Server shutting down")
    assert len(agent) == 0


def test_remote_bye_ends_an_answered_call() -> None:
    agent = make_agent()
    session_id, tag = answered(agent)
    out = agent.receive(request("BYE", to_tag=tag, cseq=2, branch="z9hG4bKbye"), PEER, 1.0)
    assert statuses(out) == [200]
    assert signals(out) == [{"event": "bye"}] and CallGone(session_id) in out
    again = agent.receive(request("BYE", to_tag=tag, cseq=3, branch="z9hG4bKbye2"), PEER, 1.1)
    assert statuses(again) == [481]


def test_our_bye_carries_the_hangup_headers() -> None:
    agent = make_agent()
    session_id, tag = answered(agent)
    out = agent.hangup(session_id, 1.0, {"X-Reason": "done"})
    (bye,) = sent(out)
    assert bye.method == "BYE" and bye.headers.get("X-Reason") == "done"
    assert str(bye.uri) == "sip:alice@192.0.2.1:5060"  # the remote target (Contact)
    assert (bye.from_tag, bye.to_tag) == (tag, "alice1")
    assert agent.hangup(session_id, 1.1) == []  # once
    done = agent.receive(response_to(bye, 200).serialize(), PEER, 1.2)
    assert done == [CallGone(session_id)]


def test_a_header_that_cannot_be_sent_is_left_off_the_bye() -> None:
    agent = make_agent()
    session_id, _ = answered(agent)
    (bye,) = sent(agent.hangup(session_id, 1.0, {"X-Bad": "a\r\nInjected: yes"}))
    assert bye.method == "BYE" and "x-bad" not in bye.headers and "injected" not in bye.headers


def test_no_ack_for_our_2xx_ends_the_call() -> None:
    agent = make_agent()
    call = incoming(agent)
    agent.accept(call.session_id, ANSWER, 0.0)
    out = agent.tick(64 * 0.5)  # timer L
    assert signals(out) == [{"event": "bye", "reason": "no ACK"}]
    assert [m.method for m in sent(out) if isinstance(m, SipRequest)] == ["BYE"]


# --- in dialog ----------------------------------------------------------------------------


def test_reinvite_is_answered_by_the_session() -> None:
    agent = make_agent()
    session_id, tag = answered(agent)
    hold = OFFER.replace("sendrecv", "sendonly")
    out = agent.receive(
        request("INVITE", to_tag=tag, cseq=2, branch="z9hG4bKre", body=hold), PEER, 1.0
    )
    assert statuses(out) == [100]
    assert signals(out) == [{"event": "reinvite", "sdp": hold, "method": "INVITE"}]
    busy = agent.receive(
        request("INVITE", to_tag=tag, cseq=3, branch="z9hG4bKre2", body=OFFER), PEER, 1.1
    )
    assert statuses(busy) == [100, 491]
    (ok,) = sent(agent.reanswer(session_id, ANSWER.replace("sendrecv", "recvonly"), 1.2))
    assert ok.status == 200 and b"recvonly" in ok.body and ok.cseq.seq == 2
    update = request("UPDATE", to_tag=tag, cseq=4, branch="z9hG4bKup", body=OFFER)
    assert signals(agent.receive(update, PEER, 1.3))[0]["method"] == "UPDATE"
    (refused,) = sent(agent.reanswer(session_id, "", 1.4, code=488))
    assert refused.status == 488


def test_reinvite_without_an_offer_gets_our_last_sdp() -> None:
    agent = make_agent()
    _, tag = answered(agent)
    out = agent.receive(request("INVITE", to_tag=tag, cseq=2, branch="z9hG4bKlate"), PEER, 1.0)
    assert statuses(out) == [100, 200] and sent(out)[1].body == ANSWER.encode()
    assert signals(out) == []


def test_info_message_refer_and_unknown_methods_in_a_dialog() -> None:
    agent = make_agent()
    session_id, tag = answered(agent)
    info = request(
        "INFO",
        to_tag=tag,
        cseq=2,
        branch="z9hG4bKi",
        body="Signal=5\r\nDuration=160\r\n",
        content_type="application/dtmf-relay",
    )
    out = agent.receive(info, PEER, 1.0)
    assert statuses(out) == [200]
    assert signals(out) == [
        {
            "event": "info",
            "body": "Signal=5\r\nDuration=160\r\n",
            "contentType": "application/dtmf-relay",
        }
    ]
    message = request(
        "MESSAGE", to_tag=tag, cseq=3, branch="z9hG4bKm", body="hi", content_type="text/plain"
    )
    out = agent.receive(message, PEER, 1.1)
    assert signals(out) == [{"event": "message", "body": "hi", "contentType": "text/plain"}]
    refer = request(
        "REFER",
        to_tag=tag,
        cseq=4,
        branch="z9hG4bKr",
        extra=("Refer-To: <sip:carol@192.0.2.7>", "Referred-By: <sip:alice@192.0.2.1>"),
    )
    out = agent.receive(refer, PEER, 1.2)
    assert statuses(out) == [202]
    assert signals(out) == [
        {"event": "refer", "referTo": "sip:carol@192.0.2.7", "referredBy": "sip:alice@192.0.2.1"}
    ]
    no_target = request("REFER", to_tag=tag, cseq=5, branch="z9hG4bKr2")
    assert statuses(agent.receive(no_target, PEER, 1.3)) == [400]
    odd = request("SUBSCRIBE", to_tag=tag, cseq=6, branch="z9hG4bKs")
    assert statuses(agent.receive(odd, PEER, 1.4)) == [501]
    stale = request("INFO", to_tag=tag, cseq=1, branch="z9hG4bKold")
    assert statuses(agent.receive(stale, PEER, 1.5)) == [500]  # CSeq went backwards
    other = request("INFO", to_tag="not-ours", cseq=9, branch="z9hG4bKx")
    assert statuses(agent.receive(other, PEER, 1.6)) == [481]
    assert agent.state(session_id) is CallState.ANSWERED


def test_we_send_a_message_in_the_dialog() -> None:
    agent = make_agent()
    session_id, _ = answered(agent)
    (message,) = sent(agent.message(session_id, "hello", 1.0, headers={"X-A": "1"}))
    assert message.method == "MESSAGE" and message.body == b"hello"
    assert message.headers.get("content-type") == "text/plain;charset=utf-8"
    assert message.headers.get("X-A") == "1" and message.to_tag == "alice1"
    with pytest.raises(ValueError, match="no established"):
        agent.message("nope", "x", 1.0)


# --- out of dialog ------------------------------------------------------------------------


def test_out_of_dialog_requests() -> None:
    agent = make_agent()
    (ok,) = sent(agent.receive(request("OPTIONS"), PEER, 0))
    assert ok.status == 200 and "INVITE" in (ok.headers.get("allow") or "")
    assert statuses(agent.receive(request("REFER", branch="z9hG4bK2"), PEER, 0)) == [400]
    assert statuses(agent.receive(request("BYE", branch="z9hG4bK3"), PEER, 0)) == [481]
    assert statuses(agent.receive(request("REGISTER", branch="z9hG4bK4"), PEER, 0)) == [405]
    agent.drain()
    assert statuses(agent.receive(request("OPTIONS", branch="z9hG4bK5"), PEER, 0)) == [503]


def test_malformed_datagrams_get_400_or_nothing() -> None:
    agent = make_agent()
    broken = request("OPTIONS").replace(b"Max-Forwards: 70", b"Max-Forwards: seventy")
    out = agent.receive(broken, PEER, 0)
    assert statuses(out) == [400] and [o.peer for o in out if isinstance(o, Transmit)] == [PEER]
    assert agent.receive(b"\x00\xff garbage", PEER, 0) == []
    assert agent.receive(b"SIP/2.0 200 OK\r\n\r\n", PEER, 0) == []  # a response is never answered
    stats = agent.stats
    assert (stats.messages_received, stats.malformed_answered, stats.malformed_dropped) == (3, 1, 2)


# --- outbound -----------------------------------------------------------------------------


def place(agent: SipAgent, **kwargs: Any) -> SipRequest:
    out = agent.invite(
        "s.out-1",
        target=PEER,
        callee="sip:bob@192.0.2.1:5060",
        caller="sip:alice@example.com",
        sdp=OFFER,
        now=0.0,
        **kwargs,
    )
    (invite,) = sent(out)
    return invite


def test_outbound_call_is_challenged_rings_and_is_answered() -> None:
    agent = make_agent()
    invite = place(agent, credentials=("alice", "pw"), headers={"X-Trace": "t1"})
    assert invite.call_id == "s.out-1" and invite.headers.get("X-Trace") == "t1"
    assert str(invite.from_addr.uri) == "sip:alice@example.com"
    assert invite.body == OFFER.encode()
    challenger = DigestChallenger("example.com", algorithms=("MD5",))
    out = agent.receive(challenger.challenge(invite, 0.1).serialize(), PEER, 0.1)
    ack, retry = sent(out)
    assert ack.method == "ACK" and retry.method == "INVITE" and retry.cseq.seq == 2
    assert challenger.verify(retry, {"alice": "pw"}.get, 0.2).ok
    ringing = response_to(retry, 180, to_tag="bob1")
    assert signals(agent.receive(ringing.serialize(), PEER, 0.3)) == [
        {"event": "ringing", "code": 180}
    ]
    progress = response_to(
        retry,
        183,
        to_tag="bob1",
        headers=[("Content-Type", "application/sdp"), ("Contact", "<sip:bob@192.0.2.1>")],
        body=ANSWER.encode(),
    )
    assert signals(agent.receive(progress.serialize(), PEER, 0.4)) == [
        {"event": "ringing", "code": 183, "sdp": ANSWER}
    ]
    ok = response_to(
        retry,
        200,
        to_tag="bob1",
        headers=[("Content-Type", "application/sdp"), ("Contact", "<sip:bob@192.0.2.1:5070>")],
        body=ANSWER.encode(),
    )
    out = agent.receive(ok.serialize(), PEER, 0.5)
    (ack2,) = sent(out)
    assert ack2.method == "ACK" and ack2.cseq.seq == 2 and str(ack2.uri) == "sip:bob@192.0.2.1:5070"
    assert ack2.headers.get("authorization") is not None  # the INVITE's credentials (§22.1)
    assert signals(out) == [{"event": "answer", "sdp": ANSWER}]
    # A retransmitted 200 is acknowledged again, and reported once only.
    again = agent.receive(ok.serialize(), PEER, 0.6)
    assert [m.method for m in sent(again)] == ["ACK"] and signals(again) == []
    # The callee hangs up.
    bye = (
        f"BYE sip:alice@{NODE}:5080 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKbb\r\n"
        f"From: <sip:bob@192.0.2.1:5060>;tag=bob1\r\nTo: {invite.headers.get('from')}\r\n"
        "Call-ID: s.out-1\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
    )
    out = agent.receive(bye.encode(), PEER, 1.0)
    assert statuses(out) == [200] and signals(out) == [{"event": "bye"}]


def test_a_second_challenge_or_no_credentials_is_a_reject() -> None:
    agent = make_agent()
    invite = place(agent)  # no credentials
    challenger = DigestChallenger("example.com")
    out = agent.receive(challenger.challenge(invite, 0).serialize(), PEER, 0.1)
    assert signals(out) == [{"event": "reject", "code": 401, "reason": "Unauthorized"}]
    assert CallGone("s.out-1") in out


def test_outbound_failures_and_timeout() -> None:
    agent = make_agent()
    invite = place(agent)
    out = agent.receive(response_to(invite, 486, to_tag="b").serialize(), PEER, 0.1)
    assert [m.method for m in sent(out)] == ["ACK"]
    assert signals(out) == [{"event": "reject", "code": 486, "reason": "Busy Here"}]
    agent = make_agent()
    place(agent)
    assert len(sent(agent.tick(0.5))) == 1  # timer A: the INVITE again
    out = agent.tick(64 * 0.5)  # timer B
    assert signals(out) == [{"event": "reject", "code": 408, "reason": "Request Timeout"}]
    assert "s.out-1" not in agent


def test_hangup_before_the_answer_cancels_once_a_provisional_came() -> None:
    agent = make_agent()
    invite = place(agent)
    assert agent.hangup("s.out-1", 0.1) == []  # no 1xx yet: a CANCEL may not be sent
    out = agent.receive(response_to(invite, 180, to_tag="b").serialize(), PEER, 0.2)
    (cancel,) = sent(out)
    assert cancel.method == "CANCEL" and cancel.top_via.branch == invite.top_via.branch
    assert signals(out) == []
    out = agent.receive(response_to(invite, 487, to_tag="b").serialize(), PEER, 0.3)
    assert [m.method for m in sent(out)] == ["ACK"] and signals(out) == []
    assert CallGone("s.out-1") in out


def test_an_answer_after_the_hangup_is_acknowledged_and_ended() -> None:
    agent = make_agent()
    invite = place(agent)
    agent.hangup("s.out-1", 0.1)
    ok = response_to(
        invite, 200, to_tag="b", headers=[("Contact", "<sip:bob@192.0.2.1>")], body=b""
    )
    out = agent.receive(ok.serialize(), PEER, 0.2)
    assert [m.method for m in sent(out)] == ["ACK", "BYE"] and signals(out) == []


def test_bad_outbound_requests_leave_nothing_behind() -> None:
    agent = make_agent()
    with pytest.raises(ValueError, match="sip: or sips:"):
        agent.invite("a", target=PEER, callee="tel:+123", caller=None, sdp=OFFER, now=0)
    with pytest.raises(ValueError):
        agent.invite("b", target=PEER, callee="not a uri", caller=None, sdp=OFFER, now=0)
    with pytest.raises(ValueError):
        agent.invite(
            "c",
            target=PEER,
            callee="sip:bob@192.0.2.1",
            caller=None,
            sdp=OFFER,
            now=0,
            headers={"X-Bad": "a\r\nb"},
        )
    assert len(agent) == 0 and agent.next_deadline() is None
    place(agent)
    with pytest.raises(ValueError, match="exists"):
        place(agent)


def test_session_ids_that_are_not_call_ids_get_a_generated_call_id() -> None:
    agent = make_agent()
    out = agent.invite(
        "an id with spaces", target=PEER, callee="sip:bob@192.0.2.1", caller=None, sdp=OFFER, now=0
    )
    (invite,) = sent(out)
    assert invite.call_id.endswith("@activecall") and " " not in invite.call_id
    assert str(invite.from_addr.uri) == f"sip:activecall@{NODE}"


def test_every_transition_is_in_the_table() -> None:
    assert CALL_TRANSITIONS[(CallState.INCOMING, "accept")] is CallState.ANSWERED
    assert CALL_TRANSITIONS[(CallState.CALLING, "2xx")] is CallState.ANSWERED
    assert all(
        state is not CallState.ENDED for (state, _event) in CALL_TRANSITIONS
    )  # nothing leaves ENDED


# --- registrations ------------------------------------------------------------------------


def test_register_is_challenged_granted_refreshed_and_removed() -> None:
    agent = make_agent()
    out = agent.register(
        "alice@pbx", registrar=PEER, aor="sip:alice@pbx.example.com", now=0.0,
        credentials=("alice", "pw"), display_name="Alice",
    )  # fmt: skip
    (first,) = sent(out)
    assert first.method == "REGISTER" and str(first.uri) == "sip:pbx.example.com"
    assert first.headers.get("expires") == "3600" and first.to_tag is None
    assert str(first.from_addr.uri) == "sip:alice@pbx.example.com"
    assert str(first.contacts[0].uri) == f"sip:alice@{NODE}:5080"
    challenger = DigestChallenger("pbx.example.com", algorithms=("MD5",))
    (retry,) = sent(agent.receive(challenger.challenge(first, 0.1).serialize(), PEER, 0.1))
    assert retry.cseq.seq == first.cseq.seq + 1 and retry.call_id == first.call_id
    assert challenger.verify(retry, {"alice": "pw"}.get, 0.2).ok
    ok = response_to(retry, 200, headers=[("Contact", f"<sip:alice@{NODE}:5080>;expires=120")])
    out = agent.receive(ok.serialize(), PEER, 0.2)
    assert out == [RegistrationState("alice@pbx", True, 200, 120)]
    assert sent(agent.tick(90.1)) == []  # refreshed at 75 % of the 120 s granted
    (refresh,) = sent(agent.tick(90.2))
    assert refresh.method == "REGISTER" and refresh.cseq.seq == retry.cseq.seq + 1
    # The refresh is challenged again and answered with an Expires header only.
    (retry2,) = sent(agent.receive(challenger.challenge(refresh, 90.3).serialize(), PEER, 90.3))
    out = agent.receive(
        response_to(retry2, 200, headers=[("Expires", "60")]).serialize(), PEER, 90.4
    )
    assert out == [RegistrationState("alice@pbx", True, 200, 60)]
    # Shutting down: Expires 0, then the registration is forgotten.
    (gone,) = sent(agent.unregister("alice@pbx", 100.0))
    assert gone.headers.get("expires") == "0" and agent.unregistering
    assert agent.unregister("alice@pbx", 100.1) == []
    out = agent.receive(response_to(gone, 200).serialize(), PEER, 100.2)
    assert out == [RegistrationState("alice@pbx", False, 200)]
    assert not agent.registered("alice@pbx") and not agent.unregistering
    agent.tick(200.0)  # the transactions' last timers
    assert agent.next_deadline() is None


def test_failed_registrations_are_retried_every_minute() -> None:
    agent = make_agent()
    (first,) = sent(agent.register("k", registrar=PEER, aor="sip:bob@pbx", now=0.0))
    out = agent.receive(response_to(first, 403).serialize(), PEER, 0.1)
    assert out == [RegistrationState("k", False, 403)]
    assert sent(agent.tick(0.1 + REGISTER_RETRY_S - 0.01)) == []
    (again,) = sent(agent.tick(0.1 + REGISTER_RETRY_S))
    assert again.method == "REGISTER" and again.call_id == first.call_id
    # No answer at all: timer F, then a retry a minute later.
    out = agent.tick(60.1 + 64 * 0.5)
    assert RegistrationState("k", False, 408) in out
    assert sent(agent.tick(60.1 + 32 + REGISTER_RETRY_S - 0.01)) == []
    # A challenge with no credentials to answer it is a failure too.
    (third,) = sent(agent.tick(60.1 + 32 + REGISTER_RETRY_S))
    challenge = DigestChallenger("pbx").challenge(third, 152.2)
    assert agent.receive(challenge.serialize(), PEER, 152.2) == [RegistrationState("k", False, 401)]


def test_bad_registrations_are_refused() -> None:
    agent = make_agent()
    with pytest.raises(ValueError, match="with a user"):
        agent.register("a", registrar=PEER, aor="sip:pbx.example.com", now=0)
    with pytest.raises(ValueError):
        agent.register("b", registrar=PEER, aor="not a uri", now=0)
    agent.register("c", registrar=PEER, aor="sip:c@pbx", now=0)
    with pytest.raises(ValueError, match="exists"):
        agent.register("c", registrar=PEER, aor="sip:c@pbx", now=0)
    assert agent.unregister("unknown", 0) == []


def test_a_contact_rewrite_holds_for_the_whole_dialog() -> None:
    """A trunk rule's Contact rewrite: on the INVITE and on our answer to a re-INVITE."""
    agent = make_agent()
    invite = place(agent, contact=lambda uri: replace(uri, host="203.0.113.9", port=5099))
    assert invite.headers.get("contact") == "<sip:alice@203.0.113.9:5099>"
    ok = response_to(
        invite,
        200,
        to_tag="bob1",
        headers=[("Content-Type", "application/sdp"), ("Contact", "<sip:bob@192.0.2.1:5070>")],
        body=ANSWER.encode(),
    )
    agent.receive(ok.serialize(), PEER, 0.5)
    reinvite = (
        f"INVITE sip:alice@{NODE}:5080 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKri\r\n"
        f"From: <sip:bob@192.0.2.1:5060>;tag=bob1\r\nTo: {invite.headers.get('from')}\r\n"
        "Call-ID: s.out-1\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@192.0.2.1:5070>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(OFFER)}\r\n\r\n{OFFER}"
    )
    agent.receive(reinvite.encode(), PEER, 1.0)
    (answer,) = sent(agent.reanswer("s.out-1", ANSWER, 1.1))
    assert answer.status == 200
    assert answer.headers.get("contact") == "<sip:alice@203.0.113.9:5099>"
    # Without a rewrite the Contact is our own address.
    plain = place(make_agent())
    assert "203.0.113.9" not in str(plain.headers.get("contact"))
