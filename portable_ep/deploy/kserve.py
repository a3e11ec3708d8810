"""``--flavor kserve``: a ClusterServingRuntime for the target's image and an InferenceService using it.

KServe's conventions: the serving container is ``kserve-container``, HTTP on 8080 and gRPC (h2c) on
9000, and the storage initializer puts ``storageUri`` at ``/mnt/models``. The model format is
``portable-ep`` (a Triton repository of portable-ep bundles, which needs this backend), never
auto-selected: the InferenceService names the runtime of its target, so the cpu, openvino, cuda,
rocm and npu runtimes can live in one cluster. Rendered for KServe's standard (raw Deployment)
mode, where both ports are served and KEDA scales on the queue-time query.
"""
from __future__ import annotations

from typing import Dict, List

from portable_ep.deploy import autoscaling
from portable_ep.deploy.model_source import ModelSource
from portable_ep.deploy.pod import PodSettings, Ports, container, scheduling, shared_volumes
from portable_ep.images.targets import Target

KSERVE_PORTS = Ports(http=8080, grpc=9000, metrics=8002)
STORAGE_PATH = "/mnt/models"
MODEL_FORMAT = {"name": "portable-ep", "version": "1"}


def _meta(name: str, target: Target, namespace: str = "") -> Dict:
    meta = {"name": name, "labels": {"app.kubernetes.io/name": "portable-ep", "portable-ep/target": target.name}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def serving_runtime(runtime: str, target: Target, settings: PodSettings) -> Dict:
    ports = KSERVE_PORTS
    container_ports = [{"name": "http1", "containerPort": ports.http, "protocol": "TCP"},
                       {"name": "h2c", "containerPort": ports.grpc, "protocol": "TCP"}]
    server = container("kserve-container", target, settings, ports, STORAGE_PATH, container_ports, probe_port="http1")
    spec = {
        "annotations": {"prometheus.kserve.io/port": str(ports.metrics), "prometheus.kserve.io/path": "/metrics"},
        "supportedModelFormats": [dict(MODEL_FORMAT, autoSelect=False)],
        "protocolVersions": ["v2", "grpc-v2"],
        "multiModel": False,
        "containers": [server],
        "volumes": shared_volumes(settings),
    }
    spec.update(scheduling(target))
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ClusterServingRuntime",
            "metadata": _meta(runtime, target), "spec": spec}


def queue_time_query(name: str, namespace: str) -> str:
    """The same queue-time mean as the recording rule, over this InferenceService's predictor pods."""
    matcher = f'pod=~"{name}-predictor-.*"' + (f',namespace="{namespace}"' if namespace else "")
    window = autoscaling.RATE_WINDOW
    return (f"sum(rate(nv_inference_queue_duration_us{{{matcher}}}[{window}])) / "
            f"clamp_min(sum(rate(nv_inference_request_success{{{matcher}}}[{window}])), 1e-9)")


def inference_service(name: str, runtime: str, target: Target, settings: PodSettings, source: ModelSource,
                      min_replicas: int, max_replicas: int, queue_target_ms: float, prometheus_url: str,
                      namespace: str) -> Dict:
    model = {"modelFormat": dict(MODEL_FORMAT), "runtime": runtime, "storageUri": source.uri,
             "protocolVersion": "v2"}
    if target.kube_resource:
        # The runtime's container carries the device request; repeating it here keeps it when a
        # user overrides the model's resources for one InferenceService.
        model["resources"] = container("kserve-container", target, settings, KSERVE_PORTS, STORAGE_PATH, [])["resources"]
    predictor = {
        "minReplicas": min_replicas, "maxReplicas": max_replicas,
        "model": model,
        # KEDA reads Prometheus directly: mean queue time over the predictor's pods (µs).
        "autoScaling": {"metrics": [{"type": "External", "external": {
            "metric": {"backend": "prometheus", "serverAddress": prometheus_url, "query": queue_time_query(name, namespace)},
            "target": {"type": "Value", "value": autoscaling.target_average_value(queue_target_ms)}}}]},
    }
    metadata = _meta(name, target, namespace)
    metadata["annotations"] = {"serving.kserve.io/deploymentMode": "Standard", "serving.kserve.io/autoscalerClass": "keda",
                               "serving.kserve.io/enable-prometheus-scraping": "true"}
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": metadata,
            "spec": {"predictor": predictor}}


def render(name: str, target: Target, settings: PodSettings, source: ModelSource, min_replicas: int,
           max_replicas: int, queue_target_ms: float, prometheus_url: str, namespace: str) -> List[Dict]:
    runtime = f"portable-ep-{target.name}"
    return [serving_runtime(runtime, target, settings),
            inference_service(name, runtime, target, settings, source, min_replicas, max_replicas, queue_target_ms,
                              prometheus_url, namespace)]
