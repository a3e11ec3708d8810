"""`portable-ep check` as a CI runs it: exit codes 0/1/2/3 with one-line reasons, reports, merge."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from portable_ep.exporters.bundle import ExportOptions, export_bundle
from portable_ep.exporters.repository import RepoOptions, add_to_repository
from portable_ep.models.huggingface import build_tiny_bert_classifier
from portable_ep.triton_process import TritonServer

pytestmark = pytest.mark.e2e
CLI = [sys.executable, "-m", "portable_ep.cli"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def corrupt_int8(bundle):
    """Flip the sign of the classifier's weights in the int8 variant; the manifest still says it is fine.

    Its sha256 is recorded anew, as an exporter that built a wrong model would: the file is
    intact (integrity passes), its answers are not (only the accuracy check can tell).
    """
    import onnx
    from onnx import numpy_helper

    path = bundle / "model.int8.onnx"
    model = onnx.load(str(path))
    weights = [i for i in model.graph.initializer if "classifier" in i.name and i.data_type == onnx.TensorProto.INT8]
    assert weights, "no int8 classifier weight found to corrupt"
    weight = max(weights, key=lambda i: np.prod(i.dims))  # not its zero point
    weight.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weight), weight.name))
    onnx.save(model, str(path))
    from portable_ep.backends.integrity import sha256_of

    manifest = json.loads((bundle / "manifest.json").read_text())
    digest = sha256_of(path)
    manifest["files"][path.name] = digest
    for variant in manifest["variants"]:
        if variant.get("file") == path.name:
            variant["sha256"] = digest
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def float_ids_bundle(tmp_path_factory):
    """A model of character ids stored as floats, exported with the user's calibration file of such ids."""
    from portable_ep.models.tiny import build_float_ids

    root = tmp_path_factory.mktemp("float-ids")
    np.savez(root / "calibration.npz", chars=np.random.default_rng(4).integers(0, 41, size=(16, 37)).astype(np.float32))
    return export_bundle(build_float_ids(root / "chars.onnx"), root / "bundle", ExportOptions(
        formats=("onnx",), precisions=("fp32",), calibration=str(root / "calibration.npz"), progress=False)).bundle


@pytest.fixture(scope="module")
def check_server(tmp_path_factory, installed_backend_dir, float_ids_bundle):
    root = tmp_path_factory.mktemp("check")
    folder = build_tiny_bert_classifier(root / "tiny-bert", seed=0)
    bundle = export_bundle(folder, root / "bundle", ExportOptions(sequence_length=16, formats=("onnx",), progress=False)).bundle
    broken = root / "broken-bundle"
    shutil.copytree(bundle, broken)
    corrupt_int8(broken)
    add_to_repository(bundle, root / "repo", "good", RepoOptions(providers="cpu", precision="fp32"))
    add_to_repository(broken, root / "repo", "broken_int8", RepoOptions(providers="cpu", precision="int8"))
    add_to_repository(float_ids_bundle, root / "repo", "float_ids", RepoOptions(providers="cpu", precision="fp32"))
    with TritonServer(root / "repo", backend_directory=installed_backend_dir) as server:
        yield server, bundle, broken


def run_check(server, model, bundle, out, *extra):
    return subprocess.run(
        CLI + ["check", "--url", server.grpc_url, "--metrics-url", server.metrics_url, "--model", model,
               "--bundle", str(bundle), "--out", str(out), "--concurrency", "1,4", "--requests", "40", *extra],
        capture_output=True, text=True,
    )


def test_good_model_passes_and_writes_reports(check_server, tmp_path):
    server, bundle, _ = check_server
    result = run_check(server, "good", bundle, tmp_path / "good")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "good" / "report.json").read_text())
    assert report["schema_version"] == 1 and (report["target"]["provider"], report["target"]["device"]) == ("cpu", "cpu")
    assert report["accuracy"]["golden"]["passed"] and report["accuracy"]["random"]["passed"]
    levels = report["latency"]["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 4]
    assert levels[1]["achieved_concurrency"] > 2 and all(lv["raw_throughput"] > 0 for lv in levels)
    assert "| 4 / " in (tmp_path / "good" / "report.md").read_text()
    png = (tmp_path / "good" / "report.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000


def test_random_sample_is_generated_like_the_users_calibration_file(check_server, float_ids_bundle, tmp_path):
    """Standard-normal floats of length 16 would be negative ids the model cannot run; the manifest's
    profile of the calibration file (whole numbers 0..40, windows of 37) makes a sample it runs."""
    server, _, _ = check_server
    result = run_check(server, "float_ids", float_ids_bundle, tmp_path / "ids", "--concurrency", "1", "--requests", "8")
    assert result.returncode == 0, result.stderr
    random = json.loads((tmp_path / "ids" / "report.json").read_text())["accuracy"]["random"]
    assert random["passed"] and random["samples"] == 8 and "note" not in random, random


def test_corrupted_int8_variant_fails_accuracy_naming_output_amount_and_budget(check_server, tmp_path):
    server, _, broken = check_server
    result = run_check(server, "broken_int8", broken, tmp_path / "broken")
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert "accuracy failed" in line and "output 'logits'" in line and "int8 budget" in line and " by " in line


def test_latency_budget_missed_is_exit_2(check_server, tmp_path):
    server, bundle, _ = check_server
    result = run_check(server, "good", bundle, tmp_path / "slow", "--p99-budget-ms", "0.001")
    assert result.returncode == 2
    assert "latency budget missed: p99 at concurrency 1" in result.stderr and "over the budget 0.001 ms" in result.stderr


@pytest.mark.parametrize("where", ["unknown-model", "no-server"])
def test_unreachable_or_unloaded_model_is_exit_3(check_server, tmp_path, where):
    server, bundle, _ = check_server
    if where == "unknown-model":
        result = run_check(server, "nope", bundle, tmp_path / "x")
        assert "model 'nope' is not ready" in result.stderr
    else:
        result = subprocess.run(CLI + ["check", "--url", "127.0.0.1:1", "--model", "good", "--bundle", str(bundle),
                                       "--out", str(tmp_path / "x")], capture_output=True, text=True)
        assert "cannot reach Triton at 127.0.0.1:1" in result.stderr
    assert result.returncode == 3
    assert json.loads((tmp_path / "x" / "report.json").read_text())["verdict"]["exit_code"] == 3


def test_merge_builds_one_matrix(check_server, tmp_path):
    server, bundle, broken = check_server
    assert run_check(server, "good", bundle, tmp_path / "a").returncode == 0
    assert run_check(server, "broken_int8", broken, tmp_path / "b").returncode == 1
    result = subprocess.run(CLI + ["check", "merge", str(tmp_path / "a" / "report.json"), str(tmp_path / "b"),
                                   "--out", str(tmp_path / "m")], capture_output=True, text=True)
    assert result.returncode == 1  # the worst exit code of the merged targets
    table = (tmp_path / "m" / "matrix.md").read_text()
    assert "good (cpu, fp32)" in table and "broken_int8 (cpu, int8)" in table and "FAIL" in table
    assert (tmp_path / "m" / "matrix.png").read_bytes().startswith(PNG_MAGIC)
    rows = json.loads((tmp_path / "m" / "matrix.json").read_text())["rows"]
    assert [r["exit_code"] for r in rows] == [0, 1]
