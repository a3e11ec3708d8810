"""Model repositories for the end-to-end tests."""
from __future__ import annotations

from pathlib import Path

from portable_ep.exporters.onnx_signature import onnx_signature
from portable_ep.exporters.triton_config import build_model_config, write_model

# name: (model file, provider chain, extra parameters)
SERVED_MODELS = {
    "mlp_cpu": ("mlp", "cpu", {}),
    "mlp_openvino": ("mlp", "openvino", {}),
    "mlp_fallback": ("mlp", "cuda,cpu", {}),
    "bow_cpu": ("bag_of_words", "cpu", {}),
    "bow_openvino": ("bag_of_words", "openvino", {}),
    "strings_cpu": ("string_concat", "cpu", {}),
}
MAX_BATCH_SIZE = 8
# Long enough that 32 concurrent clients reliably share batches on 2 busy cores.
QUEUE_DELAY_US = 5000


def write_repository(root: Path, model_files: dict, models: dict) -> Path:
    for name, (model, chain, parameters) in models.items():
        inputs, outputs = onnx_signature(model_files[model])
        config = build_model_config(
            name, inputs, outputs, max_batch_size=MAX_BATCH_SIZE, dynamic_batching_delay_us=QUEUE_DELAY_US,
            providers=chain, parameters=parameters,
        )
        write_model(root, config, {"model.onnx": model_files[model]})
    return root
