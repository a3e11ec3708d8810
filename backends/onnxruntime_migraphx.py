"""``rocm``: ONNX Runtime's MIGraphXExecutionProvider (onnxruntime-migraphx) on an AMD GPU.

ONNX Runtime >= 1.23 dropped the ROCm EP, so MIGraphX is the AMD GPU path. Like
CUDA, ORT quietly falls back to CPU when MIGraphX cannot start; we check the
session's providers and treat a CPU-only session as unavailable.
"""
from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path
from typing import Tuple

from portable_ep.backends.base import (
    Availability,
    LoadRequest,
    Provider,
    ProviderUnavailable,
    Session,
    check_supported_precision,
    select_variant,
)
from portable_ep.backends.onnxruntime_common import OnnxRuntimeSession, import_onnxruntime, session_options

EP_NAME = "MIGraphXExecutionProvider"
MIGRAPHX_OPTION_KEYS = ("fp16_enable", "exhaustive_tune")
PRECISIONS = ("fp32", "fp16")
INSTALL_HINT = "pip install onnxruntime-migraphx (in place of onnxruntime), or use the rocm image"
KFD_NODES = "/sys/class/kfd/kfd/topology/nodes/*/properties"


def _kfd_gpu_nodes(pattern: str = KFD_NODES) -> Tuple[str, ...]:
    """KFD topology nodes with SIMD units are GPUs (CPU nodes report simd_count 0)."""
    gpus = []
    for properties in sorted(glob.glob(pattern)):
        try:
            fields = dict(line.split(None, 1) for line in Path(properties).read_text().splitlines() if " " in line)
        except OSError:
            continue
        if int(fields.get("simd_count", "0").strip() or 0) > 0:
            gpus.append(f"kfd node {Path(properties).parent.name}")
    return tuple(gpus)


def amd_gpus() -> Tuple[str, ...]:
    """GPU names from rocm-smi, else the GPU nodes of the kernel's KFD driver (needs /dev/kfd)."""
    smi = shutil.which("rocm-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--showproductname"], capture_output=True, text=True, timeout=10)
            names = tuple(
                line.split(":", 2)[-1].strip()
                for line in out.stdout.splitlines()
                if "Card series" in line or "Card Series" in line
            )
            if out.returncode == 0 and names:
                return names
        except (OSError, subprocess.TimeoutExpired):
            pass
    if not Path("/dev/kfd").exists():
        return ()
    return _kfd_gpu_nodes()


class OnnxRuntimeMIGraphXProvider(Provider):
    name = "rocm"

    def probe(self) -> Availability:
        try:
            ort = import_onnxruntime(self.name, INSTALL_HINT)
        except ProviderUnavailable as exc:
            return Availability.unavailable(str(exc))
        if EP_NAME not in ort.get_available_providers():
            return Availability.unavailable(
                f"package missing: this onnxruntime {ort.__version__} build has no {EP_NAME}; {INSTALL_HINT}"
            )
        devices = amd_gpus()
        if not devices:
            return Availability.unavailable(
                "no device: no AMD GPU found (rocm-smi lists none and /dev/kfd shows no GPU node); run on an AMD GPU "
                "machine, or pass /dev/kfd and /dev/dri into the container"
            )
        return Availability.available(devices=devices, capabilities=PRECISIONS)

    variant_formats = ("onnx",)

    def auto_precision_order(self, options):
        return ("fp16", "fp32")  # MIGraphX here serves fp32/fp16 graphs; fp16 uses the matrix cores

    def load(self, request: LoadRequest) -> Session:
        check_supported_precision(self.name, request.precision, PRECISIONS)
        variant = select_variant(self.name, request, self.variant_formats, request.precision)
        ort = import_onnxruntime(self.name, INSTALL_HINT)
        migraphx_options = {"device_id": str(request.device_id)}
        for key in MIGRAPHX_OPTION_KEYS:
            if key in request.options:
                migraphx_options[f"migraphx_{key}"] = request.options[key]
        session = OnnxRuntimeSession(
            ort,
            variant.path,
            [(EP_NAME, migraphx_options), "CPUExecutionProvider"],
            session_options(ort, request, self.name, MIGRAPHX_OPTION_KEYS),
            provider_name=self.name,
            precision=request.precision,
            device=f"rocm:{request.device_id}",
        )
        session.device = f"rocm:{request.device_id}"
        if session.active_providers[0] != EP_NAME:
            session.close()
            raise ProviderUnavailable(
                "driver: onnxruntime could not start MIGraphX and fell back to CPU "
                f"(session providers {list(session.active_providers)}); check the ROCm/MIGraphX libraries and /dev/kfd access"
            )
        session.variant = variant
        return session
