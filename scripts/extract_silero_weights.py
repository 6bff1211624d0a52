"""Extract the TinySilero weights from the official Silero VAD ONNX model.

Takes ``silero_vad.onnx`` from the ``silero-vad`` wheel (an installed copy of the pinned version,
else ``pip download --no-deps`` into a temporary directory), checks the graph is the network
``activecall._native.silero`` implements, and writes ``activecall/_native/silero_vad.npz``
(both branches of the model's ``If`` on the sample rate, already in the kernel's layout) and
``activecall/_native/LICENSE-silero-vad``. Needs the ``onnx`` package.

The weights are not graph initializers: the exporter inlined them as ``Constant`` nodes inside
the ``then`` (16 kHz) and ``else`` (8 kHz) branches of the top-level ``If``. Do not use
``silero_vad_16k.safetensors`` from the same wheel: it holds different weights.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

VERSION = "6.2.3"
OUT_DIR = Path(__file__).resolve().parent.parent / "activecall" / "_native"
NPZ = OUT_DIR / "silero_vad.npz"
LICENSE = OUT_DIR / "LICENSE-silero-vad"

# Per branch: FFT size, context samples, new samples per chunk.
BRANCHES = {"then_branch": ("sr16", 256, 64, 512), "else_branch": ("sr8", 128, 32, 256)}
CONVS = [(1, 1), (2, 1), (2, 1), (1, 1)]  # (stride, padding) of encoder.0..3, checked below


def _wheel_files(tmp: Path) -> tuple[bytes, bytes]:
    """(silero_vad.onnx, LICENSE) from an installed silero-vad==VERSION or a downloaded wheel."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is not None and spec.submodule_search_locations:
        try:
            installed = importlib.metadata.version("silero-vad")
        except importlib.metadata.PackageNotFoundError:
            installed = ""
        if installed == VERSION:
            pkg = Path(next(iter(spec.submodule_search_locations)))
            dist = importlib.metadata.distribution("silero-vad")
            lic = next(f for f in dist.files or [] if f.name == "LICENSE")
            return (pkg / "data" / "silero_vad.onnx").read_bytes(), Path(
                str(dist.locate_file(lic))
            ).read_bytes()
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "-d", str(tmp), f"silero-vad=={VERSION}"],
        check=True,
    )  # fmt: skip
    wheel = next(tmp.glob("silero_vad-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        lic_name = next(n for n in zf.namelist() if n.endswith(".dist-info/licenses/LICENSE"))
        return zf.read("silero_vad/data/silero_vad.onnx"), zf.read(lic_name)


def _tensors(graph: onnx.GraphProto, out: dict[str, np.ndarray]) -> None:
    """Every initializer and Constant value in ``graph`` and its nested subgraphs."""
    for t in graph.initializer:
        out[t.name] = numpy_helper.to_array(t)
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value":
                out[node.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.type == onnx.AttributeProto.GRAPH:
                _tensors(attr.g, out)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _tensors(g, out)


def _nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """All nodes of ``graph`` and its nested subgraphs."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                nodes += _nodes(attr.g)
    return nodes


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _branches(model: onnx.ModelProto) -> dict[str, onnx.GraphProto]:
    """The top-level If's subgraphs, after checking its condition is ``sr == 16000``."""
    top = model.graph
    consts = {n.output[0]: n for n in top.node if n.op_type == "Constant"}
    (equal,) = [n for n in top.node if n.op_type == "Equal"]
    (cond,) = [n for n in top.node if n.op_type == "If"]
    const = next(i for i in equal.input if i in consts)
    assert "sr" in equal.input and cond.input[0] == equal.output[0]
    assert int(numpy_helper.to_array(_attrs(consts[const])["value"])) == 16000
    return {a.name: a.g for a in cond.attribute}


def _check_graph(graph: onnx.GraphProto, n_fft: int) -> None:
    """Assert the branch computes what the kernel computes (pads, strides, op sequence)."""
    nodes = _nodes(graph)
    convs = [n for n in nodes if n.op_type == "Conv"]
    stft = _attrs(convs[0])
    assert stft["kernel_shape"] == [n_fft] and stft["strides"] == [n_fft // 2], stft
    for conv, (stride, pad) in zip(convs[1:5], CONVS, strict=True):
        a = _attrs(conv)
        assert a["kernel_shape"] == [3] and a["strides"] == [stride], a
        assert a["pads"] == [pad, pad] and a["group"] == 1, a
    assert _attrs(convs[5])["kernel_shape"] == [1]
    (pad_node,) = [n for n in nodes if n.op_type == "Pad"]
    assert _attrs(pad_node)["mode"] == b"reflect"
    (lstm,) = {_attrs(n)["hidden_size"] for n in nodes if n.op_type == "LSTM"}
    assert lstm == 128
    ops = [n.op_type for n in graph.node if n.op_type in ("Conv", "Relu", "Sigmoid", "Sqrt")]
    assert ops == ["Conv", "Sqrt"] + ["Conv", "Relu"] * 4 + ["Relu", "Conv", "Sigmoid"], ops


def _stft_basis(n_fft: int) -> np.ndarray:
    """Periodic-Hann-windowed DFT rows: real parts of bins 0..n/2, then imaginary parts."""
    n = np.arange(n_fft)
    k = np.arange(n_fft // 2 + 1)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    angle = 2 * np.pi * k * n / n_fft
    return np.concatenate([window * np.cos(angle), -window * np.sin(angle)])


def _branch_arrays(
    tensors: dict[str, np.ndarray], prefix: str, key: str, n_fft: int, ctx: int, chunk: int
) -> dict[str, np.ndarray]:
    """One branch's weights in the kernel's layout (see activecall._native.silero)."""

    def get(name: str) -> np.ndarray:
        (value,) = [v for k, v in tensors.items() if k.startswith(prefix) and k.endswith(name)]
        return np.asarray(value, dtype=np.float64)

    basis = get("stft.forward_basis_buffer")[:, 0, :]
    err = np.abs(basis - _stft_basis(n_fft)).max()
    assert basis.shape == (n_fft + 2, n_fft) and err < 1e-6, (basis.shape, err)
    out: dict[str, np.ndarray] = {
        f"{key}_meta": np.array([n_fft, ctx, chunk], dtype=np.int64),
        f"{key}_stft_max_error": np.array(err),
    }
    for i in range(4):
        w = get(f"encoder.{i}.reparam_conv.weight")  # [out, in, k]
        out[f"{key}_enc{i}_w"] = w.transpose(1, 2, 0)  # [in, k, out]: contiguous over out
        out[f"{key}_enc{i}_b"] = get(f"encoder.{i}.reparam_conv.bias")
    w_ih, w_hh = get("decoder.rnn.weight_ih"), get("decoder.rnn.weight_hh")  # [512, 128], ifgo
    assert w_ih.shape == w_hh.shape == (512, 128)
    out[f"{key}_lstm_w"] = np.concatenate([w_ih.T, w_hh.T])  # [x ; h] rows, 512 gate columns
    out[f"{key}_lstm_b"] = get("decoder.rnn.bias_ih") + get("decoder.rnn.bias_hh")
    out[f"{key}_head_w"] = get("decoder.decoder.2.weight").reshape(128)
    out[f"{key}_head_b"] = get("decoder.decoder.2.bias").reshape(1)
    return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in out.items()}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        onnx_bytes, license_bytes = _wheel_files(Path(tmp))
    model = onnx.load_from_string(onnx_bytes)
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    arrays: dict[str, np.ndarray] = {}
    for name, graph in _branches(model).items():
        key, n_fft, ctx, chunk = BRANCHES[name]
        _check_graph(graph, n_fft)
        tensors: dict[str, np.ndarray] = {}
        _tensors(graph, tensors)
        prefix = f"If_0_{name}__Inline_0__"
        arrays.update(_branch_arrays(tensors, prefix, key, n_fft, ctx, chunk))
    source = f"silero-vad {VERSION} wheel, silero_vad/data/silero_vad.onnx (sha256 {sha})"
    arrays["source"] = np.array(source)
    np.savez_compressed(NPZ, **arrays)
    LICENSE.write_text(
        f"The TinySilero weights in silero_vad.npz are extracted from the {source}.\n\n"
        + license_bytes.decode()
    )
    print(f"wrote {NPZ} ({NPZ.stat().st_size} bytes) and {LICENSE}")
    for k, v in arrays.items():
        print(f"  {k}: {v.dtype} {v.shape}")


if __name__ == "__main__":
    main()
