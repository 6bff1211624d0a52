# cython: language_level=3
"""C state of the streaming Goertzel DTMF detector."""

cdef enum:
    DTMF_TONES = 8          # 4 row (low group) and 4 column (high group) frequencies
    DTMF_MAX_BLOCK = 204    # samples per analysis block at 16 kHz (12.75 ms)


cdef class DtmfDetector:
    cdef readonly int sample_rate
    cdef readonly int block_size
    cdef double coeff[DTMF_TONES]     # 2 cos(2 pi f / rate) per tone
    cdef double buf[DTMF_MAX_BLOCK]   # samples of the block being filled
    cdef int fill
    cdef long long position           # samples consumed since the start (or reset)
    # Thresholds (powers are Goertzel |X|^2 of one block)
    cdef double min_power             # each tone at least the minimum level
    cdef double energy_ratio          # share of the block energy the two tones must hold
    cdef double max_row_over_col      # twist limits, as power ratios
    cdef double max_col_over_row
    cdef double relative_peak         # best tone over the others of its group
    # Key-press state
    cdef int min_blocks               # consecutive equal blocks that make a key press
    cdef int end_blocks               # consecutive other blocks that end it
    cdef int candidate                # key of the current run of equal blocks (-1: none)
    cdef int run                      # length of that run
    cdef long long run_start          # sample where the run started
    cdef int current                  # key being pressed (-1: none)
    cdef int misses                   # blocks since it was last seen

    cdef int _analyse(self) noexcept nogil
    cdef void _step(self, int key, list events)
