"""Media counters of one worker: RTP and WebRTC totals over its calls, live and ended.

A session that has media registers a sampler with its worker
(``SessionContext.watch_media``, or :func:`watch_media` on any port): a function returning a
:class:`MediaSample`, the call's cumulative counters now. :class:`MediaTally` keeps the
samplers of live calls, folds a call's last sample into its totals when the call ends (so
counters survive calls ending), and renders :meth:`MediaTally.snapshot` for the heartbeat
(``media`` field), which the supervisor's pool carries over worker restarts and ``/metrics``
exposes. Without I/O: samplers are called when the worker asks.

Counters (``totals``; camelCase keys, the heartbeat's style):

======================  ====================================================================
key                     what
======================  ====================================================================
rtpPacketsReceived      RTP packets accepted from the remote source (RFC 3550 A.1)
rtpPacketsSent          RTP packets sent (audio and RFC 4733 events)
rtpBytesReceived/Sent   their payload octets
rtpPacketsLost          sequence gaps: expected minus received (RFC 3550 A.3), not below 0
rtpLate                 packets that came after their playout time (jitter buffer)
rtpDuplicates           packets received twice (jitter buffer)
rtpOverflow             packets the jitter buffer dropped (overflow, sequence restart)
rtpRejected             datagrams not from the remote source or with a foreign payload type
rtpMalformed            datagrams that were not RTP/RTCP
srtpAuthFailures        SRTP/SRTCP datagrams that failed authentication (dropped)
srtpReplays             SRTP/SRTCP datagrams replayed (dropped)
srtpOtherFailures       SRTP/SRTCP datagrams libsrtp refused otherwise (dropped)
rtpConcealed            20 ms frames concealed for missing packets
rtcpSent/Received       RTCP compound reports sent and received
rtpRemoteLost           packets of ours the remote reported lost (its cumulative count)
webrtcFramesIn/Out      20 ms frames from / to browsers
webrtcDroppedIn/Out     frames dropped (nobody read them in time / the send queue was full)
======================  ====================================================================

Histograms (``hist``, observed once per call when it ends): ``jitter`` (the highest RFC 3550
interarrival jitter of the remote's stream during the call, seconds, :data:`JITTER_BUCKETS_S`) and
``remoteLoss`` (the share of our packets the remote reported lost in its last report,
:data:`LOSS_BUCKETS`).
Gauges (``live``): ``rtpCalls``, ``webrtcCalls``, ``jitterMaxMs`` and ``remoteLossMax`` (the
highest interarrival jitter and latest remote-reported fraction lost over live RTP calls).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from activecall.rtp.media import MediaStats
    from activecall.rtp.srtp import SrtpStats
    from activecall.webrtc.peer import PeerStats

__all__ = [
    "COUNTERS",
    "JITTER_BUCKETS_S",
    "LOSS_BUCKETS",
    "MediaSample",
    "MediaSampler",
    "MediaTally",
    "rtp_sample",
    "watch_media",
    "webrtc_sample",
]

log = logging.getLogger(__name__)

COUNTERS = (
    "rtpPacketsReceived", "rtpPacketsSent", "rtpBytesReceived", "rtpBytesSent",
    "rtpPacketsLost", "rtpLate", "rtpDuplicates", "rtpOverflow", "rtpRejected",
    "rtpMalformed", "rtpConcealed", "rtcpSent", "rtcpReceived", "rtpRemoteLost",
    "srtpAuthFailures", "srtpReplays", "srtpOtherFailures",
    "webrtcFramesIn", "webrtcFramesOut", "webrtcDroppedIn", "webrtcDroppedOut",
)  # fmt: skip
"""Every counter key of :meth:`MediaTally.snapshot` (the table in the module docstring)."""

JITTER_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
"""Upper bounds of the per-call interarrival jitter histogram (seconds)."""
LOSS_BUCKETS: tuple[float, ...] = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
"""Upper bounds of the per-call remote-reported loss histogram (a share of 1)."""


@dataclass(frozen=True, slots=True)
class MediaSample:
    """One call leg's cumulative counters now (keys of :data:`COUNTERS`) and its quality.

    ``kind`` is ``rtp`` or ``webrtc``. ``jitter_ms`` is the interarrival jitter of what we
    receive (``None`` before the first packet), ``jitter_max_ms`` its highest value over the
    call; ``remote_fraction_lost`` the latest fraction
    the remote reported lost, ``remote_loss`` its cumulative lost over the packets we sent
    (both ``None`` until a report came).
    """

    kind: str
    counters: Mapping[str, int]
    jitter_ms: float | None = None
    jitter_max_ms: float | None = None
    remote_fraction_lost: float | None = None
    remote_loss: float | None = None


MediaSampler = Callable[[], MediaSample]
"""What a session registers: returns its leg's sample when called."""


def rtp_sample(stats: MediaStats, srtp: SrtpStats | None = None) -> MediaSample:
    """The sample of an RTP leg from its pipeline's statistics (and its SRTP contexts')."""
    session, jitter = stats.session, stats.jitter
    receive, send, remote = session.receive, session.send, session.remote
    counters = {
        "rtpPacketsReceived": session.packets_received_total,
        "rtpPacketsSent": send.packets,
        "rtpBytesReceived": session.octets_received_total,
        "rtpBytesSent": send.octets,
        "rtpPacketsLost": session.packets_lost_total,
        "rtpLate": jitter.late,
        "rtpDuplicates": jitter.duplicates,
        "rtpOverflow": jitter.discarded,
        "rtpRejected": receive.dropped,
        "rtpMalformed": stats.bad_datagrams,
        "rtpConcealed": stats.concealed_packets,
        "rtcpSent": session.rtcp_sent,
        "rtcpReceived": session.rtcp_received,
        "rtpRemoteLost": max(0, remote.cumulative_lost) if remote is not None else 0,
    }
    if srtp is not None:
        counters["srtpAuthFailures"] = srtp.auth_failures
        counters["srtpReplays"] = srtp.replays
        counters["srtpOtherFailures"] = srtp.other_failures
    loss = None
    if remote is not None:
        sent = remote.sent_packets
        loss = min(1.0, max(0, remote.cumulative_lost) / sent) if sent else 0.0
    return MediaSample(
        "rtp",
        counters,
        jitter_ms=receive.jitter_ms if receive.ssrc is not None else None,
        jitter_max_ms=session.jitter_max_ms if receive.ssrc is not None else None,
        remote_fraction_lost=remote.fraction_lost if remote is not None else None,
        remote_loss=loss,
    )


def webrtc_sample(stats: PeerStats) -> MediaSample:
    """The sample of a WebRTC leg from its peer's frame counters."""
    return MediaSample(
        "webrtc",
        {
            "webrtcFramesIn": stats.frames_in,
            "webrtcFramesOut": stats.frames_out,
            "webrtcDroppedIn": stats.dropped_in,
            "webrtcDroppedOut": stats.dropped_out,
        },
    )


def watch_media(port: Any, sampler: MediaSampler) -> None:
    """Register ``sampler`` with the session's worker, when its port is one (tests' ports
    need not be)."""
    watch = getattr(port, "watch_media", None)
    if watch is not None:
        watch(sampler)


@dataclass(slots=True)
class _Buckets:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def to_dict(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.sum}


@dataclass(slots=True)
class _Watch:
    """One leg's sampler, its last sample and its running totals (monotonic across resets)."""

    sampler: MediaSampler
    last: MediaSample | None = None
    base: dict[str, int] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    done: bool = False  # its call ended: its totals moved to the ended calls'

    def sample(self) -> dict[str, int]:
        """Sample again; how much each total grew."""
        try:
            now = self.sampler()
        except Exception:  # a broken sampler must not take the heartbeat down
            log.exception("a media sampler failed")
            return {}
        last, base = self.last, self.base
        if last is not None:
            for key, value in last.counters.items():
                if now.counters.get(key, 0) < value:
                    # The leg's statistics started afresh (a new SSRC): keep what was counted.
                    base[key] = base.get(key, 0) + value
        self.last = now
        growth: dict[str, int] = {}
        totals = self.totals
        for key in base.keys() | now.counters.keys():
            value = base.get(key, 0) + now.counters.get(key, 0)
            if value != totals.get(key, 0):
                growth[key] = value - totals.get(key, 0)
                totals[key] = value
        return growth


class MediaTally:
    """The media counters of one worker's calls; see the module docstring.

    The totals of live legs are kept as a running sum, so :meth:`snapshot` costs a sample of
    at most ``budget`` legs (taken in turn) whatever the number of calls: a leg not sampled
    this time counts with its previous sample. :meth:`finish` always takes a last one.
    """

    def __init__(self) -> None:
        self._live: dict[Hashable, list[_Watch]] = {}
        self._turn: list[_Watch] = []  # legs still to sample in this round
        self._live_sum: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._ended: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._jitter = _Buckets(JITTER_BUCKETS_S)
        self._remote_loss = _Buckets(LOSS_BUCKETS)

    def watch(self, key: Hashable, sampler: MediaSampler) -> None:
        """Sample ``sampler`` while the call ``key`` lives (a call may have several legs)."""
        watch = _Watch(sampler)
        self._live.setdefault(key, []).append(watch)
        self._sample(watch)

    def finish(self, key: Hashable) -> None:
        """The call ``key`` ended: its last samples go into the totals and histograms."""
        for watch in self._live.pop(key, ()):
            self._sample(watch)
            watch.done = True
            for name, value in watch.totals.items():
                self._ended[name] = self._ended.get(name, 0) + value
                self._live_sum[name] -= value
            last = watch.last
            if last is None:
                continue
            if last.jitter_max_ms is not None:
                self._jitter.observe(last.jitter_max_ms / 1000.0)
            if last.remote_loss is not None:
                self._remote_loss.observe(last.remote_loss)

    @property
    def calls(self) -> int:
        """Live calls with a sampler."""
        return len(self._live)

    def _sample(self, watch: _Watch) -> None:
        for name, growth in watch.sample().items():
            self._live_sum[name] = self._live_sum.get(name, 0) + growth

    def snapshot(self, budget: int | None = None) -> dict[str, Any]:
        """Totals (ended and live calls), histograms and live gauges, after sampling up to
        ``budget`` live legs (all of them by default)."""
        if budget is None:
            for watches in self._live.values():
                for watch in watches:
                    self._sample(watch)
        else:
            for _ in range(budget):
                if not self._turn:
                    self._turn = [w for watches in self._live.values() for w in watches]
                    if not self._turn:
                        break
                watch = self._turn.pop()
                if not watch.done:
                    self._sample(watch)
        live = {"rtpCalls": 0, "webrtcCalls": 0, "jitterMaxMs": 0.0, "remoteLossMax": 0.0}
        for watches in self._live.values():
            kinds = {w.last.kind for w in watches if w.last is not None}
            for watch in watches:
                sample = watch.last
                if sample is None:
                    continue
                if sample.jitter_ms is not None and sample.jitter_ms > live["jitterMaxMs"]:
                    live["jitterMaxMs"] = sample.jitter_ms
                lost = sample.remote_fraction_lost
                if lost is not None and lost > live["remoteLossMax"]:
                    live["remoteLossMax"] = lost
            for kind in kinds:
                live[f"{kind}Calls"] += 1
        return {
            "totals": {
                name: self._ended.get(name, 0) + self._live_sum.get(name, 0) for name in COUNTERS
            },
            "hist": {"jitter": self._jitter.to_dict(), "remoteLoss": self._remote_loss.to_dict()},
            "live": live,
        }
