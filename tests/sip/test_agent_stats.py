"""The agent's counters (``SipAgent.stats`` and its gauges), driven with bytes as in test_agent."""

from __future__ import annotations

from activecall.sip.agent import REGISTER_RETRY_S, SipAgent
from activecall.sip.message import SipParseError, SipStreamParser, response_to
from activecall.sip.stats import SipStats, code_label, method_label
from tests.sip.test_agent import ANSWER, OFFER, PEER, make_agent, place, request, sent


def test_an_inbound_call_counts_each_message_once_and_the_call_as_answered() -> None:
    agent = make_agent()
    out = agent.receive(request("INVITE", body=OFFER), PEER, 0.0)
    stats = agent.stats
    assert stats.requests_received == {"INVITE": 1}
    assert stats.responses_sent == {("INVITE", "100"): 1}
    assert stats.calls_started == {"inbound": 1} and not stats.calls_answered
    assert agent.call_counts() == {"incoming": 1, "calling": 0, "answered": 0}
    assert len(agent.transactions) == 1 and agent.dialog_count == 0
    (session_id,) = agent.session_ids
    agent.ringing(session_id, None, 0.1)
    (ok,) = sent(agent.accept(session_id, ANSWER, 0.2))
    assert stats.responses_sent == {
        ("INVITE", "100"): 1,
        ("INVITE", "180"): 1,
        ("INVITE", "200"): 1,
    }
    assert stats.calls_answered == {"inbound": 1} and agent.dialog_count == 1
    assert agent.call_counts()["answered"] == 1
    # The 2xx timer resends the 200 until the ACK comes: a retransmission we sent.
    agent.tick(0.2 + 0.5)
    assert stats.retransmissions_sent == 1 and stats.responses_sent[("INVITE", "200")] == 2
    agent.receive(request("ACK", to_tag=ok.to_tag, branch="z9hG4bKack"), PEER, 0.8)
    bye = request("BYE", to_tag=ok.to_tag, branch="z9hG4bKbye", cseq=2)
    agent.receive(bye, PEER, 1.0)
    assert stats.requests_received == {"INVITE": 1, "ACK": 1, "BYE": 1}
    assert stats.responses_sent[("BYE", "200")] == 1
    assert agent.dialog_count == 0 and agent.call_counts()["answered"] == 0
    assert not stats.calls_failed and stats.retransmissions_received == 0
    assert stats.messages_received == 3 and not stats.requests_sent and out


def test_a_retransmitted_invite_is_counted_as_one_call_and_answered_again() -> None:
    agent = make_agent()
    agent.receive(request("INVITE", body=OFFER), PEER, 0.0)
    (session_id,) = agent.session_ids
    agent.ringing(session_id, None, 0.1)
    agent.receive(request("INVITE", body=OFFER), PEER, 0.2)  # the same branch: a retransmission
    stats = agent.stats
    assert stats.retransmissions_received == 1 and stats.retransmissions_sent == 1
    assert stats.requests_received == {"INVITE": 2} and stats.calls_started == {"inbound": 1}
    assert stats.responses_sent[("INVITE", "180")] == 2
    agent.reject(session_id, 486, "Busy Here", 0.3)
    assert stats.calls_failed == {"inbound": 1} and not stats.calls_answered
    assert stats.responses_sent[("INVITE", "486")] == 1


def test_malformed_messages_are_counted_as_answered_or_dropped() -> None:
    agent = make_agent()
    broken = request("OPTIONS").replace(b"Max-Forwards: 70", b"Max-Forwards: seventy")
    agent.receive(broken, PEER, 0)
    agent.receive(b"\x00\xff garbage", PEER, 0)
    agent.receive(b"SIP/2.0 200 OK\r\n\r\n", PEER, 0)
    stats = agent.stats
    assert (stats.malformed_answered, stats.malformed_dropped) == (1, 2)
    assert stats.responses_sent == {("OPTIONS", "400"): 1}
    assert stats.messages_received == 3
    assert not stats.requests_received and not stats.responses_received
    # A stream's framing error reaches the agent through malformed() directly.
    (error,) = SipStreamParser().feed(b"INVITE sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n")
    assert isinstance(error, SipParseError)
    agent.malformed(error, ("TCP", "192.0.2.1", 40000))
    assert stats.messages_received == 4
    assert stats.malformed_answered + stats.malformed_dropped == 4


def test_an_outbound_call_counts_requests_sent_responses_received_and_the_failure() -> None:
    agent = make_agent()
    invite = place(agent)
    stats = agent.stats
    assert stats.requests_sent == {"INVITE": 1} and stats.calls_started == {"outbound": 1}
    assert agent.call_counts()["calling"] == 1
    agent.tick(0.5)  # timer A
    assert stats.requests_sent == {"INVITE": 2} and stats.retransmissions_sent == 1
    agent.receive(response_to(invite, 180, to_tag="b").serialize(), PEER, 0.6)
    busy = response_to(invite, 486, to_tag="b").serialize()
    agent.receive(busy, PEER, 0.7)
    assert stats.responses_received == {("INVITE", "180"): 1, ("INVITE", "486"): 1}
    assert stats.requests_sent == {"INVITE": 2, "ACK": 1}
    assert stats.calls_failed == {"outbound": 1} and agent.call_counts()["calling"] == 0
    # The 486 again: the transaction absorbs it and ACKs again.
    agent.receive(busy, PEER, 0.8)
    assert stats.retransmissions_received == 1 and stats.retransmissions_sent == 2
    assert stats.requests_sent["ACK"] == 2 and stats.responses_received[("INVITE", "486")] == 2


def test_an_answered_outbound_call_and_a_retransmitted_200() -> None:
    agent = make_agent()
    invite = place(agent)
    ok = response_to(
        invite, 200, to_tag="b", headers=[("Contact", "<sip:bob@192.0.2.1>")], body=b""
    ).serialize()
    agent.receive(ok, PEER, 0.1)
    stats = agent.stats
    assert stats.calls_answered == {"outbound": 1} and agent.dialog_count == 1
    agent.receive(ok, PEER, 0.2)
    assert stats.retransmissions_received == 1 and stats.requests_sent == {"INVITE": 1, "ACK": 2}
    agent.hangup("s.out-1", 0.3)
    assert stats.requests_sent["BYE"] == 1 and not stats.calls_failed


def test_a_call_answered_after_its_session_hung_up_counts_as_answered() -> None:
    agent = make_agent()
    invite = place(agent)
    agent.hangup("s.out-1", 0.1)
    ok = response_to(invite, 200, to_tag="b", headers=[("Contact", "<sip:bob@192.0.2.1>")])
    agent.receive(ok.serialize(), PEER, 0.2)
    assert agent.stats.calls_answered == {"outbound": 1} and not agent.stats.calls_failed


def test_registrations_are_counted_by_state() -> None:
    agent = make_agent()
    (first,) = sent(agent.register("k", registrar=PEER, aor="sip:bob@pbx", now=0.0))
    assert agent.registration_counts() == {
        "pending": 1, "registered": 0, "failed": 0, "unregistering": 0,
    }  # fmt: skip
    agent.receive(response_to(first, 403).serialize(), PEER, 0.1)
    assert agent.registration_counts()["failed"] == 1
    (again,) = sent(agent.tick(0.1 + REGISTER_RETRY_S))
    agent.receive(response_to(again, 200).serialize(), PEER, 61.0)
    assert agent.registration_counts()["registered"] == 1
    (gone,) = sent(agent.unregister("k", 62.0))
    assert agent.registration_counts()["unregistering"] == 1
    agent.receive(response_to(gone, 200).serialize(), PEER, 62.1)
    assert sum(agent.registration_counts().values()) == 0
    assert agent.stats.requests_sent == {"REGISTER": 3}
    assert agent.stats.responses_received == {("REGISTER", "403"): 1, ("REGISTER", "200"): 2}


def test_unknown_methods_and_codes_get_bounded_labels() -> None:
    assert method_label("INVITE") == "INVITE" and method_label("FROBNICATE") == "other"
    assert code_label(486) == "486" and code_label(499) == "4xx" and code_label(42) == "other"
    stats = SipStats()
    stats.sent(b"SIP/2.0 299 Odd\r\nCseq:  7   FROBNICATE\r\n\r\n")
    stats.sent(b"FROBNICATE sip:a@b SIP/2.0\r\n\r\n")
    assert stats.responses_sent == {("other", "2xx"): 1} and stats.requests_sent == {"other": 1}
    agent: SipAgent = make_agent()
    agent.receive(request("FROBNICATE", branch="z9hG4bKf"), PEER, 0)
    assert agent.stats.requests_received == {"other": 1}
    assert agent.stats.responses_sent == {("other", "200"): 1}
