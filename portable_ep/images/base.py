"""The base image: pulled when it is a registry image, made here with debootstrap when it is ours.

``portable-ep/base:<suite>`` is Debian <suite> (minbase) with Python 3, venv and libpython3
(Triton's python stub embeds it) imported from a debootstrap tree; the tarball is cached so a
rerun or an air-gapped machine imports it without the network.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Optional

from portable_ep.images.targets import LOCAL_BASE_PREFIX

BASE_PACKAGES = ("python3", "python3-venv", "python3-distutils", "libpython3.11", "ca-certificates")
# Nothing an image needs at run time: package caches, indexes, manuals and translations.
PRUNE = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/man", "usr/share/locale", "usr/share/doc", "debootstrap")
IMPORT_CHANGES = ['ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', "ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]']


class BaseUnavailable(RuntimeError):
    """The base image is neither here nor obtainable: the target is not built, for this reason."""


def image_exists(client, image: str) -> bool:
    import docker

    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def host_debian_mirror(sources=(Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))) -> Optional[str]:
    """The Debian mirror this host's apt uses, so debootstrap goes where apt already goes."""
    for path in sources:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            match = re.match(r"^\s*(?:URIs:|deb)\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?(?:\s|$)", line)
            if match:
                return match.group(1)
    return None


def debootstrap_tarball(suite: str, tarball: Path, log: Callable[[str], None]) -> Path:
    if shutil.which("debootstrap") is None:
        raise BaseUnavailable("debootstrap is missing: apt-get install -y debootstrap (root), or docker load a base image")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="portable-ep-base-", dir=tarball.parent) as tmp:
        root = Path(tmp) / "root"
        command = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", suite, str(root)]
        mirror = host_debian_mirror()
        if mirror:
            command.append(mirror)
        log(f"base: {' '.join(command)}")
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            tail = "\n".join(result.stdout.splitlines()[-5:])
            raise BaseUnavailable(f"debootstrap {suite} failed (exit {result.returncode}):\n{tail}")
        for relative in PRUNE:
            target = root / relative
            shutil.rmtree(target, ignore_errors=True)
            if relative.startswith(("var/", "usr/")):
                target.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], check=True)
        partial.rename(tarball)
    return tarball


def ensure_base_image(client, image: str, cache_dir: Path, log: Callable[[str], None] = print) -> str:
    """Make sure ``image`` is in the engine; returns how it got there. BaseUnavailable says why not."""
    if image_exists(client, image):
        return "present"
    if image.startswith(LOCAL_BASE_PREFIX):
        suite = image.split(":", 1)[1]
        tarball = cache_dir / f"base-{suite}.tar"
        how = f"imported from the cached {tarball}"
        if not tarball.is_file():
            debootstrap_tarball(suite, tarball, log)
            how = f"made with debootstrap ({suite}) and imported"
        repository, tag = image.rsplit(":", 1)
        log(f"base: importing {tarball} as {image}")
        client.api.import_image_from_file(str(tarball), repository=repository, tag=tag, changes=IMPORT_CHANGES)
        return how
    log(f"base: pulling {image}")
    try:
        client.images.pull(image)
    except Exception as exc:
        raise BaseUnavailable(f"base image {image} cannot be pulled: {pull_failure(exc)}") from None
    return "pulled"


def pull_failure(exc: Exception) -> str:
    """The engine's reason in a few words: a matrix row should say *why*, not dump an HTTP error."""
    text = str(getattr(exc, "explanation", None) or exc or type(exc).__name__)
    lowered = text.lower()
    for needles, reason in ((("no such host", "lookup "), "no registry reachable (name lookup failed)"),
                            (("dial tcp", "connection refused", "i/o timeout", "network is unreachable"), "no registry reachable (connection failed)"),
                            (("manifest unknown", "not found"), "no such image in the registry"),
                            (("unauthorized", "denied"), "the registry refused access (log in first)")):
        if any(n in lowered for n in needles):
            return reason
    return text.splitlines()[0][:200]
