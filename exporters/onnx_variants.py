"""ONNX variants: check a source graph, convert to fp16, quantize to int8 (static QDQ, dynamic, or fused dynamic)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Optional

from portable_ep.exporters.errors import ExportError
from portable_ep.exporters.samples import Feeds, model_calls, rows

# QDQ with per-channel weights needs opset 13: older files are upgraded to it. The
# version converter knows opsets from 7 on; onnx's newest opset is the ceiling.
MIN_OPSET = 13
OLDEST_CONVERTIBLE_OPSET = 7
# Above this an ONNX file must keep its weights in external data (protobuf's 2 GB limit).
EXTERNAL_DATA_THRESHOLD = 1 << 30
# torch's TorchScript exporter (dynamo=False, what optimum uses) writes opsets up to 20.
HF_OPSETS = range(14, 21)
QUANTIZED_OPS = ["MatMul", "Gemm", "Conv"]


def default_domain_opset(model) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ExportError("the ONNX model imports no default-domain (ai.onnx) opset")


def load_checked(path) -> "onnx.ModelProto":  # noqa: F821
    """Load and check an ONNX file; one line for a corrupt, truncated or unsupported one."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends: the file is not ONNX
        raise ExportError(f"{path} is not a readable ONNX model (corrupt or truncated: {type(exc).__name__}: {exc})") from None
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{path} fails the ONNX checker ({first}); the file is corrupt or was written by a broken exporter") from None
    if not model.graph.output or not model.graph.input:
        raise ExportError(f"{path} has no graph inputs or outputs (an empty or truncated model)")
    opset = default_domain_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if opset < OLDEST_CONVERTIBLE_OPSET:
        raise ExportError(
            f"{path} uses opset {opset}; portable-ep reads opset {OLDEST_CONVERTIBLE_OPSET}..{newest} "
            f"(older files cannot be upgraded by onnx's version converter): re-export the model from its framework"
        )
    if opset > newest:
        raise ExportError(f"{path} uses opset {opset}, newer than this onnx {onnx.__version__} knows ({newest}); upgrade onnx or re-export with opset <= {newest}")
    return model


def upgrade_opset(model, target: int = MIN_OPSET):
    """``(model, note)``: ``model`` moved to default-domain opset ``target`` when it is older.

    The converter rewrites ops whose definition changed between opsets; the caller
    measures the result against the original file's own outputs, so a conversion that
    changed the answers is caught like any other variant that misses its budget.
    ``note`` says what happened, for the manifest.
    """
    import onnx
    from onnx import version_converter

    source = default_domain_opset(model)
    if source >= target:
        return model, {"source": source, "upgraded_to": None}
    try:
        converted = version_converter.convert_version(model, target)
        onnx.checker.check_model(converted, full_check=False)
    except Exception as exc:  # the converter has no adapter for some op: keep the original
        return model, {"source": source, "upgraded_to": None, "upgrade_failed": _first_line(exc)}
    return converted, {"source": source, "upgraded_to": target}


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def save(model, dest: Path, external: bool = False) -> None:
    """Write ``model``; weights go to ``<dest>.data`` beside it when the source kept them outside
    (``external``) or they are too big for one protobuf."""
    import onnx

    if external or model.ByteSize() > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dest.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(dest))


def has_external_data(path) -> bool:
    """Whether the ONNX file at ``path`` keeps any weights in files beside it."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


def convert_fp16(source: Path, dest: Path) -> None:
    """fp16 weights and compute; inputs and outputs stay fp32 so clients need no change."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    external = has_external_data(source)
    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    save(model, dest, external=external)


def preprocess(source: Path, dest: Path) -> bool:
    """ONNX Runtime's recommended step before quantization: shape inference and graph optimization.

    Symbolic shape inference is skipped: where it cannot finish it dumps a file into the
    working directory and raises, and ONNX's own shape inference is enough for QDQ.
    A source whose weights are in external data keeps them there (``<dest>.data``): told
    nothing, the step writes its optimized graph into a temporary folder that then lacks the
    weights ("should be stored in …/model.onnx.data"). Returns whether it did.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    external = has_external_data(source)
    if external:
        quant_pre_process(str(source), str(dest), skip_symbolic_shape=True, save_as_external_data=True,
                          all_tensors_to_one_file=True, external_data_location=dest.name + ".data")
    else:
        quant_pre_process(str(source), str(dest), skip_symbolic_shape=True)
    return external


def _reader(calibration: Feeds, batch: int, on_batch: Optional[Callable[[int], None]], batched: bool = True):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._calls = model_calls(calibration, batched, batch)

        def get_next(self):
            call = next(self._calls, None)
            if call is not None and on_batch:
                on_batch(rows(call) if batched else 1)
            return call

    return Reader()


def _producer_map(model) -> dict:
    return {out: node for node in model.graph.node for out in node.output}


def _follows_gelu(model, node, producers, depth: int = 4) -> bool:
    """Whether the activation input of ``node`` comes out of a GELU (a Gelu op or x*0.5*(1+erf(...)))."""
    frontier = [node.input[0]]
    for _ in range(depth):
        nxt = []
        for name in frontier:
            producer = producers.get(name)
            if producer is None:
                continue
            if producer.op_type in ("Gelu", "FastGelu", "BiasGelu", "Erf", "Tanh"):
                return True
            nxt.extend(producer.input)
        frontier = nxt
    return False


def static_exclusions(model_path: Path) -> list:
    """MatMuls static int8 keeps in fp32, where per-tensor activation ranges ruin accuracy:

    - activation x activation products (attention scores and context): both sides
      would need calibrated ranges that vary per input;
    - the down-projection after GELU in transformer FFNs, whose input carries the
      large outliers (measured on all-MiniLM-L6-v2: mean hidden-state cosine 0.86
      with it quantized, 0.985 without).
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    producers = _producer_map(model)
    excluded = []
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        if not any(name in weights for name in node.input) or _follows_gelu(model, node, producers):
            excluded.append(node.name)
    return excluded


def quantize_static_qdq(
    source: Path, dest: Path, calibration: Feeds, *, batch: int = 8, on_batch: Optional[Callable[[int], None]] = None,
    op_types: Iterable[str] = QUANTIZED_OPS, batched: bool = True,
) -> dict:
    """Static int8 QDQ: uint8 activations calibrated (MinMax) on ``calibration``, per-channel int8 weights.

    Weights are 7-bit (reduce_range): without VNNI, x86 int8 kernels sum u8*s8 pairs with
    saturation, and a bundle exported on a VNNI machine may be served on one without.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    pre = dest.with_name(dest.stem + ".pre.onnx")
    external = preprocess(source, pre)
    options = {"ActivationSymmetric": False, "WeightSymmetric": True}

    def run(extra: dict) -> None:
        quantize_static(
            str(pre), str(dest), _reader(calibration, batch, on_batch, batched), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types), nodes_to_exclude=static_exclusions(pre),
            per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            extra_options={**options, **extra}, use_external_data_format=external,
        )

    try:
        try:
            run({})
            return {}
        except Exception as exc:
            # ONNX Runtime's weight-scale adjustment for int32 biases crashes on some real graphs
            # ("truth value of an array ... is ambiguous"); it is an optional refinement, so try without it.
            run({"QDQDisableWeightAdjustForInt32Bias": True})
            return {"retried_without": "weight scale adjustment for int32 bias", "first_error": _first_line(exc)}
    finally:
        for leftover in (pre, Path(str(pre) + ".data")):
            if leftover.exists():
                os.unlink(leftover)


def quantize_dynamic_int8(source: Path, dest: Path, op_types: Iterable[str] = ("MatMul", "Gemm")) -> None:
    """Dynamic int8: weights quantized ahead of time, activations per batch at run time (no calibration).

    Weights per-channel and 7-bit (reduce_range) so that a CPU without VNNI does not saturate.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre = dest.with_name(dest.stem + ".pre.onnx")
    external = preprocess(source, pre)
    try:
        quantize_dynamic(str(pre), str(dest), op_types_to_quantize=list(op_types), per_channel=True, reduce_range=True,
                         weight_type=QuantType.QInt8, use_external_data_format=external)
    finally:
        for leftover in (pre, Path(str(pre) + ".data")):
            if leftover.exists():
                os.unlink(leftover)


# The ops ONNX Runtime's transformer optimizer writes; a graph with none of them was not fused.
FUSED_ATTENTION_OPS = ("Attention", "MultiHeadAttention")


def fuse_transformer(source: Path, dest: Path) -> dict:
    """ONNX Runtime's transformer fusions (attention, embed/skip layer-norm, bias-GELU) written to ``dest``.

    Only the offline fusions (opt_level 0): ORT's own online passes stay at load time, so
    the file is not tied to the exporting CPU. Returns the fused-op counts; raises
    ExportError when no attention was fused (not a BERT-like encoder, or a pattern the
    optimizer does not know), and the caller keeps the plain graph.
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    if has_external_data(source):
        raise ExportError("the model keeps its weights in external data; transformer fusion is skipped")
    quiet = logging.getLogger("onnxruntime.transformers")
    previous = quiet.level
    quiet.setLevel(logging.ERROR)  # the fusion passes log every pattern they try
    try:
        # The fused Attention must read the attention mask as given. The bert default turns it into
        # "count of ones" (MaskIndexEnd), which is only right for masks padded on the right: a
        # left-padded or gapped mask then attends to the wrong tokens (measured on MiniLM: cosine
        # 0.51 to fp32 for a left-padded request, 0.92 for a gap).
        options = FusionOptions("bert")
        options.use_raw_attention_mask(True)
        # num_heads/hidden_size 0: read from the graph's reshapes, so any BERT-like width works.
        fused = optimizer.optimize_model(str(source), model_type="bert", num_heads=0, hidden_size=0, opt_level=0,
                                         optimization_options=options)
        counts = {op: n for op, n in fused.get_fused_operator_statistics().items() if n}
        if not any(counts.get(op) for op in FUSED_ATTENTION_OPS):
            raise ExportError(f"ONNX Runtime's transformer optimizer fused no attention (fused: {counts or 'nothing'})")
        fused.save_model_to_file(str(dest))
    finally:
        quiet.setLevel(previous)
    return counts


def quantize_dynamic_fused(source: Path, dest: Path) -> dict:
    """int8 for ONNX Runtime on CPU: transformer fusions, then dynamic int8 of every MatMul and Attention.

    Measured on all-MiniLM-L6-v2 (AVX-512 VNNI, batch 8, seq 128): 2.1x the fp32 graph's
    throughput at a mean sentence-embedding cosine of 0.992, where static QDQ reached 1.4x
    and dynamic int8 of the unfused graph 2.4x but cosine 0.90 with per-tensor weights.
    The fused Attention quantizes into one QAttention (int8 QKV projection), which is
    where the unfused graph loses time. Weights are per-channel and 7-bit (reduce_range), as
    in static QDQ: on a CPU without VNNI the u8*s8 sums saturate, and with 8-bit weights the
    tiny BERT classifier's top-1 agreement fell to 0.94 on an AVX2-only EPYC (0.97 with 7).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fused = dest.with_name(dest.stem + ".fused.onnx")
    try:
        counts = fuse_transformer(source, fused)
        # The quantizer warns on the root logger that the graph was not pre-processed (shape
        # inference, constant folding): the fusion pass just did that; the line only confuses.
        root = logging.getLogger()
        previous = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(
                str(fused), str(dest), op_types_to_quantize=["MatMul", "Attention"], per_channel=True,
                reduce_range=True, weight_type=QuantType.QInt8,
                # Shape inference cannot type the outputs of ORT's contrib ops: they are float.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        finally:
            root.setLevel(previous)
    finally:
        if fused.exists():
            os.unlink(fused)
    return {"fused_ops": counts}
