"""Model files for the npu provider's tests: static-shape IRs in int8 (NNCF) and fp16, and a bundle of them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from portable_ep.models.tiny import _save, build_static_mlp

FEATURES = 16


def save_fp16_ir(onnx_path: Path, xml_path: Path) -> Path:
    import openvino as ov

    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=True)
    return xml_path


def save_int8_ir(onnx_path: Path, xml_path: Path, batch: int = 1, samples: int = 32) -> Path:
    """A real post-training int8 IR: NNCF quantization calibrated on random inputs."""
    from portable_ep.exporters import telemetry

    telemetry.silence()  # before nncf is imported: its telemetry otherwise deadlocks (see telemetry.py)
    import nncf
    import openvino as ov

    rng = np.random.default_rng(7)
    calibration = [rng.standard_normal((batch, FEATURES)).astype(np.float32) for _ in range(samples)]
    quantized = nncf.quantize(ov.convert_model(str(onnx_path)), nncf.Dataset(calibration), subset_size=samples)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
    return xml_path


def write_npu_bundle(folder: Path, onnx_path: Path, precisions=("int8", "fp16")) -> Path:
    """A bundle (manifest.json + openvino/model.<precision>.xml|bin) laid out as the exporter does."""
    folder.mkdir(parents=True, exist_ok=True)
    savers = {"int8": save_int8_ir, "fp16": save_fp16_ir}
    variants = []
    for precision in precisions:
        relative = f"openvino/model.{precision}.xml"
        savers[precision](onnx_path, folder / relative)
        variants.append({"format": "openvino", "precision": precision, "file": relative})
    (folder / "manifest.json").write_text(json.dumps({"schema_version": 1, "variants": variants}, indent=2))
    return folder


def build_topk_model(path: Path) -> Path:
    """Static x [1, 16] → MatMul → TopK(4): TopK is outside the NPU op allow-list."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((FEATURES, FEATURES)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("TopK", ["h", "k"], ["values", "indices"], axis=-1),
        ],
        "topk",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, FEATURES])],
        [
            helper.make_tensor_value_info("values", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("indices", TensorProto.INT64, [1, 4]),
        ],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([4], dtype=np.int64), "k")],
    )
    return _save(graph, path)


__all__ = ["build_static_mlp", "build_topk_model", "save_fp16_ir", "save_int8_ir", "write_npu_bundle"]
