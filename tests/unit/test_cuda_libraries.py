"""The CUDA EP library check (run for real inside the cuda image by `make images`)."""
from pathlib import Path

import onnxruntime

from portable_ep.backends import cuda_libraries


def test_ldd_output_is_read_into_found_and_missing():
    core = next(Path(onnxruntime.__file__).parent.joinpath("capi").glob("onnxruntime_pybind11_state*.so"))
    found = cuda_libraries.resolve(core)
    assert found and all(path for path in found.values()), found  # a library whose needs this host has


def test_a_cpu_onnxruntime_is_reported_as_lacking_the_cuda_provider(monkeypatch):
    monkeypatch.setattr(cuda_libraries, "provider_library", lambda: None)
    assert cuda_libraries.missing_libraries() == [
        "libonnxruntime_providers_cuda.so (this onnxruntime is not onnxruntime-gpu)"]


def test_unresolved_sonames_are_named(monkeypatch, tmp_path):
    library = tmp_path / cuda_libraries.PROVIDER_LIBRARY
    library.write_bytes(b"")
    monkeypatch.setattr(cuda_libraries, "provider_library", lambda: library)
    monkeypatch.setattr(cuda_libraries, "resolve", lambda path: {"libcudnn.so.9": None, "libcublas.so.12": "/x/libcublas.so.12"})
    assert cuda_libraries.missing_libraries() == ["libcudnn.so.9"]
