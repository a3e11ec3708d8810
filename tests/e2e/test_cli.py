"""The command line as a user runs it: backend install, serve (with Ctrl-C / SIGTERM), doctor."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from e2e_repository import write_repository
from inputs import mlp_input
from portable_ep.client import infer_once
from portable_ep.triton_process import free_port

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "portable_ep.cli"]


def test_backend_install_lays_out_a_complete_backend_directory(installed_backend_dir):
    assert (installed_backend_dir / "portable_ep" / "model.py").read_text().count("TritonPythonModel") >= 1
    for name in ("libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub"):
        assert (installed_backend_dir / "python" / name).is_file(), name
    assert os.access(installed_backend_dir / "python" / "triton_python_backend_stub", os.X_OK)


def test_backend_install_keeps_an_existing_python_backend(tmp_path):
    # As in an NGC image: /opt/tritonserver/backends/python already exists.
    existing = tmp_path / "backends" / "python"
    existing.mkdir(parents=True)
    (existing / "libtriton_python.so").write_bytes(b"the server's own")
    result = subprocess.run(CLI + ["backend", "install", str(tmp_path / "backends") + "/"], capture_output=True, text=True, check=True)
    assert "kept the existing python backend" in result.stdout
    assert (existing / "libtriton_python.so").read_bytes() == b"the server's own"
    assert "--backend-directory=" + str(tmp_path / "backends") + " " in result.stdout  # no trailing slash


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_where_it_listens_and_stops_cleanly(tmp_path, model_files, reference_run, stop_signal):
    repository = write_repository(tmp_path, model_files, {"mlp_fallback": ("mlp", "cuda,openvino,cpu", {})})
    http, grpc, metrics = free_port(), free_port(), free_port()
    process = subprocess.Popen(
        CLI + ["serve", str(repository), "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"},
    )
    output = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            if "portable-ep: ready" in line:
                break
        text = "".join(output)
        assert "portable-ep: ready" in text, text
        assert f"gRPC 127.0.0.1:{grpc}" in text and f"HTTP 127.0.0.1:{http}" in text
        row = next(line for line in output if "mlp_fallback" in line)
        assert "READY" in row and "openvino" in row
        feeds = mlp_input(3, seed=21)
        served = infer_once("grpc", f"127.0.0.1:{grpc}", "mlp_fallback", feeds)["logits"]
        assert np.max(np.abs(served - reference_run("mlp", feeds)["logits"])) <= 1e-5
        process.send_signal(stop_signal)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, rest
    assert f"{signal.Signals(stop_signal).name} received" in rest
    assert "tritonserver stopped (exit code 0)" in rest


def test_serve_reports_a_missing_repository_in_one_line(tmp_path):
    result = subprocess.run(CLI + ["serve", str(tmp_path / "nope")], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == f"portable-ep: error: model repository {tmp_path / 'nope'} does not exist"


def test_doctor_json_describes_this_machine():
    result = subprocess.run(CLI + ["doctor", "--json"], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    providers = {p["name"]: p for p in report["providers"]}
    assert providers["cpu"]["ok"] and providers["openvino"]["ok"]
    # Stock onnxruntime here: rocm is installed but its MIGraphX build is not; npu runs emulated.
    assert not providers["rocm"]["ok"] and providers["rocm"]["reason"].startswith("package missing")
    assert providers["npu"]["ok"] and providers["npu"]["devices"] == ["emulated"]
    assert providers["npu"]["emulated"] and "npu" not in report["recommended_chain"].split(",")
    assert providers["cuda"]["reason_kind"] == "package" and "onnxruntime-gpu" in providers["cuda"]["reason"]
    with open("/proc/cpuinfo") as f:
        lines = f.read().splitlines()
    flags = next(line for line in lines if line.startswith("flags")).split()
    vendor = next(line for line in lines if line.startswith("vendor_id")).split(":", 1)[1].strip()
    cpu = report["cpu"]
    assert cpu["vendor"] == vendor
    assert cpu["amx"] == ("amx_bf16" in flags or "amx_int8" in flags)
    assert cpu["amx_bf16"] == ("amx_bf16" in flags) and cpu["avx512_bf16"] == ("avx512_bf16" in flags)
    assert cpu["avx512_vnni"] == ("avx512_vnni" in flags)
    assert cpu["bf16_via"] == ("AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else "")
    # bf16 on openvino is offered exactly when the CPU does BF16 natively.
    assert ("bf16" in providers["openvino"]["capabilities"]) == cpu["native_bf16"]
    # The GPUs listed are the display-class NVIDIA/AMD functions on the PCI bus (none on CI).
    on_bus = []
    for device in sorted(glob.glob("/sys/bus/pci/devices/*")):
        vendor, klass = (open(os.path.join(device, f)).read().strip() for f in ("vendor", "class"))
        if vendor in ("0x10de", "0x1002") and klass.startswith("0x03"):
            on_bus.append(os.path.basename(device))
    assert sorted(a["location"] for a in report["accelerators"] if a["kind"] != "npu") == on_bus
    assert report["recommended_chain"].endswith("openvino,cpu")

    table = subprocess.run(CLI + ["doctor"], capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "200"}).stdout
    assert f"AMX: {'yes' if cpu['amx'] else 'no'}" in table and "recommended chain:" in table
    # precision auto: openvino's int8 IR first only where the CPU has VNNI (measured slower without).
    openvino_first = "int8" if cpu["vnni"] else "fp32"
    assert providers["openvino"]["auto_precision_order"][0] == openvino_first
    assert providers["cpu"]["auto_precision_order"][0] == "int8"
    assert f"openvino {openvino_first}," in table
    assert ("has no VNNI" in table) == (not cpu["vnni"])
