"""RTP media cores: µs per packet for parsing, the jitter buffer, DTMF, SDP, and a whole leg.

Every row is a Python loop over realistic inputs (20 ms packets; the 60 s speech file for
the Goertzel detector), timed as the best of ``--repeat`` runs after a warm-up, reported per
operation and as operations per second on one core. The last rows run a whole
:class:`RtpMediaPipeline` call leg (one packet in, one 20 ms tick) and give how many legs
one core could carry at 50 packets a second each, before anything else a worker does.
Run: ``.venv/bin/python -m bench.rtp [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from activecall._native import g711
from activecall._native.dtmf import DtmfDetector
from activecall._native.resample import Resampler
from activecall.rtp.dtmf import DtmfReceiver, DtmfSender
from activecall.rtp.jitter import JitterBuffer
from activecall.rtp.media import RtpMediaPipeline
from activecall.rtp.packet import (
    ReportBlock,
    RtpPacket,
    SdesChunk,
    SenderReport,
    SourceDescription,
    parse_rtcp,
    serialize_rtcp,
)
from activecall.rtp.sdp import SessionDescription, answer, build_offer, parse_answer
from activecall.rtp.session import RtpSession
from bench._common import bar_chart, best_of, format_table, load_speech, machine, write_results

N = 3000  # packets per timed loop: 60 s of a 20 ms stream
SOURCE = ("192.0.2.10", 4000)

# An INVITE body of a softphone with many codecs (baresip 0.5.0's, IPv4).
OFFER = """v=0
o=- 953559690 1743778263 IN IP4 192.0.2.10
s=-
c=IN IP4 192.0.2.10
t=0 0
a=tool:baresip 0.5.0
m=audio 4000 RTP/AVP 0 8 96 97 98 99 100 101 102
b=AS:128
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:96 speex/32000/2
a=rtpmap:97 speex/16000/2
a=rtpmap:98 speex/8000/2
a=rtpmap:99 speex/32000
a=rtpmap:100 speex/16000
a=rtpmap:101 speex/8000
a=rtpmap:102 telephone-event/8000
a=fmtp:102 0-15
a=sendrecv
a=rtcp-mux
a=ptime:20
"""


@dataclass(frozen=True, slots=True)
class Row:
    """One timed operation: ``run`` does it ``count`` times."""

    operation: str
    run: Callable[[], Any]
    count: int
    unit: str = "packet"


def stream(n: int = N, pt: int = 0, size: int = 160) -> list[RtpPacket]:
    payload = bytes(range(256))[:size]
    return [RtpPacket(pt, i % 65536, (i * 160) % (1 << 32), 0x1234, payload) for i in range(n)]


def packet_rows() -> list[Row]:
    packets = stream()
    datagrams = [p.serialize() for p in packets]
    report = serialize_rtcp(
        [
            SenderReport(1, 2**62, 3, 4, 5, (ReportBlock(2, 1, 2, 3, 4, 5, 6),)),
            SourceDescription((SdesChunk(1, ((1, b"activecall-00000001"),)),)),
        ]
    )
    parsed_report = parse_rtcp(report)
    return [
        Row("RTP parse (172 B PCMU)", lambda: [RtpPacket.parse(d) for d in datagrams], N),
        Row("RTP serialise (172 B PCMU)", lambda: [p.serialize() for p in packets], N),
        Row("RTCP parse (SR + SDES)", lambda: [parse_rtcp(report) for _ in range(N)], N, "report"),
        Row(
            "RTCP serialise (SR + SDES)",
            lambda: [serialize_rtcp(parsed_report) for _ in range(N)],
            N,
            "report",
        ),
    ]


def jitter_rows() -> list[Row]:
    packets = stream()
    rng = random.Random(1)
    arrivals = sorted(((i * 20 + rng.uniform(0, 40), p) for i, p in enumerate(packets)))

    def steady() -> None:
        jb = JitterBuffer(8000)
        for i, p in enumerate(packets):
            jb.put(p, i * 20.0)
            jb.pop(i * 20.0)

    def jittery() -> None:
        jb = JitterBuffer(8000)
        k = 0
        for tick in range(0, N * 20 + 200, 20):
            while k < N and arrivals[k][0] <= tick:
                jb.put(arrivals[k][1], arrivals[k][0])
                k += 1
            jb.pop(tick)

    return [
        Row("jitter buffer put + pop, steady", steady, N),
        Row("jitter buffer put + pop, 0-40 ms jitter", jittery, N),
    ]


def session_rows() -> list[Row]:
    datagrams = [p.serialize() for p in stream()]
    payload = bytes(160)

    def receive() -> None:
        session = RtpSession(clock_rate=8000, payload_type=0, remote=SOURCE)
        for i, d in enumerate(datagrams):
            session.receive_rtp(d, SOURCE, i * 20.0)

    def send() -> None:
        session = RtpSession(clock_rate=8000, payload_type=0, remote=SOURCE)
        for i in range(N):
            session.send_audio(payload, 160, i * 20.0)

    return [
        Row("RtpSession.receive_rtp (parse + RFC 3550 stats)", receive, N),
        Row("RtpSession.send_audio (serialise)", send, N),
    ]


def dtmf_rows(speech: np.ndarray) -> list[Row]:
    sender = DtmfSender(101, 8000)
    sender.send("0123456789*#ABCD" * 20)
    events: list[RtpPacket] = []
    seq = 0
    while sender.busy:
        for p in sender.tick(seq * 160) or []:
            events.append(RtpPacket(101, seq % 65536, p.timestamp, 1, p.payload, p.marker))
        seq += 1

    def receive() -> None:
        receiver = DtmfReceiver()
        for p in events:
            receiver.handle(p)

    frames16 = speech[: len(speech) // 320 * 320].reshape(-1, 320)
    pcm8 = g711.decode_ulaw(g711.encode_ulaw(Resampler(16000, 8000).process(speech)))
    frames8 = pcm8[: len(pcm8) // 160 * 160].reshape(-1, 160)

    def goertzel(frames: np.ndarray, rate: int) -> Callable[[], None]:
        def run() -> None:
            detector = DtmfDetector(rate)
            for f in frames:
                detector.process(f)

        return run

    return [
        Row("RFC 4733 DtmfReceiver.handle", receive, len(events)),
        Row(
            "Goertzel DTMF detector, 16 kHz speech",
            goertzel(frames16, 16000),
            len(frames16),
            "20 ms",
        ),
        Row(
            "Goertzel DTMF detector, 8 kHz G.711 speech",
            goertzel(frames8, 8000),
            len(frames8),
            "20 ms",
        ),
    ]


def sdp_rows() -> list[Row]:
    ours = ["pcmu", "pcma", "g722", "opus", "telephone-event"]
    offer = build_offer(ours, "192.0.2.1", 5000, session_id=1)
    reply, _ = answer(offer, ours, "192.0.2.2", 6000, session_id=2)
    n = 1000
    return [
        Row(
            "SDP parse (softphone offer, 25 lines)",
            lambda: [SessionDescription.parse(OFFER) for _ in range(n)],
            n,
            "SDP",
        ),
        Row(
            "SDP answer (parse + negotiate + build)",
            lambda: [answer(OFFER, ours, "192.0.2.1", 5000, session_id=1) for _ in range(n)],
            n,
            "SDP",
        ),
        Row("SDP parse_answer", lambda: [parse_answer(offer, reply) for _ in range(n)], n, "SDP"),
    ]


def leg_row(codec: str, inband: bool, speech: np.ndarray, ticks: int = 1500) -> Row:
    """One leg: each 20 ms, one packet of speech in and one tick (decode, jitter buffer,
    DTMF, encode of agent speech, RTCP check). Packets come from a second leg."""
    ours = [codec] + ([] if inband else ["telephone-event"])
    offer = build_offer(ours, SOURCE[0], SOURCE[1], session_id=1)
    reply, b_media = answer(offer, ours, "192.0.2.20", 5000, session_id=2)
    a_media = parse_answer(offer, reply)
    frames = speech[: ticks * 320].reshape(-1, 320)
    sender = RtpMediaPipeline(a_media, rng=random.Random(1))
    incoming = [
        d.data for i, f in enumerate(frames) for d in sender.tick(i * 20.0, 1e9, f).datagrams
    ]

    def run() -> None:
        leg = RtpMediaPipeline(b_media, inband_dtmf=inband, rng=random.Random(2))
        for i, frame in enumerate(frames):
            now = i * 20.0
            leg.receive(incoming[i], SOURCE, now)
            leg.tick(now, 1e9 + now / 1000, frame)

    name = f"call leg, {codec}" + (", in-band DTMF" if inband else ", RFC 4733")
    return Row(name, run, len(frames), "20 ms")


NOTES = """\
- Inputs: 20 ms packets of a continuous stream (172-byte PCMU datagrams); RTCP is an SR with
  one report block and an SDES CNAME; the DTMF receiver gets the packets of 320 key presses
  as a sender makes them (start, updates, three ends); the Goertzel detector reads
  `tests/data/speech_60s_16k.flac` in 20 ms frames (320 samples at 16 kHz; at 8 kHz after
  our resampler and G.711 µ-law).
- "call leg": `RtpMediaPipeline.receive` of one packet + `RtpMediaPipeline.tick` with one
  20 ms agent frame: jitter buffer, decode to 16 kHz, concealment bookkeeping, in-band
  DTMF detection (in-band rows; else telephone-event negotiated and no detector), encode,
  RTP out, RTCP poll. Opus through PyAV's libopus. "legs per core" = 20 ms / time per tick.
- Timing: best of {repeat} runs after one warm-up; every run builds fresh objects.
- µs per op = run time / operations; "per second" = 1 / that, on one core of this machine.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per row (best of)")
    args = parser.parse_args()
    speech = load_speech()
    print(machine())
    rows = [
        *packet_rows(),
        *session_rows(),
        *jitter_rows(),
        *dtmf_rows(speech),
        *sdp_rows(),
        *(leg_row(c, inband, speech) for c in ("pcmu", "g722", "opus") for inband in (False, True)),
    ]
    table_rows = []
    labels, values = [], []
    for row in rows:
        print(f"  {row.operation} ...", flush=True)
        seconds = best_of(row.run, args.repeat)
        us = seconds * 1e6 / row.count
        per_second = 1e6 / us
        extra = f"{20_000 / us:,.0f} legs" if row.operation.startswith("call leg") else ""
        table_rows.append([row.operation, row.unit, f"{us:.2f}", f"{per_second:,.0f}", extra])
        labels.append(row.operation)
        values.append(us)
    table = format_table(
        ["operation", "per", "µs per op", "per second (1 core)", "legs per core"], table_rows
    )
    print()
    write_results(
        "rtp", "RTP media cores: time per packet", table, NOTES.format(repeat=args.repeat)
    )
    chart = bar_chart(
        "rtp", "RTP media cores: µs per operation (log scale)", labels, values, "µs", log=True
    )
    print(f"wrote {chart}")


if __name__ == "__main__":
    main()
