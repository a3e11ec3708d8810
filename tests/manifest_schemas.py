"""Strict validation of rendered manifests, for the deploy tests.

Kubernetes' own kinds: kubernetes-validate with strict=True (unknown fields are errors).
KServe's kinds: the OpenAPI-generated models of KServe's Python SDK. Each model class lists its
fields (``attribute_map``) and their types (``openapi_types``); embedded Kubernetes types
(V1Container, V1Volume, ...) come from the kubernetes client the SDK depends on. Walking a document
against them rejects unknown fields and wrong JSON types at any depth, as the CRD's structural
schema would on `kubectl apply`.

The walk runs in a child interpreter (`kserve_problems_many`): importing the kserve package
registers KServe's own copy of the `inference` gRPC protos, and tritonclient's identical ones
then fail to load ("duplicate symbol 'inference.ServerLiveRequest'") in the same process.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any, List

import kubernetes_validate

KSERVE_KINDS = {("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
                ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
                ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService"}
PRIMITIVES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "object": (object,),
              "datetime": (str,), "date": (str,)}


def _model_class(name: str):
    import kserve.models  # only in the child interpreter (see the module docstring)
    import kubernetes.client

    for module in (kserve.models, kubernetes.client):
        cls = getattr(module, name, None)
        if cls is not None:
            return cls
    raise LookupError(f"no SDK model named {name}")


def _walk(value: Any, type_name: str, path: str, problems: List[str]) -> None:
    # The generator spells containers two ways: list[T] / dict(str, T) and List[T] / Dict[str, T].
    list_match = re.fullmatch(r"[lL]ist\[(.+)\]", type_name)
    dict_match = re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", type_name)
    if list_match:
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _walk(item, list_match.group(1), f"{path}[{i}]", problems)
    elif dict_match:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a map, got {type(value).__name__}")
            return
        for key, item in value.items():
            _walk(item, dict_match.group(1) or dict_match.group(2), f"{path}.{key}", problems)
    elif type_name in PRIMITIVES:
        if isinstance(value, bool) and type_name in ("int", "float"):
            problems.append(f"{path}: expected {type_name}, got bool")
        elif not isinstance(value, PRIMITIVES[type_name]):
            problems.append(f"{path}: expected {type_name}, got {type(value).__name__}: {value!r}")
    elif type_name in ("V1beta1MetricQuantity", "IntOrString", "Quantity"):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            problems.append(f"{path}: expected a quantity (string or number), got {value!r}")
    else:
        cls = _model_class(type_name)
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a {type_name} object, got {type(value).__name__}")
            return
        json_to_attr = {json_key: attr for attr, json_key in cls.attribute_map.items()}
        for key, item in value.items():
            if key not in json_to_attr:
                problems.append(f"{path}.{key}: unknown field of {type_name}")
                continue
            _walk(item, cls.openapi_types[json_to_attr[key]], f"{path}.{key}", problems)


def kserve_problems_many(documents: List[dict]) -> List[List[str]]:
    """The problems of each KServe document, found in one child interpreter."""
    result = subprocess.run([sys.executable, __file__], input=json.dumps(documents), capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"the KServe schema walk failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout)


def kserve_problems(document: dict) -> List[str]:
    """In this interpreter: for the child process only."""
    key = (document.get("apiVersion"), document.get("kind"))
    if key not in KSERVE_KINDS:
        return [f"not a KServe kind: {key}"]
    problems: List[str] = []
    _walk(document, KSERVE_KINDS[key], document["kind"], problems)
    return problems


def kubernetes_problems(document: dict, version: str) -> List[str]:
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{document['kind']}: {'.'.join(str(p) for p in exc.path)}: {exc.message}"]
    return []


if __name__ == "__main__":
    print(json.dumps([kserve_problems(document) for document in json.load(sys.stdin)]))
