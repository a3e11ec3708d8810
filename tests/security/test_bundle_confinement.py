"""A bundle is confined to its folder: hostile bundles against `verify`, the loader, `repo add` and `deploy render`.

Each hostile bundle is a copy of a genuine export changed as an attacker would, with a
manifest that agrees with its files (resealed by the exporter's own code), so only the
confinement rules can refuse it. Every refusal is one line naming the path and the rule.
"""
from __future__ import annotations

import json
import os

import pytest

from hostile_bundles import (SECRET, copy_bundle, link_secret_as_weights, read_manifest, rename_external_data, snapshot,
                             write_manifest)
from portable_ep.backends.artifacts import find_model_artifacts
from portable_ep.backends.bundle_paths import BundlePathError, confined_path
from portable_ep.backends.integrity import IntegrityError, sha256_of, verify_for_load
from portable_ep.cli import main
from portable_ep.exporters.repository import add_to_repository


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def assert_one_line(text: str, *needles: str) -> None:
    assert "\n" not in text.strip(), text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"


# -- a link inside the bundle ------------------------------------------------------------------------------


def test_a_weights_file_linked_to_a_private_file_is_refused_by_verify_repo_add_and_the_loader(
        tmp_path, capsys, external_bundle, secret_file):
    hostile = copy_bundle(external_bundle, tmp_path / "hostile")
    link_secret_as_weights(hostile, secret_file)
    manifest = read_manifest(hostile)
    assert manifest["files"]["model.onnx.data"] == sha256_of(secret_file)  # the sums agree with the link's target

    code, out, _ = run_cli(capsys, "verify", hostile)
    assert code == 1
    refused = [line for line in out.splitlines() if line.startswith("REFUSED") and "model.onnx.data" in line]
    assert refused and "symbolic link" in refused[0], out

    repository = tmp_path / "repository"
    code, _, err = run_cli(capsys, "repo", "add", hostile, "--repo", repository, "--name", "hostile")
    assert code == 1
    assert_one_line(err, "model.onnx.data", "symbolic link")
    assert not repository.exists()  # refused before anything was written

    with pytest.raises(BundlePathError) as error:
        find_model_artifacts(hostile)
    assert_one_line(str(error.value), "model.onnx.data", "symbolic link")
    with pytest.raises(BundlePathError, match="model.onnx.data"):
        verify_for_load(hostile, manifest)
    # The private file was never copied anywhere, and never read into a message.
    assert SECRET.tobytes() not in b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()
                                             and p != secret_file)


def test_a_linked_folder_and_a_special_file_are_refused(tmp_path, capsys, external_bundle, secret_file):
    linked = copy_bundle(external_bundle, tmp_path / "linked")
    os.symlink(secret_file.parent, linked / "private")  # a folder of the host inside the bundle
    manifest = read_manifest(linked)
    manifest["files"]["private/secret.bin"] = sha256_of(secret_file)  # listed, with the right sum
    write_manifest(linked, manifest)
    code, out, _ = run_cli(capsys, "verify", linked)
    assert code == 1 and "REFUSED" in out and "'private'" in out and "symbolic link" in out
    with pytest.raises(BundlePathError, match="private"):
        find_model_artifacts(linked)

    fifo = copy_bundle(external_bundle, tmp_path / "fifo")
    (fifo / "model.onnx.data").unlink()
    os.mkfifo(fifo / "model.onnx.data")  # reading it would hang the loader
    code, out, _ = run_cli(capsys, "verify", fifo)
    assert code == 1 and "not a regular file" in out
    with pytest.raises(BundlePathError, match="model.onnx.data.*not a regular file"):
        find_model_artifacts(fifo)


def test_a_linked_manifest_is_not_read(tmp_path, capsys, external_bundle, secret_file):
    hostile = copy_bundle(external_bundle, tmp_path / "hostile")
    (hostile / "manifest.json").unlink()
    (hostile / "manifest.json").symlink_to(secret_file)
    with pytest.raises(BundlePathError, match="manifest.json.*symbolic link"):
        find_model_artifacts(hostile)
    code, _, err = run_cli(capsys, "verify", hostile)
    assert code == 1
    assert_one_line(err, "manifest.json", "symbolic link")


# -- manifest paths that leave the bundle --------------------------------------------------------------------


def _files_entry(manifest, secret):
    manifest["files"]["../private/secret.bin"] = sha256_of(secret)
    return "files entry", "../private/secret.bin", "'..'"


def _absolute_variant(manifest, secret):
    manifest["variants"][0]["file"] = str(secret)
    return "variants[0].file", str(secret), "absolute path"


def _weights_file(manifest, secret):
    manifest["variants"][0]["weights_file"] = "reference/../../private/secret.bin"
    manifest["variants"][0]["weights_sha256"] = sha256_of(secret)
    return "variants[0].weights_file", "reference/../../private/secret.bin", "'..'"


def _tokenizer(manifest, secret):
    manifest.update(task="text-generation", decoder={"tokenizer": "../private", "golden": "golden/generation.json"})
    return "decoder.tokenizer", "../private", "'..'"


def _absolute_tokenizer(manifest, secret):
    manifest.update(task="text-generation", decoder={"tokenizer": str(secret.parent)})
    return "decoder.tokenizer", str(secret.parent), "absolute path"


def _reference(manifest, secret):
    manifest["reference"]["outputs"] = str(secret)
    return "reference.outputs", str(secret), "absolute path"


@pytest.mark.parametrize("change", [_files_entry, _absolute_variant, _weights_file, _tokenizer, _absolute_tokenizer,
                                    _reference], ids=lambda f: f.__name__.strip("_"))
def test_a_manifest_path_outside_the_bundle_is_refused_everywhere(tmp_path, capsys, external_bundle, secret_file, change):
    hostile = copy_bundle(external_bundle, tmp_path / "hostile")
    manifest = read_manifest(hostile)
    what, path, rule = change(manifest, secret_file)
    write_manifest(hostile, manifest)

    code, out, _ = run_cli(capsys, "verify", hostile)
    assert code == 1
    refused = [line for line in out.splitlines() if line.startswith("REFUSED") and repr(path) in line]
    assert refused, out
    assert_one_line(refused[0], what, rule)

    with pytest.raises(BundlePathError) as error:
        find_model_artifacts(hostile)
    assert_one_line(str(error.value), what, repr(path), rule)
    with pytest.raises(BundlePathError):
        verify_for_load(hostile, manifest)

    code, _, err = run_cli(capsys, "repo", "add", hostile, "--repo", tmp_path / "repository", "--name", "hostile")
    assert code == 1
    assert_one_line(err, what, rule)
    assert not (tmp_path / "repository").exists()

    if what == "decoder.tokenizer":
        from portable_ep.generation.bundle import bundle_tokenizer

        with pytest.raises(BundlePathError, match="decoder.tokenizer"):
            bundle_tokenizer(hostile, manifest)


def test_an_encoder_bundles_tokenizer_path_is_confined_too(tmp_path):
    from portable_ep.backends.bundle_paths import check_manifest_paths

    for hostile in ("/etc", "../other/tokenizer"):
        with pytest.raises(BundlePathError) as error:
            check_manifest_paths(tmp_path, {"tokenizer": hostile})
        assert "tokenizer" in str(error.value)


@pytest.mark.parametrize("relative, rule", [
    ("../x", "'..'"), ("a/../../x", "'..'"), ("/etc/passwd", "absolute path"), ("", "non-empty"),
    ("a\\..\\x", "backslash"), ("C:/x", "absolute path"), (7, "non-empty relative path string"),
])
def test_confined_path_rules(tmp_path, relative, rule):
    with pytest.raises(BundlePathError) as error:
        confined_path(tmp_path, relative, "files entry")
    assert_one_line(str(error.value), "files entry", rule)
    assert confined_path(tmp_path, "reference/inputs.npz", "reference.inputs") == tmp_path / "reference" / "inputs.npz"


# -- files the manifest does not list ------------------------------------------------------------------------


def test_an_unlisted_file_fails_verify_passes_with_allow_extra_and_is_not_copied(tmp_path, capsys, external_bundle):
    bundle = copy_bundle(external_bundle, tmp_path / "bundle")
    (bundle / "notes.txt").write_text("added by hand")
    (bundle / "reference" / "more.npz").write_bytes(b"not in the manifest")

    code, out, _ = run_cli(capsys, "verify", bundle)
    assert code == 1
    assert "UNLISTED notes.txt" in out and "UNLISTED reference/more.npz" in out and "--allow-extra" in out
    code, out, _ = run_cli(capsys, "verify", bundle, "--json")
    assert code == 1 and json.loads(out)["unrecorded"] == ["notes.txt", "reference/more.npz"]
    code, out, _ = run_cli(capsys, "verify", bundle, "--allow-extra")
    assert code == 0, out
    assert "note     notes.txt" in out

    os.chmod(bundle, 0o755)
    os.chmod(bundle / "reference", 0o750)
    notes: list = []
    version = add_to_repository(bundle, tmp_path / "repository", "adder", notes=notes) / "1"
    assert not (version / "notes.txt").exists() and not (version / "reference" / "more.npz").exists()
    assert any("notes.txt" in note and "not copied" in note for note in notes), notes
    for folder in (".", "reference"):  # folders keep the bundle's modes (not the staging folder's 0700)
        assert (version / folder).stat().st_mode & 0o777 == (bundle / folder).stat().st_mode & 0o777
    # What repo add wrote verifies and loads: config.pbtxt lives beside the version folder, not in it.
    code, out, _ = run_cli(capsys, "verify", version)
    assert code == 0, out
    artifacts = find_model_artifacts(version)
    verify_for_load(artifacts.root, artifacts.manifest)
    assert sorted(p.relative_to(version).as_posix() for p in version.rglob("*") if p.is_file()) == sorted(
        [*read_manifest(bundle)["files"], "manifest.json"])


# -- repo add --name -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
@pytest.mark.parametrize("name", ["../../victim", "../victim", "ABSOLUTE", "a/b", ".hidden", "..", "", "x\\y"])
def test_repo_add_refuses_a_name_that_is_not_one_folder(tmp_path, capsys, external_bundle, name, overwrite):
    site = tmp_path / "site"
    repository = site / "team" / "repository"
    repository.mkdir(parents=True)
    victim = site / "victim" / "1"
    victim.mkdir(parents=True)
    (victim / "keep.txt").write_text("must survive")  # where ../../victim/1 (or the absolute name) leads
    if name == "ABSOLUTE":
        name = str(site / "victim")
    before = snapshot(site)
    code, _, err = run_cli(capsys, "repo", "add", external_bundle, "--repo", repository, "--name", name,
                           *(["--overwrite"] if overwrite else []))
    assert code == 1
    assert_one_line(err, f"--name {name!r} refused", "one folder of the repository")
    assert snapshot(site) == before  # nothing written, nothing deleted


def test_repo_add_does_not_write_through_a_linked_model_folder(tmp_path, capsys, external_bundle):
    repository = tmp_path / "repository"
    repository.mkdir()
    victim = tmp_path / "victim"
    (victim / "1").mkdir(parents=True)
    (victim / "1" / "keep.txt").write_text("must survive")
    (repository / "adder").symlink_to(victim)
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, "repo", "add", external_bundle, "--repo", repository, "--name", "adder", "--overwrite")
    assert code == 1
    assert_one_line(err, "symbolic link")
    assert snapshot(tmp_path) == before


def test_repo_add_accepts_the_names_triton_serves(tmp_path, external_bundle):
    for name in ("adder", "adder-v2.1", "Adder_2"):
        assert (add_to_repository(external_bundle, tmp_path / "repository", name) / "1" / "manifest.json").is_file()


# -- deploy render -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("uri, flavor", [
    ("pvc://models/../../etc", "kubernetes"), ("pvc://models/team/../../../etc", "kubernetes"),
    ("pvc://models/%2e%2e/etc", "kubernetes"), ("hostpath:///srv/models/../../etc", "kubernetes"),
    ("s3://bucket/models/../other-team", "kserve"), ("pvc://models/../etc", "kserve"),
])
def test_deploy_render_refuses_dotdot_in_a_repository_path(tmp_path, capsys, uri, flavor):
    out = tmp_path / "deploy"
    code, _, err = run_cli(capsys, "deploy", "render", "--target", "cpu", "--flavor", flavor, "--out", out,
                           "--repository", uri)
    assert code == 1
    assert_one_line(err, repr(uri), "'..'")
    assert not out.exists()


# -- the manifest records no path of the exporting machine ----------------------------------------------------


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_the_manifest_records_no_absolute_path(tmp_path, capsys, external_bundle):
    import numpy as np

    from hostile_bundles import WIDTH, build_adder

    source = build_adder(tmp_path / "sources" / "adder.onnx")
    calibration = tmp_path / "data" / "calibration.npz"
    calibration.parent.mkdir()
    np.savez(calibration, x=np.random.default_rng(0).standard_normal((8, WIDTH)).astype(np.float32))
    out = tmp_path / "bundles" / "adder"
    from portable_ep.exporters.bundle import ExportOptions, export_bundle

    export_bundle(source, out, ExportOptions(formats=("onnx",), calibration=str(calibration), golden=str(calibration),
                                             progress=False))
    for bundle in (out, external_bundle):
        manifest = read_manifest(bundle)
        absolute = [s for s in _strings(manifest) if s.startswith("/") or str(tmp_path) in s or os.path.expanduser("~") + "/" in s]
        assert not absolute, absolute
        assert manifest["source"]["path"] == "adder.onnx"
    manifest = read_manifest(out)
    # The quantizers carry external data through now, so no tool failure quotes a folder here (the scrubbing of
    # such a message is the next test's); every variant of the graph with external data was built.
    assert all(v["status"] == "ok" for v in manifest["variants"]), manifest["variants"]
    assert manifest["calibration"]["origin"] == "calibration.npz"
    assert set(manifest["reference"]["inputs_origin"].values()) == {"golden inputs file calibration.npz"}


def test_a_tool_message_quoting_the_work_folder_is_recorded_without_it(tmp_path):
    from portable_ep.exporters.bundle import exporting_machine_paths
    from portable_ep.exporters.manifest import local_paths_removed

    work = tmp_path / ".adder.partial-x1"
    manifest = {"variants": [{"error": f"RuntimeError: cannot open {work}/model.int8.onnx: bad", "file": None}],
                "note": f"source {tmp_path}/src/adder.onnx", "other": f"{work}x/model.onnx and /opt/elsewhere/x"}
    cleaned = local_paths_removed(manifest, exporting_machine_paths(work, tmp_path / "src" / "adder.onnx"))
    assert cleaned["variants"][0]["error"] == "RuntimeError: cannot open model.int8.onnx: bad"
    assert cleaned["note"] == "source adder.onnx"
    # A name that merely starts like a root is not that root (its folder, a root too, still goes); others stay.
    assert cleaned["other"] == ".adder.partial-x1x/model.onnx and /opt/elsewhere/x"


# -- external data under any name is part of the variant ------------------------------------------------------


def test_external_data_under_any_name_is_hashed_with_its_variant_and_checked_at_load(tmp_path, external_bundle):
    bundle = copy_bundle(external_bundle, tmp_path / "bundle")
    data = rename_external_data(bundle, "model.onnx_data")  # optimum's name for a decoder's weights
    variant = read_manifest(bundle)["variants"][0]
    assert variant["weights_file"] == "model.onnx_data" and variant["weights_sha256"] == sha256_of(data)
    manifest = read_manifest(bundle)
    verify_for_load(bundle, manifest)

    flipped = bytearray(data.read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    data.write_bytes(bytes(flipped))
    with pytest.raises(IntegrityError) as error:
        verify_for_load(bundle, manifest)
    assert_one_line(str(error.value), "model.onnx_data: sha256")

    # A manifest whose variant forgot its weights is still checked: every recorded file is, at load.
    del variant["weights_file"], variant["weights_sha256"]
    manifest["variants"][0] = variant
    with pytest.raises(IntegrityError, match="model.onnx_data: sha256"):
        verify_for_load(bundle, manifest)


def test_a_file_read_at_load_without_a_sum_is_refused(tmp_path, external_bundle):
    bundle = copy_bundle(external_bundle, tmp_path / "bundle")
    manifest = read_manifest(bundle)
    del manifest["files"]["model.onnx.data"]
    del manifest["variants"][0]["weights_file"], manifest["variants"][0]["weights_sha256"]
    manifest["variants"][0]["file"] = "model.onnx"
    with pytest.raises(IntegrityError, match="model.onnx.data: read at load but the manifest records no sha256"):
        verify_for_load(bundle, manifest)
    del manifest["files"]["model.onnx"]
    del manifest["variants"][0]["sha256"]
    with pytest.raises(IntegrityError, match="model.onnx: read at load"):
        verify_for_load(bundle, manifest)
