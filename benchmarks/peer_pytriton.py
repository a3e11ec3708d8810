"""PyTriton serving an embedding model (child process of benchmarks/peers.py).

    python benchmarks/peer_pytriton.py --bundle DIR --provider cpu --grpc-port N --http-port N --metrics-port N

The natural PyTriton code: ``@batch`` stacks the requests Triton's dynamic batcher
hands over; requests of different lengths cannot be stacked, so they are split into
one ``@batch`` call per length first (what ``@batch`` alone would fail on).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_runtime import model_file, open_runtime  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--provider", choices=("cpu", "openvino"), required=True)
    parser.add_argument("--output", default="sentence_embedding")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--queue-delay-us", type=int, default=0)
    for port in ("grpc", "http", "metrics"):
        parser.add_argument(f"--{port}-port", type=int, required=True)
    args = parser.parse_args()

    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    run = open_runtime(args.provider, str(model_file(args.bundle, args.provider)), args.output)
    signature = json.loads((args.bundle / "manifest.json").read_text())["signature"]
    inputs = [entry["name"] for entry in signature["inputs"]]

    @batch
    def infer_stacked(**feeds):
        return run(feeds)

    def infer(requests):
        by_shape = defaultdict(list)
        for index, request in enumerate(requests):
            by_shape[request[inputs[0]].shape].append(index)
        responses = [None] * len(requests)
        for indices in by_shape.values():
            for index, response in zip(indices, infer_stacked([requests[i] for i in indices])):
                responses[index] = response
        return responses

    config = TritonConfig(grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port,
                          grpc_address="127.0.0.1", http_address="127.0.0.1", log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(
            model_name="pytriton", infer_func=infer,
            inputs=[Tensor(name=name, dtype=np.int64, shape=(-1,)) for name in inputs],
            outputs=[Tensor(name=args.output, dtype=np.float32, shape=(-1,))],
            config=ModelConfig(max_batch_size=args.max_batch_size,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us)),
            strict=False,
        )
        print("PYTRITON READY", flush=True)
        triton.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
