"""Start a target's container on the example repository, wait until ready, check it, stop it."""
from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from portable_ep.images.targets import Target

SHM_SIZE = "512m"  # Docker's 64 MB default is too small for the python backend's shared memory


class ContainerFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Hardware:
    present: bool
    detail: str  # what was looked for, and what is missing


@dataclass
class ModelCheck:
    model: str
    exit_code: int
    reason: str
    provider: Optional[str] = None
    device: str = ""
    report: Optional[Path] = None
    label: str = ""  # the row's name in the merged reports


def probe_hardware(target: Target, exists: Callable[[str], bool] = os.path.exists) -> Hardware:
    """Is this target's accelerator on the host? Device nodes are the evidence Docker needs anyway."""
    if target.gpus:
        found = exists("/dev/nvidiactl")
        return Hardware(found, "NVIDIA GPU (/dev/nvidiactl)" + ("" if found else " not found"))
    missing = [d for d in target.devices if not exists(d)]
    if target.devices:
        return Hardware(not missing, f"{' + '.join(target.devices)}" + (f" (missing {', '.join(missing)})" if missing else ""))
    return Hardware(True, "the host CPU")


def _device_groups(paths: List[str]) -> List[str]:
    """Group ids owning the device nodes, so the unprivileged user in the image may open them."""
    gids = set()
    for path in paths:
        nodes = [Path(path)] + (sorted(Path(path).rglob("*")) if Path(path).is_dir() else [])
        gids.update(str(node.stat().st_gid) for node in nodes if node.exists() and not node.is_dir())
    return sorted(gids)


def container_options(target: Target, hardware: Hardware, repository: Path, ports: dict) -> dict:
    """docker run: host network, the repository read-only at /models, devices only when present."""
    options = {
        "detach": True, "network_mode": "host", "shm_size": SHM_SIZE,
        "environment": {"HOST": "127.0.0.1", "HTTP_PORT": str(ports["http"]), "GRPC_PORT": str(ports["grpc"]),
                        "METRICS_PORT": str(ports["metrics"])},
        "volumes": {str(repository.resolve()): {"bind": "/models", "mode": "ro"}},
        "labels": {"portable-ep.target": target.name},
    }
    if hardware.present and target.gpus:
        import docker

        options["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if hardware.present and target.devices:
        options["devices"] = [f"{d}:{d}:rwm" for d in target.devices]
        options["group_add"] = _device_groups(target.devices)
    return options


def cuda_libraries_check(client, image: str):
    """(complete?, the check's line): do the CUDA EP's libraries resolve inside the image?

    Runs everywhere, GPU or not, so an image missing a CUDA or cuDNN library fails here rather
    than on the first GPU host (portable_ep/backends/cuda_libraries.py).
    """
    import docker

    try:
        output = client.containers.run(image, entrypoint=["python3", "-m", "portable_ep.backends.cuda_libraries"],
                                       remove=True, stdout=True, stderr=True)
        return True, output.decode(errors="replace").strip()
    except docker.errors.ContainerError as exc:
        text = (exc.stderr or b"").decode(errors="replace").strip() if isinstance(exc.stderr, bytes) else str(exc)
        return False, text.splitlines()[-1] if text else str(exc)


def _ready(ports: dict) -> bool:
    try:
        for url in (f"http://127.0.0.1:{ports['http']}/v2/health/ready", f"http://127.0.0.1:{ports['metrics']}/metrics"):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status != 200:
                    return False
        return True
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(container, ports: dict, timeout: float = 180.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        container.reload()
        if container.status in ("exited", "dead"):
            tail = container.logs(tail=30).decode(errors="replace")
            raise ContainerFailed(f"the container exited (code {container.attrs['State'].get('ExitCode')}) before it was ready:\n{tail}")
        if _ready(ports):
            return time.monotonic() - started
        time.sleep(0.5)
    tail = container.logs(tail=30).decode(errors="replace")
    raise ContainerFailed(f"not ready after {timeout:.0f} s:\n{tail}")


def check_models(target: Target, repository: Path, ports: dict, out: Path, concurrency, requests: int,
                 hardware: Hardware, log: Callable[[str], None] = print) -> List[ModelCheck]:
    """`portable-ep check` from the host against the container, once per model the target lists."""
    from portable_ep.check.run import CheckOptions, LatencyBudget, run_check, write_reports
    from portable_ep.check.target import Target as CheckTarget

    options = CheckOptions(concurrency=list(concurrency), requests=requests, budget=LatencyBudget(p99_ms_at_1=target.p99_ms_at_1))
    results = []
    for model in target.models:
        # Marked in the label too, so the merged table and plot never show a fallback as the target's own.
        label = f"{target.name}/{model}" + ("" if hardware.present else " [hardware absent]")
        check_target = CheckTarget(url=f"127.0.0.1:{ports['grpc']}", model=model, bundle=repository / model / "1",
                                   metrics_url=f"http://127.0.0.1:{ports['metrics']}/metrics", label=label)
        report = run_check(check_target, options)
        paths = write_reports(report, out / model)
        served = report.get("target") or {}  # what /metrics said serves it, read once by the check
        result = ModelCheck(model, int(report["verdict"]["exit_code"]), report["verdict"]["reason"],
                            served.get("provider"), served.get("device", ""), paths["json"], label)
        where = f"{result.provider}" + (f" on {result.device}" if result.device else "")
        log(f"check {label}: exit {result.exit_code}, served by {where} -- {result.reason}")
        results.append(result)
    return results
