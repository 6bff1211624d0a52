"""Streaming rational resampler: a polyphase Kaiser-windowed sinc, identical in any chunking."""

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

SUPPORTED_RATES: tuple[int, ...]
"""Sample rates (Hz) accepted on either side: 8000, 16000, 22050, 24000, 44100, 48000."""

KERNELS: tuple[str, ...]
"""Dot-product kernels, portable first: ``"c"``, ``"avx2"``."""

KERNEL: str
"""The kernel in use: the best of ``KERNELS`` this CPU runs."""

def _set_kernel(name: str) -> str:
    """Use kernel ``name``, or the best one below it the CPU runs; return the one in use."""

class Resampler:
    """Streaming resampler from ``in_rate`` to ``out_rate`` Hz for one mono stream.

    Output sample ``n`` is the input at time ``n / out_rate`` (no delay to compensate), and
    frame-by-frame output equals whole-signal output bit for bit. Not thread-safe.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        """Raise ``ValueError`` unless both rates are in ``SUPPORTED_RATES``."""

    @property
    def in_rate(self) -> int:
        """Input sample rate in Hz."""

    @property
    def out_rate(self) -> int:
        """Output sample rate in Hz."""

    @property
    def delay(self) -> int:
        """Most output samples ``process()`` holds back (``flush()`` releases them)."""

    @property
    def taps(self) -> int:
        """Input samples in each output sample's dot product (its cost); 0 for equal rates."""

    def process(self, pcm: npt.NDArray[np.int16] | Buffer) -> npt.NDArray[np.int16]:
        """Resample int16 PCM (1-D int16 array or PCM16LE bytes); return the new int16 output."""

    def process_float(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Resample a 1-D float32 array of samples in [-1, 1] (not clipped); return float32."""

    def flush(self) -> npt.NDArray[np.int16]:
        """Emit the int16 tail and reset; the stream totals ``round(n_in * out / in)``."""

    def flush_float(self) -> npt.NDArray[np.float32]:
        """``flush()`` for a stream fed with ``process_float()``: the float32 tail, then reset."""

    def reset(self) -> None:
        """Forget the stream: history, phase and sample counts."""
