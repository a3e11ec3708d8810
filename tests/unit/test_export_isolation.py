"""A variant whose build dies natively costs that variant only (exporters/worker.py), and ONNX
variants keep a source's external weights.

The deaths are real: the test hook PORTABLE_EP_TEST_VARIANT_FAULT makes the worker process
building one named variant send itself SIGSEGV / SIGKILL, or hang, as it creates that
variant's session; the export process must survive, report it in one line and keep the rest.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from portable_ep.cli import main
from portable_ep.exporters.bundle import ExportOptions, export_bundle
from portable_ep.exporters.worker import FAULT_ENV, ISOLATION_ENV


def run_export(capsys, *args):
    code = main(["export", *map(str, args), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.err.strip(), captured.out


def leftovers(out):
    return list(out.parent.glob(f".{out.name}.partial-*"))


@pytest.fixture
def out(tmp_path):
    return tmp_path / "bundles" / "model"


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    monkeypatch.delenv(ISOLATION_ENV, raising=False)


def test_a_segfault_building_one_variant_is_one_line_and_the_others_are_kept(capsys, monkeypatch, model_files, out):
    monkeypatch.setenv(FAULT_ENV, "onnx fp16=segv")
    code, err, report = run_export(capsys, model_files["mlp"], out)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    status = {(v["format"], v["precision"]): v["status"] for v in manifest["variants"]}
    assert status.pop(("onnx", "fp16")) == "failed" and set(status.values()) == {"ok"}, status
    fp16 = next(v for v in manifest["variants"] if (v["format"], v["precision"]) == ("onnx", "fp16"))
    assert fp16["error"] == "onnxruntime crashed (SIGSEGV) creating the fp16 session" and fp16["file"] is None
    assert "onnxruntime crashed (SIGSEGV) creating the fp16 session" in report
    assert not (out / "model.fp16.onnx").exists() and not leftovers(out) and "Traceback" not in err
    # Asked for by name, the same crash fails the export in one line and writes nothing.
    code, err, _ = run_export(capsys, model_files["mlp"], out, "--overwrite", "--formats", "onnx", "--precisions", "fp32,fp16")
    assert code == 1 and "onnx fp16: failed: onnxruntime crashed (SIGSEGV) creating the fp16 session" in err
    assert err.count("\n") == 0 and not leftovers(out)


def test_a_hang_is_stopped_after_the_timeout_and_the_next_variant_gets_a_new_worker(monkeypatch, model_files, out):
    monkeypatch.setenv(FAULT_ENV, "onnx fp16=hang")
    result = export_bundle(model_files["mlp"], out, ExportOptions(formats=("onnx",), variant_timeout=6, progress=False))
    by = {v["precision"]: v for v in result.manifest["variants"]}
    assert by["fp16"]["status"] == "failed"
    assert by["fp16"]["error"].startswith("onnxruntime did not finish within 6 s creating the fp16 session")
    assert by["int8"]["status"] == "ok" and (out / "model.int8.onnx").is_file() and not leftovers(out)


def test_an_out_of_memory_kill_is_named(monkeypatch, model_files, out):
    monkeypatch.setenv(FAULT_ENV, "onnx int8=kill")
    result = export_bundle(model_files["mlp"], out, ExportOptions(formats=("onnx",), precisions=("fp32", "int8"),
                                                                  progress=False))
    int8 = next(v for v in result.manifest["variants"] if v["precision"] == "int8")
    assert int8["error"] == "onnxruntime was killed (SIGKILL, most likely by the out-of-memory killer) creating the int8 session"
    # What the dead worker had written (the quantized file, the quantizer's scratch files) is not in the bundle.
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "reference"]


def test_a_crash_in_the_golden_run_is_an_export_error_not_a_dead_export(monkeypatch, model_files, out):
    from portable_ep.exporters import worker
    from portable_ep.exporters.errors import ExportError

    monkeypatch.setattr(worker, "fault_for", lambda variant: "")
    monkeypatch.setenv(FAULT_ENV, "")
    # The golden run is the fp32 session of the source: make the worker die there through the hook's fault value.
    original = worker.Worker.call

    def call(self, function, *args, fault="", **kwargs):
        if function.__name__ == "run_variant":
            fault = "segv"
        return original(self, function, *args, fault=fault, **kwargs)

    monkeypatch.setattr(worker.Worker, "call", call)
    with pytest.raises(ExportError, match=r"ONNX Runtime cannot run .* onnxruntime crashed \(SIGSEGV\) creating the fp32 session"):
        export_bundle(model_files["mlp"], out, ExportOptions(formats=("onnx",), progress=False))
    assert not out.exists() and not leftovers(out)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_external_weights_survive_every_onnx_variant(tmp_path, mode):
    from portable_ep.models.tiny import build_mlp

    model = onnx.load(str(build_mlp(tmp_path / "src.onnx", seed=0, features=32, hidden=64)))
    source = tmp_path / "external" / "model.onnx"
    source.parent.mkdir()
    onnx.save(model, str(source), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)
    out = tmp_path / "bundle"
    result = export_bundle(source, out, ExportOptions(formats=("onnx",), int8_mode=mode, progress=False))
    by = {v["precision"]: v for v in result.manifest["variants"]}
    assert {p: v["status"] for p, v in by.items()} == {"fp32": "ok", "fp16": "ok", "int8": "ok"}, result.problems
    for precision, v in by.items():
        assert v["weights_file"] == v["file"] + ".data" and (out / v["weights_file"]).is_file(), v
    assert by["int8"]["quantization"] == ("static-qdq" if mode == "static" else "dynamic")
    quantized = onnx.load(str(out / "model.int8.onnx"), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in quantized.graph.initializer)
    assert not list(out.glob("*.pre.onnx*"))
    assert np.isfinite(by["int8"]["accuracy"]["outputs"]["logits"]["cosine"])
