"""OpenVINO IR variants: fp32 (not fp16-compressed), fp16-compressed, and int8 by NNCF post-training quantization."""
from __future__ import annotations

from pathlib import Path

from portable_ep.exporters import telemetry
from portable_ep.exporters.samples import Feeds, model_calls, rows


def _read(onnx_path: Path):
    import openvino as ov

    telemetry.silence()
    return ov.convert_model(str(onnx_path))


def save_ir(onnx_path: Path, xml_path: Path, compress_to_fp16: bool) -> None:
    import openvino as ov

    xml_path.parent.mkdir(parents=True, exist_ok=True)
    # save_model compresses weights to fp16 by default; the fp32 IR must not be.
    ov.save_model(_read(onnx_path), str(xml_path), compress_to_fp16=compress_to_fp16)


def int8_weight_bits() -> int:
    """8-bit int8 weights on a CPU with VNNI or AMX int8, 7-bit elsewhere.

    A CPU without VNNI sums u8*s8 pairs with int16 saturation, so there NNCF's overflow fix
    (7-bit weights in every layer) keeps the IR's accuracy. On a CPU with VNNI/AMX the sums
    do not saturate and the eighth bit is accuracy: the test BERT's int8 IR measured top-1
    0.9375 with 7-bit weights and 0.96875 with 8-bit on a Xeon with AMX (budget 0.95). An
    8-bit IR records that its route needs VNNI (portable_ep.backends.routes): served on a
    CPU without it, the route is measured again at load.
    """
    from portable_ep.backends.cpu_features import detect_cpu_features

    return 8 if detect_cpu_features().vnni else 7


def quantize_int8(onnx_path: Path, xml_path: Path, calibration: Feeds, *, transformer: bool, batch: int = 1,
                  batched: bool = True) -> int:
    """NNCF post-training int8 with the same calibration samples the ONNX int8 variant used; returns the weight bits."""
    import openvino as ov

    telemetry.silence()
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    bits = int8_weight_bits()
    items = list(model_calls(calibration, batched, batch))
    quantized = nncf.quantize(
        _read(onnx_path),
        nncf.Dataset(items),
        subset_size=rows(calibration),
        model_type=nncf.ModelType.TRANSFORMER if transformer else None,
        # ENABLE: 7-bit weights in every layer (NNCF's default fixes the first layer only).
        advanced_parameters=AdvancedQuantizationParameters(
            overflow_fix=OverflowFix.DISABLE if bits == 8 else OverflowFix.ENABLE),
    )
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
    return bits
