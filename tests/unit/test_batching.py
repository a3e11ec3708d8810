"""Request validation, stacking and splitting, without a server."""
from __future__ import annotations

import numpy as np
import pytest

from portable_ep.backends.base import Session, TensorInfo
from portable_ep.python_backend.batching import BatchExecutor, RequestError, split_outputs, validate_request
from portable_ep.python_backend.model_config import ServingConfig, TensorSpec

F32, I64 = np.dtype(np.float32), np.dtype(np.int64)
CONFIG = ServingConfig(
    name="m",
    max_batch_size=4,
    inputs=(TensorSpec("ids", I64, (-1,)), TensorSpec("mask", I64, (-1,)), TensorSpec("scale", F32, (2,), optional=True)),
    outputs=(TensorSpec("y", F32, (1,)),),
)
SHARED = {"sequence": [("ids", 1), ("mask", 1)]}


def feeds(batch=2, seq=3, **extra):
    base = {"ids": np.zeros((batch, seq), I64), "mask": np.ones((batch, seq), I64)}
    base.update(extra)
    return base


@pytest.mark.parametrize(
    "request_feeds, message",
    [
        (feeds(bogus=np.zeros((2, 3), F32)), "unknown input 'bogus'; model 'm' takes ids (INT64 [batch, -1])"),
        ({"ids": np.zeros((2, 3), I64)}, "missing input mask (INT64 [batch, -1])"),
        (feeds(ids=np.zeros((2, 3), np.int32)), "input 'ids' has data type INT32, expected INT64"),
        (feeds(ids=np.zeros((2, 3, 1), I64)), "input 'ids' has shape [2, 3, 1], expected [batch, -1]"),
        (feeds(scale=np.zeros((2, 3), F32)), "input 'scale' has shape [2, 3], expected [batch, 2]"),
        (feeds(batch=0), "input 'ids' has a batch of 0 (shape [0, 3]); send at least one sample"),
        (feeds(mask=np.ones((2, 4), I64)), "inputs disagree on dimension 'sequence': ids has 3, mask has 4"),
        (feeds(mask=np.ones((1, 3), I64)), "inputs disagree on the batch size: ids=2, mask=1"),
        (feeds(batch=5), "batch size 5 exceeds max_batch_size 4 of model 'm'"),
        (feeds(ids=np.zeros((2, 3), np.complex64)), "input 'ids' has data type complex64, expected INT64"),
    ],
)
def test_invalid_requests_are_named_precisely(request_feeds, message):
    with pytest.raises(RequestError) as error:
        validate_request(request_feeds, CONFIG, SHARED)
    assert message in str(error.value)


def test_valid_request_returns_its_batch_size_and_optional_inputs_may_be_absent():
    assert validate_request(feeds(batch=3), CONFIG, SHARED) == 3
    assert validate_request(feeds(seq=0), CONFIG, SHARED) == 2  # zero-size dims are served (the model may take them)
    assert validate_request(feeds(batch=1, scale=np.ones((1, 2), F32)), CONFIG, SHARED) == 1


def test_unbatched_config_takes_full_shapes():
    config = ServingConfig("u", 0, (TensorSpec("x", F32, (2, 3)),), (TensorSpec("y", F32, (3,)),))
    assert validate_request({"x": np.zeros((2, 3), F32)}, config) == 1
    with pytest.raises(RequestError, match=r"expected \[2, 3\]"):
        validate_request({"x": np.zeros((1, 2, 3), F32)}, config)


def test_split_outputs_checks_the_batch_dimension():
    parts = split_outputs({"y": np.arange(6, dtype=F32).reshape(6, 1)}, [1, 3, 2])
    assert [p["y"].ravel().tolist() for p in parts] == [[0], [1, 2, 3], [4, 5]]
    with pytest.raises(RuntimeError, match="needs max_batch_size: 0"):
        split_outputs({"y": np.zeros((5, 1), F32)}, [1, 3, 2])


class RowSumSession(Session):
    """y = sum(ids * mask) per row; refuses any batch holding a negative id (a 'bad' request)."""

    provider = "fake"
    inputs = (TensorInfo("ids", I64, ("batch", "sequence")), TensorInfo("mask", I64, ("batch", "sequence")))
    outputs = (TensorInfo("y", F32, ("batch", 1)),)

    def __init__(self):
        self.calls = []

    def run(self, feeds):
        self.calls.append(feeds["ids"].shape)
        if (feeds["ids"] < 0).any():
            raise RuntimeError("negative id\nsecond line of a long runtime error")
        return {"y": (feeds["ids"] * feeds["mask"]).sum(axis=1, keepdims=True).astype(np.float64)}


def test_requests_are_stacked_into_one_call_per_shape_and_answered_in_order():
    session = RowSumSession()
    executor = BatchExecutor(CONFIG, session)
    requests = [
        feeds(batch=1, seq=3, ids=np.full((1, 3), 1, I64)),
        feeds(batch=2, seq=5, ids=np.full((2, 5), 2, I64)),
        feeds(batch=2, seq=3, ids=np.full((2, 3), 3, I64)),
        {"ids": np.zeros((1, 3), I64)},  # invalid: no provider call
    ]
    results = executor.execute(requests)
    assert sorted(session.calls) == [(2, 5), (3, 3)]  # two shapes, two calls
    assert results[0]["y"].tolist() == [[3.0]]
    assert results[1]["y"].tolist() == [[10.0], [10.0]]
    assert results[2]["y"].tolist() == [[9.0], [9.0]]
    assert results[0]["y"].dtype == F32  # cast to the configured output type
    assert isinstance(results[3], RequestError)


def test_a_request_that_breaks_the_runtime_fails_alone():
    session = RowSumSession()
    executor = BatchExecutor(CONFIG, session)
    good = feeds(batch=1, ids=np.full((1, 3), 2, I64))
    bad = feeds(batch=1, ids=np.full((1, 3), -1, I64))
    results = executor.execute([good, bad, good])
    assert results[0]["y"].tolist() == results[2]["y"].tolist() == [[6.0]]
    assert isinstance(results[1], RequestError)
    # The cause is kept whole: runtimes put it after their first line.
    assert str(results[1]) == "fake failed on this request: negative id | second line of a long runtime error"
    assert session.calls[0] == (3, 3)  # first tried together, then one by one
