"""Mixed sequence lengths: when padding is allowed, how batches are split, and that padded
answers equal unpadded ones -- on real ONNX Runtime sessions of masked and unmasked models."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from portable_ep.backends.base import LoadRequest
from portable_ep.backends.artifacts import find_model_artifacts
from portable_ep.backends.onnxruntime_cpu import OnnxRuntimeCpuProvider
from portable_ep.models.tiny import build_bag_of_words
from portable_ep.python_backend.batching import BatchExecutor
from portable_ep.python_backend.mixed_lengths import (
    CostModel, Item, LiveChooser, MixedLengthConfigError, MixedLengthPolicy, choose_policy, find_padding_plan,
    padding_changes_outputs, plan_groups,
)
from portable_ep.python_backend.model_config import ServingConfig, TensorSpec

I64, F32 = np.dtype(np.int64), np.dtype(np.float32)
DTYPES = {"input_ids": I64, "attention_mask": I64}
INPUTS = {"input_ids": ("batch", "sequence"), "attention_mask": ("batch", "sequence")}
OUTPUTS = {"logits": ("batch", 3), "token_logits": ("batch", "sequence", 3)}
CONFIG = ServingConfig(
    name="bow", max_batch_size=8,
    inputs=(TensorSpec("input_ids", I64, (-1,)), TensorSpec("attention_mask", I64, (-1,))),
    outputs=(TensorSpec("logits", F32, (3,)), TensorSpec("token_logits", F32, (-1, 3))),
)


def _session(tmp_path, masked: bool):
    folder = tmp_path / ("masked" if masked else "unmasked") / "1"
    build_bag_of_words(folder / "model.onnx", seed=3, vocab=50, masked=masked, token_logits=True)
    return OnnxRuntimeCpuProvider().load(LoadRequest(find_model_artifacts(folder), "fp32", {}))


def _policy(session, mode="auto"):
    return choose_policy(mode, session.run, INPUTS, OUTPUTS, DTYPES, batched=True, exact=True,
                         vocab_sizes={"input_ids": 50}, max_dims={})


def _request(length: int, seed: int):
    ids = np.random.default_rng(seed).integers(1, 50, size=(1, length), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def test_plan_needs_a_mask_on_a_named_sequence_and_outputs_it_can_cut():
    plan, _ = find_padding_plan(INPUTS, OUTPUTS, DTYPES, batched=True)
    assert (plan.symbol, plan.mask, dict(plan.input_axes), dict(plan.output_axes)) == (
        "sequence", "attention_mask", {"input_ids": 1, "attention_mask": 1}, {"token_logits": 1})
    cases = [
        ({"input_ids": ("batch", "sequence")}, OUTPUTS, True, "no attention-mask input"),
        (INPUTS, OUTPUTS, False, "does not batch"),
        ({**INPUTS, "attention_mask": ("batch", -1)}, OUTPUTS, True, "not [batch, named sequence dim]"),
        (INPUTS, {"boxes": ("batch", "detections", 4)}, True, "dim 'detections' that may depend on the sequence"),
    ]
    for inputs, outputs, batched, reason in cases:
        plan, why = find_padding_plan(inputs, outputs, {**DTYPES}, batched)
        assert plan is None and reason in why


def test_pad_and_cut_round_trip():
    plan, _ = find_padding_plan(INPUTS, OUTPUTS, DTYPES, batched=True)
    request = _request(5, 0)
    padded = plan.pad(request, 9)
    assert padded["input_ids"].shape == (1, 9) and padded["attention_mask"][0].tolist() == [1] * 5 + [0] * 4
    cut = plan.cut({"token_logits": np.zeros((1, 9, 3)), "logits": np.zeros((1, 3))}, 5)
    assert cut["token_logits"].shape == (1, 5, 3) and cut["logits"].shape == (1, 3)


def _brute_force(items, cost):
    ordered = sorted(items, key=lambda i: i.length)
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(ordered) - 1):
        groups, current = [], [ordered[0]]
        for item, cut in zip(ordered[1:], cuts):
            if cut:
                groups.append(current)
                current = []
            current.append(item)
        groups.append(current)
        best = min(best, sum(cost.cost(sum(i.rows for i in g), g[-1].length) for g in groups))
    return best


@pytest.mark.parametrize("per_call, per_token", [(5e-3, 1e-5), (1e-4, 1e-4), (1e-3, 5e-5), (0.0, 1e-4)])
def test_the_split_is_the_cheapest_under_the_cost_model(per_call, per_token):
    cost = CostModel(per_call, per_token)
    rng = np.random.default_rng(7)
    for trial in range(20):
        items = [Item(i, int(rng.integers(1, 3)), int(rng.integers(8, 129))) for i in range(int(rng.integers(1, 8)))]
        groups = plan_groups(items, cost, "auto")
        assert sorted(i.index for g in groups for i in g) == list(range(len(items)))
        got = sum(cost.cost(sum(i.rows for i in g), max(i.length for i in g)) for g in groups)
        assert got == pytest.approx(_brute_force(items, cost))


def test_split_extremes_and_forced_modes():
    items = [Item(0, 1, 10), Item(1, 1, 100), Item(2, 1, 10), Item(3, 1, 50)]
    assert len(plan_groups(items, CostModel(1.0, 1e-9), "auto")) == 1  # calls dear: pad everything together
    per_length = plan_groups(items, CostModel(0.0, 1.0), "auto")  # tokens dear: one call per length
    assert sorted(sorted(i.index for i in g) for g in per_length) == [[0, 2], [1], [3]]
    assert len(plan_groups(items, None, "pad")) == 1
    assert len(plan_groups(items, CostModel(1.0, 0.0), "separate")) == 3


def test_masked_model_pads_and_answers_as_if_alone(tmp_path):
    session = _session(tmp_path, masked=True)
    policy = _policy(session, "pad")
    assert policy.pads and "padding masked by 'attention_mask'" in policy.describe()
    executor = BatchExecutor(CONFIG, session, input_shapes=INPUTS)
    executor.mixed = policy
    requests = [_request(length, seed) for seed, length in enumerate((5, 17, 9, 17, 3))]
    served = executor.execute(requests)
    assert (executor.provider_calls, executor.padded_calls) == (1, 1)
    for request, result in zip(requests, served):
        alone = session.run(request)
        assert result["token_logits"].shape == alone["token_logits"].shape  # cut back to its own length
        np.testing.assert_allclose(result["logits"], alone["logits"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result["token_logits"], alone["token_logits"], rtol=1e-5, atol=1e-6)


def test_auto_fits_a_cost_model_on_the_session(tmp_path):
    policy = _policy(_session(tmp_path, masked=True))
    assert policy.pads and policy.cost is not None and policy.cost.per_token > 0
    assert "padded where cheaper" in policy.describe()


def test_a_model_that_ignores_the_mask_is_never_padded(tmp_path):
    session = _session(tmp_path, masked=False)
    policy = _policy(session, "auto")
    assert not policy.pads and "padding changes the answer: output 'logits'" in policy.reason
    executor = BatchExecutor(CONFIG, session, input_shapes=INPUTS)
    executor.mixed = policy
    requests = [_request(length, seed) for seed, length in enumerate((5, 17, 9))]
    served = executor.execute(requests)
    assert (executor.provider_calls, executor.padded_calls) == (3, 0)
    for request, result in zip(requests, served):
        np.testing.assert_allclose(result["logits"], session.run(request)["logits"], rtol=1e-6)


def test_separate_and_unknown_modes(tmp_path):
    session = _session(tmp_path, masked=True)
    assert not _policy(session, "separate").pads
    with pytest.raises(MixedLengthConfigError, match="batching.mixed_lengths='always'; use one of auto, pad, separate"):
        _policy(session, "always")


def test_a_failing_padded_batch_falls_back_to_requests_one_by_one(tmp_path):
    session = _session(tmp_path, masked=True)
    executor = BatchExecutor(CONFIG, session, input_shapes=INPUTS)
    executor.mixed = _policy(session, "pad")
    bad = {"input_ids": np.full((1, 4), 10_000, dtype=np.int64), "attention_mask": np.ones((1, 4), dtype=np.int64)}
    good = _request(7, 1)
    served = executor.execute([good, bad])
    np.testing.assert_allclose(served[0]["logits"], session.run(good)["logits"], rtol=1e-6)
    assert isinstance(served[1], Exception) and "failed on this request" in str(served[1])


def test_requests_without_an_optional_mask_are_never_padded_and_harm_no_other(tmp_path):
    """A config may mark the mask optional; a request that leaves it out is not padded (nothing would
    mask the padding) and its failure is its own: the masked requests beside it are answered."""
    import dataclasses

    session = _session(tmp_path, masked=True)
    optional_mask = dataclasses.replace(CONFIG, inputs=(CONFIG.inputs[0], dataclasses.replace(CONFIG.inputs[1], optional=True)))
    executor = BatchExecutor(optional_mask, session, input_shapes=INPUTS)
    executor.mixed = _policy(session, "pad")
    with_mask = [_request(5, 1), _request(9, 2)]
    without = [{"input_ids": _request(length, 3)["input_ids"]} for length in (7, 4)]
    served = executor.execute([with_mask[0], without[0], with_mask[1], without[1]])
    for request, result in zip(with_mask, (served[0], served[2])):
        np.testing.assert_allclose(result["logits"], session.run(request)["logits"], rtol=1e-5, atol=1e-6)
    for result in (served[1], served[3]):  # this graph needs its mask: the runtime refuses, per request
        assert isinstance(result, Exception) and "failed on this request" in str(result)
    assert executor.padded_calls == 1  # only the two masked requests shared a padded call


def test_a_probe_that_answers_nan_does_not_prove_padding_safe(tmp_path):
    plan, _ = find_padding_plan(INPUTS, OUTPUTS, DTYPES, batched=True)

    def nan_model(feeds):
        rows, length = feeds["input_ids"].shape
        return {"logits": np.full((rows, 3), np.nan, np.float32), "token_logits": np.full((rows, length, 3), np.nan, np.float32)}

    for exact in (True, False):
        assert "when padded" in padding_changes_outputs(nan_model, plan, _request(16, 0), 64, exact)


def test_live_chooser_keeps_the_faster_arm_and_keeps_checking_the_other():
    chooser = LiveChooser(warmup=3, explore_every=5)
    picks = []
    for _ in range(40):
        arm = chooser.pick()
        picks.append(arm)
        chooser.record(arm, tokens=1000, seconds=0.001 if arm == "pad" else 0.002)
    assert picks[:6].count("pad") == picks[:6].count("separate") == 3  # warm-up alternates
    assert chooser.best() == "pad" and "using pad" in chooser.describe()
    later = picks[6:]
    assert later.count("separate") == sum(1 for n in range(7, 41) if n % 5 == 0)  # only the exploration batches


class SleepySession:
    """A runtime whose call costs ``per_call`` s plus ``per_token`` s per (padded) token."""

    provider = "fake"
    inputs = ()
    outputs = ()

    def __init__(self, per_call: float, per_token: float):
        self.per_call, self.per_token = per_call, per_token

    def run(self, feeds):
        import time

        ids = feeds["input_ids"]
        time.sleep(self.per_call + self.per_token * ids.size)
        return {"logits": np.zeros((ids.shape[0], 3), np.float32), "token_logits": np.zeros((*ids.shape, 3), np.float32)}


@pytest.mark.parametrize("per_call, per_token, faster", [(0.004, 0.0, "pad"), (0.0, 40e-6, "separate")])
def test_auto_settles_on_whichever_runs_faster_on_live_batches(per_call, per_token, faster):
    session = SleepySession(per_call, per_token)
    executor = BatchExecutor(CONFIG, session, input_shapes=INPUTS)
    plan, _ = find_padding_plan(INPUTS, OUTPUTS, DTYPES, batched=True)
    # A cost model that always pads, so every batch is a choice between the two arms.
    executor.mixed = MixedLengthPolicy("auto", plan=plan, cost=CostModel(1.0, 0.0), live=LiveChooser(warmup=4))
    requests = [_request(length, seed) for seed, length in enumerate((10, 40, 70, 100))]
    for _ in range(20):
        executor.execute(requests)
    assert executor.mixed.live.best() == faster, executor.mixed.live.describe()
