"""The runtime sessions every peer in benchmarks/peers.py uses: one definition, the same settings.

portable-ep's providers open ONNX Runtime with its defaults for a single-instance model
(intra-op spinning on, threads = cores) and OpenVINO with f32 inference precision (no
silent bf16); the hand-written python backend, the PyTriton server and the raw in-process
runs open theirs here with exactly those settings -- what a user of either runtime gets
by default -- so the benchmark compares serving paths, not runtime options. Plain
onnxruntime/openvino only: this file is also copied next to the hand-written model.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

import numpy as np

Runner = Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]


def open_runtime(provider: str, model_path: str, output: str) -> Runner:
    """feeds -> {output: array}, on ONNX Runtime CPU ("cpu") or OpenVINO CPU ("openvino")."""
    if provider == "cpu":
        import onnxruntime as ort

        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        return lambda feeds: {output: session.run([output], feeds)[0]}
    if provider == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(model_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        port = compiled.output(output)

        def run(feeds):
            request.infer(feeds)
            # A copy: the request's output buffer is reused by the next call.
            return {output: np.array(request.get_tensor(port).data, copy=True)}

        return run
    raise ValueError(f"no runtime for provider {provider!r}")


def model_file(bundle: Path, provider: str) -> Path:
    """The fp32 file of a portable-ep bundle each provider serves."""
    return Path(bundle) / ("openvino/model.xml" if provider == "openvino" else "model.onnx")
