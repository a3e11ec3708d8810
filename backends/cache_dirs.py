"""Where providers keep compiled artifacts between loads (TensorRT engines, NPU blobs).

Those compiles take seconds to minutes, and a restarted server should not pay them
again: the default is a per-user cache folder, ``$XDG_CACHE_HOME/portable-ep/<kind>``.
An option value of ``off`` turns caching off.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

OFF = ("off", "none", "false", "0")


def default_cache_dir(kind: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "portable-ep" / kind


def cache_dir_option(options: Mapping[str, str], key: str, kind: str) -> Optional[Path]:
    """The cache folder an option asks for: its value, the default when unset, None for ``off``."""
    value = str(options.get(key, "")).strip()
    if value.lower() in OFF:
        return None
    return Path(value) if value else default_cache_dir(kind)
