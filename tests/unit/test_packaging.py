"""Every subpackage of portable_ep is listed in pyproject's explicit `packages`, so the wheel the
images install carries it (a missing one breaks the CLI inside every image, not in the checkout)."""
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_every_subpackage_is_in_the_wheel():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {f"portable_ep.{p.parent.name}" for p in (ROOT / "portable_ep").glob("*/__init__.py")}
    mapped = {f"portable_ep.{p.parent.name}" for p in ROOT.glob("*/__init__.py")
              if f"portable_ep.{p.parent.name}" in config["package-dir"]}
    assert folders | mapped <= listed, f"not in [tool.setuptools] packages: {sorted((folders | mapped) - listed)}"
