"""The serving container and pod settings both flavors share.

The container runs the image's own ENTRYPOINT (``portable-ep serve`` under its supervisor) and is
configured only through the environment the images already read (MODEL_REPOSITORY, HOST and the
ports), so one rendered spec fits every target's image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from portable_ep.images.targets import Target

USER_ID = 10001  # the unprivileged user every image creates (images/*.Dockerfile)
SHM_VOLUME = "dshm"
TMP_VOLUME = "tmp"


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


@dataclass(frozen=True)
class PodSettings:
    image: str
    cpu: str = "2"
    memory: str = "4Gi"
    # Triton's python backend passes every tensor through /dev/shm; a container's default is 64 MiB,
    # too small for a batch of LLM logits or several model instances (KServe issue 1937).
    shm_size: str = "1Gi"
    devices: int = 1
    extra_env: Dict[str, str] = field(default_factory=dict)


def security_context() -> Dict:
    """Non-root, no privilege escalation, no capabilities, read-only root filesystem."""
    return {
        "runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID,
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> Dict:
    return {"runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID, "fsGroup": USER_ID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def environment(target: Target, ports: Ports, repository_path: str, extra: Dict[str, str]) -> List[Dict]:
    values = {
        "MODEL_REPOSITORY": repository_path,
        "HOST": "0.0.0.0",
        "HTTP_PORT": str(ports.http), "GRPC_PORT": str(ports.grpc), "METRICS_PORT": str(ports.metrics),
        "PORTABLE_EP_PROVIDERS": target.providers,
        # The root filesystem is read-only: temp files (the server's backend copy, Python's and
        # OpenVINO's caches) go to the /tmp emptyDir.
        "TMPDIR": "/tmp", "HOME": "/tmp",
    }
    values.update(extra)
    return [{"name": k, "value": v} for k, v in values.items()]


def probes(port_name: str) -> Dict[str, Dict]:
    """Triton's health endpoints, as its own Kubernetes chart uses them.

    Startup allows 10 minutes: the server answers only after every model loaded (OpenVINO compiles,
    an LLM's weights are read). Readiness is /v2/health/ready, which portable-ep's supervisor holds
    false while it reloads a model whose stub died; liveness is /v2/health/live.
    """
    def get(path: str, period: int, failures: int, timeout: int) -> Dict:
        return {"httpGet": {"path": path, "port": port_name}, "periodSeconds": period,
                "failureThreshold": failures, "timeoutSeconds": timeout}

    return {"startupProbe": get("/v2/health/live", 10, 60, 5),
            "readinessProbe": get("/v2/health/ready", 5, 3, 3),
            "livenessProbe": get("/v2/health/live", 10, 6, 5)}


def resources(target: Target, settings: PodSettings) -> Dict:
    """CPU and memory, plus one device of the target's kind (extended resources: limits only)."""
    limits = {"memory": settings.memory}
    if target.kube_resource:
        limits[target.kube_resource] = str(settings.devices)
    return {"requests": {"cpu": settings.cpu, "memory": settings.memory}, "limits": limits}


def scheduling(target: Target) -> Dict:
    """Tolerations of the device nodes' taint, and preferred NFD labels (AMX for OpenVINO)."""
    result: Dict = {}
    if target.kube_resource:
        result["tolerations"] = [{"key": target.kube_resource, "operator": "Exists", "effect": "NoSchedule"}]
    if target.kube_preferred_labels:
        count = len(target.kube_preferred_labels)
        result["affinity"] = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100 - 50 * i // count,
             "preference": {"matchExpressions": [{"key": label, "operator": "In", "values": ["true"]}]}}
            for i, label in enumerate(target.kube_preferred_labels)]}}
    return result


def shared_volumes(settings: PodSettings) -> List[Dict]:
    return [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}},
            {"name": TMP_VOLUME, "emptyDir": {}}]


def shared_mounts() -> List[Dict]:
    return [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}, {"name": TMP_VOLUME, "mountPath": "/tmp"}]


def container(name: str, target: Target, settings: PodSettings, ports: Ports, repository_path: str,
              container_ports: List[Dict], extra_mounts: Optional[List[Dict]] = None,
              probe_port: str = "http") -> Dict:
    spec = {
        "name": name,
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        "env": environment(target, ports, repository_path, settings.extra_env),
        "ports": container_ports,
        "resources": resources(target, settings),
        "securityContext": security_context(),
        "volumeMounts": shared_mounts() + list(extra_mounts or []),
    }
    spec.update(probes(probe_port))
    return spec
