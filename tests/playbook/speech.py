"""The caller's side of scenario calls: lines spoken by piper, as 16 kHz PCM for ``/call`` and
as one RTP stream in a pcap for sipp's ``play_pcap_audio``: G.711 μ-law speech and pauses, and
keypad presses as RFC 4733 telephone-events (payload type 101), with one SSRC and continuous
sequence numbers and timestamps, as a phone sends them.

The pcap is Ethernet/IPv4/UDP/RTP (sipp replays the RTP payloads towards the media address it
was answered with, paced by the pcap's timestamps). μ-law is encoded by FFmpeg (PyAV), not by
activecall's own codec, so the node decodes what an independent encoder produced.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt

from activecall.providers.piper import load_voice, voice_files

__all__ = [
    "FRAME_8K",
    "Key",
    "Part",
    "keypad_16k",
    "mulaw_8k",
    "pcap_ms",
    "pcap_of",
    "silence_16k",
    "spoken_16k",
]

RATE = 16000
FRAME_8K = 160  # 20 ms of 8 kHz samples, one RTP packet
_EPOCH = 1_700_000_000
Audio = npt.NDArray[np.int16]


@functools.cache
def _voice() -> tuple[object, int]:
    model, config = voice_files(None)
    voice = load_voice(model, config)
    return voice, int(voice.config.sample_rate)


def _resample(samples: Audio, rate: int, to: int) -> Audio:
    """FFmpeg's resampler: ``samples`` at ``rate`` as ``to`` Hz."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=to)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    frame.pts = 0
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.int16) if out else np.zeros(0, np.int16)


@functools.cache
def spoken_16k(text: str) -> Audio:
    """``text`` spoken by piper's default voice (joe), as 16 kHz mono int16."""
    voice, rate = _voice()
    pieces = [c.audio_int16_array for c in voice.synthesize(text)]  # type: ignore[attr-defined]
    if not pieces:
        raise ValueError(f"piper said nothing for {text!r}")
    return _resample(np.concatenate(pieces).astype(np.int16), rate, RATE)


def silence_16k(ms: int) -> Audio:
    """``ms`` of silence at 16 kHz."""
    return np.zeros(RATE * ms // 1000, np.int16)


_ROWS, _COLUMNS = (697.0, 770.0, 852.0, 941.0), (1209.0, 1336.0, 1477.0, 1633.0)
_KEYPAD = ("123A", "456B", "789C", "*0#D")


def keypad_16k(keys: str, *, on_ms: int = 100, off_ms: int = 300) -> Audio:
    """``keys`` pressed on a phone whose audio carries the tones (in-band DTMF, ITU-T Q.23
    pairs at -10 dBm0 each), ``off_ms`` of silence after each press; 16 kHz."""
    amplitude = 32636 / 10 ** (3.17 / 20) * 10 ** (-10 / 20)
    t = np.arange(RATE * on_ms // 1000) / RATE
    parts: list[Audio] = []
    for key in keys:
        (row,) = [i for i, line in enumerate(_KEYPAD) if key.upper() in line]
        column = _KEYPAD[row].index(key.upper())
        pair = np.sin(2 * np.pi * _ROWS[row] * t) + np.sin(2 * np.pi * _COLUMNS[column] * t)
        parts += [(amplitude * pair).astype(np.int16), silence_16k(off_ms)]
    return np.concatenate(parts) if parts else silence_16k(0)


def mulaw_8k(samples: Audio) -> bytes:
    """16 kHz ``samples`` as 8 kHz G.711 μ-law (FFmpeg's resampler and ``pcm_mulaw``)."""
    narrow = _resample(samples, RATE, 8000)
    codec = av.CodecContext.create("pcm_mulaw", "w")
    codec.sample_rate = 8000
    codec.layout = "mono"
    codec.format = "s16"
    codec.open()
    frame = av.AudioFrame.from_ndarray(narrow.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    frame.pts = 0
    encoded = b"".join(bytes(p) for p in codec.encode(frame))
    encoded += b"".join(bytes(p) for p in codec.encode(None))
    return encoded[: len(narrow)]


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def _udp_frame(payload: bytes) -> bytes:
    """An Ethernet/IPv4/UDP frame from 192.0.2.1:6000 to 192.0.2.2:6000 (sipp ignores both)."""
    udp = struct.pack("!HHHH", 6000, 6000, 8 + len(payload), 0) + payload
    source, destination = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, source, destination)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + udp


@dataclass(frozen=True, slots=True)
class Key:
    """A keypad press sent as RFC 4733 telephone-events (payload type 101) for ``ms``."""

    digit: str
    ms: int = 100

    def __post_init__(self) -> None:
        if self.digit not in _EVENT_CODES:
            raise ValueError(f"{self.digit!r} is not a DTMF key")


_EVENT_CODES = {**{str(d): d for d in range(10)}, "*": 10, "#": 11}
_TELEPHONE_EVENT = 101
Part = str | int | Key
"""A line piper says (str), a pause in ms (int), or a key (:class:`Key`)."""


def _packets(parts: Sequence[Part]) -> list[tuple[int, bool, int, bytes]]:
    """RTP packets ``(payload type, marker, timestamp, payload)``, one per 20 ms slot."""
    packets: list[tuple[int, bool, int, bytes]] = []
    stamp = 0
    marker = True
    for part in parts:
        if isinstance(part, Key):
            frames = max(1, part.ms // 20)
            code = _EVENT_CODES[part.digit]
            for n in range(frames):
                end = n == frames - 1
                payload = struct.pack("!BBH", code, (0x80 if end else 0) | 10, (n + 1) * FRAME_8K)
                # the end packet is sent three times (RFC 4733 2.5.1.4)
                for _ in range(3 if end else 1):
                    packets.append((_TELEPHONE_EVENT, n == 0, stamp, payload))
            stamp += frames * FRAME_8K
            marker = True
            continue
        samples = spoken_16k(part) if isinstance(part, str) else silence_16k(part)
        audio = mulaw_8k(samples)
        audio += bytes([0xFF]) * (-len(audio) % FRAME_8K)  # μ-law silence
        for i in range(0, len(audio), FRAME_8K):
            packets.append((0, marker, stamp, audio[i : i + FRAME_8K]))
            stamp += FRAME_8K
            marker = False
    return packets


def pcap_of(parts: Sequence[Part], *, ssrc: int = 0x5CE7A410) -> bytes:
    """A pcap of one RTP stream (PCMU and telephone-events) saying ``parts`` in real time."""
    packets = _packets(parts)
    if not packets:
        raise ValueError("nothing to put in the pcap")
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    seq = 1000
    previous: bytes | None = None
    for n, (payload_type, marker, stamp, payload) in enumerate(packets):
        if payload != previous or payload_type != _TELEPHONE_EVENT:
            seq += 1  # a repeated end packet keeps its sequence number
        previous = payload
        header = struct.pack(
            "!BBHII", 0x80, (0x80 if marker else 0) | payload_type, seq & 0xFFFF, stamp, ssrc
        )
        data = _udp_frame(header + payload)
        usec = n * 20_000
        out.append(
            struct.pack("<IIII", _EPOCH + usec // 1_000_000, usec % 1_000_000, len(data), len(data))
        )
        out.append(data)
    return b"".join(out)


def pcap_ms(pcap: bytes) -> int:
    """How long sipp takes to replay ``pcap``: the time of its last packet, plus one slot."""
    offset, last = 24, 0.0
    while offset < len(pcap):
        seconds, micros, length, _ = struct.unpack_from("<IIII", pcap, offset)
        last = seconds - _EPOCH + micros / 1e6
        offset += 16 + length
    return int(last * 1000) + 20
