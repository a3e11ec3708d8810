"""The matrix's decisions, with the engine, the base and the hardware probe injected: a fallback is
never a pass for the target's hardware, and a target that cannot be built says why."""
from __future__ import annotations

from pathlib import Path

import pytest

from portable_ep.images import base, matrix
from portable_ep.images.build import BuildFailed, follow_build
from portable_ep.images.matrix import ABSENT, FAIL, NOT_BUILT, PASS, MatrixOptions, TargetResult, decide, exit_code
from portable_ep.images.run import Hardware, ModelCheck, container_options, probe_hardware
from portable_ep.images.targets import load_targets
from portable_ep.images.wheelhouse import platform_args

TARGETS = load_targets()
PRESENT, ABSENT_HW = Hardware(True, "the host CPU"), Hardware(False, "NVIDIA GPU (/dev/nvidiactl) not found")


def ok(model, provider, device="cpu"):
    return ModelCheck(model, 0, "accuracy within budget and latency within budget", provider, device)


def test_pass_needs_the_targets_provider_on_present_hardware():
    status, detail = decide(TARGETS["cpu"], PRESENT, [ok("tiny_bert", "cpu"), ok("tiny_bert_int8", "cpu")])
    assert status == PASS and "served by cpu" in detail


def test_a_fallback_without_the_hardware_is_hardware_absent_not_pass():
    status, detail = decide(TARGETS["cuda"], ABSENT_HW, [ok("tiny_bert", "cpu")])
    assert status == ABSENT
    assert "fallback mode (tiny_bert: served by cpu on cpu)" in detail and "not a pass for cuda" in detail


def test_the_npu_emulation_is_hardware_absent():
    status, detail = decide(TARGETS["npu"], Hardware(False, "/dev/accel (missing /dev/accel)"),
                            [ok("tiny_bert_int8", "npu", "npu-emulated")])
    assert status == ABSENT and "npu emulated on the CPU (npu-emulated)" in detail


def test_emulation_or_fallback_where_the_hardware_is_present_fails():
    status, detail = decide(TARGETS["npu"], Hardware(True, "/dev/accel"), [ok("tiny_bert_int8", "npu", "npu-emulated")])
    assert status == FAIL and "not npu" in detail
    status, detail = decide(TARGETS["cuda"], Hardware(True, "NVIDIA GPU"), [ok("tiny_bert", "cpu")])
    assert status == FAIL and "tiny_bert was served by cpu on cpu, not cuda" in detail


def test_a_failed_check_fails_with_or_without_the_hardware():
    bad = ModelCheck("tiny_bert", 1, "accuracy failed: logits cosine 0.9", "cpu", "cpu")
    assert decide(TARGETS["cpu"], PRESENT, [bad]) == (FAIL, "tiny_bert: accuracy failed: logits cosine 0.9")
    status, detail = decide(TARGETS["cuda"], ABSENT_HW, [bad])
    assert status == FAIL and "fallback check failed" in detail


def test_exit_code_and_required_targets():
    results = [TargetResult("cpu", PASS), TargetResult("npu", ABSENT), TargetResult("cuda", NOT_BUILT, "base cannot be pulled")]
    assert exit_code(results) == 0
    assert exit_code(results, required=["cpu", "npu"]) == 0
    assert exit_code(results, required=["cuda"]) == 1
    assert exit_code(results + [TargetResult("rocm", FAIL)]) == 1


def test_probe_hardware_looks_for_the_device_nodes():
    assert probe_hardware(TARGETS["cpu"], exists=lambda p: False).present
    assert not probe_hardware(TARGETS["cuda"], exists=lambda p: False).present
    assert probe_hardware(TARGETS["cuda"], exists=lambda p: p == "/dev/nvidiactl").present
    rocm = probe_hardware(TARGETS["rocm"], exists=lambda p: p == "/dev/kfd")
    assert not rocm.present and "missing /dev/dri" in rocm.detail


def test_devices_are_passed_only_when_present(tmp_path):
    ports = {"http": 1, "grpc": 2, "metrics": 3}
    absent = container_options(TARGETS["cuda"], ABSENT_HW, tmp_path, ports)
    assert "device_requests" not in absent and absent["network_mode"] == "host"
    assert absent["volumes"] == {str(tmp_path.resolve()): {"bind": "/models", "mode": "ro"}}
    assert absent["environment"]["GRPC_PORT"] == "2" and absent["shm_size"] == "512m"
    gpu = container_options(TARGETS["cuda"], Hardware(True, "NVIDIA GPU"), tmp_path, ports)
    assert gpu["device_requests"][0]["Capabilities"] == [["gpu"]]
    npu = container_options(TARGETS["npu"], Hardware(True, "/dev/accel"), tmp_path, ports)
    assert npu["devices"] == ["/dev/accel:/dev/accel:rwm"]


class NoRegistry:
    """An engine that has no image and cannot pull one."""

    class images:
        @staticmethod
        def get(name):
            import docker

            raise docker.errors.ImageNotFound(f"No such image: {name}")

        @staticmethod
        def pull(name):
            import docker

            raise docker.errors.APIError("Get https://registry/v2/: dial tcp: lookup registry: no such host")


def test_a_base_that_cannot_be_pulled_is_not_built_with_the_reason(tmp_path):
    options = MatrixOptions(out=tmp_path / "out", cache=tmp_path / "cache", version="0.1.0")
    result = matrix.build_one(NoRegistry(), TARGETS["rocm"], options, Path("."), log=lambda line: None)
    assert result.status == NOT_BUILT
    assert result.detail == "base image rocm/dev-ubuntu-22.04:6.4.1 cannot be pulled: no registry reachable (name lookup failed)"


def test_base_overrides_replace_the_default(tmp_path):
    options = MatrixOptions(out=tmp_path, cache=tmp_path, version="0.1.0", base_overrides={"rocm": "mirror.local/rocm:6.4.1"})
    result = matrix.build_one(NoRegistry(), TARGETS["rocm"], options, Path("."), log=lambda line: None)
    assert "base image mirror.local/rocm:6.4.1 cannot be pulled" in result.detail


def test_the_local_base_is_made_with_debootstrap_and_says_so_when_it_cannot(tmp_path, monkeypatch):
    monkeypatch.setattr(base.shutil, "which", lambda name: None)
    with pytest.raises(base.BaseUnavailable, match="debootstrap is missing: apt-get install -y debootstrap"):
        base.ensure_base_image(NoRegistry(), "portable-ep/base:bookworm", tmp_path, log=lambda line: None)


def test_host_debian_mirror(tmp_path):
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n")
    legacy = tmp_path / "sources.list"
    legacy.write_text("# comment\ndeb [arch=amd64] http://other.example/debian/ bookworm main\n")
    assert base.host_debian_mirror((tmp_path / "none", deb822)) == "http://mirror.example/debian"
    assert base.host_debian_mirror((legacy,)) == "http://other.example/debian"


def test_build_progress_and_failure():
    lines = []
    stream = [{"stream": "Step 1/2 : FROM base\n"}, {"stream": " ---> abc\n"}, {"stream": "Step 2/2 : COPY . /wheels\n"},
              {"stream": " ---> Using cache\n"}, {"aux": {"ID": "sha256:1"}}]
    assert follow_build(stream, lines.append) == "sha256:1"
    assert "Step 1/2 : FROM base" in lines[0] and "Step 2/2" in lines[1] and lines[2] == "  1 of 2 steps from the build cache"
    with pytest.raises(BuildFailed, match=r"(?s)returned a non-zero code: 1.*No matching distribution"):
        follow_build([{"stream": "ERROR: No matching distribution found for onnxruntime\n"},
                      {"error": "The command '/bin/sh -c pip install' returned a non-zero code: 1"}], lines.append)


def test_wheelhouse_targets_the_images_python_not_the_hosts():
    args = platform_args(TARGETS["rocm"])
    assert args[:3] == ["--only-binary=:all:", "--python-version", "3.10"]
    assert "cp310" in args and "manylinux_2_35_x86_64" in args and "manylinux_2_36_x86_64" not in args
    assert "manylinux2014_x86_64" in args


def test_the_matrix_table_lists_every_target_with_its_status_and_reason():
    check = ModelCheck("tiny_bert_int8", 0, "ok", "npu", "npu-emulated", label="npu/tiny_bert_int8 [hardware absent]")
    results = [TargetResult("npu", ABSENT, "/dev/accel (missing /dev/accel); checked in fallback mode", size_bytes=549_000_000,
                            checks=[check]),
               TargetResult("cuda", NOT_BUILT, "base image nvcr.io/nvidia/tritonserver:24.10-py3 cannot be pulled: no registry reachable")]
    numbers = {"npu/tiny_bert_int8 [hardware absent]": {"accuracy": "pass", "worst_cosine": 0.975, "p50_ms_c1": 1.2,
                                                        "p99_ms_top": 9.0, "throughput_top": 700.0}}
    text = matrix.markdown(results, numbers)
    assert "| npu | 549 MB | tiny_bert_int8 | npu (npu-emulated) | pass (0.97500) | 1.20 | 9.00 | 700.0 | 0 | **hardware absent** |" in text
    assert "| cuda | - | - | - | - | - | - | - | - | **not built** |" in text
    assert "- **cuda** not built: base image nvcr.io/nvidia/tritonserver:24.10-py3 cannot be pulled: no registry reachable" in text
