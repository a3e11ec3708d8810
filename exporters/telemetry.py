"""Keep OpenVINO's and NNCF's usage telemetry out of export.

Both send events from a worker thread that forks a sender process. A fork while the
main thread is importing a module deadlocks the two (seen here: ``ov.convert_model``
followed by ``nncf.quantize``, which imports torch extensions, hung forever). Export
runs offline and sends nothing anywhere, so the tools get the stub OpenVINO itself
uses when ``openvino_telemetry`` is not installed.
"""
from __future__ import annotations

import importlib

_OVC_MODULES = (
    "openvino.tools.ovc.convert_impl",
    "openvino.tools.ovc.telemetry_utils",
    "openvino.tools.ovc.utils",
    "openvino.tools.ovc.main",
)
_done = False


def silence() -> None:
    global _done
    if _done:
        return
    try:
        stub = importlib.import_module("openvino.tools.ovc.telemetry_stub")
        for name in _OVC_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            if hasattr(module, "tm"):
                module.tm = stub
    except ImportError:
        pass
    try:
        from nncf.telemetry import decorator, wrapper

        decorator.telemetry = wrapper.NNCFTelemetryStub()
    except ImportError:
        pass
    _done = True
