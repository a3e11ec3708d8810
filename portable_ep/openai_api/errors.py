"""OpenAI's error body and status codes, and how Triton's gRPC status codes map onto them."""
from __future__ import annotations

from typing import Optional

import grpc


class APIError(Exception):
    """One request's failure as OpenAI reports it: ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 type: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# OpenAI's error types by status (its API reference and SDK's exception classes).
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}


def bad_parameter(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def unsupported_parameter(param: str, why: str) -> APIError:
    return APIError(400, f"{param} is not supported: {why}", param=param, code="unsupported_parameter")


def unknown_model(name: str, served: list) -> APIError:
    listed = ", ".join(sorted(served)) or "none"
    return APIError(404, f"The model '{name}' does not exist or is not served here (served: {listed}); "
                         "GET /v1/models lists them", param="model", code="model_not_found")


def not_ready(name: str) -> APIError:
    return APIError(503, f"The model '{name}' is not ready (loading, reloading after a failure, or failed to load); "
                         "retry shortly or read the server log", code="model_not_ready")


# Triton's gRPC codes for what went wrong with one request. INVALID_ARGUMENT: the request broke a
# rule of the model (a bad parameter, a prompt over the context); UNAVAILABLE: Triton could not take
# it now (queue full, model unloading); NOT_FOUND: no such model.
_STATUS_OF_GRPC = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}


def from_grpc(code: grpc.StatusCode, details: str, model: str) -> APIError:
    """The OpenAI error for Triton's answer ``code``/``details`` to a request for ``model``."""
    status = _STATUS_OF_GRPC.get(code, 500)
    message = details or code.name
    if status == 404:
        return APIError(404, f"Triton does not serve the model '{model}': {message}", param="model",
                        code="model_not_found")
    if status == 503:
        return APIError(503, f"the model '{model}' cannot take the request now: {message}", code="model_not_ready")
    if status >= 500:
        return APIError(status, f"the model '{model}' failed: {message}", code=code.name.lower())
    return APIError(status, message, code=code.name.lower())
