"""Make ``tests/data/speech_8s_pcmu.pcap``: the first 8 s of the speech file as G.711 μ-law RTP.

sipp's ``play_pcap_audio`` replays the RTP payloads of a pcap (Ethernet/IPv4/UDP) towards the
media address of the SDP it was answered with. The audio is resampled to 8 kHz and encoded by
FFmpeg (PyAV's ``pcm_mulaw``), not by activecall's own codec; the RTP header fields (SSRC,
first sequence number and timestamp) come from a fixed seed, so the file is reproducible.

Run from the repository root: ``python tests/data/sipp/make_speech_pcap.py``.
"""

from __future__ import annotations

import random
import struct
import sys
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[3]
SPEECH = ROOT / "tests" / "data" / "speech_60s_16k.flac"
OUT = ROOT / "tests" / "data" / "speech_8s_pcmu.pcap"
SECONDS = 8.0
SEED = 20251121
PTIME_SAMPLES = 160  # 20 ms at 8 kHz
EPOCH = 1_700_000_000


def mulaw_8k(path: Path, seconds: float) -> bytes:
    """The first ``seconds`` of ``path`` as 8 kHz μ-law bytes (FFmpeg's resampler and codec)."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=8000)
    pcm: list[np.ndarray] = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                pcm.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            pcm.append(out.to_ndarray().reshape(-1))
    samples = np.concatenate(pcm).astype(np.int16)[: int(8000 * seconds)]
    codec = av.CodecContext.create("pcm_mulaw", "w")
    codec.sample_rate = 8000
    codec.layout = "mono"
    codec.format = "s16"
    codec.open()
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    frame.pts = 0
    encoded = b"".join(bytes(p) for p in codec.encode(frame))
    encoded += b"".join(bytes(p) for p in codec.encode(None))
    return encoded[: len(samples)]


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(payload: bytes, src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """An Ethernet/IPv4/UDP frame carrying ``payload``."""
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0,
        64,
        17,
        0,
        bytes(int(x) for x in src[0].split(".")),
        bytes(int(x) for x in dst[0].split(".")),
    )
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    ethernet = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    return ethernet + ip + udp


def rtp_pcap(audio: bytes, *, payload_type: int = 0, seed: int = SEED) -> bytes:
    """A pcap of ``audio`` (8 kHz G.711 bytes) in 20 ms RTP packets."""
    rng = random.Random(seed)
    ssrc, seq, ts = rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(32)
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for n, i in enumerate(range(0, len(audio) - PTIME_SAMPLES + 1, PTIME_SAMPLES)):
        marker = 0x80 if n == 0 else 0
        header = struct.pack(
            "!BBHII",
            0x80,
            marker | payload_type,
            (seq + n) & 0xFFFF,
            (ts + n * PTIME_SAMPLES) & 0xFFFFFFFF,
            ssrc,
        )
        data = frame(
            header + audio[i : i + PTIME_SAMPLES], ("192.0.2.1", 6000), ("192.0.2.2", 6000)
        )
        usec = n * 20_000
        out.append(
            struct.pack("<IIII", EPOCH + usec // 1_000_000, usec % 1_000_000, len(data), len(data))
        )
        out.append(data)
    return b"".join(out)


def main() -> int:
    OUT.write_bytes(rtp_pcap(mulaw_8k(SPEECH, SECONDS)))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
