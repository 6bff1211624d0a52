"""G.711 µ-law (PCMU) and A-law (PCMA), bit-exact with CPython's ``audioop``."""

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

def encode_ulaw(pcm: npt.NDArray[np.int16] | Buffer) -> bytes:
    """Encode PCM16 (1-D int16 array or little-endian bytes) to G.711 µ-law, one byte a sample."""

def encode_alaw(pcm: npt.NDArray[np.int16] | Buffer) -> bytes:
    """Encode PCM16 (1-D int16 array or little-endian bytes) to G.711 A-law, one byte a sample."""

def decode_ulaw(data: npt.NDArray[np.uint8] | Buffer) -> npt.NDArray[np.int16]:
    """Decode G.711 µ-law bytes (bytes-like or 1-D uint8 array) to an int16 array."""

def decode_alaw(data: npt.NDArray[np.uint8] | Buffer) -> npt.NDArray[np.int16]:
    """Decode G.711 A-law bytes (bytes-like or 1-D uint8 array) to an int16 array."""
