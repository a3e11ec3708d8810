"""The onnx package's own backend node tests, chosen to cover every element type and shape Triton carries.

Each case is a one-node model with inputs and expected outputs. The onnx package ships
them as ``onnx/backend/test/data/node/<case>/model.onnx`` + ``test_data_set_0/*.pb`` in
some releases; where the installed wheel leaves those files out (onnx 1.23 does), the same
cases are built in memory from ``onnx.backend.test.case.node``, the code the files are
generated from.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

#: category -> node test names. A case may serve several purposes; it is listed once.
CASES: Dict[str, Sequence[str]] = {
    "float16": ("test_cast_FLOAT_to_FLOAT16", "test_cast_FLOAT16_to_FLOAT", "test_max_float16", "test_isnan_float16"),
    "bfloat16": ("test_cast_FLOAT_to_BFLOAT16", "test_cast_BFLOAT16_to_FLOAT", "test_castlike_FLOAT_to_BFLOAT16",
                 "test_castlike_BFLOAT16_to_FLOAT", "test_compress_bfloat16", "test_einsum_batch_matmul_bfloat16"),
    "double": ("test_cumsum_1d", "test_cumprod_2d_axis_1", "test_einsum_batch_matmul", "test_einsum_inner_prod",
               "test_cast_DOUBLE_to_FLOAT", "test_castlike_FLOAT_to_DOUBLE"),
    "int8": ("test_add_int8", "test_mul_int8", "test_max_int8", "test_clip_default_int8_min"),
    "uint8": ("test_add_uint8", "test_bitshift_left_uint8", "test_bitwise_not_4d", "test_dequantizelinear"),
    "int16": ("test_add_int16", "test_bitwise_and_i16_3d", "test_min_int16"),
    "uint16": ("test_add_uint16", "test_bitwise_not_3d", "test_max_uint16"),
    "int32": ("test_bitwise_and_i32_2d", "test_cumsum_2d_int32", "test_blackmanwindow"),
    "uint32": ("test_add_uint32", "test_max_uint32", "test_bitshift_right_uint32"),
    "int64": ("test_argmax_keepdims_example", "test_argmin_no_keepdims_example", "test_nonzero_example"),
    "uint64": ("test_add_uint64", "test_max_uint64", "test_bitshift_left_uint64", "test_top_k_uint64"),
    "bool": ("test_and2d", "test_or3d", "test_xor4d", "test_not_2d", "test_compress_0", "test_equal"),
    "string": ("test_string_concat", "test_string_concat_utf8", "test_string_concat_broadcasting", "test_equal_string",
               "test_regex_full_match_basic", "test_string_split_basic", "test_ai_onnx_ml_label_encoder_string_int"),
    "rank 0": ("test_string_concat_zero_dimensional", "test_bitcast_scalar_float32_to_int32", "test_clip_example",
               "test_size_example", "test_range_float_type_positive_delta", "test_range_int32_type_negative_delta"),
    "zero-size": ("test_castlike_FLOAT_to_FLOAT16", "test_regex_full_match_empty", "test_string_split_empty_tensor",
                  "test_reduce_sum_empty_set", "test_reduce_sum_empty_set_non_reduced_axis_zero", "test_reduce_sum_empty_axes_input_noop",
                  "test_reshape_allowzero_reordered", "test_split_zero_size_splits_opset18",
                  "test_constantofshape_int_shape_zero"),
    "rank >= 5": ("test_maxpool_3d_dilations", "test_convtranspose_3d", "test_unsqueeze_two_axes",
                  "test_unsqueeze_three_axes", "test_averagepool_3d_dilations_small", "test_col2im_5d",
                  "test_gridsample_volumetric_nearest_align_corners_0", "test_nllloss_NCd1d2d3_none_no_weight_negative_ii"),
    # I/O Triton has no data type for: refused when config.pbtxt is written, with the reason.
    "not carried by Triton": ("test_cast_FLOAT_to_FLOAT8E4M3FN", "test_cast_FLOAT_to_INT4",
                              "test_sequence_insert_at_front", "test_optional_has_element_empty_optional_input"),
}


@dataclass
class NodeCase:
    name: str
    category: str
    model_bytes: bytes
    inputs: List[np.ndarray]
    outputs: List[np.ndarray]
    rtol: float
    atol: float


def _array(value) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return np.asarray(value) if not isinstance(value, (list, type(None))) else value


def _from_files(folder: Path, name: str, category: str):
    import onnx
    from onnx import numpy_helper

    data = folder / "test_data_set_0"
    read = lambda pattern: [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in sorted(data.glob(pattern))]  # noqa: E731
    return NodeCase(name, category, (folder / "model.onnx").read_bytes(), read("input_*.pb"), read("output_*.pb"), 1e-3, 1e-7)


def load_cases() -> List[NodeCase]:
    """Every case of :data:`CASES`, from the shipped files where present, else built in memory."""
    import onnx

    shipped = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
    wanted = {name: category for category, names in CASES.items() for name in names}
    cases = {name: _from_files(shipped / name, name, category) for name, category in wanted.items()
             if (shipped / name / "model.onnx").is_file()}
    if len(cases) < len(wanted):
        from onnx.backend.test.case.node import collect_testcases

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the generators' own overflow warnings
            generated = {case.name: case for case in collect_testcases() if case.name in wanted}
        for name in set(wanted) - set(cases):
            case = generated[name]
            inputs, outputs = case.data_sets[0]
            cases[name] = NodeCase(name, wanted[name], case.model.SerializeToString(), [_array(v) for v in inputs],
                                   [_array(v) for v in outputs], case.rtol, case.atol)
    return [cases[name] for name in wanted]
