# cython: language_level=3
"""Streaming rational resampler: a polyphase Kaiser-windowed sinc, identical in any chunking.

With ``g = gcd(in_rate, out_rate)``, ``L = out_rate / g`` and ``M = in_rate / g``, output sample
``n`` is the input interpolated at input time ``n * M / L``: a dot product of ``K`` history
samples with the filter phase ``(n * M) mod L``. The phase and window position come from
integer tables per rate pair (no floating-point time to drift), and each output sample is
computed from the same ``K`` floats by the same code whatever the chunking, so frame-by-frame
output equals whole-signal output bit for bit.

Timing is compensated: output sample ``n`` is the input at time ``n / out_rate`` (a sine comes
out in phase). The price is look-ahead: an output sample is emitted once the input reaches
``K / 2`` samples past its instant, so ``process()`` holds back up to ``delay`` output samples
that ``flush()`` releases (zero-padding the end).

Filter, in units of the lower of the two rates: passband to 0.9 of its Nyquist, stopband from
its Nyquist (1.0), which keeps both the aliases of a downsampler and the images of an upsampler
out of the whole output band, transition band included. Cutoff 0.945 x Nyquist, Kaiser beta
7.25, window at least 84 lower-rate samples (about 5.5 ms at 8 kHz): over every pair, measured
by ``bench/resampler_response.py``, passband ripple <= 0.07 dB and stopband >= 74 dB. Each
phase is scaled to unit DC gain so a constant input comes out constant.

The dot product accumulates in float32: in portable C with eight partial sums, or with AVX2 and
FMA (picked at import on x86-64 CPUs that have them) four output samples at a time sharing
their tap loads. Results do not depend on chunking; between the two kernels they can differ in
the last bit of a float (at most 1 in an int16).
"""

cimport numpy as cnp
from libc.stdint cimport int16_t, int32_t, int64_t
from libc.string cimport memcpy, memmove, memset

from activecall._native.g711 cimport NOGIL_MIN_SAMPLES, pcm16_source

import math

import numpy as np

cnp.import_array()

cdef extern from *:
    """
    #include <stddef.h>
    #include <stdint.h>
    #include <math.h>
    #if defined(__x86_64__) || defined(_M_X64)
    #include <immintrin.h>
    #define AC_RS_X86 1
    #endif
    #if defined(AC_RS_X86) && (defined(__GNUC__) || defined(__clang__))
    #define AC_RS_SIMD 1
    #endif

    /* Scale a [-1, 1] float to int16: round to nearest (even on ties), saturate. Clamped in the
       same order as the AVX2 version so a NaN gives the same -32768 in both. */
    static inline int16_t ac_rs_to_int16(float y) {
        float v = y * 32768.0f;
        v = v > -32768.0f ? v : -32768.0f;
        v = v < 32767.0f ? v : 32767.0f;
    #ifdef AC_RS_X86
        return (int16_t)_mm_cvtss_si32(_mm_set_ss(v));
    #else
        return (int16_t)lrintf(v);
    #endif
    }

    static void ac_rs_pack_c(const float *y, int16_t *out, ptrdiff_t n) {
        for (ptrdiff_t i = 0; i < n; i++) out[i] = ac_rs_to_int16(y[i]);
    }

    /* Output samples from hist[0:fill] into out until a window would pass the end of the
       history or max_out are done. *phase is n mod L; *base the hist index of the first window
       of the current phase cycle.
       Outputs n, n + L, n + 2L, n + 3L share their taps (their windows are M apart), so the
       loop takes four phase cycles at a time and loads each tap once for four outputs. DOT4
       does for each of the four exactly what DOT does for one: grouping never changes a
       result, only the order they are computed in. */
    #define AC_RS_DEFINE_RUN(NAME, DOT, DOT4, ATTR)                                            \\
    ATTR static ptrdiff_t NAME(const float *hist, ptrdiff_t fill, const float *coef,          \\
                               const int32_t *off, ptrdiff_t K, ptrdiff_t L, ptrdiff_t M,     \\
                               ptrdiff_t *phase, ptrdiff_t *base, float *out,                 \\
                               ptrdiff_t max_out) {                                           \\
        ptrdiff_t r = *phase, b = *base, o = 0;                                               \\
        while (o + 4 * L <= max_out) {                                                        \\
            ptrdiff_t rl = r == 0 ? L - 1 : r - 1, bl = r == 0 ? b : b + M;                   \\
            if (bl + off[rl] + 3 * M + K > fill) break;                                       \\
            ptrdiff_t rt = r, bt = b;                                                         \\
            for (ptrdiff_t t = 0; t < L; t++) {                                               \\
                float y[4];                                                                   \\
                DOT4(hist + bt + off[rt], M, coef + rt * K, K, y);                            \\
                for (int j = 0; j < 4; j++) out[o + t + j * L] = y[j];                        \\
                if (++rt == L) { rt = 0; bt += M; }                                           \\
            }                                                                                 \\
            o += 4 * L;                                                                       \\
            b += 4 * M;                                                                       \\
        }                                                                                     \\
        while (o < max_out) {                                                                 \\
            ptrdiff_t s = b + off[r];                                                         \\
            if (s + K > fill) break;                                                          \\
            out[o++] = DOT(hist + s, coef + r * K, K);                                        \\
            if (++r == L) { r = 0; b += M; }                                                  \\
        }                                                                                     \\
        *phase = r;                                                                           \\
        *base = b;                                                                            \\
        return o;                                                                             \\
    }

    /* Portable C: eight partial sums so the loop is not one long dependency chain. The taps
       per phase (n) are always a multiple of 8. */
    static inline float ac_rs_dot_c(const float *x, const float *c, ptrdiff_t n) {
        float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f, a4 = 0.f, a5 = 0.f, a6 = 0.f, a7 = 0.f;
        for (ptrdiff_t k = 0; k < n; k += 8) {
            a0 += x[k] * c[k];
            a1 += x[k + 1] * c[k + 1];
            a2 += x[k + 2] * c[k + 2];
            a3 += x[k + 3] * c[k + 3];
            a4 += x[k + 4] * c[k + 4];
            a5 += x[k + 5] * c[k + 5];
            a6 += x[k + 6] * c[k + 6];
            a7 += x[k + 7] * c[k + 7];
        }
        return ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7));
    }

    static inline void ac_rs_dot4_c(const float *x, ptrdiff_t step, const float *c, ptrdiff_t n,
                                    float *y) {
        for (int j = 0; j < 4; j++) y[j] = ac_rs_dot_c(x + j * step, c, n);
    }
    AC_RS_DEFINE_RUN(ac_rs_run_c, ac_rs_dot_c, ac_rs_dot4_c, )

    #ifdef AC_RS_SIMD
    /* AVX2 + FMA: two 8-lane sums per output, even 8-float blocks in one, odd in the other. */
    #define AC_RS_AVX2 __attribute__((target("avx2,fma")))

    /* Horizontal sums in one fixed order, ((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7)),
       for one vector or four at once (which costs about what one does). */
    AC_RS_AVX2 static inline float ac_rs_hsum1(__m256 v) {
        v = _mm256_hadd_ps(v, v);
        v = _mm256_hadd_ps(v, v);
        return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
    }

    AC_RS_AVX2 static inline void ac_rs_hsum4(__m256 v0, __m256 v1, __m256 v2, __m256 v3,
                                              float *y) {
        __m256 v = _mm256_hadd_ps(_mm256_hadd_ps(v0, v1), _mm256_hadd_ps(v2, v3));
        _mm_storeu_ps(y, _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
    }

    #define AC_RS_FMA256(x, c, k, acc) \\
        acc = _mm256_fmadd_ps(_mm256_loadu_ps((x) + (k)), c, acc)

    AC_RS_AVX2 static inline float ac_rs_dot_avx2(const float *x, const float *c,
                                                  ptrdiff_t n) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        ptrdiff_t k = 0;
        for (; k + 16 <= n; k += 16) {
            AC_RS_FMA256(x, _mm256_loadu_ps(c + k), k, a0);
            AC_RS_FMA256(x, _mm256_loadu_ps(c + k + 8), k + 8, a1);
        }
        if (k < n) AC_RS_FMA256(x, _mm256_loadu_ps(c + k), k, a0);
        return ac_rs_hsum1(_mm256_add_ps(a0, a1));
    }

    AC_RS_AVX2 static inline void ac_rs_dot4_avx2(const float *x, ptrdiff_t step,
                                                  const float *c, ptrdiff_t n, float *y) {
        const float *x0 = x, *x1 = x + step, *x2 = x + 2 * step, *x3 = x + 3 * step;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
        __m256 d0 = _mm256_setzero_ps(), d1 = _mm256_setzero_ps();
        __m256 e0 = _mm256_setzero_ps(), e1 = _mm256_setzero_ps();
        ptrdiff_t k = 0;
        for (; k + 16 <= n; k += 16) {
            __m256 c0 = _mm256_loadu_ps(c + k), c1 = _mm256_loadu_ps(c + k + 8);
            AC_RS_FMA256(x0, c0, k, a0);
            AC_RS_FMA256(x1, c0, k, b0);
            AC_RS_FMA256(x2, c0, k, d0);
            AC_RS_FMA256(x3, c0, k, e0);
            AC_RS_FMA256(x0, c1, k + 8, a1);
            AC_RS_FMA256(x1, c1, k + 8, b1);
            AC_RS_FMA256(x2, c1, k + 8, d1);
            AC_RS_FMA256(x3, c1, k + 8, e1);
        }
        if (k < n) {
            __m256 c0 = _mm256_loadu_ps(c + k);
            AC_RS_FMA256(x0, c0, k, a0);
            AC_RS_FMA256(x1, c0, k, b0);
            AC_RS_FMA256(x2, c0, k, d0);
            AC_RS_FMA256(x3, c0, k, e0);
        }
        ac_rs_hsum4(_mm256_add_ps(a0, a1), _mm256_add_ps(b0, b1), _mm256_add_ps(d0, d1),
                    _mm256_add_ps(e0, e1), y);
    }
    AC_RS_DEFINE_RUN(ac_rs_run_avx2, ac_rs_dot_avx2, ac_rs_dot4_avx2, AC_RS_AVX2)

    /* ac_rs_pack_c sixteen at a time: the same clamp, and the same rounding (MXCSR's). */
    AC_RS_AVX2 static void ac_rs_pack_avx2(const float *y, int16_t *out, ptrdiff_t n) {
        const __m256 scale = _mm256_set1_ps(32768.0f);
        const __m256 lo = _mm256_set1_ps(-32768.0f), hi = _mm256_set1_ps(32767.0f);
        ptrdiff_t i = 0;
        for (; i + 16 <= n; i += 16) {
            __m256 a = _mm256_mul_ps(_mm256_loadu_ps(y + i), scale);
            __m256 b = _mm256_mul_ps(_mm256_loadu_ps(y + i + 8), scale);
            a = _mm256_min_ps(_mm256_max_ps(a, lo), hi);
            b = _mm256_min_ps(_mm256_max_ps(b, lo), hi);
            __m256i p = _mm256_packs_epi32(_mm256_cvtps_epi32(a), _mm256_cvtps_epi32(b));
            _mm256_storeu_si256((__m256i *)(out + i), _mm256_permute4x64_epi64(p, 0xD8));
        }
        ac_rs_pack_c(y + i, out + i, n - i);
    }
    #endif

    typedef ptrdiff_t (*ac_rs_run_fn)(const float *, ptrdiff_t, const float *, const int32_t *,
                                      ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t *, ptrdiff_t *,
                                      float *, ptrdiff_t);
    typedef void (*ac_rs_pack_fn)(const float *, int16_t *, ptrdiff_t);
    static ac_rs_run_fn ac_rs_run = ac_rs_run_c;
    static ac_rs_pack_fn ac_rs_pack = ac_rs_pack_c;

    /* Use the best kernel up to `level` (0 C, 1 AVX2) that the CPU runs; return the level now
       in use. */
    static int ac_rs_select(int level) {
        ac_rs_run = ac_rs_run_c;
        ac_rs_pack = ac_rs_pack_c;
    #ifdef AC_RS_SIMD
        __builtin_cpu_init();
        if (level >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
            ac_rs_run = ac_rs_run_avx2;
            ac_rs_pack = ac_rs_pack_avx2;
            return 1;
        }
    #endif
        return 0;
    }
    """
    ctypedef Py_ssize_t (*ac_rs_run_fn)(
        const float*, Py_ssize_t, const float*, const int32_t*, Py_ssize_t, Py_ssize_t,
        Py_ssize_t, Py_ssize_t*, Py_ssize_t*, float*, Py_ssize_t
    ) noexcept nogil
    ctypedef void (*ac_rs_pack_fn)(const float*, int16_t*, Py_ssize_t) noexcept nogil
    ac_rs_run_fn ac_rs_run
    ac_rs_pack_fn ac_rs_pack
    int ac_rs_select(int level) noexcept nogil


SUPPORTED_RATES = (8000, 16000, 22050, 24000, 44100, 48000)

# Filter design in units of the lower rate (see the module docstring).
_CUTOFF = 0.4725  # cycles per lower-rate sample: 0.945 x its Nyquist
_BETA = 7.25  # Kaiser window shape
_MIN_WINDOW = 84.0  # window length in lower-rate samples
_BLOCK = 2048  # input samples taken into the history at a time

# One filter per rate pair: (coefficients L x K float32, offsets L int32), shared by instances.
_FILTERS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

KERNELS = ("c", "avx2")
KERNEL = KERNELS[ac_rs_select(len(KERNELS) - 1)]


def _set_kernel(name: str) -> str:
    """Use the dot-product kernel ``name`` or the best one below it the CPU has; for tests."""
    global KERNEL
    KERNEL = KERNELS[ac_rs_select(KERNELS.index(name))]
    return KERNEL


def _design(int in_rate, int out_rate) -> tuple[np.ndarray, np.ndarray]:
    """Per-phase taps (row r: output sample n with n mod L == r) and window offsets."""
    cdef int g = math.gcd(in_rate, out_rate)
    cdef int L = out_rate // g, M = in_rate // g
    scale = min(1.0, L / <double>M)  # lower rate / input rate
    # Taps per phase: the window plus one sample each side that some phase leaves unused,
    # rounded up to the kernels' 8-float step.
    taps = 8 * math.ceil((math.ceil(_MIN_WINDOW / scale) + 2) / 8)
    half = taps // 2
    reach = half - 1  # window half-width in input samples, within every phase's taps
    r = np.arange(L)
    frac = (r * M % L) / L
    off = (r * M // L).astype(np.int32)
    # Row r, column m holds the input sample at history offset m of the window, which lies
    # tau = (half - 1 - m) + frac input samples before the output instant.
    tau = (half - 1 - np.arange(taps))[None, :] + frac[:, None]
    fc = 2.0 * _CUTOFF * scale
    inside = np.abs(tau) <= reach
    window = np.i0(_BETA * np.sqrt(np.where(inside, 1.0 - (tau / reach) ** 2, 0.0)))
    h = np.where(inside, np.sinc(fc * tau) * window, 0.0)
    h /= h.sum(axis=1, keepdims=True)
    coef = np.ascontiguousarray(h, dtype=np.float32)
    coef.flags.writeable = False
    off.flags.writeable = False
    return coef, off


cdef cnp.ndarray _empty(Py_ssize_t n, int typenum):
    cdef cnp.npy_intp dim = n
    return cnp.PyArray_EMPTY(1, &dim, typenum, 0)


cdef class Resampler:
    """Streaming resampler from ``in_rate`` to ``out_rate`` Hz for one mono stream.

    Not thread-safe: one instance per stream. ``process()`` and ``process_float()`` feed the
    same stream (int16 samples are the float ones times 32768).
    """

    cdef readonly int in_rate
    cdef readonly int out_rate
    cdef Py_ssize_t _L, _M, _K
    cdef bint _copy
    cdef object _coef_arr, _off_arr, _hist_arr, _scratch_arr
    cdef const float* _coef
    cdef const int32_t* _off
    cdef float* _hist
    cdef float* _scratch
    cdef Py_ssize_t _scratch_len
    cdef Py_ssize_t _cap, _fill, _phase, _base
    cdef int64_t _n_in, _n_out

    def __cinit__(self, int in_rate, int out_rate):
        for rate in (in_rate, out_rate):
            if rate not in SUPPORTED_RATES:
                raise ValueError(
                    f"unsupported sample rate {rate} Hz; supported: "
                    + ", ".join(str(r) for r in SUPPORTED_RATES)
                )
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._copy = in_rate == out_rate
        g = math.gcd(in_rate, out_rate)
        self._L = out_rate // g
        self._M = in_rate // g
        if self._copy:
            self._K = 0
            return
        key = (in_rate, out_rate)
        if key not in _FILTERS:
            _FILTERS[key] = _design(in_rate, out_rate)
        self._coef_arr, self._off_arr = _FILTERS[key]
        self._K = cnp.PyArray_DIM(self._coef_arr, 1)
        self._coef = <const float*>cnp.PyArray_DATA(self._coef_arr)
        self._off = <const int32_t*>cnp.PyArray_DATA(self._off_arr)
        self._cap = self._K + _BLOCK
        self._hist_arr = np.zeros(self._cap, dtype=np.float32)
        self._hist = <float*>cnp.PyArray_DATA(self._hist_arr)
        # Float outputs on their way to int16; room for the kernels' four phase cycles.
        self._scratch_len = max(1024, 8 * self._L)
        self._scratch_arr = np.empty(self._scratch_len, dtype=np.float32)
        self._scratch = <float*>cnp.PyArray_DATA(self._scratch_arr)
        self.reset()

    def __repr__(self) -> str:
        return f"Resampler({self.in_rate}, {self.out_rate})"

    @property
    def delay(self) -> int:
        """Most output samples ``process()`` holds back (``flush()`` releases them).

        Once past the first ``delay`` samples it holds back ``delay`` or ``delay - 1``. The
        output is already time-aligned with the input: this is latency, not an offset.
        """
        if self._copy:
            return 0
        return (self._K * self._L + self._M) // (2 * self._M)

    @property
    def taps(self) -> int:
        """Input samples in each output sample's dot product (its cost); 0 for equal rates."""
        return self._K

    def reset(self) -> None:
        """Forget the stream: history, phase and sample counts."""
        if self._copy:
            return
        # Zeros stand for the input before the stream starts: the first window starts at
        # hist[0] and ends K/2 samples after input sample 0.
        self._fill = self._K // 2 - 1
        memset(self._hist, 0, self._fill * sizeof(float))
        self._phase = 0
        self._base = 0
        self._n_in = 0
        self._n_out = 0

    def process(self, pcm) -> np.ndarray:
        """Resample int16 PCM (1-D int16 array or PCM16LE bytes); return the new int16 output."""
        cdef const int16_t* data
        cdef Py_ssize_t n
        owner = pcm16_source(pcm, &data, &n)
        if self._copy:
            out = _empty(n, cnp.NPY_INT16)
            memcpy(cnp.PyArray_DATA(out), data, n * sizeof(int16_t))
            return out
        cdef Py_ssize_t count = self._available(n)
        out = _empty(count, cnp.NPY_INT16)
        cdef int16_t* dst = <int16_t*>cnp.PyArray_DATA(out)
        if n >= NOGIL_MIN_SAMPLES:
            with nogil:
                self._consume(data, NULL, n, NULL, dst, count)
        else:
            self._consume(data, NULL, n, NULL, dst, count)
        self._n_in += n
        self._n_out += count
        return out

    def process_float(self, x) -> np.ndarray:
        """Resample a 1-D float32 array of samples in [-1, 1] (not clipped); return float32."""
        if not cnp.PyArray_Check(x):
            raise TypeError(f"expected a float32 numpy array, not {type(x).__name__}")
        cdef cnp.ndarray arr = <cnp.ndarray>x
        if cnp.PyArray_TYPE(arr) != cnp.NPY_FLOAT32:
            raise TypeError(f"expected a float32 array, got dtype {arr.dtype}")
        if cnp.PyArray_NDIM(arr) != 1:
            raise ValueError(f"expected a 1-D array, got {cnp.PyArray_NDIM(arr)}-D")
        if not (cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISNOTSWAPPED(arr)):
            arr = np.ascontiguousarray(arr, dtype=np.float32)
        cdef Py_ssize_t n = cnp.PyArray_DIM(arr, 0)
        cdef const float* src = <const float*>cnp.PyArray_DATA(arr)
        if self._copy:
            out = _empty(n, cnp.NPY_FLOAT32)
            memcpy(cnp.PyArray_DATA(out), src, n * sizeof(float))
            return out
        cdef Py_ssize_t count = self._available(n)
        out = _empty(count, cnp.NPY_FLOAT32)
        cdef float* dst = <float*>cnp.PyArray_DATA(out)
        if n >= NOGIL_MIN_SAMPLES:
            with nogil:
                self._consume(NULL, src, n, dst, NULL, count)
        else:
            self._consume(NULL, src, n, dst, NULL, count)
        self._n_in += n
        self._n_out += count
        return out

    def flush(self) -> np.ndarray:
        """Emit the int16 tail and reset.

        The whole stream then has ``(2 * n_in * out_rate + in_rate) // (2 * in_rate)`` output
        samples: ``n_in * out_rate / in_rate`` rounded to nearest, halves up.
        """
        out = _empty(self._tail_length(), cnp.NPY_INT16)
        self._finish(NULL, <int16_t*>cnp.PyArray_DATA(out), cnp.PyArray_DIM(out, 0))
        return out

    def flush_float(self) -> np.ndarray:
        """``flush()`` for a stream fed with ``process_float()``: the float32 tail, then reset."""
        out = _empty(self._tail_length(), cnp.NPY_FLOAT32)
        self._finish(<float*>cnp.PyArray_DATA(out), NULL, cnp.PyArray_DIM(out, 0))
        return out

    cdef Py_ssize_t _available(self, Py_ssize_t n):
        """How many output samples ``n`` more input samples complete."""
        # Output j needs input up to floor(j * M / L) + K/2; count the j < (n_in - K/2) * L / M.
        cdef int64_t ahead = self._n_in + n - self._K // 2
        if ahead <= 0:
            return 0
        return <Py_ssize_t>((ahead * self._L + self._M - 1) // self._M - self._n_out)

    cdef Py_ssize_t _tail_length(self):
        if self._copy:
            return 0
        cdef int64_t total = (2 * self._n_in * self._L + self._M) // (2 * self._M)
        return <Py_ssize_t>(total - self._n_out)

    cdef void _finish(self, float* outf, int16_t* outi, Py_ssize_t count):
        """Write the ``count`` tail samples (zeros after the end of the input), then reset."""
        cdef int64_t last, zeros
        if count > 0:
            # The last output sample's window ends K/2 samples after its instant.
            last = self._n_out + count - 1
            zeros = last * self._M // self._L + self._K // 2 + 1 - self._n_in
            self._consume(NULL, NULL, <Py_ssize_t>zeros, outf, outi, count)
        self.reset()

    cdef Py_ssize_t _drain(
        self, float* outf, int16_t* outi, Py_ssize_t done, Py_ssize_t count
    ) noexcept nogil:
        """Compute the output samples ``done`` to ``count`` that the history holds, into
        ``outf`` or, through the scratch buffer, ``outi``. Returns how many were computed."""
        cdef Py_ssize_t want, got, start = done
        if outf != NULL:
            return ac_rs_run(
                self._hist, self._fill, self._coef, self._off, self._K, self._L, self._M,
                &self._phase, &self._base, outf + done, count - done,
            )
        while done < count:
            want = min(count - done, self._scratch_len)
            got = ac_rs_run(
                self._hist, self._fill, self._coef, self._off, self._K, self._L, self._M,
                &self._phase, &self._base, self._scratch, want,
            )
            ac_rs_pack(self._scratch, outi + done, got)
            done += got
            if got < want:
                break
        return done - start

    cdef Py_ssize_t _consume(
        self, const int16_t* xi, const float* xf, Py_ssize_t n, float* outf, int16_t* outi,
        Py_ssize_t count,
    ) noexcept nogil:
        """Append ``n`` samples (int16 ``xi``, float ``xf``, or zeros) and compute ``count``
        output samples into ``outf`` or ``outi``. Returns how many were computed."""
        cdef Py_ssize_t pos = 0, done = 0, take, i, drop
        cdef float* h = self._hist
        while True:
            take = min(n - pos, self._cap - self._fill)
            if xi != NULL:
                for i in range(take):
                    # An exact power-of-two scale: int16 and float streams share one path.
                    h[self._fill + i] = xi[pos + i] * <float>(1.0 / 32768.0)
            elif xf != NULL:
                memcpy(h + self._fill, xf + pos, take * sizeof(float))
            else:
                memset(h + self._fill, 0, take * sizeof(float))
            self._fill += take
            pos += take
            done += self._drain(outf, outi, done, count)
            # Keep the history from the next output's window on: fewer than K samples.
            drop = self._base + self._off[self._phase]
            memmove(h, h + drop, (self._fill - drop) * sizeof(float))
            self._fill -= drop
            self._base -= drop
            if pos == n:
                return done
