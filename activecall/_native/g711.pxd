# cython: language_level=3
"""C surface of ``g711`` shared with the other codec kernels: input views as C pointers."""

from libc.stdint cimport int16_t, uint8_t

# Calls on fewer samples than this keep the GIL. The work then takes a few microseconds, less
# than re-acquiring a contended GIL can cost (up to the 5 ms switch interval), so releasing it
# would only stall the event loop. Every RTP frame (at most 120 ms, 1920 samples at 16 kHz)
# stays below it; whole files and long buffers release it.
cdef enum:
    NOGIL_MIN_SAMPLES = 4096

cdef object pcm16_source(object pcm, const int16_t** data, Py_ssize_t* n)
cdef object code_source(object codes, const uint8_t** data, Py_ssize_t* n)
