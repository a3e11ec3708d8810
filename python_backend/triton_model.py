"""The TritonPythonModel behind ``model.py``: Triton's request/response types in, numpy out.

``triton_python_backend_utils`` only exists inside Triton's python stub, so it is
passed in by the shim rather than imported here.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from portable_ep.backends.dtypes import is_bfloat16
from portable_ep.heartbeat import Heartbeat
from portable_ep.python_backend.batching import BatchExecutor, ModelFailure, RequestError
from portable_ep.python_backend.generation_model import GenerationServing, is_generative, load_generator
from portable_ep.python_backend.metrics import BackendMetrics
from portable_ep.python_backend.mixed_lengths import PARAMETER as MIXED_LENGTHS, choose_policy
from portable_ep.python_backend.model_config import parse_model_config
from portable_ep.python_backend.model_loader import load_model
from portable_ep.python_backend.route_check import MEASURED_AT_EXPORT, MEASURED_AT_LOAD

LOG_PREFIX = "portable_ep"


def _check_numpy(logger) -> None:
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        logger.log_warn(
            f"{LOG_PREFIX}: numpy {numpy.__version__} in the stub's environment; Triton 2.51's python stub "
            "mis-sizes outputs with numpy 2 -- install 'numpy<2' there"
        )


def _count(parameters, key: str) -> int:
    try:
        return max(0, int(parameters.get(key) or 0))
    except ValueError:
        return 0


def restart_note(parameters) -> tuple:
    """(restarts so far, last cause) from the parameters the supervisor adds when it reloads a model."""
    return _count(parameters, "restart_count"), parameters.get("restart_cause", "")


def supervisor_counts(parameters) -> dict:
    """What the supervisor counted before this load: stalls in a config parameter; tritonserver
    restarts in the environment (``portable-ep serve`` starts the new server with them)."""
    import os

    return {"stalls": _count(parameters, "stall_count"),
            "server_restarts": _count(os.environ, "PORTABLE_EP_SERVER_RESTARTS"),
            "server_restart_cause": os.environ.get("PORTABLE_EP_SERVER_RESTART_CAUSE", "")}


def mixed_length_policy(config, loaded):
    """Pad requests of different lengths into one call where the model allows it and it is faster."""
    session = loaded.resolution.session
    return choose_policy(
        str(config.parameters.get(MIXED_LENGTHS) or "auto").strip().lower(), session.run,
        loaded.input_shapes, loaded.output_shapes, {t.name: t.dtype for t in session.inputs}, config.batched,
        exact=loaded.precision == "fp32", vocab_sizes=loaded.limits.vocab_sizes,
        max_dims={symbol: limit.size for symbol, limit in loaded.limits.dims.items()})


def log_route(log, where: str, resolution) -> None:
    """How the serving route was measured: a warning when nothing vouches for its answers."""
    note = resolution.note
    if note is None:
        return
    measured = note.label in (MEASURED_AT_EXPORT, MEASURED_AT_LOAD)
    (log.log_info if measured else log.log_warn)(f"{where}: {note.line}")


def error_code(pb, error: Exception):
    """Triton's code for a refused request: the client's mistake is INVALID_ARG (gRPC INVALID_ARGUMENT, HTTP 400),
    the runtime failing on a valid request INTERNAL (500).

    Triton 2.51's python backend still counts such a response as a success in its statistics
    (it reports one flag per execute() call, false only when execute() raises, which would
    answer the whole batch INTERNAL); ``portable_ep_request_errors_total`` counts every one.
    """
    if isinstance(error, ModelFailure) or not isinstance(error, RequestError):
        return pb.TritonError.INTERNAL
    return pb.TritonError.INVALID_ARG


def request_arrays(request, bfloat16_inputs) -> dict:
    """A request's tensors as numpy; BF16 ones (no numpy form in the stub) through DLPack."""
    from portable_ep.python_backend.bf16_dlpack import bfloat16_from_dlpack

    return {t.name(): (bfloat16_from_dlpack(t.to_dlpack()) if t.name() in bfloat16_inputs else t.as_numpy())
            for t in request.inputs()}


def response_tensor(pb, name: str, array):
    """One output for Triton; a bfloat16 array goes as DLPack (the stub builds no BF16 tensor from numpy)."""
    if is_bfloat16(array.dtype):
        from portable_ep.python_backend.bf16_dlpack import bfloat16_to_dlpack

        return pb.Tensor.from_dlpack(name, bfloat16_to_dlpack(array))
    return pb.Tensor(name, array)


class TritonModel:
    def __init__(self, pb_utils):
        self.pb = pb_utils

    def initialize(self, args):
        log = self.pb.Logger
        _check_numpy(log)
        raw_config = json.loads(args["model_config"])
        config = parse_model_config(raw_config)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        device_id = int(args.get("model_instance_device_id") or 0)
        self.generation = None
        # Beating from the start, but judged only once serving: a long compile is not a stall.
        self.heartbeat = Heartbeat(config.name).start()
        try:
            if is_generative(version_dir):
                self._initialize_generation(args, raw_config, config, version_dir, device_id)
            else:
                self._initialize_tensors(args, config, version_dir, device_id)
        except BaseException:
            self.heartbeat.close()
            raise
        self.heartbeat.serving = True

    def _initialize_tensors(self, args, config, version_dir, device_id) -> None:
        log = self.pb.Logger
        loaded = load_model(config, version_dir, device_id=device_id)
        resolution = loaded.resolution
        where = f"{LOG_PREFIX}: model {config.name!r} instance {args.get('model_instance_name', '')}"
        for skipped in resolution.skipped:
            log.log_warn(f"{where}: skipped provider {skipped.name!r}: {skipped.reason}")
        if loaded.auto_reason:
            log.log_info(f"{where}: {loaded.auto_reason}")
        log.log_info(f"{where}: serving on provider {resolution.provider!r}: {resolution.session.description}")
        log_route(log, where, resolution)
        self.config = config
        self.session = resolution.session
        self.bfloat16_inputs = {spec.name for spec in config.inputs if is_bfloat16(spec.dtype)}
        log.log_info(f"{where}: request limits: {loaded.limits.describe()}")
        self.executor = BatchExecutor(config, resolution.session, loaded.limits, log=log.log_error,
                                      input_shapes=loaded.input_shapes)
        self.executor.mixed = mixed_length_policy(config, loaded)
        log.log_info(f"{where}: {self.executor.mixed.describe()}")
        restarts, cause = restart_note(config.parameters)
        if restarts:
            log.log_warn(f"{where}: restart {restarts} after the model's stub died or stalled: {cause}")
        # Every instance is reloaded with the model: only the first of its group publishes the count.
        first_instance = str(args.get("model_instance_name", "")).rsplit("_", 1)[-1] == "0"
        self.metrics = BackendMetrics(self.pb, config.name, args["model_version"], resolution, loaded.precision,
                                      restarts=restarts if first_instance else 0, restart_cause=cause,
                                      **(supervisor_counts(config.parameters) if first_instance else {}))

    def _initialize_generation(self, args, raw_config, config, version_dir, device_id) -> None:
        log = self.pb.Logger
        where = f"{LOG_PREFIX}: model {config.name!r} instance {args.get('model_instance_name', '')}"
        decoupled = bool((raw_config.get("model_transaction_policy") or {}).get("decoupled"))
        loaded = load_generator(config, version_dir, device_id=device_id, log=log.log_error, decoupled=decoupled)
        resolution = loaded.resolved.resolution
        for skipped in resolution.skipped:
            log.log_warn(f"{where}: skipped provider {skipped.name!r}: {skipped.reason}")
        log.log_info(f"{where}: generating on provider {resolution.provider!r}: {resolution.session.description}; "
                     f"{loaded.describe_limits()}")
        log_route(log, where, resolution)
        self.config, self.session = config, resolution.session
        restarts, cause = restart_note(config.parameters)
        if restarts:
            log.log_warn(f"{where}: restart {restarts} after the model's stub died or stalled: {cause}")
        first_instance = str(args.get("model_instance_name", "")).rsplit("_", 1)[-1] == "0"
        self.metrics = BackendMetrics(self.pb, config.name, args["model_version"], resolution, loaded.resolved.precision,
                                      restarts=restarts if first_instance else 0, restart_cause=cause,
                                      **(supervisor_counts(config.parameters) if first_instance else {}))
        self.generation = GenerationServing(self.pb, config, loaded, self.metrics, log=log.log_error,
                                           log_info=lambda message: log.log_info(f"{where}: {message}"))
        self.heartbeat.watch(self.generation.progress)

    def execute(self, requests):
        if self.generation is not None:
            return self.generation.execute(requests)
        pb = self.pb
        feeds = [request_arrays(request, self.bfloat16_inputs) for request in requests]
        executor = self.executor
        calls, padded = executor.provider_calls, executor.padded_calls
        started = time.perf_counter()
        self.heartbeat.begin()  # a batch that never returns is a stall (portable_ep.heartbeat)
        try:
            results = executor.execute(feeds)
        finally:
            self.heartbeat.end()
        elapsed = time.perf_counter() - started
        responses = []
        errors = 0
        for request, result in zip(requests, results):
            if isinstance(result, Exception):
                errors += 1
                responses.append(pb.InferenceResponse(error=pb.TritonError(str(result), error_code(pb, result))))
                continue
            wanted = request.requested_output_names() or result.keys()
            responses.append(pb.InferenceResponse(output_tensors=[response_tensor(pb, name, result[name]) for name in wanted]))
        self.metrics.record_execution(len(requests), errors, elapsed, executor.provider_calls - calls,
                                      executor.padded_calls - padded)
        return responses

    def finalize(self):
        self.heartbeat.close()
        if self.generation is not None:
            self.generation.finalize()
            self.metrics.close()
            return
        self.metrics.close()
        self.session.close()
