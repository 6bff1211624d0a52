"""Telephony media cores without I/O: SDP offer/answer, RTP/RTCP, jitter buffer, DTMF.

* :mod:`~activecall.rtp.sdp`: session descriptions and the offer/answer rules (reference §2.8);
* :mod:`~activecall.rtp.packet`: RTP and compound RTCP packets;
* :mod:`~activecall.rtp.session`: one RTP session's statistics, sending, RTCP and latching;
* :mod:`~activecall.rtp.jitter`: the adaptive receive jitter buffer;
* :mod:`~activecall.rtp.dtmf`: RFC 4733 events and SIP INFO DTMF bodies;
* :mod:`~activecall.rtp.media`: the pipeline a worker runs per SIP call leg.

In-band DTMF detection is the compiled kernel :mod:`activecall._native.dtmf`.
"""

from activecall.rtp.dtmf import (
    DtmfDigit,
    DtmfError,
    DtmfReceiver,
    DtmfSender,
    InfoDtmf,
    parse_info_dtmf,
)
from activecall.rtp.jitter import JitterBuffer, JitterReport, Lost
from activecall.rtp.media import (
    Datagram,
    DigitReceived,
    MediaReady,
    MediaStats,
    RemoteBye,
    RtpMediaPipeline,
    TickOutput,
)
from activecall.rtp.packet import (
    Bye,
    PacketError,
    ReceiverReport,
    ReportBlock,
    RtcpPacket,
    RtpPacket,
    SenderReport,
    SourceDescription,
    is_rtcp,
    parse_rtcp,
    serialize_rtcp,
)
from activecall.rtp.sdp import (
    NegotiatedMedia,
    NotAcceptable,
    SdpError,
    SessionDescription,
    answer,
    build_offer,
    parse_answer,
    supported_codecs,
)
from activecall.rtp.session import Address, RtpSession, SessionStats

__all__ = [
    "Address",
    "Bye",
    "Datagram",
    "DigitReceived",
    "DtmfDigit",
    "DtmfError",
    "DtmfReceiver",
    "DtmfSender",
    "InfoDtmf",
    "JitterBuffer",
    "JitterReport",
    "Lost",
    "MediaReady",
    "MediaStats",
    "NegotiatedMedia",
    "NotAcceptable",
    "PacketError",
    "ReceiverReport",
    "RemoteBye",
    "ReportBlock",
    "RtcpPacket",
    "RtpMediaPipeline",
    "RtpPacket",
    "RtpSession",
    "SdpError",
    "SenderReport",
    "SessionDescription",
    "SessionStats",
    "SourceDescription",
    "TickOutput",
    "answer",
    "build_offer",
    "is_rtcp",
    "parse_answer",
    "parse_info_dtmf",
    "parse_rtcp",
    "serialize_rtcp",
    "supported_codecs",
]
