"""Hostile bundles for tests/security: what a bundle received from someone else may try on the serving host.

The base is a genuine export of a graph ``y = x + w`` whose weights ``w`` live in external
data (``model.onnx.data``): a request of zeros answers ``w`` itself, so a bundle that got
the server to read a private file as its weights would hand that file to any client.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

WIDTH = 512  # 2 KiB of weights: export keeps tensors of 1 KiB and more in the external data file
#: The private file's content, as the float32 values a leak would show: 7777.0, 7777.25, ...
SECRET = (np.arange(WIDTH, dtype=np.float32) * 0.25 + 7777.0).astype(np.float32)
SECRET_MARK = "7777"


def build_adder(path: Path) -> Path:
    """``y = x + w`` (``x [batch, WIDTH]``), every tensor in the external data file ``<name>.data``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.linspace(-1, 1, WIDTH, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "adder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=0)
    return path


def copy_bundle(bundle: Path, dest: Path) -> Path:
    """A copy that keeps links as links (``cp -a``), as an operator copies what they received."""
    shutil.copytree(bundle, dest, symlinks=True)
    return dest


def read_manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def write_manifest(bundle: Path, manifest: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def reseal(bundle: Path) -> dict:
    """Record the sums of the files as they are now, with the exporter's own code (following links, as a
    hostile exporter would): the manifest agrees with the bundle, so only confinement can refuse it."""
    from portable_ep.exporters.bundle import bundle_file_sums
    from portable_ep.exporters.manifest import file_entry

    manifest = read_manifest(bundle)
    for variant in manifest["variants"]:
        if variant.get("file"):
            for key in ("weights_file", "weights_sha256", "weights_files"):
                variant.pop(key, None)
            variant.update(file_entry(bundle, variant["file"]))
    manifest["files"] = bundle_file_sums(bundle, manifest["variants"])
    write_manifest(bundle, manifest)
    return manifest


def link_secret_as_weights(bundle: Path, secret: Path) -> Path:
    """The attack: the graph's external data file replaced by a link to a private file of the host."""
    data = bundle / "model.onnx.data"
    data.unlink()
    data.symlink_to(secret)
    reseal(bundle)
    return data


def rename_external_data(bundle: Path, name: str) -> Path:
    """The bundle's graph re-saved with its external data under ``name`` (optimum writes ``model.onnx_data``)."""
    import onnx

    model = onnx.load(str(bundle / "model.onnx"))
    (bundle / "model.onnx.data").unlink()
    onnx.save_model(model, str(bundle / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=name, size_threshold=0)
    reseal(bundle)
    return bundle / name


def snapshot(root: Path) -> dict:
    """Every path under ``root`` with its content (files) or kind: to prove nothing was written or deleted."""
    found = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            found[relative] = f"link to {os.readlink(path)}"
        elif path.is_file():
            found[relative] = path.read_bytes()
        else:
            found[relative] = "folder"
    return found
