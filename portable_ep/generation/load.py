"""Generation load at fixed concurrency: served over gRPC streams, and the same loop in-process.

Every request asks for exactly ``max_tokens`` tokens (``ignore_eos``), so tokens/s
counts are exact without asking the server for token counts. Figures are the ones LLM
users quote: time to first token (TTFT), inter-token latency (ITL, the gaps between
streamed responses) and output tokens/s of all requests together.
"""
from __future__ import annotations

import threading
import time
from typing import List, Sequence

import numpy as np

from portable_ep.generation.client import GenerationFailed, StreamingClient


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000.0) if len(values) else float("nan")


def fixed_length_sampling(max_tokens: int) -> dict:
    return {"max_tokens": int(max_tokens), "temperature": 0, "ignore_eos": True}


def served_level(url: str, model: str, prompt: str, max_tokens: int, concurrency: int, requests_per_client: int,
                 warmup: int = 1) -> dict:
    """Run ``concurrency`` streaming clients, each sending ``requests_per_client`` requests back to back."""
    sampling = fixed_length_sampling(max_tokens)
    results, errors = [], []
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency + 1)

    def client_loop():
        try:
            with StreamingClient(url, model) as client:
                for _ in range(warmup):
                    client.generate(prompt, sampling)
                barrier.wait()
                for _ in range(requests_per_client):
                    try:
                        result = client.generate(prompt, sampling)
                    except GenerationFailed as exc:
                        with lock:
                            errors.append(str(exc))
                        continue
                    with lock:
                        results.append(result)
        except threading.BrokenBarrierError:
            pass
        except Exception as exc:  # noqa: BLE001 - reported as this level's error
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
            barrier.abort()

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ttft = [r.ttft_s for r in results]
    gaps = [g for r in results for g in r.gaps_s]
    return {
        "concurrency": concurrency, "requests": len(results), "errors": len(errors),
        "first_error": errors[0] if errors else None, "max_tokens": max_tokens,
        "ttft_p50_ms": _pct(ttft, 50), "ttft_p99_ms": _pct(ttft, 99),
        "itl_p50_ms": _pct(gaps, 50), "itl_p99_ms": _pct(gaps, 99),
        "tokens_per_s": len(results) * max_tokens / wall if wall > 0 else float("nan"),
        "wall_s": wall,
    }


def inprocess_level(engine, prompt_ids: List[int], max_tokens: int, concurrency: int, rounds: int = 1) -> dict:
    """The same engine loop without a server: ``concurrency`` sequences at a time, ``rounds`` times.

    ``engine`` is a GenerationEngine that is not started: its ``step`` runs in this thread.
    """
    from portable_ep.generation.engine import GenerationRequest
    from portable_ep.generation.sampling import SamplingParams

    params = SamplingParams.build(fixed_length_sampling(max_tokens))
    first_token: List[float] = []

    def run_round() -> None:
        finished = []
        for _ in range(concurrency):
            submitted = time.perf_counter()
            seen = []

            def on_output(output, submitted=submitted, seen=seen):
                if not seen:
                    seen.append(True)
                    first_token.append(time.perf_counter() - submitted)
                if output.finish_reason or output.error:
                    finished.append(output)

            engine.submit(GenerationRequest(list(prompt_ids), params, on_output))
        while len(finished) < concurrency:
            engine.step()
        errors = [o.error for o in finished if o.error]
        if errors:
            raise RuntimeError(errors[0])

    run_round()  # warm-up: first passes compile and allocate
    first_token.clear()
    started = time.perf_counter()
    for _ in range(rounds):
        run_round()
    wall = time.perf_counter() - started
    return {"concurrency": concurrency, "tokens_per_s": rounds * concurrency * max_tokens / wall,
            "ttft_p50_ms": _pct(first_token, 50), "wall_s": wall}
