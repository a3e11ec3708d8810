"""The peer benchmark compares like with like: portable-ep, the hand-written python backend
and PyTriton, each a real server, answer the same requests with what the runtime gives in-process.

Speed is printed by `benchmarks/peers.py` (`make bench`), never asserted here.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from peer_load import drive, prepare  # noqa: E402
from peer_runtime import model_file, open_runtime  # noqa: E402
from peers import (  # noqa: E402
    HANDWRITTEN, MODEL_NAMES, MODELS, PEP, PEP_SEPARATE, PYTRITON, Settings, build_repository, ensure_model_bundle,
    calls_of, pytriton_server, traffic,
)

from portable_ep.client import infer_once  # noqa: E402
from portable_ep.triton_process import TritonServer  # noqa: E402

pytestmark = pytest.mark.e2e


def test_every_peer_serves_the_same_answers_as_the_runtime(tmp_path):
    model = MODELS["bert-l4"]
    bundle = ensure_model_bundle(model, tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    settings = Settings(max_batch_size=8, queue_delay_us=0)
    requests = traffic(manifest, "mixed", 6, seed=3)
    raw = open_runtime("cpu", str(model_file(bundle, "cpu")), model.output)
    expected = [raw(r)[model.output] for r in requests]
    repository = build_repository(tmp_path, bundle, model, "cpu", settings)
    with TritonServer(repository, log_path=tmp_path / "server.log") as server, \
            pytriton_server(bundle, model, "cpu", settings, tmp_path / "pytriton.log") as pytriton_url:
        urls = {PEP: server.grpc_url, PEP_SEPARATE: server.grpc_url, HANDWRITTEN: server.grpc_url, PYTRITON: pytriton_url}
        for system, url in urls.items():
            for request, want in zip(requests, expected):
                got = infer_once("grpc", url, MODEL_NAMES[system], request)
                assert list(got) == [model.output], system  # every peer answers with the one output
                np.testing.assert_allclose(got[model.output], want, rtol=1e-4, atol=1e-5, err_msg=system)
            # The load generator drives each of them (a second of it: figures are the benchmark's job).
            result = drive(url, MODEL_NAMES[system], prepare(requests), model.output, concurrency=2, warmup_s=0.2, seconds=1.0)
            assert result.completed > 0 and result.p50_ms > 0, system
        # The benchmark reports how many of portable-ep's runtime calls were padded: the counters it reads exist.
        calls = calls_of(server.metrics_text(), MODEL_NAMES[PEP])
        assert calls["calls"] >= len(requests) and 0 <= calls["padded"] <= calls["calls"], calls
