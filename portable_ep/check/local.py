"""The bundle run in-process on the provider that serves it: the reference for the random
sample and the physical limit beside the served throughput."""
from __future__ import annotations

from typing import Optional, Tuple

from portable_ep.check.target import Target


def local_session(target: Target) -> Tuple[Optional[object], str]:
    """(session, "") or (None, why not): the served provider may not be usable on this machine."""
    if target.bundle is None:
        return None, "no --bundle given"
    if not target.provider:
        return None, "the serving provider is unknown (no /metrics); pass --metrics-url"
    from portable_ep.backends.artifacts import find_model_artifacts
    from portable_ep.backends.base import LoadRequest
    from portable_ep.backends.registry import default_registry

    try:
        provider = default_registry().get(target.provider)
        availability = provider.probe()
        if not availability.ok:
            return None, f"provider {target.provider} is not usable here: {availability.reason}"
        request = LoadRequest(artifacts=find_model_artifacts(target.bundle), precision=target.precision,
                              options=target.provider_options())
        return provider.load(request), ""
    except Exception as exc:  # a provider's own reason, one line
        return None, f"provider {target.provider} cannot load the bundle here: {str(exc).splitlines()[0]}"
