"""The build matrix: build each target's image, start it, check it, merge everything into one table.

Every target ends in one status, decided by ``decide`` from facts, never by hope:

    pass             built, started, every listed model served by the target's provider on its
                     real hardware, and `portable-ep check` exited 0
    hardware absent  built and started but the host lacks the accelerator: the image was checked
                     in fallback mode (another provider, or the npu contract emulated on the CPU);
                     the check's outcome is shown, but it is not a pass for that hardware
    FAIL             a check failed, or a fallback served where the hardware is present
    not built        the base image cannot be had here, or the build failed (with the reason)
    not started      the container never became ready (with the log's tail)
"""
from __future__ import annotations

import dataclasses
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from portable_ep.images.run import Hardware, ModelCheck, probe_hardware
from portable_ep.images.targets import Target

PASS, ABSENT, FAIL, NOT_BUILT, NOT_STARTED, BUILT = "pass", "hardware absent", "FAIL", "not built", "not started", "built"


@dataclass
class TargetResult:
    name: str
    status: str = ""
    detail: str = ""
    image: Optional[str] = None
    size_bytes: Optional[int] = None
    hardware: Optional[Hardware] = None
    checks: List[ModelCheck] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)  # stage -> wall time
    health: str = ""  # the image's own HEALTHCHECK, as Docker saw it after the check

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        for check in data["checks"]:
            check["report"] = str(check["report"]) if check["report"] else None
        return data


@dataclass
class MatrixOptions:
    out: Path
    cache: Path
    version: str
    base_overrides: Dict[str, str] = field(default_factory=dict)
    download: bool = True
    concurrency: Sequence[int] = (1, 4, 16)
    requests: int = 200
    verbose: bool = False


def _served_where(check: ModelCheck) -> str:
    if "emulated" in (check.device or ""):
        return f"{check.provider} emulated on the CPU ({check.device})"
    return f"served by {check.provider or '?'}" + (f" on {check.device}" if check.device else "")


def decide(target: Target, hardware: Hardware, checks: List[ModelCheck]) -> Tuple[str, str]:
    """(status, detail) for a target whose container was checked."""
    failing = [c for c in checks if c.exit_code != 0]
    if not hardware.present:
        where = "; ".join(sorted({f"{c.model}: {_served_where(c)}" for c in checks}))
        if failing:
            return FAIL, f"hardware absent ({hardware.detail}) and the fallback check failed: {failing[0].model}: {failing[0].reason}"
        return ABSENT, f"{hardware.detail}; checked in fallback mode ({where}); not a pass for {target.provider}"
    elsewhere = [c for c in checks if c.provider != target.provider or "emulated" in (c.device or "")]
    if elsewhere:
        c = elsewhere[0]
        return FAIL, f"{hardware.detail} is present but {c.model} was {_served_where(c)}, not {target.provider}"
    if failing:
        return FAIL, f"{failing[0].model}: {failing[0].reason}"
    return PASS, f"every model served by {target.provider} on {checks[0].device or hardware.detail}; check within budget"


@contextmanager
def _timed(result: TargetResult, stage: str):
    """Record the stage's wall time in ``result.seconds``, also when it fails."""
    start = time.monotonic()
    try:
        yield
    finally:
        result.seconds[stage] = round(time.monotonic() - start, 1)


def build_one(client, target: Target, options: MatrixOptions, project_dir: Path, log: Callable[[str], None]) -> TargetResult:
    from portable_ep.images.base import BaseUnavailable, ensure_base_image
    from portable_ep.images.build import BuildFailed, build_image
    from portable_ep.images.wheelhouse import WheelhouseError, build_wheelhouse

    result = TargetResult(target.name)
    target = dataclasses.replace(target, base_image=options.base_overrides.get(target.name, target.base_image))
    try:
        with _timed(result, "base"):
            how = ensure_base_image(client, target.base_image, options.cache, log)
        log(f"base {target.base_image}: {how}")
        with _timed(result, "wheelhouse"):
            context = build_wheelhouse(target, options.cache / "wheelhouse", project_dir, target.dockerfile.parent / "constraints.txt",
                                       log, download=options.download)
        with _timed(result, "build"):
            built = build_image(client, target, context, target.image_tag(options.version), log=log, verbose=options.verbose)
    except (BaseUnavailable, WheelhouseError, BuildFailed) as exc:
        result.status, result.detail = NOT_BUILT, str(exc)
        log(f"{target.name}: not built: {str(exc).splitlines()[0]}")
        return result
    result.status, result.image, result.size_bytes = BUILT, built.tag, built.size_bytes
    return result


def test_one(client, target: Target, result: TargetResult, repository: Path, options: MatrixOptions,
             log: Callable[[str], None]) -> TargetResult:
    from portable_ep.images.run import ContainerFailed, check_models, container_options, cuda_libraries_check, wait_ready
    from portable_ep.triton_process import free_port

    hardware = result.hardware = probe_hardware(target)
    if target.gpus:
        complete, line = cuda_libraries_check(client, result.image)
        log(f"run {target.name}: {line}")
        if not complete:
            result.status, result.detail = FAIL, line
            return result
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    out = options.out / target.name
    out.mkdir(parents=True, exist_ok=True)
    log(f"run {target.name}: {result.image} on {repository} (hardware: {hardware.detail}; ports {ports})")
    container = client.containers.run(result.image, **container_options(target, hardware, repository, ports))
    try:
        with _timed(result, "ready"):
            wait_ready(container, ports)
        log(f"run {target.name}: ready in {result.seconds['ready']:.1f} s")
        with _timed(result, "check"):
            result.checks = check_models(target, repository, ports, out, options.concurrency, options.requests, hardware, log)
        result.status, result.detail = decide(target, hardware, result.checks)
        result.health = docker_health(container)
        log(f"run {target.name}: Docker reports the container {result.health} (HEALTHCHECK on /v2/health/ready)")
    except ContainerFailed as exc:
        result.status, result.detail = NOT_STARTED, str(exc)
    finally:
        (out / "container.log").write_bytes(container.logs())
        container.stop(timeout=30)
        container.remove(force=True)
    log(f"{target.name}: {result.status}: {result.detail.splitlines()[0] if result.detail else ''}")
    return result


def docker_health(container, timeout: float = 30.0) -> str:
    """The image's HEALTHCHECK verdict; its first probe runs one interval after the start."""
    deadline = time.monotonic() + timeout
    while True:
        container.reload()
        status = (container.attrs["State"].get("Health") or {}).get("Status", "no healthcheck")
        if status != "starting" or time.monotonic() > deadline:
            return status
        time.sleep(1)


def existing_image(client, target: Target, version: str) -> TargetResult:
    """For `images test`: the image built earlier, or "not built" saying how to build it."""
    import docker

    result = TargetResult(target.name)
    tag = target.image_tag(version)
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        result.status, result.detail = NOT_BUILT, f"no image {tag}: run portable-ep images build --targets {target.name}"
        return result
    result.status, result.image, result.size_bytes = BUILT, tag, int(image.attrs.get("Size", 0))
    return result


def _mb(size: Optional[int]) -> str:
    return "-" if not size else f"{size / 1e6:.0f} MB"


def markdown(results: List[TargetResult], numbers: Dict[str, dict]) -> str:
    """One row per target and model: image, what served, the check's figures, the status."""
    lines = ["| target | image size | model | served by (device) | accuracy (worst cosine) | p50 ms @1 | p99 ms @top | inferences/s @top | check exit | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if not r.checks:
            lines.append(f"| {r.name} | {_mb(r.size_bytes)} | - | - | - | - | - | - | - | **{r.status}** |")
            continue
        for c in r.checks:
            n = numbers.get(c.label, {})
            fmt = lambda key, spec: "-" if n.get(key) is None else format(n[key], spec)  # noqa: E731
            served = f"{c.provider or '?'}" + (f" ({c.device})" if c.device else "")
            lines.append(f"| {r.name} | {_mb(r.size_bytes)} | {c.model} | {served} | "
                         f"{n.get('accuracy', '-')} ({fmt('worst_cosine', '.5f')}) | {fmt('p50_ms_c1', '.2f')} | "
                         f"{fmt('p99_ms_top', '.2f')} | {fmt('throughput_top', '.1f')} | {c.exit_code} | **{r.status}** |")
    lines.append("")
    lines += [f"- **{r.name}** {r.status}: {r.detail.splitlines()[0] if r.detail else ''}" for r in results]
    return "\n".join(lines) + "\n"


def timings_markdown(results: List[TargetResult]) -> str:
    stages = ("base", "wheelhouse", "build", "ready", "check")
    lines = ["| target | " + " | ".join(f"{s} s" for s in stages) + " |", "|---" * (len(stages) + 1) + "|"]
    for r in results:
        lines.append(f"| {r.name} | " + " | ".join(str(r.seconds.get(s, "-")) for s in stages) + " |")
    return "\n".join(lines) + "\n"


def write_matrix(results: List[TargetResult], out: Path) -> str:
    """Merge every check report (portable_ep.check.merge) and write images-matrix.md/json beside it."""
    from portable_ep.check.merge import merge

    reports = [c.report for r in results for c in r.checks if c.report]
    numbers = {}
    if reports:
        merged = merge(reports, out / "matrix")
        numbers = {row["target"]: row for row in merged["rows"]}
    text = markdown(results, numbers)
    (out / "images-matrix.md").write_text(text + "\n" + timings_markdown(results))
    (out / "images-matrix.json").write_text(json.dumps({"targets": [r.as_dict() for r in results]}, indent=2) + "\n")
    return text


def exit_code(results: List[TargetResult], required: Sequence[str] = ()) -> int:
    """1 when a target failed, or a required one was not built, not started or not checked."""
    for r in results:
        if r.status == FAIL:
            return 1
        if r.name in required and r.status not in (PASS, ABSENT):
            return 1
    return 0
