"""A provider from another package, found through the ``portable_ep.providers`` entry-point group.

The test writes a small out-of-tree package (``acme-portable-ep-provider``) that uses only
the public provider contract, pip-installs it into the serving environment as a user
would (Triton's python stub sees only that environment's packages, not PYTHONPATH),
serves a model with it by name through a real tritonserver, and uninstalls it. Its session scales the model's outputs by
the option ``acme-cpu.scale``: served outputs equal to ``scale x`` the reference prove that
the third-party code ran and that its options reached it.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from inputs import mlp_input
from portable_ep.client import infer_once
from portable_ep.exporters.onnx_signature import onnx_signature
from portable_ep.exporters.triton_config import build_model_config, write_model
from portable_ep.metrics_text import served_providers
from portable_ep.triton_process import TritonServer

pytestmark = pytest.mark.e2e

PACKAGE = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "acme-portable-ep-provider"
        version = "0.1.0"
        dependencies = ["portable-ep", "onnxruntime"]

        [project.entry-points."portable_ep.providers"]
        acme-cpu = "acme_provider:AcmeCpuProvider"
    """,
    "acme_provider/__init__.py": '''
        """An out-of-tree provider written against portable-ep's public contract only."""
        import numpy as np
        import onnxruntime

        from portable_ep.backends.base import Availability, Provider, ProviderUnavailable, Session, TensorInfo

        DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


        class AcmeSession(Session):
            provider = "acme-cpu"

            def __init__(self, path, scale):
                self._session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                self._scale = scale
                self.inputs = [TensorInfo(i.name, np.dtype(DTYPES[i.type]), tuple(i.shape)) for i in self._session.get_inputs()]
                self.outputs = [TensorInfo(o.name, np.dtype(DTYPES[o.type]), tuple(o.shape)) for o in self._session.get_outputs()]
                self.description = f"acme accelerator runtime (scale {scale}) on acme0, fp32"

            def run(self, feeds):
                names = [o.name for o in self.outputs]
                return {n: (r * self._scale).astype(r.dtype) for n, r in zip(names, self._session.run(names, dict(feeds)))}


        class AcmeCpuProvider(Provider):
            name = "acme-cpu"

            def probe(self):
                return Availability.available(devices=("acme0",), capabilities=("fp32",))

            def load(self, request):
                if request.precision != "fp32":
                    raise ProviderUnavailable(f"acme-cpu runs fp32 only, not {request.precision}")
                variant = request.artifacts.find(("onnx",), "fp32")
                if variant is None:
                    raise ProviderUnavailable("acme-cpu needs an fp32 ONNX model")
                return AcmeSession(variant.path, float(request.options.get("scale", "1")))
    ''',
}


@pytest.fixture(scope="module")
def acme_installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("acme")
    source = root / "acme-portable-ep-provider"
    for relative, text in PACKAGE.items():
        path = source / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(pip + ["install", "--quiet", "--no-deps", "--no-build-isolation", str(source)], check=True, capture_output=True, text=True)
    try:
        yield
    finally:
        subprocess.run(pip + ["uninstall", "--quiet", "--yes", "acme-portable-ep-provider"], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def acme_server(tmp_path_factory, model_files, installed_backend_dir, acme_installed):
    repository = tmp_path_factory.mktemp("acme-repo")
    inputs, outputs = onnx_signature(model_files["mlp"])
    config = build_model_config("mlp_acme", inputs, outputs, max_batch_size=8, providers="acme-cpu,cpu",
                                parameters={"acme-cpu.scale": "2"})
    write_model(repository, config, {"model.onnx": model_files["mlp"]})
    with TritonServer(repository, backend_directory=installed_backend_dir) as running:
        yield running


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_pip_installed_provider_serves_by_name(acme_server, reference_run, protocol):
    feeds = mlp_input(3, seed=5)
    url = acme_server.http_url if protocol == "http" else acme_server.grpc_url
    served = infer_once(protocol, url, "mlp_acme", feeds)["logits"]
    np.testing.assert_allclose(served, 2 * reference_run("mlp", feeds)["logits"], atol=1e-5)

    info = served_providers(acme_server.metrics_text())["mlp_acme"]
    assert info["provider"] == "acme-cpu" and "acme accelerator runtime (scale 2.0)" in info["description"]
    assert "serving on provider 'acme-cpu'" in acme_server.log_text()


def test_doctor_lists_the_installed_provider_as_third_party(acme_installed):
    report = json.loads(subprocess.run([sys.executable, "-m", "portable_ep.cli", "doctor", "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    acme = next(p for p in report["providers"] if p["name"] == "acme-cpu")
    assert acme["ok"] and acme["devices"] == ["acme0"]
    assert acme["summary"] == "third-party provider (acme_provider:AcmeCpuProvider)"
