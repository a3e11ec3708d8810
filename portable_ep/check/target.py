"""What is being checked: a model on a running Triton, what serves it, and its bundle."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from portable_ep.check.verdict import CheckError


@dataclass
class Target:
    url: str
    model: str
    protocol: str = "grpc"
    bundle: Optional[Path] = None
    metrics_url: Optional[str] = None
    label: Optional[str] = None
    # Filled in by resolve():
    max_batch_size: int = 0
    precision: str = "fp32"
    providers: Optional[str] = None
    provider: Optional[str] = None  # what /metrics says serves it
    provider_description: str = ""
    device: str = ""  # where /metrics says it runs: "cpu", "cuda:0", "npu-emulated", ...
    route: str = ""  # how /metrics says the serving route was measured: "measured-at-export", "unmeasured-allowed", ...
    parameters: dict = field(default_factory=dict)  # the model config's parameters
    inputs: tuple = ()  # input and output names from the model config
    outputs: tuple = ()
    manifest: Optional[dict] = field(default=None, repr=False)

    @property
    def signature(self):
        from portable_ep.exporters.signature import Signature

        return Signature.from_dict(self.manifest["signature"])

    @property
    def batched(self) -> bool:
        """Samples in the bundle's arrays lie along the model's batch axis (else one per request)."""
        if self.manifest is None:
            return self.max_batch_size > 0
        return self.signature.batched

    @property
    def name(self) -> str:
        return self.label or f"{self.model} ({self.provider or '?'}, {self.precision})"

    def provider_options(self) -> dict:
        """``<provider>.<key>`` parameters for the serving provider, prefix stripped, as the backend passes them."""
        prefix = f"{self.provider}."
        return {k[len(prefix):]: v for k, v in self.parameters.items() if k.startswith(prefix)}

    def as_dict(self) -> dict:
        return {
            "label": self.name, "url": self.url, "protocol": self.protocol, "model": self.model,
            "bundle": str(self.bundle) if self.bundle else None, "max_batch_size": self.max_batch_size,
            "precision": self.precision, "providers": self.providers, "provider": self.provider,
            "provider_description": self.provider_description, "device": self.device, "route": self.route,
        }


def _client(target: Target):
    from portable_ep.client import make_client

    return make_client(target.protocol, target.url)


def _default_metrics_url(url: str) -> str:
    host = urlparse(url if "://" in url else f"//{url}").hostname or "127.0.0.1"
    return f"http://{host}:8002/metrics"


def _parameters(config: dict) -> dict:
    return {key: value.get("string_value", "") for key, value in (config.get("parameters") or {}).items()}


def resolve(target: Target) -> Target:
    """Ask the server about the model; CheckError (exit 3) when it cannot answer."""
    try:
        client = _client(target)
        if not client.is_server_live():
            raise CheckError(f"Triton at {target.url} ({target.protocol}) is not live")
        if not client.is_model_ready(target.model):
            raise CheckError(f"model {target.model!r} is not ready on {target.url}; see the server log for why it failed to load")
        config = client.get_model_config(target.model)
        if target.protocol == "grpc":
            from google.protobuf.json_format import MessageToDict

            config = MessageToDict(config.config, preserving_proto_field_name=True)
        client.close()
    except CheckError:
        raise
    except Exception as exc:
        raise CheckError(f"cannot reach Triton at {target.url} over {target.protocol}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    target.max_batch_size = int(config.get("max_batch_size", 0))
    target.inputs = tuple(entry.get("name", "") for entry in config.get("input", []))
    target.outputs = tuple(entry.get("name", "") for entry in config.get("output", []))
    params = _parameters(config)
    target.parameters = params
    target.precision = (params.get("precision") or "fp32").lower()
    target.providers = params.get("providers")
    metrics_url = target.metrics_url or _default_metrics_url(target.url)
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            from portable_ep.metrics_text import served_providers

            info = served_providers(response.read().decode()).get(target.model)
        if info:
            target.provider, target.provider_description = info["provider"], info["description"]
            target.device = info.get("device", "")
            target.route = info.get("route", "")
            target.precision = info.get("precision") or target.precision
    except (urllib.error.URLError, OSError):
        pass  # metrics are optional: the report then says the provider is unknown
    if target.precision == "auto":
        raise CheckError(
            f"model {target.model!r} is served with precision auto and {metrics_url} did not say which precision "
            "it chose; pass --metrics-url so the check can judge it by that precision's budget"
        )
    if target.bundle is not None:
        from portable_ep.backends.bundle_paths import confined_path

        manifest_path = confined_path(Path(target.bundle), "manifest.json", "manifest")
        if not manifest_path.is_file():
            raise CheckError(f"--bundle {target.bundle} has no manifest.json (make one with `portable-ep export`)")
        target.manifest = json.loads(manifest_path.read_text())
    return target
