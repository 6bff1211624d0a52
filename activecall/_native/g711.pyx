# cython: language_level=3
"""G.711 µ-law (PCMU) and A-law (PCMA), bit-exact with CPython's ``audioop``.

Encoding is one lookup in a 65,536-entry table per sample, decoding one lookup in a 256-entry
table; the tables are computed at import from the quantisers of the Sun reference ``g711.c``,
which ``audioop`` also uses (µ-law on the top 14 bits of a sample, A-law on the top 13).
"""

cimport numpy as cnp
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.buffer cimport PyObject_CheckBuffer
from libc.stdint cimport int16_t, uint8_t, uint16_t

import sys

import numpy as np

cnp.import_array()

cdef bint _LITTLE_ENDIAN = sys.byteorder == "little"

# Indexed by the sample's bit pattern as uint16, so the hot loop has no sign handling.
cdef uint8_t _ULAW_ENCODE[65536]
cdef uint8_t _ALAW_ENCODE[65536]
cdef int16_t _ULAW_DECODE[256]
cdef int16_t _ALAW_DECODE[256]


# ---------------------------------------------------------------------------------------------
# Input views (declared in g711.pxd, shared with g722)


cdef object pcm16_source(object pcm, const int16_t** data, Py_ssize_t* n):
    """Point ``data`` at the samples of ``pcm`` and set ``n``; return the object owning them.

    ``pcm`` is a 1-D int16 array or a bytes-like object of PCM16 little-endian. The returned
    object must stay referenced while ``data`` is in use.
    """
    cdef cnp.ndarray arr
    if PyBytes_CheckExact(pcm) and _LITTLE_ENDIAN:
        if PyBytes_GET_SIZE(pcm) & 1:
            raise ValueError(f"PCM16 bytes must have an even length, got {len(pcm)}")
        data[0] = <const int16_t*>PyBytes_AS_STRING(pcm)
        n[0] = PyBytes_GET_SIZE(pcm) >> 1
        return pcm
    if cnp.PyArray_Check(pcm):
        arr = <cnp.ndarray>pcm
        if cnp.PyArray_TYPE(arr) != cnp.NPY_INT16:
            raise TypeError(f"PCM must be an int16 array, got dtype {arr.dtype}")
        if cnp.PyArray_NDIM(arr) != 1:
            raise ValueError(f"PCM must be a 1-D array, got {cnp.PyArray_NDIM(arr)}-D")
        if not (cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISNOTSWAPPED(arr)):
            arr = np.ascontiguousarray(arr, dtype=np.int16)
    elif PyObject_CheckBuffer(pcm):
        arr = _byte_array(pcm, "PCM16")
        if cnp.PyArray_DIM(arr, 0) & 1:
            raise ValueError(f"PCM16 bytes must have an even length, got {len(arr)}")
        arr = arr.view("<i2").astype(np.int16, copy=False)
    else:
        raise TypeError(f"PCM must be an int16 numpy array or bytes-like, not {type(pcm).__name__}")
    data[0] = <const int16_t*>cnp.PyArray_DATA(arr)
    n[0] = cnp.PyArray_DIM(arr, 0)
    return arr


cdef object code_source(object codes, const uint8_t** data, Py_ssize_t* n):
    """Point ``data`` at the bytes of ``codes`` and set ``n``; return the object owning them.

    ``codes`` is bytes-like or a 1-D uint8 array.
    """
    cdef cnp.ndarray arr
    if PyBytes_CheckExact(codes):
        data[0] = <const uint8_t*>PyBytes_AS_STRING(codes)
        n[0] = PyBytes_GET_SIZE(codes)
        return codes
    if cnp.PyArray_Check(codes):
        arr = <cnp.ndarray>codes
        if cnp.PyArray_TYPE(arr) != cnp.NPY_UINT8:
            raise TypeError(f"codes must be a uint8 array, got dtype {arr.dtype}")
        if cnp.PyArray_NDIM(arr) != 1:
            raise ValueError(f"codes must be a 1-D array, got {cnp.PyArray_NDIM(arr)}-D")
        if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
            arr = np.ascontiguousarray(arr)
    elif PyObject_CheckBuffer(codes):
        arr = _byte_array(codes, "codes")
    else:
        raise TypeError(f"codes must be bytes-like or a uint8 array, not {type(codes).__name__}")
    data[0] = <const uint8_t*>cnp.PyArray_DATA(arr)
    n[0] = cnp.PyArray_DIM(arr, 0)
    return arr


cdef cnp.ndarray _byte_array(object buf, str what):
    """The bytes of a buffer-protocol object as a uint8 array holding the buffer export.

    The export keeps a bytearray from being resized while a kernel runs without the GIL.
    """
    try:
        return np.frombuffer(buf, dtype=np.uint8)
    except (BufferError, ValueError) as exc:
        raise ValueError(f"{what} buffer must be C-contiguous ({exc})") from None


# ---------------------------------------------------------------------------------------------
# Quantisers (run once per table entry at import)


cdef uint8_t _ulaw_code(int sample) noexcept:
    """µ-law code of a 16-bit sample: sign, 3-bit segment, 4-bit step, all bits inverted."""
    cdef int mag = sample >> 2
    cdef int mask = 0xFF
    cdef int seg = 0
    if mag < 0:
        mag = -mag
        mask = 0x7F
    mag = min(mag, 8159) + 33  # clip, then add the bias that makes the segments binary
    while seg < 8 and mag > (0x40 << seg) - 1:
        seg += 1
    if seg == 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((mag >> (seg + 1)) & 0xF)) ^ mask


cdef uint8_t _alaw_code(int sample) noexcept:
    """A-law code of a 16-bit sample: sign, 3-bit segment, 4-bit step, even bits inverted."""
    cdef int mag = sample >> 3
    cdef int mask = 0xD5  # the sign bit, and the even bits A-law inverts
    cdef int seg = 0
    if mag < 0:
        mag = -mag - 1
        mask = 0x55
    while seg < 8 and mag > (0x20 << seg) - 1:
        seg += 1
    if seg == 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((mag >> (seg if seg > 1 else 1)) & 0xF)) ^ mask


cdef int16_t _ulaw_sample(int code) noexcept:
    """The 16-bit sample a µ-law code stands for (the middle of its step)."""
    code = ~code & 0xFF
    cdef int t = (((code & 0xF) << 3) + 0x84) << ((code & 0x70) >> 4)
    return <int16_t>(0x84 - t if code & 0x80 else t - 0x84)


cdef int16_t _alaw_sample(int code) noexcept:
    """The 16-bit sample an A-law code stands for (the middle of its step)."""
    code ^= 0x55
    cdef int t = (code & 0xF) << 4
    cdef int seg = (code & 0x70) >> 4
    if seg == 0:
        t += 8
    else:
        t = (t + 0x108) << (seg - 1)
    return <int16_t>(t if code & 0x80 else -t)


cdef void _build_tables() noexcept:
    cdef int s, c
    for s in range(-32768, 32768):
        _ULAW_ENCODE[<uint16_t>s] = _ulaw_code(s)
        _ALAW_ENCODE[<uint16_t>s] = _alaw_code(s)
    for c in range(256):
        _ULAW_DECODE[c] = _ulaw_sample(c)
        _ALAW_DECODE[c] = _alaw_sample(c)


_build_tables()


# ---------------------------------------------------------------------------------------------
# Kernels


cdef void _encode(
    const uint8_t* table, const int16_t* pcm, uint8_t* out, Py_ssize_t n
) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = table[<uint16_t>pcm[i]]


cdef void _decode(
    const int16_t* table, const uint8_t* codes, int16_t* out, Py_ssize_t n
) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = table[codes[i]]


cdef bytes _encode_with(const uint8_t* table, object pcm):
    cdef const int16_t* data
    cdef Py_ssize_t n
    owner = pcm16_source(pcm, &data, &n)
    out = PyBytes_FromStringAndSize(NULL, n)
    cdef uint8_t* dst = <uint8_t*>PyBytes_AS_STRING(out)
    if n >= NOGIL_MIN_SAMPLES:
        with nogil:
            _encode(table, data, dst, n)
    else:
        _encode(table, data, dst, n)
    return out


cdef cnp.ndarray _decode_with(const int16_t* table, object codes):
    cdef const uint8_t* data
    cdef Py_ssize_t n
    owner = code_source(codes, &data, &n)
    cdef cnp.npy_intp dim = n
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_INT16, 0)
    cdef int16_t* dst = <int16_t*>cnp.PyArray_DATA(out)
    if n >= NOGIL_MIN_SAMPLES:
        with nogil:
            _decode(table, data, dst, n)
    else:
        _decode(table, data, dst, n)
    return out


# ---------------------------------------------------------------------------------------------
# Public API


def encode_ulaw(pcm) -> bytes:
    """Encode PCM16 (1-D int16 array or little-endian bytes) to G.711 µ-law, one byte a sample."""
    return _encode_with(_ULAW_ENCODE, pcm)


def encode_alaw(pcm) -> bytes:
    """Encode PCM16 (1-D int16 array or little-endian bytes) to G.711 A-law, one byte a sample."""
    return _encode_with(_ALAW_ENCODE, pcm)


def decode_ulaw(data) -> cnp.ndarray:
    """Decode G.711 µ-law bytes (bytes-like or 1-D uint8 array) to an int16 array."""
    return _decode_with(_ULAW_DECODE, data)


def decode_alaw(data) -> cnp.ndarray:
    """Decode G.711 A-law bytes (bytes-like or 1-D uint8 array) to an int16 array."""
    return _decode_with(_ALAW_DECODE, data)
