"""Streaming in-band DTMF detector: Goertzel filters on the 8 DTMF frequencies."""

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

FREQUENCIES: tuple[float, ...]
"""The row (697, 770, 852, 941 Hz) then column (1209, 1336, 1477, 1633 Hz) frequencies."""

KEYS: str
"""Keys by ``row * 4 + column``: ``"123A456B789C*0#D"``."""

class DtmfDetector:
    """Streaming DTMF detector for one mono PCM16 stream at 8 or 16 kHz.

    ``process(pcm)`` takes samples in any chunking and returns the key presses that started
    in them as ``(key, sample_offset)`` pairs, the offset counted from the start of the
    stream (or the last ``reset()``).
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        *,
        min_level_dbm0: float = -30.0,
        energy_ratio: float = 0.7,
        max_row_over_col_db: float = 8.0,
        max_col_over_row_db: float = 4.0,
        relative_peak_db: float = 8.0,
        min_blocks: int = 2,
        end_blocks: int = 2,
    ) -> None:
        """Raise ``ValueError`` for a rate other than 8000/16000 or out-of-range settings."""

    @property
    def sample_rate(self) -> int:
        """Input sample rate in Hz."""

    @property
    def block_size(self) -> int:
        """Samples per analysis block (102 at 8 kHz, 204 at 16 kHz: 12.75 ms)."""

    def process(self, pcm: npt.NDArray[np.int16] | Buffer) -> list[tuple[str, int]]:
        """Feed PCM16 (1-D int16 array or little-endian bytes); return new key presses."""

    def reset(self) -> None:
        """Forget the stream: pending samples, key-press state and the sample count."""
