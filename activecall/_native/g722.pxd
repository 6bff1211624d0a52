# cython: language_level=3
"""C state of the G.722 codec (64 kbit/s): QMF history and two ADPCM sub-bands."""

from libc.stdint cimport int16_t

cdef enum:
    QMF_HISTORY = 22  # samples of QMF delay line kept between calls (24 taps, 2 new a step)


cdef struct Band:
    # One sub-band ADPCM coder (G.722 blocks 2-4): scale factor and pole/zero predictor.
    int s         # predicted signal, sp + sz
    int sz        # zero-section (six-tap) prediction
    int nb        # log scale factor
    int det       # linear scale factor (quantiser step)
    int rr1, rr2  # 2r saturated, r the reconstructed signal, one and two steps back
    int sg1, sg2  # sign (0 or -1) of the partially reconstructed signal, one and two back
    int a1, a2    # pole-section coefficients
    int dd[7]     # 2d saturated, d the quantised difference, dd[k] k steps back (dd[0] unused)
    int b[7]      # zero-section coefficients b1..b6 (b[0] unused)


cdef class G722Encoder:
    cdef Band low, high
    cdef int16_t x[QMF_HISTORY]  # newest input samples, oldest first
    cdef int16_t pending         # odd sample left over by the last call
    cdef bint has_pending
    cdef bint busy               # a call is running without the GIL


cdef class G722Decoder:
    cdef Band low, high
    cdef int16_t x[QMF_HISTORY]  # newest (rlow + rhigh, rlow - rhigh) pairs, oldest first
    cdef bint busy               # a call is running without the GIL
