"""G.722 wideband codec at 64 kbit/s, bit-exact with spandsp / libg722 (the ``g722`` package)."""

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

class G722Encoder:
    """Streaming G.722 encoder (64 kbit/s): 16 kHz PCM16 in, one byte per two samples out.

    Any split of a signal across calls gives the bytes of encoding it whole (an odd trailing
    sample waits for the next call). One encoder per stream: using it from another thread
    during a long call (which runs without the GIL) raises ``RuntimeError``.
    """

    def __init__(self) -> None: ...
    def encode(self, pcm: npt.NDArray[np.int16] | Buffer) -> bytes:
        """Encode PCM16 (1-D int16 array or little-endian bytes) to G.722 bytes."""

    def reset(self) -> None:
        """Return to the initial state (silence history, no pending sample)."""

class G722Decoder:
    """Streaming G.722 decoder (64 kbit/s): one byte in, two 16 kHz PCM16 samples out.

    One decoder per stream: using it from another thread during a long call (which runs without
    the GIL) raises ``RuntimeError``.
    """

    def __init__(self) -> None: ...
    def decode(self, data: npt.NDArray[np.uint8] | Buffer) -> npt.NDArray[np.int16]:
        """Decode G.722 bytes (bytes-like or 1-D uint8 array) to a 16 kHz int16 array."""

    def reset(self) -> None:
        """Return to the initial state."""
