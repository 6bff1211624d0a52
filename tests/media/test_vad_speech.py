"""TinySilero driving the VAD event logic on real speech, against the official model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from activecall._native.silero import VadSession
from activecall.media.vad import Silence, Speaking, VadEvent, VadProcessor

LABELS = Path(__file__).resolve().parent.parent / "data" / "speech_60s_16k.json"
CHUNK, CONTEXT = 512, 64


def events_for(probabilities: np.ndarray) -> list[VadEvent]:
    vad = VadProcessor()
    events: list[VadEvent] = []
    for i, p in enumerate(probabilities):
        events += vad.process(float(p), i * CHUNK * 1000 // 16000)
    return events


def onnx_probabilities(model: Path, pcm: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    audio = pcm.astype(np.float32) / 32768
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros(CONTEXT, np.float32)
    sr = np.array(16000, np.int64)
    out = []
    for start in range(0, audio.size - CHUNK + 1, CHUNK):
        chunk = audio[start : start + CHUNK]
        x = np.concatenate([context, chunk])[np.newaxis]
        prob, state = session.run(None, {"input": x, "state": state, "sr": sr})
        out.append(float(prob.reshape(-1)[0]))
        context = chunk[-CONTEXT:]
    return np.array(out, np.float32)


@pytest.fixture(scope="module")
def tiny_events(speech_16k: np.ndarray) -> list[VadEvent]:
    return events_for(VadSession().process(speech_16k))


def test_events_equal_those_of_the_official_model(
    tiny_events: list[VadEvent], speech_16k: np.ndarray, silero_onnx_path: Path
) -> None:
    assert tiny_events == events_for(onnx_probabilities(silero_onnx_path, speech_16k))


def test_every_sentence_is_heard_and_pauses_are_not(tiny_events: list[VadEvent]) -> None:
    sentences = json.loads(LABELS.read_text())["sentences"]
    segments = [
        (e.start_time, e.start_time + e.duration) for e in tiny_events if isinstance(e, Silence)
    ]
    assert [e for e in tiny_events if isinstance(e, Speaking)] == [
        Speaking(start) for start, _ in segments
    ]
    # Each segment lies inside one sentence (one chunk of slack at each edge) ...
    for start, end in segments:
        assert any(s - 32 <= start and end <= e + 64 for s, e in sentences), (start, end)
    # ... and every sentence holds speech for most of its length.
    for s, e in sentences:
        heard = sum(max(0, min(e, b) - max(s, a)) for a, b in segments)
        assert heard >= 0.5 * (e - s), (s, e, heard)
