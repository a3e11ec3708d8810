"""Run a rendered Deployment's pod on a Docker engine, as a kubelet would run it on a node.

The image stage uses this to prove the rendered spec itself serves: the same image, command, args,
environment, user, read-only root filesystem, dropped capabilities, memory-backed /dev/shm of the
rendered size, emptyDirs and read-only model mounts; the rendered readiness probe decides when it
is up. What a single Docker host cannot mirror is stated, not faked: the pod network is the host's
(so the rendered container ports must be free here), a PersistentVolumeClaim is a host folder the
caller names, and CPU requests (a scheduling hint) have no Docker counterpart.
"""
from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from portable_ep.deploy.model_source import DeployError

UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity_bytes(value: str) -> int:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(value))
    if not match:
        raise DeployError(f"{value!r} is not a Kubernetes byte quantity")
    return int(float(match.group(1)) * UNITS[match.group(2) or ""])


@dataclass(frozen=True)
class HttpProbe:
    path: str
    port: int
    period_s: float
    failure_threshold: int
    timeout_s: float

    @property
    def budget_s(self) -> float:
        return self.period_s * self.failure_threshold

    def ok(self, host: str = "127.0.0.1") -> bool:
        try:
            with urllib.request.urlopen(f"http://{host}:{self.port}{self.path}", timeout=self.timeout_s) as response:
                return 200 <= response.status < 400  # what the kubelet counts as success
        except (urllib.error.URLError, OSError):
            return False


def pod_of(deployment: Dict) -> Dict:
    if deployment.get("kind") != "Deployment":
        raise DeployError(f"expected a Deployment, got {deployment.get('kind')}")
    return deployment["spec"]["template"]["spec"]


def container_ports(container: Dict) -> Dict[str, int]:
    return {p["name"]: int(p["containerPort"]) for p in container.get("ports", []) if "name" in p}


def probe(container: Dict, kind: str) -> HttpProbe:
    spec = container[kind]
    get = spec["httpGet"]
    port = get["port"]
    port = container_ports(container)[port] if isinstance(port, str) else int(port)
    return HttpProbe(get["path"], port, float(spec.get("periodSeconds", 10)), int(spec.get("failureThreshold", 3)),
                     float(spec.get("timeoutSeconds", 1)))


def docker_options(deployment: Dict, claim_paths: Optional[Dict[str, str]] = None) -> Dict:
    """docker SDK ``containers.run`` keyword arguments for the Deployment's (first) container.

    ``claim_paths`` maps a PersistentVolumeClaim name to the host folder standing in for it.
    """
    pod = pod_of(deployment)
    if pod.get("initContainers"):
        raise DeployError("init containers are not run here: render with --repository hostpath:// or pvc://")
    container = pod["containers"][0]
    context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    options: Dict = {
        "image": container["image"], "detach": True, "network_mode": "host",
        "environment": {e["name"]: e["value"] for e in container.get("env", [])},
        "read_only": bool(context.get("readOnlyRootFilesystem")),
        "labels": {"portable-ep.pod-spec": deployment["metadata"]["name"]},
    }
    if "command" in container:
        options["entrypoint"] = container["command"]
    if "args" in container:
        options["command"] = container["args"]
    if "runAsUser" in context:
        options["user"] = f"{context['runAsUser']}:{context.get('runAsGroup', context['runAsUser'])}"
    if context.get("allowPrivilegeEscalation") is False:
        options["security_opt"] = ["no-new-privileges"]
    options["cap_drop"] = list(context.get("capabilities", {}).get("drop", []))
    memory = container.get("resources", {}).get("limits", {}).get("memory")
    if memory:
        options["mem_limit"] = quantity_bytes(memory)
    tmpfs: Dict[str, str] = {}
    binds: Dict[str, Dict] = {}
    for mount in container.get("volumeMounts", []):
        volume, path = volumes[mount["name"]], mount["mountPath"]
        mode = "ro" if mount.get("readOnly") else "rw"
        if "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit")
            if path == "/dev/shm":
                options["shm_size"] = quantity_bytes(size) if size else 64 * 2**20
            else:  # a disk emptyDir is a scratch folder the pod's user can write: tmpfs mirrors that
                tmpfs[path] = "mode=1777" + (f",size={quantity_bytes(size)}" if size else "")
        elif "hostPath" in volume:
            binds[volume["hostPath"]["path"]] = {"bind": path, "mode": mode}
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if claim not in (claim_paths or {}):
                raise DeployError(f"PersistentVolumeClaim {claim!r} needs a host folder to stand in for it")
            binds[claim_paths[claim]] = {"bind": path, "mode": "ro" if volume["persistentVolumeClaim"].get("readOnly") else mode}
        else:
            raise DeployError(f"volume {mount['name']!r}: only emptyDir, hostPath and persistentVolumeClaim run here")
    if "subPath" in str(container.get("volumeMounts")):
        raise DeployError("subPath mounts are not run here: point the claim's host folder at the sub-folder")
    if tmpfs:
        options["tmpfs"] = tmpfs
    if binds:
        options["volumes"] = binds
    return options


class PodFailed(RuntimeError):
    pass


def wait_probes(container_spec: Dict, docker_container, log: Callable[[str], None] = print) -> float:
    """Startup probe, then readiness, with the rendered periods and thresholds; seconds until ready."""
    started = time.monotonic()
    for kind in ("startupProbe", "readinessProbe"):
        if kind not in container_spec:
            continue
        check = probe(container_spec, kind)
        deadline = time.monotonic() + (check.budget_s if kind == "startupProbe" else max(check.budget_s, 60.0))
        while not check.ok():
            docker_container.reload()
            if docker_container.status in ("exited", "dead"):
                tail = docker_container.logs(tail=40).decode(errors="replace")
                raise PodFailed(f"the container exited (code {docker_container.attrs['State'].get('ExitCode')}) "
                                f"before its {kind} passed:\n{tail}")
            if time.monotonic() > deadline:
                tail = docker_container.logs(tail=40).decode(errors="replace")
                raise PodFailed(f"{kind} GET :{check.port}{check.path} never passed within {deadline - started:.0f} s:\n{tail}")
            time.sleep(min(check.period_s, 1.0))
        log(f"pod spec: {kind} GET :{check.port}{check.path} passed after {time.monotonic() - started:.1f} s")
    return time.monotonic() - started


def run_pod(client, deployment: Dict, claim_paths: Optional[Dict[str, str]] = None,
            log: Callable[[str], None] = print):
    """Start the pod's container; the caller stops it (``container.stop(); container.remove()``)."""
    options = docker_options(deployment, claim_paths)
    image = options.pop("image")
    return client.containers.run(image, **options)


def ports_in_use(ports: List[int]) -> List[int]:
    import socket

    busy = []
    for port in ports:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


@dataclass
class PodSpecCheck:
    target: str
    ok: bool
    detail: str
    ready_s: Optional[float] = None


def check_rendered_pod(client, target, repository, out, version: str, log: Callable[[str], None] = print,
                       requests: int = 50) -> PodSpecCheck:
    """Render `--flavor kubernetes` for `target` on `repository` (a hostPath), run it, probe it, check it."""
    from pathlib import Path

    import yaml

    from portable_ep.deploy.render import DeployOptions, render_documents, write_documents
    from portable_ep.images.run import check_models, probe_hardware

    out = Path(out)
    documents = render_documents(target, DeployOptions(repository=f"hostpath://{Path(repository).resolve()}"), version)
    write_documents(documents, out / "manifests")
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    spec = pod_of(deployment)["containers"][0]
    ports = container_ports(spec)
    busy = ports_in_use(list(ports.values()))
    if busy:
        return PodSpecCheck(target.name, False, f"ports {busy} are taken on this host; the pod uses the host network")
    log(f"pod spec {target.name}: docker run of {out / 'manifests' / '01-deployment.yaml'} "
        f"({yaml.safe_dump(docker_options(deployment), default_flow_style=True, width=10**6).strip()})")
    container = run_pod(client, deployment, log=log)
    try:
        ready_s = wait_probes(spec, container, log)
        checks = check_models(target, Path(repository), ports, out, [1], requests, probe_hardware(target), log)
        failed = [c for c in checks if c.exit_code != 0]
        detail = "; ".join(f"{c.model}: exit {c.exit_code} {c.reason}" for c in checks)
        return PodSpecCheck(target.name, not failed, f"ready in {ready_s:.1f} s; {detail}", ready_s)
    except PodFailed as exc:
        return PodSpecCheck(target.name, False, str(exc))
    finally:
        (out / "container.log").write_bytes(container.logs())
        container.stop(timeout=30)
        container.remove(force=True)
