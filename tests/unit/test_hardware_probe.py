"""The accelerator probe and doctor's reasons, with fake sysfs/dev trees injected at the probe boundary."""
from __future__ import annotations

import os
from pathlib import Path

from portable_ep.backends.hardware import probe_accelerators
from portable_ep.doctor import _driverless, doctor_report, reason_kind


def pci(sys_root: Path, address: str, vendor: str, klass: str, driver: str = None) -> None:
    device = sys_root / "bus" / "pci" / "devices" / address
    device.mkdir(parents=True)
    (device / "vendor").write_text(vendor + "\n")
    (device / "class").write_text(klass + "\n")
    if driver:
        target = sys_root / "bus" / "pci" / "drivers" / driver
        target.mkdir(parents=True, exist_ok=True)
        os.symlink(target, device / "driver")


def test_gpus_and_npus_on_the_bus_with_and_without_drivers(tmp_path):
    sys_root, dev_root = tmp_path / "sys", tmp_path / "dev"
    pci(sys_root, "0000:00:01.0", "0x1022", "0x060000")  # an AMD CPU's host bridge: not a GPU
    pci(sys_root, "0000:17:00.0", "0x10de", "0x030200", driver="nvidia")
    pci(sys_root, "0000:65:00.0", "0x10de", "0x030200")  # driver not loaded
    pci(sys_root, "0000:c1:00.0", "0x1002", "0x038000", driver="amdgpu")
    pci(sys_root, "0000:00:0b.0", "0x8086", "0x120000", driver="intel_vpu")
    names = {"nvidia-gpu": ["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"]}
    found = probe_accelerators(sys_root, dev_root, gpu_names=lambda kind: names.get(kind, ()))
    summary = [(a.kind, a.name, a.location, a.driver, a.usable) for a in found]
    assert summary == [
        ("npu", "NPU (0x8086)", "0000:00:0b.0", "intel_vpu", True),
        ("nvidia-gpu", "NVIDIA H100 80GB HBM3", "0000:17:00.0", "nvidia", True),
        ("nvidia-gpu", "NVIDIA H100 80GB HBM3", "0000:65:00.0", None, False),
        ("amd-gpu", "AMD GPU", "0000:c1:00.0", "amdgpu", True),
    ]


def test_a_container_without_a_pci_view_trusts_the_vendor_tool(tmp_path):
    found = probe_accelerators(tmp_path / "sys", tmp_path / "dev", gpu_names=lambda kind: ["NVIDIA L4"] if kind == "nvidia-gpu" else ())
    assert [(a.kind, a.name, a.usable) for a in found] == [("nvidia-gpu", "NVIDIA L4", True)]


def test_an_npu_seen_only_as_an_accel_node(tmp_path):
    sys_root, dev_root = tmp_path / "sys", tmp_path / "dev"
    (dev_root / "accel").mkdir(parents=True)
    (dev_root / "accel" / "accel0").write_text("")
    device = sys_root / "class" / "accel" / "accel0" / "device"
    device.mkdir(parents=True)
    (sys_root / "drivers" / "amdxdna").mkdir(parents=True)
    os.symlink(sys_root / "drivers" / "amdxdna", device / "driver")
    found = probe_accelerators(sys_root, dev_root)
    assert [(a.kind, a.name, a.driver) for a in found] == [("npu", "amdxdna accelerator", "amdxdna")]


def test_nothing_on_an_empty_machine(tmp_path):
    assert probe_accelerators(tmp_path / "sys", tmp_path / "dev") == []


def test_reasons_sort_into_package_device_and_driver(tmp_path):
    assert reason_kind("package missing: this onnxruntime build has no CUDAExecutionProvider") == "package"
    assert reason_kind("provider 'x' is not installed: pip install x") == "package"
    assert reason_kind("no device: no NVIDIA GPU found") == "device"
    assert reason_kind("driver: onnxruntime could not start CUDA") == "driver"
    sys_root = tmp_path / "sys"
    pci(sys_root, "0000:65:00.0", "0x10de", "0x030200")
    stranded = probe_accelerators(sys_root, tmp_path / "dev")
    # "no device" from the provider, but the GPU is on the bus: the fix is the driver.
    reason = _driverless("cuda", "no device: no NVIDIA GPU found (nvidia-smi lists none)", stranded)
    assert reason.startswith("driver: NVIDIA GPU on the PCI bus at 0000:65:00.0 has no kernel driver bound; install the NVIDIA driver")
    assert _driverless("rocm", "no device: no AMD GPU found", stranded).startswith("no device")  # not an AMD GPU
    assert _driverless("cuda", "package missing: no CUDAExecutionProvider", stranded).startswith("package missing")


def test_doctor_names_the_driver_for_a_stranded_gpu_and_keeps_the_chain(tmp_path):
    sys_root = tmp_path / "sys"
    pci(sys_root, "0000:65:00.0", "0x10de", "0x030200")
    report = doctor_report(probe_accelerators(sys_root, tmp_path / "dev"))
    assert report["accelerators"] == [{"kind": "nvidia-gpu", "name": "NVIDIA GPU", "location": "0000:65:00.0", "driver": None, "usable": False}]
    cuda = next(p for p in report["providers"] if p["name"] == "cuda")
    # Stock onnxruntime here: the package is what is missing first, whatever the bus holds.
    assert not cuda["ok"] and cuda["reason_kind"] == "package"
    assert report["recommended_chain"].endswith("openvino,cpu")
