"""Accelerators this machine has, as the kernel sees them: NVIDIA and AMD GPUs, NPUs.

The PCI bus tells whether a device is *there*; the bound kernel driver and the
device nodes tell whether it is *usable*. Keeping the two apart lets ``doctor`` say
"driver" (a GPU on the bus with no driver bound) instead of "no device". Roots are
parameters so tests hand in a fake sysfs/dev tree: the probe boundary, nothing else.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

NVIDIA, AMD_GPU, INTEL = "0x10de", "0x1002", "0x8086"
DISPLAY_CLASSES = ("0x0300", "0x0302", "0x0380")  # VGA, 3D controller, other display
ACCELERATOR_CLASS = "0x12"  # PCI "processing accelerator": Intel NPU (intel_vpu), AMD XDNA (amdxdna)
NPU_DRIVERS = ("intel_vpu", "amdxdna", "qaic")


@dataclass(frozen=True)
class Accelerator:
    kind: str  # "nvidia-gpu" | "amd-gpu" | "npu"
    name: str
    location: str  # PCI address or device node
    driver: Optional[str]  # the bound kernel driver; None: on the bus, no driver

    @property
    def usable(self) -> bool:
        return self.driver is not None

    def to_json(self) -> dict:
        return {**asdict(self), "usable": self.usable}


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _driver(device: Path) -> Optional[str]:
    link = device / "driver"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def pci_devices(sys_root: Path) -> List[Tuple[str, str, str, Optional[str]]]:
    """(address, vendor, class, driver) of every PCI function."""
    found = []
    for device in sorted((sys_root / "bus" / "pci" / "devices").glob("*")):
        found.append((device.name, _read(device / "vendor").lower(), _read(device / "class").lower(), _driver(device)))
    return found


def accel_nodes(sys_root: Path, dev_root: Path) -> List[Accelerator]:
    """Linux compute-accelerator nodes (/dev/accel/accelN), the interface NPU drivers expose."""
    nodes = []
    for node in sorted((dev_root / "accel").glob("accel*")):
        driver = _driver(sys_root / "class" / "accel" / node.name / "device") or "unknown driver"
        nodes.append(Accelerator("npu", f"{driver} accelerator", str(node), driver))
    return nodes


def probe_accelerators(
    sys_root: Path = Path("/sys"),
    dev_root: Path = Path("/dev"),
    gpu_names: Callable[[str], Sequence[str]] = lambda kind: (),
) -> List[Accelerator]:
    """Every GPU and NPU seen. ``gpu_names(kind)`` adds names from vendor tools (nvidia-smi, rocm-smi)."""
    found: List[Accelerator] = []
    for address, vendor, klass, driver in pci_devices(sys_root):
        if vendor in (NVIDIA, AMD_GPU) and klass.startswith(DISPLAY_CLASSES):
            kind = "nvidia-gpu" if vendor == NVIDIA else "amd-gpu"
            found.append(Accelerator(kind, f"{'NVIDIA' if vendor == NVIDIA else 'AMD'} GPU", address, driver))
        elif klass.startswith(ACCELERATOR_CLASS) and (driver in NPU_DRIVERS or vendor in (INTEL, "0x1022")):
            found.append(Accelerator("npu", f"NPU ({vendor})", address, driver))
    if not any(a.kind == "npu" for a in found):
        found.extend(accel_nodes(sys_root, dev_root))
    # Inside a container the PCI tree may be hidden while the GPU is passed in: trust the
    # vendor tool's names then, and name PCI-found GPUs with them when both agree in number.
    for kind in ("nvidia-gpu", "amd-gpu"):
        names = list(gpu_names(kind))
        on_bus = sum(a.kind == kind for a in found)
        if names and len(names) == on_bus:
            named = iter(names)
            found = [Accelerator(a.kind, next(named), a.location, a.driver) if a.kind == kind else a for a in found]
        elif names and not on_bus:
            found.extend(Accelerator(kind, name, "passed in (no PCI view)", "present") for name in names)
    return found


def vendor_tool_names(kind: str) -> Sequence[str]:
    """GPU names from nvidia-smi / rocm-smi, when those tools exist and answer."""
    if kind == "nvidia-gpu":
        from portable_ep.backends.onnxruntime_cuda import nvidia_devices

        return [n for n in nvidia_devices() if not n.startswith("/dev/")]
    if kind == "amd-gpu":
        from portable_ep.backends.onnxruntime_migraphx import amd_gpus

        return [n for n in amd_gpus() if not n.startswith("kfd node")]
    return ()
