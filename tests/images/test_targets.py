"""images/targets.toml parsing: selections, overrides and each validation error's message."""
from __future__ import annotations

from pathlib import Path

import pytest

from portable_ep.images.targets import TargetsError, load_targets, parse_overrides, select

GOOD = """
[target.cpu]
dockerfile = "cpu.Dockerfile"
base_image = "portable-ep/base:bookworm"
python = "3.11"
glibc = "2.36"
extras = ["cpu"]
providers = "cpu"
provider = "cpu"
models = ["tiny_bert"]
{extra}
"""


def write(tmp_path: Path, extra: str = "", text: str = None) -> Path:
    (tmp_path / "cpu.Dockerfile").write_text("FROM scratch\n")
    path = tmp_path / "targets.toml"
    path.write_text(text if text is not None else GOOD.format(extra=extra))
    return path


def test_a_minimal_target_and_its_defaults(tmp_path):
    target = load_targets(write(tmp_path))["cpu"]
    assert target.dockerfile == tmp_path / "cpu.Dockerfile"
    assert (target.gpus, target.devices, target.server, target.p99_ms_at_1) == (False, [], True, None)
    assert target.local_base and target.image_tag("0.1.0") == "portable-ep/cpu:0.1.0"


def test_the_projects_targets_file():
    targets = load_targets()
    # cuda is built here from the local base (CUDA from wheels); rocm needs its registry base.
    assert targets["cuda"].gpus and targets["cuda"].local_base and "cuda-runtime" in targets["cuda"].extras
    assert not targets["rocm"].local_base
    assert targets["rocm"].devices == ["/dev/kfd", "/dev/dri"]
    assert targets["npu"].devices == ["/dev/accel"] and targets["npu"].provider == "npu"
    assert "self-hosted" in targets["cuda"].runner and "self-hosted" not in targets["cpu"].runner


@pytest.mark.parametrize("extra, message", [
    ('surprise = 1', "unknown key(s) surprise"),
    ('devices = "/dev/kfd"', "devices must be a list of strings"),
])
def test_bad_keys(tmp_path, extra, message):
    with pytest.raises(TargetsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_targets(write(tmp_path, extra))


def test_missing_key_provider_outside_chain_missing_dockerfile_and_bad_toml(tmp_path):
    with pytest.raises(TargetsError, match="lacks models"):
        load_targets(write(tmp_path, text=GOOD.format(extra="").replace('models = ["tiny_bert"]', "")))
    with pytest.raises(TargetsError, match="provider 'cuda' is not in its chain 'cpu'"):
        load_targets(write(tmp_path, text=GOOD.format(extra="").replace('provider = "cpu"', 'provider = "cuda"')))
    with pytest.raises(TargetsError, match="does not exist"):
        load_targets(write(tmp_path, text=GOOD.format(extra="").replace("cpu.Dockerfile", "gone.Dockerfile")))
    with pytest.raises(TargetsError, match="not valid TOML"):
        load_targets(write(tmp_path, text="[target.cpu\n"))
    with pytest.raises(TargetsError, match=r"no \[target.NAME\] tables"):
        load_targets(write(tmp_path, text="title = 'x'\n"))


def test_select_and_overrides():
    targets = load_targets()
    assert [t.name for t in select(targets, "npu, cpu,npu")] == ["npu", "cpu"]
    assert len(select(targets, None)) == 5
    with pytest.raises(TargetsError, match="unknown target.* tpu; the targets file has cpu, openvino, npu, cuda, rocm"):
        select(targets, "cpu,tpu")
    assert parse_overrides(["cuda=mirror.local/triton:24.10-py3"]) == {"cuda": "mirror.local/triton:24.10-py3"}
    with pytest.raises(TargetsError, match="use TARGET=IMAGE"):
        parse_overrides(["cuda"])
