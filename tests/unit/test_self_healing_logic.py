"""Pure logic behind self-healing serving: request limits, integrity, stub bookkeeping, error causes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from portable_ep.backends.dtypes import bfloat16
from portable_ep.backends.integrity import IntegrityError, VerifiedCache, check_files, expected_sums, verify_for_load
from portable_ep.exporters.errors import runtime_cause
from portable_ep.python_backend.request_limits import (
    DEFAULT_MAX_BYTES, LimitConfigError, RequestLimitError, build_limits, limits_from_onnx,
)
from portable_ep.supervisor import describe_wait_status, find_stubs

SHAPES = {"input_ids": ("batch", "sequence"), "attention_mask": ("batch", "sequence")}
MODEL_LIMITS = {"vocab_sizes": {"input_ids": 100}, "max_dims": {"sequence": 64}, "origin": "the model's position table"}


def ids(values, sequence=None):
    array = np.array(values, dtype=np.int64).reshape(1, -1)
    return {"input_ids": array, "attention_mask": np.ones_like(array)}


def test_defaults_come_from_the_model():
    limits = build_limits({}, SHAPES, MODEL_LIMITS)
    assert limits.max_bytes == DEFAULT_MAX_BYTES and limits.vocab_sizes == {"input_ids": 100}
    assert limits.dims["sequence"].size == 64
    assert set(limits.dims["sequence"].uses) == {("input_ids", 1), ("attention_mask", 1)}
    limits.check(ids(range(64)))  # the longest sequence, every id in range: fine


@pytest.mark.parametrize("feeds, words", [
    (ids([5, -1, 7]), ["token id -1", "[0, 1]", "100 ids"]),
    (ids([5, 100]), ["token id 100", "[0, 1]", "(0..99)"]),
    (ids([1] * 65), ["sequence 65", "limit of 64", "position table", "request.max_dim.sequence"]),
    ({"x": np.array([[0.0, np.nan]], np.float32)}, ["'x'", "NaN", "[0, 1]", "request.check_finite"]),
    ({"x": np.array([[np.inf]], np.float32)}, ["infinity"]),
    ({"x": np.array([[1.0, np.nan]]).astype(bfloat16())}, ["'x'", "NaN", "[0, 1]"]),  # numpy kind "V", still checked
])
def test_each_refusal_names_the_problem_and_the_option(feeds, words):
    limits = build_limits({}, {**SHAPES, "x": ("batch", 2)}, MODEL_LIMITS)
    with pytest.raises(RequestLimitError) as error:
        limits.check(feeds)
    assert all(w in str(error.value) for w in words), str(error.value)


def test_config_parameters_override_and_switch_off():
    parameters = {"request.max_dim.sequence": "16", "request.max_bytes": "1000", "request.max_elements": "20",
                  "request.check_token_ids": "false", "request.check_finite": "no"}
    limits = build_limits(parameters, SHAPES, MODEL_LIMITS)
    assert limits.dims["sequence"].size == 16 and limits.dims["sequence"].origin == "config.pbtxt"
    assert limits.vocab_sizes == {} and not limits.check_finite
    limits.check(ids([-5] * 16))  # ids no longer checked
    with pytest.raises(RequestLimitError, match="17"):
        limits.check(ids([1] * 17))
    with pytest.raises(RequestLimitError, match="request.max_elements"):
        build_limits({"request.max_elements": "20"}, SHAPES, {}).check(ids([1] * 21))
    with pytest.raises(RequestLimitError, match="request.max_bytes"):
        build_limits({"request.max_bytes": "100"}, SHAPES, {}).check(ids([1] * 8))
    assert not build_limits({"request.max_dim.sequence": "0"}, SHAPES, MODEL_LIMITS).dims  # 0: no limit
    assert build_limits({"request.max_bytes": "0"}, SHAPES, {}).max_bytes == 0


@pytest.mark.parametrize("parameters, words", [
    ({"request.max_byte": "1"}, ["request.max_byte", "known", "request.max_bytes"]),
    ({"request.max_bytes": "lots"}, ["not an integer"]),
    ({"request.max_bytes": "-1"}, ["negative"]),
    ({"request.max_dim.tokens": "8"}, ["no symbolic dim 'tokens'", "sequence"]),
])
def test_bad_limit_parameters_are_refused_at_load(parameters, words):
    with pytest.raises(LimitConfigError) as error:
        build_limits(parameters, SHAPES, MODEL_LIMITS)
    assert all(w in str(error.value) for w in words), str(error.value)


def test_limits_are_read_from_an_onnx_graph(tmp_path):
    import onnx

    from portable_ep.models.tiny import build_bag_of_words, build_mlp

    model = onnx.load(str(build_bag_of_words(tmp_path / "bow.onnx", vocab=50, max_positions=32)))
    found = limits_from_onnx(model, SHAPES, ["input_ids", "attention_mask"])
    assert found["vocab_sizes"] == {"input_ids": 50} and found["max_dims"] == {"sequence": 32}
    # No position table, no sequence limit; no integer input, no vocabulary.
    plain = onnx.load(str(build_bag_of_words(tmp_path / "plain.onnx", vocab=50)))
    assert "max_dims" not in limits_from_onnx(plain, SHAPES, ["input_ids", "attention_mask"])
    mlp = onnx.load(str(build_mlp(tmp_path / "mlp.onnx")))
    assert limits_from_onnx(mlp, {"x": ("batch", 16)}, []) == {"vocab_sizes": {}}


def _bundle(root: Path) -> dict:
    (root / "openvino").mkdir(parents=True)
    (root / "model.onnx").write_bytes(b"onnx bytes")
    (root / "openvino" / "model.xml").write_text("<xml/>")
    (root / "openvino" / "model.bin").write_bytes(b"\0" * 1000)
    from portable_ep.backends.integrity import sha256_of

    return {
        "variants": [
            {"format": "onnx", "precision": "fp32", "file": "model.onnx", "sha256": sha256_of(root / "model.onnx")},
            {"format": "openvino", "precision": "fp32", "file": "openvino/model.xml",
             "sha256": sha256_of(root / "openvino" / "model.xml"),
             "weights_file": "openvino/model.bin", "weights_sha256": sha256_of(root / "openvino" / "model.bin")},
            {"format": "onnx", "precision": "int8", "file": None, "status": "failed"},
        ],
    }


def test_integrity_names_the_changed_file_and_caches_what_matched(tmp_path):
    manifest = _bundle(tmp_path / "b")
    cache = VerifiedCache(tmp_path / "cache.json")
    verify_for_load(tmp_path / "b", manifest, cache)
    assert len(cache.entries) == 3
    again = check_files(tmp_path / "b", expected_sums(manifest), VerifiedCache(tmp_path / "cache.json"))
    assert all(c.ok and c.cached for c in again)  # size and mtime unchanged: not read again

    weights = tmp_path / "b" / "openvino" / "model.bin"
    weights.write_bytes(b"\0" * 999 + b"\1")  # same size, new mtime: read again, and refused
    with pytest.raises(IntegrityError) as error:
        verify_for_load(tmp_path / "b", manifest, VerifiedCache(tmp_path / "cache.json"))
    assert "openvino/model.bin: sha256" in str(error.value) and "model.onnx" not in str(error.value)
    (tmp_path / "b" / "model.onnx").unlink()
    with pytest.raises(IntegrityError, match="model.onnx: missing"):
        verify_for_load(tmp_path / "b", manifest, VerifiedCache(tmp_path / "cache.json"))


def test_a_read_only_cache_only_costs_time(tmp_path):
    manifest = _bundle(tmp_path / "b")
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    verify_for_load(tmp_path / "b", manifest, VerifiedCache(blocked / "cache.json"))  # cannot save: no error


@pytest.mark.parametrize("status, text", [
    (signal.SIGKILL, "killed by SIGKILL"),
    (signal.SIGSEGV | 0x80, "killed by SIGSEGV (core dumped)"),
    (3 << 8, "exited with code 3"),
    (None, "already reaped"),
])
def test_wait_status_is_described(status, text):
    assert text in describe_wait_status(int(status) if status is not None else None)


def test_a_dead_child_is_found_as_a_zombie_with_its_cause():
    """find_stubs reads /proc: a child that died and was not reaped keeps its wait status."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            found = find_stubs(os.getpid()).get(child.pid)
            if found is not None and found.dead:
                break
            time.sleep(0.02)
        assert found is not None and found.dead and describe_wait_status(found.wait_status) == "killed by SIGKILL"
    finally:
        child.wait()


def test_runtime_cause_keeps_what_follows_the_first_line():
    openvino = ("Exception from src/inference/src/cpp/infer_request.cpp:224:\nException from src/plugins/intel_cpu/src/node.cpp:794:\n"
                "[CPU] Convolution node with name 'c1' Check 'dim_stride.has_value()' failed at src/plugins/intel_cpu/src/x.cpp:164:\n"
                "CpuBlockedMemoryDesc::getCurrentMemSizeImp overflow while multiplying dim and stride\n\n")
    cause = runtime_cause(RuntimeError(openvino))
    assert cause.startswith("[CPU] Convolution node with name 'c1'") and cause.endswith("overflow while multiplying dim and stride")
    onnxruntime = ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Add node. Name:'' Status Message: "
                   "/onnxruntime_src/onnxruntime/core/providers/cpu/math/element_wise_ops.h:583 void "
                   "onnxruntime::BroadcastIterator::Append(ptrdiff_t, ptrdiff_t) axis == 1 || axis == largest was false. 64 by 70")
    cause = runtime_cause(RuntimeError(onnxruntime))
    assert "ONNXRuntimeError" not in cause and "onnxruntime_src" not in cause and "BroadcastIterator" not in cause
    assert cause.endswith("64 by 70")
    long = runtime_cause(RuntimeError("x" * 50 + " the cause at the end"), limit=40)
    assert len(long) <= 40 and long.endswith("the cause at the end")


def test_position_tables_of_two_sizes_set_no_sequence_limit_and_ml_models_allow_nan():
    from onnx import TensorProto, helper, numpy_helper

    tables = [numpy_helper.from_array(np.zeros((77, 4), np.float32), "text.position_embedding.weight"),
              numpy_helper.from_array(np.zeros((50, 4), np.float32), "vision.position_embedding.weight"),
              numpy_helper.from_array(np.zeros((100, 4), np.float32), "tokens")]
    graph = helper.make_graph(
        [helper.make_node("Gather", ["tokens", "input_ids"], ["y"])], "two_tables",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", 4])], tables)
    found = limits_from_onnx(helper.make_model(graph), {"input_ids": ("batch", "sequence")}, ["input_ids"])
    assert found["vocab_sizes"] == {"input_ids": 100} and "max_dims" not in found  # CLIP-like: which table is the text's?

    tree = helper.make_graph(
        [helper.make_node("Imputer", ["x"], ["y"], domain="ai.onnx.ml", imputed_value_floats=[0.0], replaced_value_float=float("nan"))],
        "imputer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    ml = limits_from_onnx(helper.make_model(tree), {"x": ("batch", 3)}, [])
    assert ml["allows_non_finite"] is True
    limits = build_limits({}, {"x": ("batch", 3)}, ml)
    limits.check({"x": np.array([[np.nan, 1.0, 2.0]], np.float32)})  # NaN means "missing" there
    assert build_limits({"request.check_finite": "true"}, {"x": ("batch", 3)}, ml).check_finite


def test_a_copy_that_keeps_mtime_is_hashed_again(tmp_path):
    manifest = _bundle(tmp_path / "b")
    cache = VerifiedCache(tmp_path / "cache.json")
    verify_for_load(tmp_path / "b", manifest, cache)
    weights = tmp_path / "b" / "openvino" / "model.bin"
    before = weights.stat()
    weights.write_bytes(b"\0" * 999 + b"\1")  # damaged, same size ...
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # ... and the old mtime, as `cp -p` keeps it
    with pytest.raises(IntegrityError, match="openvino/model.bin"):
        verify_for_load(tmp_path / "b", manifest, VerifiedCache(tmp_path / "cache.json"))


# -- stalled stubs, failed loads, process ownership (issue 24) -------------------------------------

def _beat(beat: float, stalled_since=None, serving=True):
    from portable_ep.heartbeat import Beat

    return Beat(pid=1, started=1, model="m", beat=beat, stalled_since=stalled_since, serving=serving)


@pytest.mark.parametrize("beat, state, words", [
    (_beat(100.0), "S", None),  # beating, idle
    (_beat(97.0), "T", ["no heartbeat for 3.0 s", "stopped", "deadline 2 s"]),
    (_beat(97.0), "S", ["no heartbeat for 3.0 s", "deadline 2 s"]),
    (_beat(99.9, stalled_since=94.0), "S", ["no progress for 6.0 s", "deadline 5 s"]),
    (_beat(99.9, stalled_since=96.0), "S", None),  # busy for 4 s: under the progress deadline
    (_beat(90.0, serving=False), "S", None),  # still initializing: a long compile is not a stall
])
def test_stall_cause(beat, state, words):
    from portable_ep.heartbeat import stall_cause

    cause = stall_cause(beat, now=100.0, heartbeat_deadline_s=2.0, progress_deadline_s=5.0, process_state=state)
    if words is None:
        assert cause is None
    else:
        assert cause is not None and all(w in cause for w in words), cause
        assert ("stopped" in cause) == (state == "T")
    assert stall_cause(_beat(0.0, stalled_since=0.0), 100.0, 0, 0) is None  # both deadlines off


def test_heartbeat_reports_work_without_progress(tmp_path):
    from portable_ep.heartbeat import Heartbeat, read_beats

    heartbeat = Heartbeat("m", folder=tmp_path, interval_s=0.05).start()
    try:
        beat = read_beats(tmp_path)[os.getpid()]
        assert beat.model == "m" and not beat.serving and beat.stalled_since is None
        heartbeat.serving = True
        heartbeat.begin()
        time.sleep(0.2)
        busy = read_beats(tmp_path)[os.getpid()]
        assert busy.serving and busy.stalled_since is not None and busy.beat > busy.stalled_since
        heartbeat.end()
        time.sleep(0.2)
        assert read_beats(tmp_path)[os.getpid()].stalled_since is None
        # A model with threads of its own (generation): pending work and a counter that must move.
        state = {"pending": 1, "tokens": 0}
        heartbeat.watch(lambda: (state["pending"], state["tokens"]))
        time.sleep(0.2)
        first = read_beats(tmp_path)[os.getpid()].stalled_since
        time.sleep(0.2)
        assert first is not None and read_beats(tmp_path)[os.getpid()].stalled_since == first  # no new token
        state["tokens"] = 5
        time.sleep(0.2)
        assert read_beats(tmp_path)[os.getpid()].stalled_since > first  # a token is progress
        state["pending"] = 0
        time.sleep(0.2)
        assert read_beats(tmp_path)[os.getpid()].stalled_since is None
    finally:
        heartbeat.close()
    assert not list(tmp_path.iterdir())  # the file goes with the stub


def test_short_reason_cuts_the_stub_traceback_and_the_load_call():
    from portable_ep.supervisor import short_reason

    at_load = "Internal: IntegrityError: bundle b failed its integrity check: model.onnx\n\nAt:\n  integrity.py(137): verify_for_load\n"
    assert short_reason(at_load) == "IntegrityError: bundle b failed its integrity check: model.onnx"
    retried = ("/v2/repository/models/bad/load: HTTP 400: load failed for model 'bad': version 1 is at UNAVAILABLE state: "
               "Internal: IntegrityError: x\n\nAt:\n  y")
    assert short_reason(retried) == "IntegrityError: x"


_ORPHANING_PARENT = """
import subprocess, sys, time
from portable_ep.process_tree import dying_with_parent
child = subprocess.Popen(dying_with_parent(["/bin/sleep", "60"]))
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_child_started_dying_with_parent_dies_with_it():
    """The parent-death signal: SIGKILL of the parent (no cleanup can run) still ends the child."""
    parent = subprocess.Popen([sys.executable, "-c", _ORPHANING_PARENT], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 5
        while Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0] != b"/bin/sleep" and time.monotonic() < deadline:
            time.sleep(0.02)  # the launcher execs sleep
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                break
            if state in ("Z", "X"):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the child outlived its parent")
    finally:
        if parent.poll() is None:
            parent.kill()


def test_kill_group_ends_every_process_of_the_group():
    from portable_ep.process_tree import group_members, kill_group

    leader = subprocess.Popen(["/bin/sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while len(group_members(leader.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        members = group_members(leader.pid)
        assert len(members) == 3
        assert sorted(kill_group(leader.pid)) == sorted(members)
        assert group_members(leader.pid) == []
    finally:
        leader.wait(timeout=5)


_TERMINATED_WORK = """
import sys, time
from pathlib import Path
from portable_ep.interrupts import sigterm_as_interrupt
work = Path(sys.argv[1])
with sigterm_as_interrupt():
    work.mkdir()
    try:
        print("working", flush=True)
        time.sleep(60)
    finally:
        work.rmdir()
"""


def test_sigterm_unwinds_like_ctrl_c(tmp_path):
    work = tmp_path / "partial"
    process = subprocess.Popen([sys.executable, "-c", _TERMINATED_WORK, str(work)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "working" and work.is_dir()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=10)
    assert not work.exists()  # the finally ran
    assert "Terminated: SIGTERM received" in err
