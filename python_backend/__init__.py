"""portable-ep's Python-based Triton backend.

``model.py`` is the thin shim Triton imports; the logic lives in importable modules
(``model_config``, ``batching``, ``triton_model``) so it is unit-testable without a
server.
"""
