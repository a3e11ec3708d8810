"""Check a bundle's files against the sha256 sums in its manifest.

A flipped byte in a weights file loads and serves wrong answers without a word; a
truncated copy may crash the runtime. So the backend verifies the files it may load
before loading them, and ``portable-ep verify BUNDLE`` checks every file for CI and for
artifacts pulled from elsewhere.

Hashing a large model on every (re)load would slow recovery from a crash, so a verified
file's digest is cached by path, size, inode, mtime and ctime in
``$XDG_CACHE_HOME/portable-ep/integrity/verified-files.json``: a file unchanged in all
of those since it last matched is not read again. ctime cannot be set by a copy that
keeps mtimes (``cp -p``, ``rsync -a``, ``tar``), so a damaged copy is hashed again.
``portable-ep verify`` never uses the cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional

from portable_ep.backends.artifacts import is_servable
from portable_ep.backends.cache_dirs import default_cache_dir


class IntegrityError(RuntimeError):
    """A bundle file does not match the sha256 in its manifest; the message names the file."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expected_sums(manifest: Mapping, servable_only: bool = False) -> Dict[str, str]:
    """``{relative path: sha256}`` the manifest promises.

    Bundles record every file under ``files``; older ones only their variants' ``sha256``
    and ``weights_sha256``. ``servable_only`` keeps the files of variants that can be loaded.
    """
    sums: Dict[str, str] = {}
    for entry in manifest.get("variants") or []:
        if not isinstance(entry, dict) or not entry.get("file"):
            continue
        if servable_only and not is_servable(entry):
            continue
        if entry.get("sha256"):
            sums[entry["file"]] = entry["sha256"]
        if entry.get("weights_file") and entry.get("weights_sha256"):
            sums[entry["weights_file"]] = entry["weights_sha256"]
    if not servable_only:
        sums.update({str(k): str(v) for k, v in (manifest.get("files") or {}).items()})
    return sums


@dataclass(frozen=True)
class FileCheck:
    file: str
    ok: bool
    problem: str = ""
    cached: bool = False


class VerifiedCache:
    """Digests of files that matched, keyed by absolute path, valid while size and mtime hold."""

    def __init__(self, path: Optional[Path] = None):
        self.path = path or default_cache_dir("integrity") / "verified-files.json"
        try:
            self.entries: Dict[str, dict] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.dirty = False

    @staticmethod
    def _stamp(path: Path) -> dict:
        stat = path.stat()
        return {"size": stat.st_size, "inode": stat.st_ino, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}

    def known_digest(self, path: Path) -> Optional[str]:
        entry = self.entries.get(str(path.resolve()))
        stamp = self._stamp(path)
        if entry and {k: entry.get(k) for k in stamp} == stamp:
            return entry.get("sha256")
        return None

    def remember(self, path: Path, digest: str) -> None:
        self.entries[str(path.resolve())] = {**self._stamp(path), "sha256": digest}
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        try:  # a read-only cache is only slower, never an error
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False, suffix=".tmp") as handle:
                json.dump(self.entries, handle)
            os.replace(handle.name, self.path)
        except OSError:
            pass


def check_files(root: Path, sums: Mapping[str, str], cache: Optional[VerifiedCache] = None) -> List[FileCheck]:
    results = []
    for file, expected in sums.items():
        path = Path(root) / file
        if not path.is_file():
            results.append(FileCheck(file, False, "missing"))
            continue
        known = cache.known_digest(path) if cache else None
        if known == expected:
            results.append(FileCheck(file, True, cached=True))
            continue
        digest = sha256_of(path)
        if digest == expected:
            if cache:
                cache.remember(path, digest)
            results.append(FileCheck(file, True))
        else:
            results.append(FileCheck(file, False, f"sha256 {digest[:12]}… but the manifest says {expected[:12]}…"))
    if cache:
        cache.save()
    return results


def verify_for_load(root: Path, manifest: Mapping, cache: Optional[VerifiedCache] = None) -> None:
    """Raise :class:`IntegrityError` naming every servable file that does not match its sha256."""
    checks = check_files(root, expected_sums(manifest, servable_only=True), cache or VerifiedCache())
    bad = [c for c in checks if not c.ok]
    if bad:
        raise IntegrityError(
            f"bundle {root} failed its integrity check: "
            + "; ".join(f"{c.file}: {c.problem}" for c in bad)
            + " -- the file was changed or damaged after export; copy the bundle again or re-export it"
            + " (`portable-ep verify BUNDLE` checks every file)"
        )


def files_without_sums(root: Path, manifest: Mapping, names: Iterable[str] = ("manifest.json",)) -> List[str]:
    """Files in the bundle the manifest records no sum for (e.g. added by hand), for ``verify``'s report."""
    known = set(expected_sums(manifest)) | set(names)
    return sorted(
        str(p.relative_to(root)) for p in Path(root).rglob("*")
        if p.is_file() and str(p.relative_to(root)) not in known and "__pycache__" not in p.parts
    )
