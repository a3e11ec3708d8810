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


def quantize_int8(onnx_path: Path, xml_path: Path, calibration: Feeds, *, transformer: bool, batch: int = 1,
                  batched: bool = True) -> None:
    """NNCF post-training int8 with the same calibration samples the ONNX int8 variant used."""
    import openvino as ov

    telemetry.silence()
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    items = list(model_calls(calibration, batched, batch))
    quantized = nncf.quantize(
        _read(onnx_path),
        nncf.Dataset(items),
        subset_size=rows(calibration),
        model_type=nncf.ModelType.TRANSFORMER if transformer else None,
        # 7-bit weights in every layer (NNCF's default fixes the first layer only): a CPU
        # without VNNI sums u8*s8 pairs with int16 saturation, and an IR exported on a VNNI
        # machine may be served on one without.
        advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE),
    )
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
