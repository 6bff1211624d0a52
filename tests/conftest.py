"""Shared fixtures: the 60 s speech file and the official Silero ONNX model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from bench._common import load_speech


@pytest.fixture(scope="session")
def speech_16k() -> np.ndarray:
    """60 s of 16 kHz mono int16 speech with pauses (tests/data/speech_60s_16k.flac)."""
    return load_speech()


@pytest.fixture(scope="session")
def silero_onnx_path() -> Path:
    """The official ``silero_vad.onnx`` from the silero-vad wheel (installed without torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("silero-vad is not installed: run `make install-test`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    assert path.is_file(), path
    return path
