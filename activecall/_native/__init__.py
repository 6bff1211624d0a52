"""Compiled media kernels: codecs, resampler, TinySilero VAD.

Cython extension modules (``*.pyx``) are built by ``setup.py``; Numba kernels are plain modules
compiled on first call and cached on disk, so a second process starts warm.
"""
