"""``cuda``: ONNX Runtime's CUDAExecutionProvider (onnxruntime-gpu) on an NVIDIA GPU.

ONNX Runtime quietly falls back to CPU when CUDA cannot start, so after creating
the session we check which provider it really got and treat a CPU-only session as
"unavailable" rather than serving slowly under a false name.
"""
from __future__ import annotations

import glob
import shutil
import subprocess
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

CUDA_OPTION_KEYS = ("gpu_mem_limit", "arena_extend_strategy", "cudnn_conv_algo_search", "preload_dlls", "use_tf32")
PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_HINT = "pip install 'portable-ep[cuda]' (onnxruntime-gpu replaces onnxruntime in that environment)"


def nvidia_devices() -> Tuple[str, ...]:
    """GPU names from nvidia-smi, else the device nodes the driver creates."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
            names = tuple(line.strip() for line in out.stdout.splitlines() if line.strip())
            if out.returncode == 0 and names:
                return names
        except (OSError, subprocess.TimeoutExpired):
            pass
    return tuple(sorted(p for p in glob.glob("/dev/nvidia[0-9]*")))


class OnnxRuntimeCudaProvider(Provider):
    name = "cuda"

    def probe(self) -> Availability:
        try:
            ort = import_onnxruntime(self.name, INSTALL_HINT)
        except ProviderUnavailable as exc:
            return Availability.unavailable(str(exc))
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return Availability.unavailable(
                f"package missing: this onnxruntime {ort.__version__} build has no CUDAExecutionProvider; {INSTALL_HINT}"
            )
        devices = nvidia_devices()
        if not devices:
            return Availability.unavailable(
                "no device: no NVIDIA GPU found (nvidia-smi lists none and there is no /dev/nvidia*); "
                "run on a GPU machine, or pass the GPU into the container with --gpus"
            )
        return Availability.available(devices=devices, capabilities=PRECISIONS)

    def load(self, request: LoadRequest) -> Session:
        check_supported_precision(self.name, request.precision, PRECISIONS)
        variant = select_variant(self.name, request, ("onnx",), request.precision)
        ort = import_onnxruntime(self.name, INSTALL_HINT)
        if request.options.get("preload_dlls", "1") != "0" and hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu's CUDA/cuDNN come as nvidia-* wheels in site-packages, which the
            # dynamic loader does not search; preload_dlls() loads them from there.
            try:
                ort.preload_dlls()
            except Exception:  # noqa: BLE001 - a system CUDA install may still satisfy the EP
                pass
        # fp32 means fp32: ORT's CUDA EP otherwise runs matmuls in TF32 (seen on an H100:
        # 6e-4 off the CPU reference for a tiny MLP).
        cuda_options = {"device_id": str(request.device_id), "use_tf32": request.options.get("use_tf32", "0")}
        for key in ("gpu_mem_limit", "arena_extend_strategy", "cudnn_conv_algo_search"):
            if key in request.options:
                cuda_options[key] = request.options[key]
        session = OnnxRuntimeSession(
            ort,
            variant.path,
            [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"],
            session_options(ort, request, self.name, CUDA_OPTION_KEYS),
            provider_name=self.name,
            precision=request.precision,
            device=f"cuda:{request.device_id}",
        )
        if session.active_providers[0] != "CUDAExecutionProvider":
            session.close()
            raise ProviderUnavailable(
                "driver: onnxruntime could not start CUDA and fell back to CPU "
                f"(session providers {list(session.active_providers)}); check the CUDA/cuDNN libraries onnxruntime-gpu needs"
            )
        return session
