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
from typing import Dict, List, Mapping, Optional

from portable_ep.backends.artifacts import is_servable
from portable_ep.backends.bundle_paths import BundlePathError, check_manifest_paths, confined_path, listed_files
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
    and ``weights_sha256`` (``weights_files`` for a graph with several external data files).
    ``servable_only`` keeps the files of variants that can be loaded.
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
        sums.update({str(k): str(v) for k, v in (entry.get("weights_files") or {}).items()})
    if not servable_only:
        sums.update({str(k): str(v) for k, v in (manifest.get("files") or {}).items()})
    return sums


@dataclass(frozen=True)
class FileCheck:
    file: str
    ok: bool
    problem: str = ""
    cached: bool = False
    refused: bool = False  # the path breaks the bundle's confinement (bundle_paths): not read at all


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
        try:
            path = confined_path(root, file, "files entry")
        except BundlePathError as exc:
            results.append(FileCheck(file, False, str(exc).rpartition(" refused: ")[2], refused=True))
            continue
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


def read_at_load(root: Path, manifest: Mapping) -> List[str]:
    """The files the backend reads to serve the bundle: its servable variants with their weights and, for a
    generative bundle, the tokenizer file."""
    servable = {"variants": [v for v in manifest.get("variants") or [] if isinstance(v, dict) and is_servable(v)]}
    files = sorted(listed_files(servable))
    # External data beside a graph under the names portable-ep and optimum write (export records the graph's own
    # names, whatever they are, as the variant's weights; reading the graph here would cost every load a parse).
    files += [f"{file}{suffix}" for file in files if file.endswith(".onnx") for suffix in (".data", "_data")
              if (Path(root) / f"{file}{suffix}").is_file() and f"{file}{suffix}" not in files]
    decoder = manifest.get("decoder") if manifest.get("task") == "text-generation" else None
    if isinstance(decoder, dict):
        tokenizer = decoder.get("tokenizer", "tokenizer")
        is_folder = confined_path(root, tokenizer, "decoder.tokenizer").is_dir()
        files.append(f"{tokenizer.rstrip('/')}/tokenizer.json" if is_folder else tokenizer)
    return files


def verify_for_load(root: Path, manifest: Mapping, cache: Optional[VerifiedCache] = None) -> None:
    """Refuse a bundle that is not confined to its folder (:class:`BundlePathError`) or whose files do not
    match their sha256 (:class:`IntegrityError`, naming every such file).

    Every file the manifest records is checked, not only the variant about to be loaded: the tokenizer, the
    external data of a graph under whatever name, golden data. Where the manifest records ``files`` (every
    exported bundle does), a file the backend reads but the manifest has no sum for is refused too.
    """
    check_manifest_paths(root, manifest)
    sums = expected_sums(manifest)
    problems = []
    if manifest.get("files"):
        problems = [f"{file}: read at load but the manifest records no sha256 for it"
                    for file in read_at_load(root, manifest) if file not in sums]
    checks = check_files(root, sums, cache or VerifiedCache())
    problems += [f"{c.file}: {c.problem}" for c in checks if not c.ok]
    if problems:
        raise IntegrityError(
            f"bundle {root} failed its integrity check: "
            + "; ".join(problems)
            + " -- the file was changed or damaged after export; copy the bundle again or re-export it"
            + " (`portable-ep verify BUNDLE` checks every file)"
        )
