"""``cuda``: ONNX Runtime's CUDAExecutionProvider (onnxruntime-gpu) on an NVIDIA GPU,
with the TensorRT EP in front of it when ``cuda.tensorrt`` is set.

ONNX Runtime quietly falls back to CPU when CUDA cannot start (and from TensorRT to
CUDA when TensorRT cannot), so after creating the session we check which provider it
really got and treat anything but the asked one as "unavailable" rather than serving
slowly under a false name.
"""
from __future__ import annotations

import ctypes
import glob
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Mapping, Tuple

from portable_ep.backends.base import (
    Availability,
    LoadRequest,
    Provider,
    ProviderUnavailable,
    Session,
    check_supported_precision,
    option_is_true,
    select_variant,
)
from portable_ep.backends.cache_dirs import cache_dir_option
from portable_ep.backends.onnxruntime_common import OnnxRuntimeSession, import_onnxruntime, session_options

CUDA_OPTION_KEYS = ("gpu_mem_limit", "arena_extend_strategy", "cudnn_conv_algo_search", "preload_dlls", "use_tf32")
TENSORRT_OPTION_KEYS = ("tensorrt", "trt_engine_cache_path", "trt_max_workspace_size", "trt_builder_optimization_level")
# int4: MatMulNBits has CUDA kernels; the TensorRT EP leaves it to CUDA.
PRECISIONS = ("fp32", "fp16", "int8", "int4")
INSTALL_HINT = "pip install 'portable-ep[cuda]' (onnxruntime-gpu replaces onnxruntime in that environment)"
TENSORRT_HINT = (
    "pip install 'portable-ep[tensorrt]' (the TensorRT libraries onnxruntime-gpu's TensorRT EP loads), "
    "or unset cuda.tensorrt to serve on the CUDA EP"
)
def tensorrt_requested(options: Mapping[str, str]) -> bool:
    return option_is_true(options, "tensorrt")


def preload_tensorrt_libraries() -> None:
    """Load the pip TensorRT libraries (``tensorrt-cu12-libs``) before ORT's TensorRT EP looks for them.

    The EP dlopens ``libnvinfer.so.10`` by name, and site-packages is not on the loader's
    path ("libnvinfer.so.10: cannot open shared object file"); libraries loaded globally
    first satisfy that lookup. A system TensorRT on LD_LIBRARY_PATH needs nothing.
    """
    try:
        import tensorrt_libs
    except ImportError:
        return
    folder = os.path.dirname(tensorrt_libs.__file__)
    for library in sorted(glob.glob(os.path.join(folder, "libnvinfer*.so*")) + glob.glob(os.path.join(folder, "libnvonnxparser*.so*"))):
        try:
            ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass  # the session check below reports a TensorRT that did not start


def tensorrt_options(options: Mapping[str, str], precision: str, device_id: int) -> Dict[str, str]:
    """TensorRT EP options for a serving precision.

    fp16 builds fp16 kernels from the fp16 (or fp32) graph; int8 reads the QDQ scales
    of the int8 variant (explicit quantization, no TensorRT calibration table) and lets
    TensorRT keep fp16 where int8 kernels are missing. The engine cache is on: the
    first load builds the engine, later loads of the same model reuse it.
    """
    trt = {
        "device_id": str(device_id),
        "trt_fp16_enable": "1" if precision in ("fp16", "int8") else "0",
        "trt_int8_enable": "1" if precision == "int8" else "0",
    }
    cache = cache_dir_option(options, "trt_engine_cache_path", "tensorrt")
    if cache is not None:
        trt.update(trt_engine_cache_enable="1", trt_engine_cache_path=str(cache), trt_timing_cache_enable="1")
    for key in ("trt_max_workspace_size", "trt_builder_optimization_level"):
        if options.get(key):
            trt[key] = options[key]
    return trt


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

    variant_formats = ("onnx",)

    def auto_precision_order(self, options: Mapping[str, str]) -> Tuple[str, ...]:
        # TensorRT runs QDQ int8 on int8 kernels; the plain CUDA EP has few int8 kernels and
        # dequantizes most of an int8 graph, so there fp16 (tensor cores) is the fast one.
        if tensorrt_requested(options):
            return ("int8", "fp16", "fp32")
        return ("fp16", "fp32", "int8")

    def load(self, request: LoadRequest) -> Session:
        check_supported_precision(self.name, request.precision, PRECISIONS)
        variant = select_variant(self.name, request, self.variant_formats, request.precision)
        ort = import_onnxruntime(self.name, INSTALL_HINT)
        use_tensorrt = tensorrt_requested(request.options)
        if use_tensorrt and request.precision == "int8" and variant.quantization.startswith("dynamic"):
            # TensorRT builds int8 engines from QDQ scales; dynamic int8 (MatMulInteger, QAttention)
            # has none, and ORT would hand those nodes back to the CPU.
            raise ProviderUnavailable(
                f"TensorRT int8 needs a static (QDQ) int8 ONNX variant; this bundle's is {variant.quantization} "
                "(the CPU recipe); re-export with --int8-mode static, or serve precision fp16 on TensorRT"
            )
        if use_tensorrt and "TensorrtExecutionProvider" not in ort.get_available_providers():
            raise ProviderUnavailable(
                f"package missing: cuda.tensorrt is set but this onnxruntime {ort.__version__} build has no "
                f"TensorrtExecutionProvider; {TENSORRT_HINT}"
            )
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
        providers = [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
        expected = "CUDAExecutionProvider"
        if use_tensorrt:
            preload_tensorrt_libraries()
            trt = tensorrt_options(request.options, request.precision, request.device_id)
            if "trt_engine_cache_path" in trt:
                Path(trt["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
            providers.insert(0, ("TensorrtExecutionProvider", trt))
            expected = "TensorrtExecutionProvider"
        session = OnnxRuntimeSession(
            ort,
            variant.path,
            providers,
            session_options(ort, request, self.name, CUDA_OPTION_KEYS + TENSORRT_OPTION_KEYS),
            provider_name=self.name,
            precision=request.precision,
            device=f"cuda:{request.device_id}",
        )
        if session.active_providers[0] != expected:
            session.close()
            what = "TensorRT" if use_tensorrt else "CUDA"
            fix = (
                "check the TensorRT libraries (libnvinfer) onnxruntime-gpu loads"
                if use_tensorrt
                else "check the CUDA/cuDNN libraries onnxruntime-gpu needs"
            )
            raise ProviderUnavailable(
                f"driver: onnxruntime could not start {what} and fell back to {session.active_providers[0]} "
                f"(session providers {list(session.active_providers)}); {fix}"
            )
        session.variant = variant
        return session
