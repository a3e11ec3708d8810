"""Model loading through a real tritonserver: hand-written configs, IR-only folders, and load failures."""
from __future__ import annotations

import numpy as np
import pytest

from e2e_repository import write_repository
from inputs import mlp_input
from portable_ep.client import infer_once
from portable_ep.metrics_text import served_providers
from portable_ep.triton_process import TritonServer, TritonServerError

pytestmark = pytest.mark.e2e

# What a Triton operator writes by hand: no providers parameter (default chain openvino,cpu).
HAND_WRITTEN_CONFIG = """\
backend: "portable_ep"
max_batch_size: 4
input [
  { name: "x", data_type: TYPE_FP32, dims: [ 16 ] }
]
output [
  { name: "logits", data_type: TYPE_FP32, dims: [ 4 ] }
]
instance_group [ { count: 2, kind: KIND_CPU } ]
"""


@pytest.fixture(scope="module")
def ir_repository(tmp_path_factory, model_files):
    import openvino as ov

    repository = tmp_path_factory.mktemp("ir-repository")
    version = repository / "mlp_ir" / "1"
    version.mkdir(parents=True)
    ov.save_model(ov.convert_model(str(model_files["mlp"])), str(version / "model.xml"), compress_to_fp16=False)
    (repository / "mlp_ir" / "config.pbtxt").write_text(HAND_WRITTEN_CONFIG)
    return repository


def test_hand_written_config_with_openvino_ir_serves_on_the_default_chain(ir_repository, installed_backend_dir, reference_run):
    with TritonServer(ir_repository, backend_directory=installed_backend_dir) as server:
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            feeds = mlp_input(4, seed=11)
            served = infer_once(protocol, url, "mlp_ir", feeds)["logits"]
            assert np.max(np.abs(served - reference_run("mlp", feeds)["logits"])) <= 1e-5
        info = served_providers(server.metrics_text())["mlp_ir"]
        assert info["provider"] == "openvino" and "model.xml" in info["description"]
        # Two instances, each its own stub process, each logs its choice.
        chose = [line for line in server.log_text().splitlines() if "model 'mlp_ir' instance" in line and "serving on provider" in line]
        assert len(chose) == 2


def test_an_ir_whose_tensors_have_several_names_serves_under_the_names_config_uses(tmp_path, model_files, installed_backend_dir,
                                                                                  reference_run):
    """OpenVINO ports carry several names (a converted ViT's ``input_image`` and an internal alias):
    config.pbtxt may use any of them, and requests and responses then use that name. Here neither
    is the name OpenVINO reports first (``get_any_name()``: ``pixel_values``, ``logits``)."""
    import openvino as ov

    model = ov.convert_model(str(model_files["mlp"]))
    model.inputs[0].get_tensor().add_names({"pixel_values"})
    model.outputs[0].get_tensor().add_names({"scores"})
    version = tmp_path / "mlp_aliases" / "1"
    version.mkdir(parents=True)
    ov.save_model(model, str(version / "model.xml"), compress_to_fp16=False)
    config = HAND_WRITTEN_CONFIG.replace('name: "logits"', 'name: "scores"')
    (tmp_path / "mlp_aliases" / "config.pbtxt").write_text(config.replace("count: 2", "count: 1"))
    with TritonServer(tmp_path, backend_directory=installed_backend_dir) as server:
        feeds = mlp_input(3, seed=5)
        served = infer_once("grpc", server.grpc_url, "mlp_aliases", feeds)
        assert set(served) == {"scores"}
        assert np.max(np.abs(served["scores"] - reference_run("mlp", feeds)["logits"])) <= 1e-5
        assert served_providers(server.metrics_text())["mlp_aliases"]["provider"] == "openvino"


def test_chain_with_nothing_available_fails_the_load_and_lists_each_reason(tmp_path, model_files, installed_backend_dir):
    repository = write_repository(tmp_path, model_files, {"unservable": ("mlp", "cuda,rocm,npu", {})})
    server = TritonServer(repository, backend_directory=installed_backend_dir)
    with pytest.raises(TritonServerError) as error:
        server.start(timeout=60)
    server.stop()
    message = str(error.value)
    assert "tritonserver exited" in message
    assert "no provider in the chain can serve this model" in message
    assert "cuda: package missing" in message
    assert "rocm: package missing: this onnxruntime" in message and "MIGraphXExecutionProvider" in message
    assert "npu: npu contract: precision 'fp32' does not run on an NPU" in message


def test_failed_model_is_reported_while_the_others_serve(tmp_path, model_files, installed_backend_dir, reference_run):
    repository = write_repository(
        tmp_path, model_files, {"good": ("mlp", "cpu", {}), "bad_option": ("mlp", "openvino", {"openvino.no_such_option": "1"})}
    )
    with TritonServer(
        repository, backend_directory=installed_backend_dir, extra_args=["--exit-on-error=false", "--strict-readiness=false"]
    ) as server:
        states = {m["name"]: m for m in server.repository_index()}
        assert states["good"]["state"] == "READY"
        assert states["bad_option"]["state"] == "UNAVAILABLE"
        assert "unknown option(s) openvino.no_such_option" in states["bad_option"]["reason"]
        feeds = mlp_input(2, seed=12)
        served = infer_once("grpc", server.grpc_url, "good", feeds)["logits"]
        assert np.max(np.abs(served - reference_run("mlp", feeds)["logits"])) <= 1e-5
