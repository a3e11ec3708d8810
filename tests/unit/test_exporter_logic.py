"""Pure logic of the exporters: the accuracy rule, generated inputs, signatures, tasks, config.pbtxt."""
from __future__ import annotations

import numpy as np
import pytest

from portable_ep.exporters.accuracy import DEFAULT_BUDGETS, budget_violations, compare_output
from portable_ep.exporters.errors import ExportError
from portable_ep.exporters.inputs import TokenizedText, check_inputs, generate_inputs
from portable_ep.exporters.signature import Signature, TensorSpec
from portable_ep.exporters.sources import infer_task

TEXT = Signature(
    inputs=(TensorSpec("input_ids", np.dtype("int64"), ("batch", "sequence")),
            TensorSpec("attention_mask", np.dtype("int64"), ("batch", "sequence"))),
    outputs=(TensorSpec("logits", np.dtype("float32"), ("batch", 3)),),
)
IMAGE = Signature(
    inputs=(TensorSpec("pixel_values", np.dtype("float32"), ("batch", 3, 32, 32)),),
    outputs=(TensorSpec("logits", np.dtype("float32"), ("batch", 5)),),
)


def test_identical_outputs_are_exact():
    golden = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    acc = compare_output(golden, golden.copy(), is_logits=True)
    assert (acc.max_abs, acc.cosine, acc.worst_cosine, acc.top1) == (0.0, pytest.approx(1.0), pytest.approx(1.0), 1.0)


def test_cosine_is_per_sample_mean_and_worst():
    golden = np.array([[1.0, 0.0], [1.0, 0.0]])
    actual = np.array([[1.0, 0.0], [0.0, 1.0]])  # second sample orthogonal
    acc = compare_output(golden, actual, is_logits=True)
    assert acc.cosine == pytest.approx(0.5) and acc.worst_cosine == pytest.approx(0.0) and acc.top1 == 0.5


def test_zero_rows_compare_as_equal_only_to_zero_rows():
    # Two all-zero samples carry no direction: not scored by cosine (exporters/accuracy.py); a zero
    # sample against a non-zero one is scored, and scores 0.
    acc = compare_output(np.zeros((2, 3)), np.array([[0.0, 0, 0], [0, 0, 1e-3]]))
    assert acc.worst_cosine == 0.0 and acc.cosine == 0.0 and acc.unscored_samples == 1


def test_violations_name_output_amount_and_budget():
    acc = compare_output(np.array([[0.5, 1.0]]), np.array([[1.0, 1.0]]), is_logits=False)
    lines = budget_violations("logits", acc, DEFAULT_BUDGETS["fp16"], "fp16")
    assert any("output 'logits': max abs error 0.5 exceeds the fp16 budget 0.01 by 0.49" in line for line in lines)


def test_abs_budget_scales_with_the_output():
    # Pixel coordinates up to 640: 1.2e-4 off is 2e-7 relative, within fp32; 0.1 off is not.
    golden = np.array([[640.0, 12.5, 300.0]])
    close = compare_output(golden, golden + np.array([[1.2e-4, 0, 0]]))
    assert close.scale == 640.0 and budget_violations("boxes", close, DEFAULT_BUDGETS["fp32"], "fp32") == []
    far = compare_output(golden, golden + np.array([[0.1, 0, 0]]))
    (line,) = [l for l in budget_violations("boxes", far, DEFAULT_BUDGETS["fp32"], "fp32") if "max abs" in l]
    assert "fp32 budget 0.0001 x max(1, max |reference| = 640)" in line
    # Below 1 the limit is the budget itself.
    small = compare_output(np.array([[0.5]]), np.array([[0.5 + 2e-4]]))
    assert budget_violations("p", small, DEFAULT_BUDGETS["fp32"], "fp32")


def test_int8_budget_has_no_absolute_limit():
    acc = compare_output(np.array([[10.0, 20.0]]), np.array([[10.5, 20.5]]))
    assert budget_violations("x", acc, DEFAULT_BUDGETS["int8"], "int8") == []


def test_generated_text_inputs_respect_vocab_and_masks():
    feeds = generate_inputs(TEXT, 6, seed=1, sequence_length=12, vocab_sizes={"input_ids": 50})
    assert feeds["input_ids"].shape == (6, 12) and feeds["input_ids"].dtype == np.int64
    assert 1 <= feeds["input_ids"].min() and feeds["input_ids"].max() < 50
    assert (feeds["attention_mask"] == 1).all()
    again = generate_inputs(TEXT, 6, seed=1, sequence_length=12, vocab_sizes={"input_ids": 50})
    assert all((feeds[k] == again[k]).all() for k in feeds)


def test_generated_text_is_packed_between_start_and_end_tokens():
    text = TokenizedText(sentences=[[5, 6, 7], [8, 9]], start=101, end=102)
    ids = generate_inputs(TEXT, 3, sequence_length=10, vocab_sizes={"input_ids": 200}, text=text)["input_ids"]
    assert (ids[:, 0] == 101).all() and (ids[:, -1] == 102).all()
    assert set(np.unique(ids[:, 1:-1])) <= {5, 6, 7, 8, 9}


def test_integer_input_without_vocabulary_asks_for_calibration():
    with pytest.raises(ExportError, match="--calibration"):
        generate_inputs(TEXT, 2)


def test_image_inputs_have_fixed_dims():
    feeds = generate_inputs(IMAGE, 4)
    assert feeds["pixel_values"].shape == (4, 3, 32, 32) and feeds["pixel_values"].dtype == np.float32


def test_check_inputs_rejects_fixed_dim_mismatch():
    with pytest.raises(ExportError, match="dim 2 must be 32"):
        check_inputs({"pixel_values": np.zeros((2, 3, 16, 32), np.float32)}, IMAGE, "calibration file c.npz")


def test_triton_dims_drop_batch_and_mark_symbolic():
    assert TEXT.batched and TEXT.triton_dims(TEXT.inputs[0]) == (-1,)
    assert IMAGE.triton_dims(IMAGE.inputs[0]) == (3, 32, 32)
    assert Signature.from_dict(TEXT.as_dict()) == TEXT


@pytest.mark.parametrize(
    "architectures,task",
    [(["BertForSequenceClassification"], "text-classification"), (["ResNetForImageClassification"], "image-classification"),
     (["BertModel"], "feature-extraction"), (["GPT2LMHeadModel"], None), (["T5ForConditionalGeneration"], None), (None, None)],
)
def test_task_inferred_from_architectures(architectures, task):
    assert infer_task(architectures) == task
