# cython: language_level=3
"""G.722 wideband codec at 64 kbit/s: 16 kHz PCM16 <-> one byte per pair of samples.

Bit-exact with Steve Underwood's fixed-point implementation (spandsp, and sippy's ``libg722``
behind the ``g722`` package), which passes the ITU-T test vectors. A 24-tap QMF splits the
signal into two 8 kHz sub-bands, coded by ADPCM with 6 bits (low band) and 2 bits (high band).

Calls work in blocks of up to ``_CHUNK`` pairs on stack buffers. The QMF of a block runs as its
own loop (its outputs are independent, so it vectorises); the ADPCM recursions run on local
copies of the band states, which nothing else aliases, so the compiler keeps them in registers
as far as they fit. Compared with the reference,
QUANTL divides once instead of scanning 29 levels, the scale factors come from tables, and
saturations that cannot trigger are left out (timings: ``bench/results/codecs.md``).
"""

cimport numpy as cnp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int16_t, uint8_t
from libc.string cimport memcpy, memmove, memset

from activecall._native.g711 cimport NOGIL_MIN_SAMPLES, code_source, pcm16_source

cnp.import_array()

cdef extern from *:
    """
    /* G.722 quantiser and adaptation tables (ITU-T G.722, section 3 and annexes). */

    /* QUANTL decision levels q6[1..29]. */
    static const int G722_Q6[29] = {
          35,   72,  110,  150,  190,  233,  276,  323,  370,  422,  473,  530,  587,  650,
         714,  786,  858,  940, 1023, 1121, 1219, 1339, 1458, 1612, 1765, 1980, 2195, 2557,
        2919
    };
    /* 6-bit low-band codes by decision interval (1..30), negative and positive error. */
    static const int G722_ILN[31] = {
         0, 63, 62, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19,
        18, 17, 16, 15, 14, 13, 12, 11, 10,  9,  8,  7,  6,  5,  4
    };
    static const int G722_ILP[31] = {
         0, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47,
        46, 45, 44, 43, 42, 41, 40, 39, 38, 37, 36, 35, 34, 33, 32
    };
    /* Inverse quantisers: 6-bit (decoder output), 4-bit (predictor feedback), 2-bit (high). */
    static const int G722_QM6[64] = {
          -136,   -136,   -136,   -136, -24808, -21904, -19008, -16704,
        -14984, -13512, -12280, -11192, -10232,  -9360,  -8576,  -7856,
         -7192,  -6576,  -6000,  -5456,  -4944,  -4464,  -4008,  -3576,
         -3168,  -2776,  -2400,  -2032,  -1688,  -1360,  -1040,   -728,
         24808,  21904,  19008,  16704,  14984,  13512,  12280,  11192,
         10232,   9360,   8576,   7856,   7192,   6576,   6000,   5456,
          4944,   4464,   4008,   3576,   3168,   2776,   2400,   2032,
          1688,   1360,   1040,    728,    432,    136,   -432,   -136
    };
    static const int G722_QM4[16] = {
             0, -20456, -12896, -8968, -6288, -4240, -2584, -1200,
         20456,  12896,   8968,  6288,  4240,  2584,  1200,     0
    };
    static const int G722_QM2[4] = {-7408, -1616, 7408, 1616};
    /* Log scale factor increments by code: wl[rl42[ril]] (low), wh[rh2[ihigh]] (high). */
    static const int G722_WL[16] = {
         -60, 3042, 1198, 538, 334, 172, 58, -30, 3042, 1198, 538, 334, 172, 58, -30, -60
    };
    static const int G722_WH[4] = {798, -214, 798, -214};
    /* Antilog table for the scale factor. */
    static const int G722_ILB[32] = {
        2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599, 2656, 2714,
        2774, 2834, 2896, 2960, 3025, 3091, 3158, 3228, 3298, 3371, 3444, 3520, 3597, 3676,
        3756, 3838, 3922, 4008
    };
    /* The 12 QMF coefficients spread over a 24-sample window, oldest first: c[i] on w[2i],
       c[11 - i] on w[2i + 1]. */
    static const int16_t G722_QMF_EVEN[24] = {
           3, 0,  -11, 0,   12, 0,   32, 0, -210, 0,  951, 0,
        3876, 0, -805, 0,  362, 0, -156, 0,   53, 0,  -11, 0
    };
    static const int16_t G722_QMF_ODD[24] = {
        0,  -11, 0,   53, 0, -156, 0,  362, 0, -805, 0, 3876,
        0,  951, 0, -210, 0,   32, 0,   12, 0,  -11, 0,    3
    };
    """
    const int16_t G722_QMF_EVEN[24]
    const int16_t G722_QMF_ODD[24]
    const int G722_Q6[29]
    const int G722_ILN[31]
    const int G722_ILP[31]
    const int G722_QM6[64]
    const int G722_QM4[16]
    const int G722_QM2[4]
    const int G722_WL[16]
    const int G722_WH[4]
    const int G722_ILB[32]

cdef enum:
    _CHUNK = 256  # pairs per block: the stack buffers stay well inside L1
    _Q6_MAX = 2919  # the largest QUANTL decision level
    _NB_LOW_MAX = 18432  # log scale factor limits (LOGSCL, LOGSCH)
    _NB_HIGH_MAX = 22528

# _LEVELS_BELOW[v]: how many QUANTL decision levels q6[1..29] are <= v.
cdef uint8_t _LEVELS_BELOW[_Q6_MAX + 1]


# Linear scale factor (quantiser step) by log scale factor nb >> 6, as SCALEL/SCALEH compute it.
cdef int _DET_LOW[(_NB_LOW_MAX >> 6) + 1]
cdef int _DET_HIGH[(_NB_HIGH_MAX >> 6) + 1]


cdef int _scale(int nb, int shift) noexcept:
    cdef int wd1 = (nb >> 6) & 31
    cdef int wd2 = shift - (nb >> 11)
    return (G722_ILB[wd1] << -wd2 if wd2 < 0 else G722_ILB[wd1] >> wd2) << 2


cdef void _build_tables() noexcept:
    cdef int v, k = 0
    for v in range(_Q6_MAX + 1):
        while k < 29 and G722_Q6[k] <= v:
            k += 1
        _LEVELS_BELOW[v] = k
    for v in range((_NB_LOW_MAX >> 6) + 1):
        _DET_LOW[v] = _scale(v << 6, 8)
    for v in range((_NB_HIGH_MAX >> 6) + 1):
        _DET_HIGH[v] = _scale(v << 6, 10)


_build_tables()


# ---------------------------------------------------------------------------------------------
# Arithmetic shared by both directions


cdef inline int _sat(int x) noexcept nogil:
    """Saturate to int16, as the reference does after every add."""
    return 32767 if x > 32767 else (-32768 if x < -32768 else x)


cdef inline int _clamp(int x, int lo, int hi) noexcept nogil:
    return hi if x > hi else (lo if x < lo else x)


cdef inline void _adapt(Band* b, int d) noexcept nogil:
    """Block 4: reconstruct, adapt the pole and zero predictors, predict the next sample.

    The reference saturates after nearly every add; the saturations that cannot trigger are
    left out. |a2| <= 12288, so 15360 - a2, |a1| <= 15360 + 12288 and the UPPOL1 sum (|a1| + 192)
    fit int16; a zero-section coefficient b stays in int16 by induction, as
    ((b * 32640) >> 15) +- 128 does for any int16 b.
    """
    cdef int i, wd, ap1, ap2, sp, sz
    # Sign (0 or -1) of the partially reconstructed signal p = sz + d; saturating p, as the
    # reference does, keeps its sign.
    cdef int sg0 = (b.sz + d) >> 31

    # UPPOL2, then UPPOL1 (bounded by the new a2)
    wd = _sat(b.a1 << 2)
    if sg0 == b.sg1:
        wd = -wd
    if wd > 32767:
        wd = 32767
    ap2 = _clamp(
        (wd >> 7) + (128 if sg0 == b.sg2 else -128) + ((b.a2 * 32512) >> 15), -12288, 12288
    )
    wd = 15360 - ap2
    ap1 = _clamp((192 if sg0 == b.sg1 else -192) + ((b.a1 * 32640) >> 15), -wd, wd)

    # UPZERO against the old differences (sign of 2d is the sign of d), then DELAYA
    wd = 0 if d == 0 else 128
    for i in range(1, 7):
        b.b[i] = ((b.b[i] * 32640) >> 15) + (wd if (b.dd[i] ^ d) >= 0 else -wd)
    for i in range(6, 1, -1):
        b.dd[i] = b.dd[i - 1]
    b.dd[1] = _sat(d + d)
    b.sg2 = b.sg1
    b.sg1 = sg0
    b.rr2 = b.rr1
    b.rr1 = _sat(2 * (b.s + d))  # 2r, with r = sat(s + d) the reconstructed signal
    b.a1 = ap1
    b.a2 = ap2

    # FILTEP, FILTEZ, PREDIC
    sp = _sat(((ap1 * b.rr1) >> 15) + ((ap2 * b.rr2) >> 15))
    sz = 0
    for i in range(1, 7):
        sz += (b.b[i] * b.dd[i]) >> 15
    b.sz = _sat(sz)
    b.s = _sat(sp + b.sz)


cdef inline void _low_scale(Band* b, int ril) noexcept nogil:
    """Blocks 3L, LOGSCL and SCALEL: adapt the low-band scale factor to a 4-bit code."""
    b.nb = _clamp(((b.nb * 127) >> 7) + G722_WL[ril], 0, _NB_LOW_MAX)
    b.det = _DET_LOW[b.nb >> 6]


cdef inline void _high_scale(Band* b, int ihigh) noexcept nogil:
    """Blocks 3H, LOGSCH and SCALEH: adapt the high-band scale factor to a 2-bit code."""
    b.nb = _clamp(((b.nb * 127) >> 7) + G722_WH[ihigh], 0, _NB_HIGH_MAX)
    b.det = _DET_HIGH[b.nb >> 6]


cdef inline void _qmf(const int16_t* w, int* even_taps, int* odd_taps) noexcept nogil:
    """The two polyphase halves of the 24-tap QMF over ``w[0:24]``, oldest sample first."""
    cdef int i, even = 0, odd = 0
    for i in range(24):
        even += w[i] * G722_QMF_EVEN[i]
        odd += w[i] * G722_QMF_ODD[i]
    even_taps[0] = even
    odd_taps[0] = odd


cdef inline void _reset_band(Band* b, int det) noexcept nogil:
    memset(b, 0, sizeof(Band))
    b.det = det


cdef inline int _check_idle(bint busy) except -1:
    # A coder's state belongs to one call at a time; calls that release the GIL set ``busy``.
    if busy:
        raise RuntimeError("this G.722 coder is in use by another thread")
    return 0


# ---------------------------------------------------------------------------------------------
# Encoder


cdef inline int _quantl(int wd, int det) noexcept nogil:
    """Block 1L, QUANTL: the decision interval (1..30) of ``wd`` for step ``det``.

    The reference scans for the first level i with ``wd < (q6[i] * det) >> 12``. That test is
    ``q6[i] * det >= (wd + 1) << 12``, i.e. ``q6[i] > (((wd + 1) << 12) - 1) // det``: so
    the interval is 1 + the number of levels <= that quotient, read from a table.
    """
    cdef int v = (((wd + 1) << 12) - 1) // det
    return 1 + _LEVELS_BELOW[v if v < _Q6_MAX else _Q6_MAX]


cdef inline int _encode_low(Band* b, int xlow) noexcept nogil:
    """Blocks 1L-4L: the 6-bit low-band code of ``xlow``."""
    cdef int el = _sat(xlow - b.s)
    cdef int wd = el if el >= 0 else -(el + 1)
    cdef int i = _quantl(wd, b.det)
    cdef int ilow = G722_ILN[i] if el < 0 else G722_ILP[i]
    cdef int ril = ilow >> 2
    cdef int dlow = (b.det * G722_QM4[ril]) >> 15
    _low_scale(b, ril)
    _adapt(b, dlow)
    return ilow


cdef inline int _encode_high(Band* b, int xhigh) noexcept nogil:
    """Blocks 1H-4H: the 2-bit high-band code of ``xhigh``."""
    cdef int eh = _sat(xhigh - b.s)
    cdef int wd = eh if eh >= 0 else -(eh + 1)
    cdef bint outer = wd >= ((564 * b.det) >> 12)  # QUANTH has one level per sign
    cdef int ihigh
    if eh < 0:
        ihigh = 0 if outer else 1
    else:
        ihigh = 2 if outer else 3
    cdef int dhigh = (b.det * G722_QM2[ihigh]) >> 15
    _high_scale(b, ihigh)
    _adapt(b, dhigh)
    return ihigh


cdef void _encode_block(
    G722Encoder enc, const int16_t* pcm, Py_ssize_t pairs, uint8_t* out
) noexcept nogil:
    """Encode ``pairs`` pairs from the pending sample (if any) followed by ``pcm``."""
    cdef int16_t buf[QMF_HISTORY + 2 * _CHUNK]
    cdef int xlow[_CHUNK]
    cdef int xhigh[_CHUNK]
    cdef Band low = enc.low
    cdef Band high = enc.high
    cdef Py_ssize_t done = 0, k, m
    cdef int even, odd
    memcpy(buf, enc.x, sizeof(enc.x))
    while done < pairs:
        m = min(<Py_ssize_t>_CHUNK, pairs - done)
        if done == 0 and enc.has_pending:
            buf[QMF_HISTORY] = enc.pending
            memcpy(&buf[QMF_HISTORY + 1], pcm, (2 * m - 1) * sizeof(int16_t))
            pcm += 2 * m - 1
        else:
            memcpy(&buf[QMF_HISTORY], pcm, 2 * m * sizeof(int16_t))
            pcm += 2 * m
        for k in range(m):
            _qmf(&buf[2 * k], &even, &odd)
            xlow[k] = (odd + even) >> 14
            xhigh[k] = (odd - even) >> 14
        for k in range(m):
            out[done + k] = <uint8_t>((_encode_high(&high, xhigh[k]) << 6)
                                      | _encode_low(&low, xlow[k]))
        memmove(buf, &buf[2 * m], QMF_HISTORY * sizeof(int16_t))
        done += m
    memcpy(enc.x, buf, sizeof(enc.x))
    enc.low = low
    enc.high = high


cdef class G722Encoder:
    """Streaming G.722 encoder (64 kbit/s): 16 kHz PCM16 in, one byte per two samples out.

    Chunking does not matter: any split of a signal across calls gives the bytes of encoding
    it whole (an odd trailing sample waits for the next call). One encoder per stream; long
    calls run without the GIL, and using the encoder from another thread meanwhile raises
    ``RuntimeError``.
    """

    def __cinit__(self) -> None:
        self.reset()

    def __init__(self) -> None:
        # Rejects arguments, which __cinit__ alone would silently ignore.
        pass

    def reset(self) -> None:
        """Return to the initial state (silence history, no pending sample)."""
        _check_idle(self.busy)
        _reset_band(&self.low, 32)
        _reset_band(&self.high, 8)
        memset(self.x, 0, sizeof(self.x))
        self.pending = 0
        self.has_pending = False

    def encode(self, pcm) -> bytes:
        """Encode PCM16 (1-D int16 array or little-endian bytes) to G.722 bytes."""
        cdef const int16_t* data
        cdef Py_ssize_t n
        _check_idle(self.busy)
        owner = pcm16_source(pcm, &data, &n)  # keeps the samples alive
        cdef Py_ssize_t total = n + self.has_pending
        cdef Py_ssize_t pairs = total >> 1
        out = PyBytes_FromStringAndSize(NULL, pairs)
        cdef uint8_t* dst = <uint8_t*>PyBytes_AS_STRING(out)
        if pairs and total >= NOGIL_MIN_SAMPLES:
            self.busy = True
            with nogil:
                _encode_block(self, data, pairs, dst)
            self.busy = False
        elif pairs:
            _encode_block(self, data, pairs, dst)
        if total & 1:
            if n:
                self.pending = data[n - 1]
            self.has_pending = True
        else:
            self.has_pending = False
        return out


# ---------------------------------------------------------------------------------------------
# Decoder


cdef void _decode_low(Band* b, const uint8_t* codes, int* rlow, Py_ssize_t m) noexcept nogil:
    """Blocks 2L-6L: the reconstructed low-band signal for the low 6 bits of each code."""
    cdef Band s = b[0]
    cdef Py_ssize_t k
    cdef int ilow, ril, d
    for k in range(m):
        ilow = codes[k] & 63
        ril = ilow >> 2
        rlow[k] = _clamp(s.s + ((s.det * G722_QM6[ilow]) >> 15), -16384, 16383)
        d = (s.det * G722_QM4[ril]) >> 15
        _low_scale(&s, ril)
        _adapt(&s, d)
    b[0] = s


cdef void _decode_high(Band* b, const uint8_t* codes, int* rhigh, Py_ssize_t m) noexcept nogil:
    """Blocks 2H-6H: the reconstructed high-band signal for the top 2 bits of each code."""
    cdef Band s = b[0]
    cdef Py_ssize_t k
    cdef int ihigh, d
    for k in range(m):
        ihigh = codes[k] >> 6
        d = (s.det * G722_QM2[ihigh]) >> 15
        rhigh[k] = _clamp(s.s + d, -16384, 16383)
        _high_scale(&s, ihigh)
        _adapt(&s, d)
    b[0] = s


cdef void _decode_block(
    G722Decoder dec, const uint8_t* codes, Py_ssize_t n, int16_t* out
) noexcept nogil:
    # Given the codes the two bands are independent, so each runs over the block in its own
    # loop (fewer live values, ~5 % faster). The encoder interleaves them instead: there the
    # high band fills the time the low band waits for QUANTL's division.
    cdef int16_t buf[QMF_HISTORY + 2 * _CHUNK]
    cdef int rlow[_CHUNK]
    cdef int rhigh[_CHUNK]
    cdef Py_ssize_t done = 0, k, m
    cdef int even, odd
    memcpy(buf, dec.x, sizeof(dec.x))
    while done < n:
        m = min(<Py_ssize_t>_CHUNK, n - done)
        _decode_low(&dec.low, &codes[done], rlow, m)
        _decode_high(&dec.high, &codes[done], rhigh, m)
        for k in range(m):
            # The two values fit int16: |rlow|, |rhigh| <= 16384.
            buf[QMF_HISTORY + 2 * k] = <int16_t>(rlow[k] + rhigh[k])
            buf[QMF_HISTORY + 2 * k + 1] = <int16_t>(rlow[k] - rhigh[k])
        for k in range(m):
            _qmf(&buf[2 * k], &even, &odd)
            out[2 * (done + k)] = _sat(odd >> 11)
            out[2 * (done + k) + 1] = _sat(even >> 11)
        memmove(buf, &buf[2 * m], QMF_HISTORY * sizeof(int16_t))
        done += m
    memcpy(dec.x, buf, sizeof(dec.x))


cdef class G722Decoder:
    """Streaming G.722 decoder (64 kbit/s): one byte in, two 16 kHz PCM16 samples out.

    One decoder per stream; long calls run without the GIL, and using the decoder from another
    thread meanwhile raises ``RuntimeError``.
    """

    def __cinit__(self) -> None:
        self.reset()

    def __init__(self) -> None:
        # Rejects arguments, which __cinit__ alone would silently ignore.
        pass

    def reset(self) -> None:
        """Return to the initial state."""
        _check_idle(self.busy)
        _reset_band(&self.low, 32)
        _reset_band(&self.high, 8)
        memset(self.x, 0, sizeof(self.x))

    def decode(self, data) -> cnp.ndarray:
        """Decode G.722 bytes (bytes-like or 1-D uint8 array) to a 16 kHz int16 array."""
        cdef const uint8_t* codes
        cdef Py_ssize_t n
        _check_idle(self.busy)
        owner = code_source(data, &codes, &n)  # keeps the codes alive
        cdef cnp.npy_intp dim = 2 * n
        cdef cnp.ndarray out = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_INT16, 0)
        cdef int16_t* dst = <int16_t*>cnp.PyArray_DATA(out)
        if dim >= NOGIL_MIN_SAMPLES:
            self.busy = True
            with nogil:
                _decode_block(self, codes, n, dst)
            self.busy = False
        else:
            _decode_block(self, codes, n, dst)
        return out
