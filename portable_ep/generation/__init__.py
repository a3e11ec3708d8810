"""Generative models: the decode loop, sampling, tokenizer and continuous batching.

Pure Python and numpy over a provider :class:`~portable_ep.backends.base.Session`; the
Triton glue is ``portable_ep.python_backend.generation_model``.
"""
