"""A hand-written Triton python backend model: one runtime call per request, no stacking.

Copied into the benchmark's model repository as ``model.py`` (with peer_runtime.py
beside it) by benchmarks/peers.py: what a team writes for Triton's "python" backend
in an afternoon.
"""
import json
import os
import sys

import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_runtime import open_runtime  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.output = config["output"][0]["name"]
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.run = open_runtime(parameters["provider"], parameters["model_path"], self.output)

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            try:
                result = self.run(feeds)[self.output]
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, result)]))
            except Exception as exc:  # noqa: BLE001 - the request fails, the model stays up
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
