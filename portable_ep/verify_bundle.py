"""``portable-ep verify BUNDLE``: every file against the sha256 in manifest.json, for CI and pulled artifacts.

A bundle from elsewhere is checked as the server would take it (``backends/bundle_paths.py``):
a manifest path that leaves the bundle, a link or special file inside it, and a file the
manifest does not list (unless ``--allow-extra``) each fail the check, one line each.
"""
from __future__ import annotations

import json
from pathlib import Path

from portable_ep.backends.artifacts import MANIFEST_NAME
from portable_ep.backends.bundle_paths import (BundlePathError, confined_path, irregular_entries, manifest_paths,
                                              path_rule_broken, unlisted_files)
from portable_ep.backends.integrity import check_files, expected_sums
from portable_ep.console import make_console
from portable_ep.exporters.manifest import read_manifest


def _refusals(root: Path, manifest: dict) -> list:
    """One line per manifest path outside the bundle and per link or special file inside it."""
    lines = [f"bundle {root}: file {relative!r} refused: it is {kind}; a bundle holds folders and regular files only"
             for relative, kind in irregular_entries(root)]
    for what, relative in manifest_paths(manifest):
        if path_rule_broken(relative):  # links were named above, once each
            try:
                confined_path(root, relative, what)
            except BundlePathError as exc:
                lines.append(str(exc))
    return list(dict.fromkeys(lines))


def verify_bundle(bundle, as_json: bool = False, allow_extra: bool = False) -> int:
    root = Path(bundle)
    manifest = read_manifest(root)
    refused = _refusals(root, manifest)
    checks = check_files(root, expected_sums(manifest))  # no cache: a CI check reads every byte
    extra = unlisted_files(root, manifest)
    bad = [c for c in checks if not c.ok and not c.refused]  # a refused path is not read: it is among `refused`
    failed = bool(bad or refused or (extra and not allow_extra))
    if as_json:
        print(json.dumps({
            "bundle": str(root), "ok": not failed,
            "files": [{"file": c.file, "ok": c.ok, "problem": c.problem} for c in checks],
            "refused": refused, "unrecorded": extra, "unrecorded_allowed": allow_extra,
        }, indent=2))
        return 1 if failed else 0
    console = make_console()

    def say(line: str) -> None:  # one line each, never wrapped: a path in a refusal must stay whole
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    for line in refused:
        say(f"REFUSED  {line}")
    for check in checks:
        if not check.refused:
            say(f"{'ok      ' if check.ok else 'MISMATCH'} {check.file}" + (f": {check.problem}" if check.problem else ""))
    for file in extra:
        if allow_extra:
            say(f"note     {file}: not listed in {MANIFEST_NAME} (allowed by --allow-extra; not checked, not copied by `repo add`)")
        else:
            say(f"UNLISTED {file}: not listed in {MANIFEST_NAME}; a bundle holds only the files its manifest lists "
                "(remove it, or pass --allow-extra)")
    if failed:
        parts = []
        if bad:
            parts.append(f"{len(bad)} of {len(checks)} files do not match {root / MANIFEST_NAME}: {', '.join(c.file for c in bad)}")
        if refused:
            parts.append(f"{len(refused)} path(s) refused")
        if extra and not allow_extra:
            parts.append(f"{len(extra)} file(s) not listed in {MANIFEST_NAME}: {', '.join(extra)}")
        say(f"portable-ep verify: {'; '.join(parts)}; copy the bundle again or re-export it")
    else:
        say(f"portable-ep verify: all {len(checks)} files match {root / MANIFEST_NAME}")
    return 1 if failed else 0
