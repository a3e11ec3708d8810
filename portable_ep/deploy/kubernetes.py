"""``--flavor kubernetes``: Deployment, Service, PodDisruptionBudget, HPA and the metric plumbing."""
from __future__ import annotations

from typing import Dict, List

import yaml

from portable_ep.deploy import autoscaling
from portable_ep.deploy.model_source import MOUNT_PATH, ModelSource
from portable_ep.deploy.pod import (PodSettings, Ports, container, pod_security_context, scheduling, security_context,
                                    shared_volumes)
from portable_ep.images.targets import Target


def labels(name: str, target: Target) -> Dict[str, str]:
    return {"app.kubernetes.io/name": "portable-ep", "app.kubernetes.io/instance": name,
            "app.kubernetes.io/component": "inference-server", "portable-ep/target": target.name}


def selector(name: str) -> Dict[str, str]:
    return {"app.kubernetes.io/name": "portable-ep", "app.kubernetes.io/instance": name}


def _meta(name: str, target: Target, namespace: str = "") -> Dict:
    meta = {"name": name, "labels": labels(name, target)}
    if namespace:
        meta["namespace"] = namespace
    return meta


def deployment(name: str, target: Target, settings: PodSettings, ports: Ports, source: ModelSource,
               replicas: int, namespace: str) -> Dict:
    container_ports = [{"name": "http", "containerPort": ports.http, "protocol": "TCP"},
                       {"name": "grpc", "containerPort": ports.grpc, "protocol": "TCP"},
                       {"name": "metrics", "containerPort": ports.metrics, "protocol": "TCP"}]
    server = container("tritonserver", target, settings, ports, MOUNT_PATH, container_ports, [source.mount()])
    pod_spec = {
        "securityContext": pod_security_context(),
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 30,
        "containers": [server],
        "volumes": shared_volumes(settings) + [source.volume()],
    }
    init = source.init_containers(security_context())
    if init:
        pod_spec["initContainers"] = init
    pod_spec.update(scheduling(target))
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, target, namespace),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector(name)},
            # A new pod must be ready (models loaded) before an old one goes.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels(name, target),
                             "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(ports.metrics),
                                             "prometheus.io/path": "/metrics"}},
                "spec": pod_spec,
            },
        },
    }


def service(name: str, target: Target, ports: Ports, namespace: str) -> Dict:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(name, target, namespace),
        "spec": {"type": "ClusterIP", "selector": selector(name), "ports": [
            {"name": "http", "port": ports.http, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
            {"name": "grpc", "port": ports.grpc, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
            {"name": "metrics", "port": ports.metrics, "targetPort": "metrics", "protocol": "TCP", "appProtocol": "http"},
        ]},
    }


def disruption_budget(name: str, target: Target, namespace: str) -> Dict:
    # maxUnavailable rather than minAvailable: a single replica must not block node drains forever.
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(name, target, namespace),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name)}}}


def autoscaler(name: str, target: Target, min_replicas: int, max_replicas: int, queue_target_ms: float,
               namespace: str) -> Dict:
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(name, target, namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": min_replicas, "maxReplicas": max_replicas,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": autoscaling.QUEUE_METRIC},
                "target": {"type": "AverageValue", "averageValue": autoscaling.target_average_value(queue_target_ms)}}}],
            # Scale up at once, down only after 5 quiet minutes: a new replica pays a model load.
            "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0},
                         "scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def service_monitor(name: str, target: Target, namespace: str) -> Dict:
    """Prometheus Operator: scrape the Service's metrics port; it adds the namespace and pod labels."""
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": _meta(name, target, namespace),
        "spec": {"selector": {"matchLabels": selector(name)},
                 "endpoints": [{"port": "metrics", "path": "/metrics", "interval": autoscaling.SCRAPE_INTERVAL}]},
    }


def prometheus_rule(name: str, target: Target, namespace: str) -> Dict:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": _meta(name, target, namespace),
            "spec": {"groups": autoscaling.recording_rules()}}


def adapter_config(name: str, target: Target, namespace: str) -> Dict:
    """prometheus-adapter's rule, as the `config.yaml` of a ConfigMap (merge it into the adapter's own)."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(f"{name}-prometheus-adapter", target, namespace),
            "data": {"config.yaml": yaml.safe_dump({"rules": [autoscaling.adapter_rule()]}, sort_keys=False)}}


def render(name: str, target: Target, settings: PodSettings, ports: Ports, source: ModelSource, replicas: int,
           min_replicas: int, max_replicas: int, queue_target_ms: float, namespace: str) -> List[Dict]:
    return [
        deployment(name, target, settings, ports, source, replicas, namespace),
        service(name, target, ports, namespace),
        disruption_budget(name, target, namespace),
        autoscaler(name, target, min_replicas, max_replicas, queue_target_ms, namespace),
        service_monitor(name, target, namespace),
        prometheus_rule(name, target, namespace),
        adapter_config(name, target, namespace),
    ]
