# cython: language_level=3
"""Streaming in-band DTMF detector: Goertzel filters on the 8 DTMF frequencies.

Blocks of 12.75 ms (102 samples at 8 kHz, 204 at 16 kHz, as spandsp) give 78 Hz bins, so a
tone on one DTMF frequency falls near the first spectral null of its neighbours'. A block
holds a key when:

* its best row and best column tone each reach the minimum level (-30 dBm0 by default);
* the twist is in range: the row tone at most 8 dB above the column tone, the column at
  most 4 dB above the row (the usual North American limits);
* each is at least 8 dB above the other tones of its group (relative peak);
* the two tones carry most of the block's energy (``energy_ratio``, 0.7 by default). This
  is the main defence against talk-off: voiced speech spreads its energy over many
  harmonics, a DTMF key puts nearly all of it in two.

A key press is reported once, when ``min_blocks`` consecutive blocks (2: 25.5 ms) hold the
same key; it ends after ``end_blocks`` blocks (2) without it, so a one-block dropout does not
split a press and the same key pressed again after a 25 ms gap is a new press. Tones of
40 ms or more always contain two whole blocks.
"""

from libc.math cimport M_PI, cos, pow
from libc.stdint cimport int16_t

from activecall._native.g711 cimport pcm16_source

# Row frequencies then column frequencies (ITU-T Q.23).
cdef double[8] _FREQS = [697.0, 770.0, 852.0, 941.0, 1209.0, 1336.0, 1477.0, 1633.0]
_KEYS = "123A456B789C*0#D"
# Amplitude (16-bit) of a 0 dBm0 sine: +3.17 dBm0 is G.711's full scale, 8159 << 2.
cdef double _DBM0_AMPLITUDE = 32636.0 / 1.4405

FREQUENCIES = tuple(_FREQS[i] for i in range(8))
KEYS = _KEYS


cdef inline double _db_to_power_ratio(double db) noexcept:
    return pow(10.0, db / 10.0)


cdef class DtmfDetector:
    """Streaming DTMF detector for one mono PCM16 stream at 8 or 16 kHz.

    ``process(pcm)`` takes samples in any chunking and returns the key presses that
    started in them as ``(key, sample_offset)`` pairs, the offset counted from the start of
    the stream (or the last ``reset()``).
    """

    def __init__(
        self,
        int sample_rate=16000,
        *,
        double min_level_dbm0=-30.0,
        double energy_ratio=0.7,
        double max_row_over_col_db=8.0,
        double max_col_over_row_db=4.0,
        double relative_peak_db=8.0,
        int min_blocks=2,
        int end_blocks=2,
    ):
        if sample_rate not in (8000, 16000):
            raise ValueError(f"sample_rate must be 8000 or 16000, got {sample_rate}")
        if not 0.0 < energy_ratio <= 1.0:
            raise ValueError(f"energy_ratio must be in (0, 1], got {energy_ratio}")
        if min_blocks < 1 or end_blocks < 1:
            raise ValueError("min_blocks and end_blocks must be at least 1")
        self.sample_rate = sample_rate
        self.block_size = 102 if sample_rate == 8000 else 204
        cdef int k
        for k in range(DTMF_TONES):
            self.coeff[k] = 2.0 * cos(2.0 * M_PI * _FREQS[k] / sample_rate)
        cdef double amplitude = _DBM0_AMPLITUDE * pow(10.0, min_level_dbm0 / 20.0)
        # A sine of amplitude A over N samples gives a Goertzel power of (A N / 2)^2.
        self.min_power = (amplitude * self.block_size / 2.0) ** 2
        self.energy_ratio = energy_ratio
        self.max_row_over_col = _db_to_power_ratio(max_row_over_col_db)
        self.max_col_over_row = _db_to_power_ratio(max_col_over_row_db)
        self.relative_peak = _db_to_power_ratio(relative_peak_db)
        self.min_blocks = min_blocks
        self.end_blocks = end_blocks
        self.reset()

    def reset(self):
        """Forget the stream: pending samples, key-press state and the sample count."""
        self.fill = 0
        self.position = 0
        self.candidate = -1
        self.run = 0
        self.run_start = 0
        self.current = -1
        self.misses = 0

    def process(self, pcm):
        """Feed PCM16 (1-D int16 array or little-endian bytes); return new key presses."""
        cdef const int16_t* data
        cdef Py_ssize_t n, i
        owner = pcm16_source(pcm, &data, &n)
        events = []
        cdef int block = self.block_size
        for i in range(n):
            self.buf[self.fill] = data[i]
            self.fill += 1
            if self.fill == block:
                self._step(self._analyse(), events)
                self.fill = 0
                self.position += block
        return events

    cdef void _step(self, int key, list events):
        if key == self.candidate:
            self.run += 1
        else:
            self.candidate = key
            self.run = 1
            self.run_start = self.position
        if self.current >= 0:
            if key == self.current:
                self.misses = 0
            else:
                self.misses += 1
                if self.misses >= self.end_blocks:
                    self.current = -1
        if self.current < 0 and key >= 0 and self.run >= self.min_blocks:
            self.current = key
            self.misses = 0
            events.append((_KEYS[key], self.run_start))

    cdef int _analyse(self) noexcept nogil:
        """The key this block holds, or -1."""
        cdef double s1[DTMF_TONES]
        cdef double s2[DTMF_TONES]
        cdef double power[DTMF_TONES]
        cdef double x, s0, energy = 0.0
        cdef int i, k, n = self.block_size
        for k in range(DTMF_TONES):
            s1[k] = 0.0
            s2[k] = 0.0
        for i in range(n):
            x = self.buf[i]
            energy += x * x
            for k in range(DTMF_TONES):
                s0 = x + self.coeff[k] * s1[k] - s2[k]
                s2[k] = s1[k]
                s1[k] = s0
        for k in range(DTMF_TONES):
            power[k] = s1[k] * s1[k] + s2[k] * s2[k] - self.coeff[k] * s1[k] * s2[k]
        cdef int row = 0, col = 4
        for k in range(1, 4):
            if power[k] > power[row]:
                row = k
        for k in range(5, 8):
            if power[k] > power[col]:
                col = k
        cdef double pr = power[row], pc = power[col]
        if pr < self.min_power or pc < self.min_power:
            return -1
        if pr > pc * self.max_row_over_col or pc > pr * self.max_col_over_row:
            return -1
        for k in range(4):
            if k != row and power[k] * self.relative_peak > pr:
                return -1
        for k in range(4, 8):
            if k != col and power[k] * self.relative_peak > pc:
                return -1
        # A tone's energy over the block is its Goertzel power times 2 / N.
        if (pr + pc) * 2.0 / n < self.energy_ratio * energy:
            return -1
        return row * 4 + (col - 4)
