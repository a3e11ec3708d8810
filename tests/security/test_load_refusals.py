"""Hostile and damaged bundles served by a real tritonserver: each is refused at load, naming the file and the
rule, while genuine bundles beside them serve; nothing of a private file of the host reaches a client.

The repository is what an operator gets by copying received bundles into it as they are
(``cp -a``: links kept): ``repo add`` would already refuse the hostile ones.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from raw_http import post_json

from hostile_bundles import (SECRET, SECRET_MARK, WIDTH, copy_bundle, link_secret_as_weights, rename_external_data,
                             reseal)
from portable_ep.exporters.repository import RepoOptions, add_to_repository
from portable_ep.triton_process import TritonServer

pytestmark = pytest.mark.e2e


def _place(genuine, bundle, repository, name: str):
    """``repo add`` of the genuine bundle for its config.pbtxt, then the version folder replaced by ``bundle`` as is."""
    version = add_to_repository(genuine, repository, name, RepoOptions(providers="cpu")) / "1"
    shutil.rmtree(version)
    copy_bundle(bundle, version)
    return version


@pytest.fixture(scope="module")
def llm_bundle(tmp_path_factory):
    pytest.importorskip("transformers", reason="the generative bundle is exported from transformers (export extra)")
    from tiny_llm import build_tiny_llama

    work = tmp_path_factory.mktemp("llm")
    build_tiny_llama(work / "hf")
    out = work / "bundle"
    result = subprocess.run([sys.executable, "-m", "portable_ep.cli", "export", str(work / "hf"), str(out),
                             "--task", "text-generation", "--precisions", "fp32", "--formats", "onnx", "--no-progress"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def _change_tokenizer(tokenizer_json) -> None:
    """Swap the ids of two ordinary tokens: a tokenizer that still loads and encodes text differently."""
    data = json.loads(tokenizer_json.read_text())
    vocab = data["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[100:102]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    tokenizer_json.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def refusing_server(tmp_path_factory, external_bundle, llm_bundle, installed_backend_dir):
    root = tmp_path_factory.mktemp("refusals")
    secret = root / "private" / "secret.bin"
    secret.parent.mkdir()
    secret.write_bytes(SECRET.tobytes())
    repository = root / "repository"

    _place(external_bundle, external_bundle, repository, "adder")
    # The control: the same bytes as a regular file of the bundle are served, so a leak would be visible.
    control = copy_bundle(external_bundle, root / "control")
    (control / "model.onnx.data").write_bytes(SECRET.tobytes())
    reseal(control)
    _place(external_bundle, control, repository, "adder_secret_as_its_own_weights")
    # The attack: model.onnx.data a link to the private file, the manifest agreeing with it.
    linked = copy_bundle(external_bundle, root / "linked")
    link_secret_as_weights(linked, secret)
    _place(external_bundle, linked, repository, "adder_linked_weights")
    # Damage: weights under optimum's external data name, one bit flipped after export.
    damaged = copy_bundle(external_bundle, root / "damaged")
    data = rename_external_data(damaged, "model.onnx_data")
    flipped = bytearray(data.read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    data.write_bytes(bytes(flipped))
    _place(external_bundle, damaged, repository, "adder_damaged_onnx_data")

    add_to_repository(llm_bundle, repository, "llm", RepoOptions(providers="cpu"))
    version = add_to_repository(llm_bundle, repository, "llm_tokenizer_changed", RepoOptions(providers="cpu")) / "1"
    _change_tokenizer(version / "tokenizer" / "tokenizer.json")

    with TritonServer(repository, backend_directory=installed_backend_dir,
                      extra_args=["--exit-on-error=false", "--strict-readiness=false"]) as server:
        yield server, version


def _index(server) -> dict:
    return {entry["name"]: entry for entry in server.repository_index()}


def _infer_raw(server, model: str) -> tuple:
    """(status, body) of a request of zeros over HTTP: what any client would see."""
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, WIDTH], "data": [0.0] * WIDTH}]}
    return post_json(f"http://{server.http_url}/v2/models/{model}/infer", body, timeout=30)


def test_genuine_bundles_serve_beside_the_refused_ones(refusing_server):
    server, _ = refusing_server
    index = _index(server)
    assert index["adder"]["state"] == "READY" and index["llm"]["state"] == "READY", index
    status, body = _infer_raw(server, "adder")
    assert status == 200, body
    assert np.allclose(json.loads(body)["outputs"][0]["data"], np.linspace(-1, 1, WIDTH), atol=1e-6)


def test_a_weights_link_to_a_private_file_is_refused_and_its_content_never_reaches_a_client(refusing_server):
    server, _ = refusing_server
    index = _index(server)
    # The control proves the test can see a leak: the same bytes, read as weights, come back to the client.
    status, body = _infer_raw(server, "adder_secret_as_its_own_weights")
    assert status == 200, body
    assert np.array_equal(np.asarray(json.loads(body)["outputs"][0]["data"], np.float32), SECRET)

    entry = index["adder_linked_weights"]
    assert entry["state"] == "UNAVAILABLE", entry
    assert "model.onnx.data" in entry["reason"] and "symbolic link" in entry["reason"], entry["reason"]
    status, body = _infer_raw(server, "adder_linked_weights")
    assert status != 200 and SECRET_MARK not in body, body
    assert SECRET_MARK not in json.dumps(server.repository_index())


def test_changed_external_data_under_optimums_name_is_refused_at_load(refusing_server):
    server, _ = refusing_server
    entry = _index(server)["adder_damaged_onnx_data"]
    assert entry["state"] == "UNAVAILABLE", entry
    assert "integrity check" in entry["reason"] and "model.onnx_data: sha256" in entry["reason"], entry["reason"]


def test_a_changed_tokenizer_of_a_generative_bundle_is_refused_at_load(refusing_server):
    server, version = refusing_server
    entry = _index(server)["llm_tokenizer_changed"]
    assert entry["state"] == "UNAVAILABLE", entry
    assert "integrity check" in entry["reason"] and "tokenizer/tokenizer.json: sha256" in entry["reason"], entry["reason"]
    # The changed file itself is a working tokenizer: only the check at load tells it apart.
    from portable_ep.generation.tokenizer import BundleTokenizer

    assert BundleTokenizer(version / "tokenizer").encode("hello world")


def test_a_changed_tokenizer_fails_the_generative_loader_in_one_line(refusing_server):
    """The same refusal without a server: the loader function the backend calls."""
    from portable_ep.backends.integrity import IntegrityError
    from portable_ep.python_backend.generation_model import load_generator
    from portable_ep.python_backend.model_config import ServingConfig, TensorSpec

    _, version = refusing_server
    text = np.dtype(object)
    config = ServingConfig("llm_tokenizer_changed", 0, (TensorSpec("text_input", text, (1,)),),
                           (TensorSpec("text_output", text, (-1,)),), {"providers": "cpu"})
    with pytest.raises(IntegrityError) as error:
        load_generator(config, version)
    message = str(error.value)
    assert "\n" not in message and "tokenizer/tokenizer.json: sha256" in message


def test_the_generative_manifest_records_no_absolute_path(llm_bundle):
    text = (llm_bundle / "manifest.json").read_text()
    manifest = json.loads(text)
    assert manifest["source"]["path"] == "hf" and manifest["decoder"]["tokenizer"] == "tokenizer"
    assert str(llm_bundle.parent) not in text and '"/' not in text, [line for line in text.splitlines() if '"/' in line]
