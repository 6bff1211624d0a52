"""Build the compiled kernels in ``activecall/_native``.

Every ``activecall/_native/*.pyx`` becomes an extension module. Set ``ACTIVECALL_DEBUG=1`` for a
debug build (as asyncpg's ``--debug``): Cython line tracing (coverage, profilers), bounds and
wrap-around checks on, HTML annotation next to each ``.pyx``, ``-O0 -g``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("ACTIVECALL_DEBUG", "") not in ("", "0")
HERE = Path(__file__).parent


def _extensions() -> list[Extension]:
    macros: list[tuple[str, str | None]] = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]
    if DEBUG:
        macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
    exts = []
    for pyx in sorted((HERE / "activecall" / "_native").glob("*.pyx")):
        name = "activecall._native." + pyx.stem
        exts.append(
            Extension(
                name,
                [str(pyx.relative_to(HERE))],
                include_dirs=[numpy.get_include()],
                define_macros=macros,
                extra_compile_args=compile_args,
            )
        )
    return exts


directives = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "cdivision": True,
    "initializedcheck": DEBUG,
    "linetrace": DEBUG,
    "embedsignature": True,
}


def _mode_changed() -> bool:
    """True when the last build was of the other mode (debug vs release): rebuild everything."""
    marker = HERE / "build" / "activecall-build-mode"
    mode = "debug" if DEBUG else "release"
    changed = not marker.exists() or marker.read_text() != mode
    marker.parent.mkdir(exist_ok=True)
    marker.write_text(mode)
    return changed


setup(
    ext_modules=cythonize(
        _extensions(),
        compiler_directives=directives,
        annotate=DEBUG,
        force=_mode_changed(),
    )
)
