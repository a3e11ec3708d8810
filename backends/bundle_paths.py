"""A bundle is confined to its folder: the one check every reader of a manifest path goes through.

Bundles travel (exported on one machine, served on another), so a manifest is data from
someone else, and every path in it is a request to read a file of the serving host. The
rules, applied by ``portable-ep verify``, the backend's loader, the generative loader,
``portable-ep check`` and ``repo add`` alike:

- a manifest path is relative to the bundle and stays inside it: no absolute path, no
  ``..`` component, no empty or NUL-carrying name;
- a bundle holds folders and regular files only: a symbolic link (to a private file, to a
  folder elsewhere) or a device, FIFO or socket is refused wherever it is in the bundle,
  so nothing read "from the bundle" comes from outside it (ONNX Runtime and OpenVINO
  would follow a link named ``model.onnx.data`` or ``model.bin`` without a word);
- the files a bundle is made of are the ones its manifest lists (:func:`listed_files`):
  ``verify`` fails on any other file and ``repo add`` does not copy one.

The bundle's own folder may be reached through a link (an operator's choice of where
the repository lives); only what is inside it is the bundle's.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterable, Iterator, List, Mapping, Set, Tuple

MANIFEST = "manifest.json"


class BundlePathError(ValueError):
    """A manifest path or a bundle file breaks the confinement rules; one line naming the path and the rule."""


def _refuse(root, what: str, relative, rule: str) -> BundlePathError:
    return BundlePathError(f"bundle {root}: {what} {relative!r} refused: {rule}")


def path_rule_broken(relative) -> str:
    """Why ``relative`` is not a path inside a bundle, or "" when it is one syntactically."""
    if not isinstance(relative, str) or not relative:
        return "a bundle path is a non-empty relative path string"
    if "\0" in relative:
        return "a NUL character in a path"
    if relative.startswith("/") or PureWindowsPath(relative).drive or PureWindowsPath(relative).root:
        return "an absolute path leaves the bundle (paths in a manifest are relative to its folder)"
    if "\\" in relative:
        return "a backslash in a path (bundle paths are separated by '/')"
    if ".." in relative.split("/"):
        return "'..' leaves the bundle (paths in a manifest stay inside its folder)"
    return ""


def confined_path(root, relative, what: str) -> Path:
    """``root / relative``, refused unless it stays inside ``root`` and no part of it inside ``root`` is a link.

    ``what`` names the manifest field in the refusal (``"files entry"``, ``"variants[2].file"``,
    ``"decoder.tokenizer"``). The path need not exist; a part of it that does must be a
    folder or a regular file, never a symbolic link.
    """
    root = Path(root)
    rule = path_rule_broken(relative)
    if rule:
        raise _refuse(root, what, relative, rule)
    current = root
    for part in PurePosixPath(relative).parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            break  # the caller says what is missing; nothing beyond it can be a link
        except OSError as exc:
            raise _refuse(root, what, relative, f"cannot be inspected ({exc.strerror})") from None
        if stat.S_ISLNK(mode):
            raise _refuse(root, what, relative, f"{current.relative_to(root)} is a symbolic link; a bundle holds regular files only")
    path = root / relative
    real_root = root.resolve()
    if not path.resolve().is_relative_to(real_root):  # belt and braces: the checks above already ensure it
        raise _refuse(root, what, relative, "resolves outside the bundle")
    return path


def irregular_entries(root) -> Iterator[Tuple[str, str]]:
    """(relative path, what it is) of every symbolic link, device, FIFO or socket inside ``root``; links not followed."""
    root = Path(root)
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in sorted(dirs + files):
            path = Path(folder) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                yield str(path.relative_to(root)), f"a symbolic link to {os.readlink(path)}"
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                yield str(path.relative_to(root)), "not a regular file"


def refuse_irregular_entries(root) -> None:
    """Raise :class:`BundlePathError` for the first link or special file inside the bundle at ``root``."""
    for relative, kind in irregular_entries(root):
        raise _refuse(root, "file", relative,
                      f"it is {kind}; a bundle holds folders and regular files only (copy the file itself into the bundle)")


def _variant_weights(entry: Mapping) -> List[str]:
    weights = [entry["weights_file"]] if entry.get("weights_file") else []
    weights += list((entry.get("weights_files") or {}).keys())
    return weights


def manifest_paths(manifest: Mapping) -> List[Tuple[str, object]]:
    """(field, path) of every path a manifest names: what a reader may open, all to be confined."""
    paths: List[Tuple[str, object]] = [("files entry", name) for name in (manifest.get("files") or {})]
    for index, entry in enumerate(manifest.get("variants") or []):
        if not isinstance(entry, Mapping):
            continue
        if entry.get("file") is not None:
            paths.append((f"variants[{index}].file", entry["file"]))
        paths.extend((f"variants[{index}].weights_file", name) for name in _variant_weights(entry))
    if "tokenizer" in manifest:  # an encoder bundle's tokenizer folder (the OpenAI API's embeddings read it)
        paths.append(("tokenizer", manifest["tokenizer"]))
    decoder = manifest.get("decoder") or {}
    for key in ("tokenizer", "golden"):
        if isinstance(decoder, Mapping) and key in decoder:
            paths.append((f"decoder.{key}", decoder[key]))
    reference = manifest.get("reference") or {}
    for key in ("inputs", "outputs"):
        if isinstance(reference, Mapping) and key in reference:
            paths.append((f"reference.{key}", reference[key]))
    return paths


def check_manifest_paths(root, manifest: Mapping) -> None:
    """Every path of the manifest confined to ``root``, and no link or special file anywhere in the bundle."""
    for what, relative in manifest_paths(manifest):
        confined_path(root, relative, what)
    refuse_irregular_entries(root)


def listed_files(manifest: Mapping) -> Set[str]:
    """The files the bundle is made of, by the manifest: ``files``, each variant's file and weights (an IR's
    ``.bin`` beside its ``.xml`` even where a hand-written manifest does not name it)."""
    listed = {str(name) for name in (manifest.get("files") or {})}
    for entry in manifest.get("variants") or []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("file"), str):
            continue
        listed.add(entry["file"])
        listed.update(_variant_weights(entry))
        if entry["file"].endswith(".xml"):
            listed.add(entry["file"][: -len(".xml")] + ".bin")
    return listed


def bundle_files(root) -> List[str]:
    """Relative paths of every regular file inside ``root`` (links not followed)."""
    root = Path(root)
    found = []
    for folder, _, files in os.walk(root, followlinks=False):
        for name in files:
            path = Path(folder) / name
            if stat.S_ISREG(os.lstat(path).st_mode):
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


def unlisted_files(root, manifest: Mapping, also: Iterable[str] = (MANIFEST,)) -> List[str]:
    """Files in the bundle its manifest does not list (``verify`` fails on them, ``repo add`` leaves them behind)."""
    known = listed_files(manifest) | set(also)
    return [name for name in bundle_files(root) if name not in known]
