"""The ``/metrics`` families of calls: SIP signalling, RTP/RTCP media and WebRTC peers.

Nothing here counts: the SIP agent keeps its counters (:class:`~activecall.sip.stats.SipStats`
and its gauges), the workers keep their media totals (:mod:`activecall.workers.media_stats`,
carried to the supervisor in heartbeats and over restarts by the pool). The collectors
registered here copy them into the registry at scrape time.

SIP (``method`` is a known method or ``other``; ``code`` a common status code or its class,
``4xx``; ``direction`` is ``inbound`` or ``outbound``):

==================================================  =========================================
activecall_sip_messages_received_total              messages handed to the agent
activecall_sip_requests_received_total{method}      requests received (retransmissions too)
activecall_sip_requests_sent_total{method}          requests sent (retransmissions too)
activecall_sip_responses_received_total{method,code}
activecall_sip_responses_sent_total{method,code}
activecall_sip_malformed_total{outcome}             unparsable messages: ``answered`` or
                                                    ``dropped``
activecall_sip_retransmissions_total{direction}     ``sent`` / ``received``
activecall_sip_transactions                         live transactions
activecall_sip_dialogs                              confirmed dialogs
activecall_sip_calls{state}                         calls by ``incoming``/``calling``/``answered``
activecall_sip_calls_started_total{direction}
activecall_sip_calls_answered_total{direction}
activecall_sip_calls_failed_total{direction}        ended without an answer
activecall_sip_registrations{state}                 ``register_users`` by ``pending``/
                                                    ``registered``/``failed``/``unregistering``
activecall_sip_connections{transport}               open ``tcp``/``tls`` connections
==================================================  =========================================

RTP, over every call of every worker, ended and live (payload bytes; ``reason`` of drops:
``late``, ``duplicate``, ``overflow``, ``rejected``, ``malformed``):

==================================================  =========================================
activecall_rtp_packets_received_total               packets accepted from the remote source
activecall_rtp_packets_sent_total
activecall_rtp_bytes_received_total / _sent_total   payload octets
activecall_rtp_packets_lost_total                   sequence gaps (RFC 3550 A.3)
activecall_rtp_packets_dropped_total{reason}
activecall_rtp_concealed_frames_total               20 ms frames concealed for lost packets
activecall_rtcp_reports_sent_total / _received_total
activecall_rtp_remote_lost_packets_total            our packets the remotes reported lost
activecall_rtp_jitter_seconds                       histogram: each call's highest
                                                    interarrival jitter (RFC 3550 estimate)
activecall_rtp_remote_loss_ratio                    histogram: each call's share of packets
                                                    the remote reported lost, when it ended
activecall_rtp_calls                                live calls with RTP media
activecall_rtp_jitter_max_seconds                   highest jitter over live calls
activecall_rtp_remote_fraction_lost_max             highest fraction lost the remotes last
                                                    reported, over live calls
activecall_srtp_dropped_total{reason}                SRTP/SRTCP datagrams dropped: ``auth``
                                                    (authentication failed), ``replay``,
                                                    ``other``
activecall_webrtc_frames_received_total / _sent_total   20 ms frames from / to browsers
activecall_webrtc_frames_dropped_total{direction}   ``in`` / ``out``
activecall_webrtc_calls                             live WebRTC calls
==================================================  =========================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from activecall.sip.agent import REGISTRATION_STATES, SipAgent
from activecall.sip.stats import DIRECTIONS
from activecall.supervisor.metrics import Counter, Histogram, Registry
from activecall.supervisor.pool import MediaTotals
from activecall.workers.media_stats import JITTER_BUCKETS_S, LOSS_BUCKETS

__all__ = ["register_media_metrics", "register_sip_metrics"]

_CALL_STATES = ("incoming", "calling", "answered")
_DROP_REASONS = {
    "late": "rtpLate",
    "duplicate": "rtpDuplicates",
    "overflow": "rtpOverflow",
    "rejected": "rtpRejected",
    "malformed": "rtpMalformed",
}
_SRTP_REASONS = {"auth": "srtpAuthFailures", "replay": "srtpReplays", "other": "srtpOtherFailures"}
_RTP_COUNTERS = {
    "activecall_rtp_packets_received_total": ("rtpPacketsReceived", "RTP packets received."),
    "activecall_rtp_packets_sent_total": ("rtpPacketsSent", "RTP packets sent."),
    "activecall_rtp_bytes_received_total": ("rtpBytesReceived", "RTP payload bytes received."),
    "activecall_rtp_bytes_sent_total": ("rtpBytesSent", "RTP payload bytes sent."),
    "activecall_rtp_packets_lost_total": (
        "rtpPacketsLost",
        "RTP packets lost on the way to us (sequence gaps, RFC 3550 A.3).",
    ),
    "activecall_rtp_concealed_frames_total": (
        "rtpConcealed",
        "20 ms frames concealed because their packet was missing.",
    ),
    "activecall_rtcp_reports_sent_total": ("rtcpSent", "RTCP compound reports sent."),
    "activecall_rtcp_reports_received_total": ("rtcpReceived", "RTCP reports received."),
    "activecall_rtp_remote_lost_packets_total": (
        "rtpRemoteLost",
        "RTP packets of ours the remote parties reported lost (RTCP).",
    ),
    "activecall_webrtc_frames_received_total": (
        "webrtcFramesIn",
        "20 ms audio frames received from browsers.",
    ),
    "activecall_webrtc_frames_sent_total": ("webrtcFramesOut", "20 ms audio frames sent."),
}


def register_sip_metrics(
    registry: Registry,
    agent: SipAgent,
    connections: Callable[[], Mapping[str, int]] | None = None,
) -> None:
    """Expose ``agent``'s counters and gauges; ``connections()`` gives open stream
    connections by transport (``TCP``, ``TLS``)."""
    stats = agent.stats
    messages = registry.counter(
        "activecall_sip_messages_received_total", "SIP messages received, parsed or not."
    )
    requests_in = registry.counter(
        "activecall_sip_requests_received_total", "SIP requests received.", ("method",)
    )
    requests_out = registry.counter(
        "activecall_sip_requests_sent_total", "SIP requests sent.", ("method",)
    )
    responses_in = registry.counter(
        "activecall_sip_responses_received_total", "SIP responses received.", ("method", "code")
    )
    responses_out = registry.counter(
        "activecall_sip_responses_sent_total", "SIP responses sent.", ("method", "code")
    )
    malformed = registry.counter(
        "activecall_sip_malformed_total",
        "SIP messages that did not parse: answered (400, 413, 505) or dropped.",
        ("outcome",),
    )
    retransmissions = registry.counter(
        "activecall_sip_retransmissions_total",
        "SIP retransmissions sent (timers, repeated answers) and received.",
        ("direction",),
    )
    transactions = registry.gauge("activecall_sip_transactions", "Live SIP transactions.")
    dialogs = registry.gauge("activecall_sip_dialogs", "Confirmed SIP dialogs.")
    calls = registry.gauge("activecall_sip_calls", "SIP calls by state.", ("state",))
    started = registry.counter(
        "activecall_sip_calls_started_total", "SIP calls begun.", ("direction",)
    )
    answered = registry.counter(
        "activecall_sip_calls_answered_total", "SIP calls answered.", ("direction",)
    )
    failed = registry.counter(
        "activecall_sip_calls_failed_total",
        "SIP calls that ended without an answer (refused, cancelled, timed out).",
        ("direction",),
    )
    registrations = registry.gauge(
        "activecall_sip_registrations", "register_users bindings by state.", ("state",)
    )
    open_connections = registry.gauge(
        "activecall_sip_connections", "Open SIP stream connections.", ("transport",)
    )

    def collect() -> None:
        messages.labels().value = stats.messages_received
        _copy(requests_in, stats.requests_received)
        _copy(requests_out, stats.requests_sent)
        _copy(responses_in, stats.responses_received)
        _copy(responses_out, stats.responses_sent)
        malformed.labels("answered").value = stats.malformed_answered
        malformed.labels("dropped").value = stats.malformed_dropped
        retransmissions.labels("sent").value = stats.retransmissions_sent
        retransmissions.labels("received").value = stats.retransmissions_received
        for family, counts in (
            (started, stats.calls_started),
            (answered, stats.calls_answered),
            (failed, stats.calls_failed),
        ):
            for direction in DIRECTIONS:
                family.labels(direction).value = counts.get(direction, 0)
        transactions.set(len(agent.transactions))
        dialogs.set(agent.dialog_count)
        by_state = agent.call_counts()
        for state in _CALL_STATES:
            calls.labels(state).set(by_state.get(state, 0))
        by_registration = agent.registration_counts()
        for state in REGISTRATION_STATES:
            registrations.labels(state).set(by_registration.get(state, 0))
        if connections is not None:
            for transport, count in connections().items():
                open_connections.labels(transport.lower()).set(count)

    registry.add_collector(collect)


def register_media_metrics(registry: Registry, media: Callable[[], MediaTotals]) -> None:
    """Expose the workers' RTP and WebRTC totals; ``media()`` is ``pool.stats().media``."""
    counters = {
        name: (key, registry.counter(name, help_text))
        for name, (key, help_text) in _RTP_COUNTERS.items()
    }
    dropped = registry.counter(
        "activecall_rtp_packets_dropped_total",
        "RTP datagrams received and not played, by reason.",
        ("reason",),
    )
    srtp_dropped = registry.counter(
        "activecall_srtp_dropped_total",
        "SRTP/SRTCP datagrams dropped: failed authentication, replayed, or refused otherwise.",
        ("reason",),
    )
    webrtc_dropped = registry.counter(
        "activecall_webrtc_frames_dropped_total",
        "WebRTC frames dropped: in (not read in time), out (send queue full).",
        ("direction",),
    )
    jitter = registry.histogram(
        "activecall_rtp_jitter_seconds",
        "Highest interarrival jitter (RFC 3550) of each ended RTP call's received stream.",
        buckets=JITTER_BUCKETS_S,
    )
    remote_loss = registry.histogram(
        "activecall_rtp_remote_loss_ratio",
        "Share of each RTP call's packets the remote reported lost (RTCP), when it ended.",
        buckets=LOSS_BUCKETS,
    )
    rtp_calls = registry.gauge("activecall_rtp_calls", "Live calls with RTP media.")
    webrtc_calls = registry.gauge("activecall_webrtc_calls", "Live WebRTC calls.")
    jitter_max = registry.gauge(
        "activecall_rtp_jitter_max_seconds", "Highest interarrival jitter over live RTP calls."
    )
    loss_max = registry.gauge(
        "activecall_rtp_remote_fraction_lost_max",
        "Highest fraction lost the remote parties last reported (RTCP), over live RTP calls.",
    )

    def collect() -> None:
        totals = media()
        values = totals.counters
        for key, family in counters.values():
            family.labels().value = values.get(key, 0)
        for reason, key in _DROP_REASONS.items():
            dropped.labels(reason).value = values.get(key, 0)
        for reason, key in _SRTP_REASONS.items():
            srtp_dropped.labels(reason).value = values.get(key, 0)
        webrtc_dropped.labels("in").value = values.get("webrtcDroppedIn", 0)
        webrtc_dropped.labels("out").value = values.get("webrtcDroppedOut", 0)
        _copy_histogram(jitter, totals.histograms.get("jitter"))
        _copy_histogram(remote_loss, totals.histograms.get("remoteLoss"))
        live = totals.live
        rtp_calls.set(live.get("rtpCalls", 0))
        webrtc_calls.set(live.get("webrtcCalls", 0))
        jitter_max.set(live.get("jitterMaxMs", 0.0) / 1000.0)
        loss_max.set(live.get("remoteLossMax", 0.0))

    registry.add_collector(collect)


def _copy(family: Counter, counts: Mapping[str, int] | Mapping[tuple[str, str], int]) -> None:
    for labels, value in counts.items():
        values = labels if isinstance(labels, tuple) else (labels,)
        family.labels(*values).value = value


def _copy_histogram(family: Histogram, found: tuple[tuple[int, ...], float] | None) -> None:
    child = family.labels()
    if found is None or len(found[0]) != len(child.counts):
        return  # no call ended yet (or a worker of another build): keep what is shown
    counts, total = found
    child.counts = list(counts)
    child.count = sum(counts)
    child.sum = total
