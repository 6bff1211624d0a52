"""Cold and warm start of the kernels: import plus first call, each in a fresh process.

Cold: an empty Numba cache directory, so the TinySilero kernels compile. Warm: a second
process with the same cache directory, which loads the compiled kernels from disk. This is
what a respawned worker pays before it can take calls.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from bench._common import ROOT, format_table, write_results

PROBES = {
    "g711 + g722 + resample (Cython)": (
        "import numpy as np\n"
        "from activecall._native import g711, g722, resample\n"
        "x = np.zeros(320, np.int16)\n"
        "g711.decode_ulaw(g711.encode_ulaw(x)); g722.G722Decoder().decode("
        "g722.G722Encoder().encode(x)); resample.Resampler(8000, 16000).process(x)\n"
    ),
    "TinySilero VadSession (Numba)": (
        "import numpy as np\n"
        "from activecall._native.silero import VadSession\n"
        "VadSession().process_chunk(np.zeros(512, np.float32))\n"
    ),
    "TinySilero VadBatch (Numba)": (
        "import numpy as np\n"
        "from activecall._native.silero import VadBatch\n"
        "VadBatch(64).process(np.arange(64), np.zeros((64, 512), np.float32))\n"
    ),
}

TIMER = "import time; t0 = time.perf_counter()\n{probe}print(time.perf_counter() - t0)\n"


def run_probe(probe: str, cache_dir: str) -> float:
    """Seconds from the first import to the end of the first call, in a new interpreter."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run(
        [sys.executable, "-c", TIMER.format(probe=probe)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="warm runs (best is reported)")
    args = parser.parse_args()
    rows = []
    for name, probe in PROBES.items():
        with tempfile.TemporaryDirectory() as cache:
            cold = run_probe(probe, cache)
            warm = min(run_probe(probe, cache) for _ in range(args.repeat))
        rows.append((name, f"{cold * 1000:.0f}", f"{warm * 1000:.0f}"))
    table = format_table(["kernels", "cold: import + first call (ms)", "warm (ms)"], rows)
    write_results(
        "startup",
        "Kernel start-up: import + first call in a fresh process",
        table,
        "Cold = empty Numba cache (kernels compile); warm = best of the following runs, "
        "which load the cached machine code. The interpreter's own start-up is excluded.",
    )


if __name__ == "__main__":
    main()
