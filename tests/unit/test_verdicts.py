"""The verdict rule's two refinements (exporters/accuracy.py): cosine only where a sample's norm
means something, with an absolute floor elsewhere; sorted-set outputs compared as sets of rows."""
from __future__ import annotations

import numpy as np
import pytest

from portable_ep.exporters.accuracy import (DEFAULT_BUDGETS, SORTED_ROWS, budget_violations, compare_output,
                                            compare_outputs, match_rows)


def test_one_element_output_near_zero_is_judged_by_the_absolute_floor_not_cosine():
    # The case: a one-element output, 0.0 in one runtime and 1e-32 in the other.
    acc = compare_output(np.array([[0.0]], dtype=np.float32), np.array([[1e-32]], dtype=np.float32))
    assert acc.unscored_samples == 1 and acc.cosine == 1.0 and acc.worst_cosine == 1.0
    for precision in ("fp32", "fp16", "int8"):
        assert budget_violations("score", acc, DEFAULT_BUDGETS[precision], precision) == []


def test_one_element_outputs_of_opposite_sign_within_the_floor_pass():
    # Cosine of one element is only the sign: -1e-7 vs 2e-6 would score -1 and drop a correct variant.
    golden = np.array([[-1e-7], [0.25], [3.0]])
    actual = np.array([[2e-6], [0.25 + 1e-6], [3.0 - 2e-6]])
    acc = compare_output(golden, actual)
    assert acc.unscored_samples == 3 and acc.unscored_max_abs == pytest.approx(2.1e-6)
    assert budget_violations("y", acc, DEFAULT_BUDGETS["fp32"], "fp32") == []


def test_one_element_output_far_off_still_fails():
    acc = compare_output(np.array([[0.5]]), np.array([[-0.5]]))
    assert budget_violations("y", acc, DEFAULT_BUDGETS["fp32"], "fp32")
    # int8 has no max_abs: its floor (unscored_max_abs, scaled) judges one-element samples.
    lines = budget_violations("y", acc, DEFAULT_BUDGETS["int8"], "int8")
    assert len(lines) == 1 and "too small for a cosine" in lines[0] and "absolute floor 0.05" in lines[0]
    close = compare_output(np.array([[0.5]]), np.array([[0.52]]))
    assert budget_violations("y", close, DEFAULT_BUDGETS["int8"], "int8") == []


def test_near_zero_sample_is_not_scored_but_a_real_one_beside_it_is():
    golden = np.array([[1e-9, -2e-9, 0.0], [1.0, 2.0, 3.0]])
    actual = np.array([[-3e-9, 1e-9, 5e-10], [1.0, 2.0, 3.0]])  # noise-level directions disagree completely
    acc = compare_output(golden, actual)
    assert acc.unscored_samples == 1 and acc.cosine == pytest.approx(1.0) and acc.worst_cosine == pytest.approx(1.0)
    # A sample that is zero in the reference but not in the variant is scored, and misses.
    wrong = compare_output(np.zeros((1, 3)), np.array([[0.0, 0.5, 0.0]]))
    assert wrong.unscored_samples == 0 and wrong.worst_cosine == 0.0


def test_sorted_rows_swapped_by_near_tied_scores_are_matched():
    # A detector's rows (x1, y1, x2, y2, score) sorted by score; two near-tied rows swap in the variant.
    rows = np.array([[10, 10, 50, 50, 0.9000], [60, 20, 90, 70, 0.8999], [5, 5, 8, 8, 0.2]], dtype=np.float32)
    golden = rows[None]
    actual = rows[[1, 0, 2]][None].copy()
    actual[0, 0, 4] += 1e-5
    plain = compare_output(golden, actual)
    assert budget_violations("boxes", plain, DEFAULT_BUDGETS["fp32"], "fp32")  # element-wise: every variant dropped
    matched = compare_output(golden, actual, sorted_rows=True)
    assert matched.rows_matched and matched.max_abs == pytest.approx(1e-5, rel=1e-2)
    assert budget_violations("boxes", matched, DEFAULT_BUDGETS["fp32"], "fp32") == []


def test_sorted_rows_still_catch_a_wrong_row():
    golden = np.array([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    actual = np.array([[[3.0, 4.0], [1.0, 2.0], [5.0, 9.0]]])  # swapped (fine) and one row wrong (not)
    acc = compare_output(golden, actual, sorted_rows=True)
    assert acc.max_abs == pytest.approx(3.0)
    assert budget_violations("rows", acc, DEFAULT_BUDGETS["fp16"], "fp16")


def test_match_rows_pairs_each_sample_on_its_own_and_keeps_an_ordered_match():
    golden = np.array([[3, 7, 1], [4, 5, 6]])
    actual = np.array([[7, 3, 1], [4, 5, 6]])  # TopK indices: the first sample's near-tie swapped
    assert (match_rows(golden, actual) == golden).all()
    assert (match_rows(golden, golden[:, ::-1].copy()) == golden).all()


def test_compare_outputs_applies_sorted_rows_only_to_the_outputs_named():
    golden = {"indices": np.array([[3, 7]]), "logits": np.array([[0.1, 0.2]])}
    actual = {"indices": np.array([[7, 3]]), "logits": np.array([[0.2, 0.1]])}
    _, problems = compare_outputs(golden, actual, DEFAULT_BUDGETS["fp32"], "fp32", sorted_outputs=["indices"])
    assert problems and all("'logits'" in line for line in problems)
    assert SORTED_ROWS == "sorted_rows"


def test_topk_and_nms_outputs_are_detected_from_the_graph():
    from onnx import TensorProto, helper

    from portable_ep.exporters.signature import sorted_set_outputs

    nodes = [
        helper.make_node("TopK", ["scores", "k"], ["top_scores", "top_idx"], axis=1),
        helper.make_node("Gather", ["boxes", "top_idx"], ["picked"], axis=0),
        helper.make_node("Identity", ["picked"], ["top_boxes"]),
        helper.make_node("Relu", ["scores"], ["activations"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 10]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [10, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("top_scores", "top_boxes", "activations")],
        [helper.make_tensor("k", TensorProto.INT64, [1], [3])],
    )
    assert sorted_set_outputs(helper.make_model(graph)) == ["top_scores", "top_boxes"]


def test_many_rows_are_compared_in_lexicographic_order(monkeypatch):
    from portable_ep.exporters import accuracy

    monkeypatch.setattr(accuracy, "MATCH_ROWS_LIMIT", 4)
    rng = np.random.default_rng(0)
    golden = rng.standard_normal((2, 9, 3))
    actual = golden[:, rng.permutation(9)]
    assert np.array_equal(np.sort(match_rows(golden, actual), axis=None), np.sort(golden, axis=None))
    assert compare_output(golden, actual, sorted_rows=True).max_abs == 0.0
