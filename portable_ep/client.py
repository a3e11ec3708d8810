"""Small tritonclient helpers shared by the demo, tests and benchmarks."""
from __future__ import annotations

from typing import Dict, Mapping

import numpy as np

from tritonclient.utils import np_to_triton_dtype


def _module(protocol: str):
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise ValueError(f"protocol {protocol!r}: use http or grpc")
    return module


def make_inputs(protocol: str, feeds: Mapping[str, np.ndarray]) -> list:
    module = _module(protocol)
    inputs = []
    for name, array in feeds.items():
        if array.ndim == 0:
            # A model's scalar input is declared dims [1] + reshape [] (Triton has no rank-0 wire shape).
            array = array.reshape(1)
        # Triton's wire datatype (strings travel as BYTES, which the config calls TYPE_STRING).
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def make_client(protocol: str, url: str, **kwargs):
    return _module(protocol).InferenceServerClient(url, **kwargs)


def infer_once(protocol: str, url: str, model: str, feeds: Mapping[str, np.ndarray], client=None) -> Dict[str, np.ndarray]:
    owned = client is None
    client = client or make_client(protocol, url)
    try:
        result = client.infer(model, make_inputs(protocol, feeds))
        response = result.get_response(as_json=True) if protocol == "grpc" else result.get_response()
        return {out["name"]: result.as_numpy(out["name"]) for out in response["outputs"]}
    finally:
        if owned:
            client.close()
