"""``portable-ep verify BUNDLE``: every file against the sha256 in manifest.json, for CI and pulled artifacts."""
from __future__ import annotations

import json
from pathlib import Path

from portable_ep.backends.artifacts import MANIFEST_NAME
from portable_ep.backends.integrity import check_files, expected_sums, files_without_sums
from portable_ep.console import make_console
from portable_ep.exporters.manifest import read_manifest


def verify_bundle(bundle, as_json: bool = False) -> int:
    root = Path(bundle)
    manifest = read_manifest(root)
    checks = check_files(root, expected_sums(manifest))  # no cache: a CI check reads every byte
    extra = files_without_sums(root, manifest)
    bad = [c for c in checks if not c.ok]
    if as_json:
        print(json.dumps({
            "bundle": str(root), "ok": not bad,
            "files": [{"file": c.file, "ok": c.ok, "problem": c.problem} for c in checks],
            "unrecorded": extra,
        }, indent=2))
    else:
        console = make_console()
        for check in checks:
            console.print(f"{'ok      ' if check.ok else 'MISMATCH'} {check.file}" + (f": {check.problem}" if check.problem else ""))
        for file in extra:
            console.print(f"note     {file}: not recorded in {MANIFEST_NAME} (not checked)")
        if bad:
            console.print(f"portable-ep verify: {len(bad)} of {len(checks)} files do not match {root / MANIFEST_NAME}: "
                          f"{', '.join(c.file for c in bad)}; copy the bundle again or re-export it")
        else:
            console.print(f"portable-ep verify: all {len(checks)} files match {root / MANIFEST_NAME}")
    return 1 if bad else 0
