"""Render one target's manifests for a flavor and write them, one file per document."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from portable_ep.deploy import kserve, kubernetes
from portable_ep.deploy.autoscaling import DEFAULT_QUEUE_TARGET_MS
from portable_ep.deploy.model_source import DeployError, parse_model_source
from portable_ep.deploy.pod import PodSettings, Ports
from portable_ep.images.targets import Target

FLAVORS = ("kubernetes", "kserve")
# A DNS-1035 label: what Kubernetes accepts as a Deployment/Service/InferenceService name.
NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
QUANTITY_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
# Prometheus Operator's own service for a Prometheus in the `monitoring` namespace.
DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"


@dataclass
class DeployOptions:
    flavor: str = "kubernetes"
    repository: Optional[str] = None
    image: Optional[str] = None
    name: Optional[str] = None
    namespace: str = ""
    replicas: int = 1
    min_replicas: int = 1
    max_replicas: int = 4
    queue_target_ms: float = DEFAULT_QUEUE_TARGET_MS
    cpu: str = "2"
    memory: str = "4Gi"
    shm_size: str = "1Gi"
    prometheus_url: str = DEFAULT_PROMETHEUS_URL
    env: Dict[str, str] = field(default_factory=dict)


def _check(options: DeployOptions, name: str) -> None:
    if options.flavor not in FLAVORS:
        raise DeployError(f"--flavor {options.flavor!r}: use one of {', '.join(FLAVORS)}")
    if not NAME_PATTERN.match(name):
        raise DeployError(f"--name {name!r}: use lower-case letters, digits and '-', starting with a letter (≤ 63)")
    if options.namespace and not NAME_PATTERN.match(options.namespace):
        raise DeployError(f"--namespace {options.namespace!r} is not a valid Kubernetes namespace name")
    if options.replicas < 1 or options.min_replicas < 1:
        raise DeployError("--replicas and --min-replicas must be at least 1")
    if options.max_replicas < options.min_replicas:
        raise DeployError(f"--max-replicas {options.max_replicas} is below --min-replicas {options.min_replicas}")
    if options.queue_target_ms <= 0:
        raise DeployError("--queue-target-ms must be positive")
    for flag, value in (("--cpu", options.cpu), ("--memory", options.memory), ("--shm-size", options.shm_size)):
        if not QUANTITY_PATTERN.match(value):
            raise DeployError(f"{flag} {value!r} is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)")


def render_documents(target: Target, options: DeployOptions, version: str) -> List[Dict]:
    """The manifests for `target`, in apply order."""
    name = options.name or f"portable-ep-{target.name}"
    _check(options, name)
    source = parse_model_source(options.repository, options.flavor)
    settings = PodSettings(image=options.image or target.image_tag(version), cpu=options.cpu, memory=options.memory,
                           shm_size=options.shm_size, extra_env=dict(options.env))
    if options.flavor == "kserve":
        return kserve.render(name, target, settings, source, options.min_replicas, options.max_replicas,
                             options.queue_target_ms, options.prometheus_url, options.namespace)
    return kubernetes.render(name, target, settings, Ports(), source, options.replicas, options.min_replicas,
                             options.max_replicas, options.queue_target_ms, options.namespace)


def file_name(index: int, document: Dict) -> str:
    kind = re.sub(r"(?<!^)(?=[A-Z])", "-", document["kind"]).lower()
    return f"{index:02d}-{kind}.yaml"


def write_documents(documents: List[Dict], out: Path) -> List[Path]:
    """One YAML file per document, numbered in apply order (`kubectl apply -f DIR` takes them all).

    Files this command wrote before (NN-kind.yaml) are replaced; nothing else in DIR is touched.
    """
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("[0-9][0-9]-*.yaml"):
        old.unlink()
    paths = []
    for index, document in enumerate(documents, start=1):
        path = out / file_name(index, document)
        path.write_text(yaml.safe_dump(document, sort_keys=False, default_flow_style=False))
        paths.append(path)
    return paths
