"""The OpenAI-compatible HTTP API that ``portable-ep serve`` runs beside Triton's ports.

``/v1/models``, ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` on a
FastAPI app (uvicorn). Every request is turned into a request to the Triton model over
Triton's gRPC API (streaming for generation), so Triton's batching, limits, metrics and the
supervisor stay the one path a request takes. This package only translates: chat messages
are rendered with the bundle's own chat template, text is tokenized with the bundle's own
tokenizer (for token counts and for encoder inputs), and Triton's answers and refusals are
turned into OpenAI's response and error bodies.
"""
