"""Weight variants of a decoder with KV cache: ONNX int8/int4 (ONNX Runtime), IR fp32/int8/int4 (OpenVINO/NNCF).

Decoding one token reads every weight once, so on a CPU tokens/s follows the bytes of
the weights: the variants here compress weights only; inputs, outputs and the KV cache stay
fp32, and inside the compressed MatMuls activations are quantized to int8 on the fly
(MatMulNBits accuracy level 4; OpenVINO's CPU plugin does the same by default).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# MatMulNBits block size: 32 keeps SmolLM2's teacher-forced top-1 agreement highest of 32/64/128 at
# about the same speed (the scales are a small part of the bytes read).
ONNX_BLOCK_SIZE = 32
# accuracy_level 4: int8 activations inside MatMulNBits (ONNX Runtime's fastest CPU kernels).
ONNX_ACCURACY_LEVEL = 4
# NNCF INT4 group-wise, the rest of the layers int8 (its "backup" mode): ratio of int4 layers.
# Group 32 over 64 on SmolLM2: top-1 0.758 vs 0.729, perplexity ratio 1.170 vs 1.212, +3 MB (128 is
# impossible there: hidden size 576 is not a multiple of it).
IR_INT4_GROUP_SIZE = 32
IR_INT4_RATIO = 0.8


@contextmanager
def quiet_tools(*names: str):
    """Quiet the tools' loggers while they run (the quantizers log a line per node on the root logger).

    The root logger drops below WARNING; the named loggers (``optimum``, ...) below ERROR.
    """
    loggers = [(logging.getLogger(), logging.WARNING)] + [(logging.getLogger(n), logging.ERROR) for n in names]
    levels = [logger.level for logger, _ in loggers]
    for logger, level in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for (logger, _), level in zip(loggers, levels):
            logger.setLevel(level)


def fold_transposed_weights(model) -> int:
    """Replace ``Transpose(initializer)`` feeding a MatMul with a transposed initializer.

    Tied embeddings (SmolLM2, Llama-style small models) reach ``lm_head`` as a Transpose
    of the embedding table; quantizers only compress a MatMul whose weight is a constant,
    so without this the largest matrix of a small LLM would stay fp32.
    """
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folded = 0
    for node in list(model.graph.node):
        if node.op_type != "Transpose" or node.input[0] not in initializers:
            continue
        if not all(c.op_type == "MatMul" for c in consumers.get(node.output[0], [])):
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        data = numpy_helper.to_array(initializers[node.input[0]])
        folded_tensor = numpy_helper.from_array(np.ascontiguousarray(np.transpose(data, perm)), node.output[0])
        model.graph.initializer.append(folded_tensor)
        model.graph.node.remove(node)
        folded += 1
    return folded


def onnx_weight_only(source: Path, target: Path, bits: int) -> dict:
    """MatMulNBits (``bits`` 4 or 8) on every constant-weight MatMul; returns the manifest's notes."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(source))
    folded = fold_transposed_weights(model)
    # The output projection (lm_head) decides every token: at 4 bits it alone costs SmolLM2 a third of
    # its perplexity loss (ratio 1.26 -> 1.17 with it at 8 bits, top-1 0.62 -> 0.65), so int4 keeps it at 8.
    heads = [n.name for n in model.graph.node if n.op_type == "MatMul" and set(n.output) & {o.name for o in model.graph.output}]
    passes = [(bits, None, heads if bits == 4 else None), (8, heads, None)] if bits == 4 and heads else [(bits, None, None)]
    with quiet_tools():
        for pass_bits, include, exclude in passes:
            config = DefaultWeightOnlyQuantConfig(block_size=ONNX_BLOCK_SIZE, is_symmetric=True,
                                                  accuracy_level=ONNX_ACCURACY_LEVEL, bits=pass_bits)
            quantizer = MatMulNBitsQuantizer(model, nodes_to_include=include, nodes_to_exclude=exclude, algo_config=config)
            quantizer.process()
            model = quantizer.model.model
    onnx.save_model(model, str(target))
    kept = f"; output projection ({', '.join(heads)}) at 8 bits" if bits == 4 and heads else ""
    return {"quantization": f"MatMulNBits {bits}-bit weights, block {ONNX_BLOCK_SIZE}, symmetric, accuracy level "
                            f"{ONNX_ACCURACY_LEVEL}{kept}", "folded_transposes": folded}


def openvino_ir(source_onnx: Path, target_xml: Path, precision: str) -> dict:
    """IR from the ONNX decoder: fp32 as is, int8/int4 through NNCF's data-free weight compression."""
    import openvino as ov

    model = ov.convert_model(str(source_onnx))
    note: dict = {}
    if precision != "fp32":
        import nncf

        with quiet_tools("nncf"):
            if precision == "int8":
                model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
                note["quantization"] = "NNCF weight compression INT8_ASYM (per channel)"
            else:
                model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_ASYM,
                                              group_size=IR_INT4_GROUP_SIZE, ratio=IR_INT4_RATIO)
                note["quantization"] = (f"NNCF weight compression INT4_ASYM group {IR_INT4_GROUP_SIZE} on "
                                        f"{IR_INT4_RATIO:.0%} of the layers, INT8_ASYM on the rest")
    target_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(target_xml), compress_to_fp16=False)
    return note
