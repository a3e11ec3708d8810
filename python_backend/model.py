"""portable-ep's Python-based Triton backend (installed as <backend-dir>/portable_ep/model.py).

A model whose config.pbtxt says ``backend: "portable_ep"`` is served by this file.
It stays a shim: the logic is in the installed ``portable_ep`` package, which must be
importable by the ``python3`` first on the server's PATH.
"""
import triton_python_backend_utils as pb_utils

from portable_ep.python_backend.triton_model import TritonModel


class TritonPythonModel(TritonModel):
    def __init__(self):
        super().__init__(pb_utils)
