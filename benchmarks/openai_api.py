"""aiperf (NVIDIA's LLM benchmark client) against `portable-ep serve`'s OpenAI-compatible API.

Serves the SmolLM2 bundle and an encoder bundle (all-MiniLM-L6-v2 by default) with ``portable-ep serve`` exactly as a user runs it, then points aiperf at
``/v1/chat/completions`` (streaming, ``ignore_eos`` so every request makes ``--osl`` tokens)
at each concurrency and at ``/v1/embeddings``, with no adapter code. Prints aiperf's
errors, time to first token, inter-token latency and output tokens/s per level, and writes
``openai_api.json`` with aiperf's own exports beside it.

aiperf is installed into a virtual environment of its own (``.cache/aiperf-venv``, once):
aiperf 0.13 pins ``psutil~=7.0`` and ``rich~=14.1`` and pulls transformers 5, which the
project's environment cannot take (kserve needs psutil < 6; the exporter pins transformers
< 4.58). It only talks HTTP to the server, so it needs nothing of ours.

    .venv/bin/python benchmarks/openai_api.py [--bundle DIR] [--embedding-bundle DIR|none] [--concurrency 1,4]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
AIPERF = "aiperf==0.13.0"


def aiperf_binary(cache: Path) -> Path:
    """aiperf in its own venv under ``cache`` (made once)."""
    venv = cache / "aiperf-venv"
    binary = venv / "bin" / "aiperf"
    if not binary.is_file():
        print(f"installing {AIPERF} into {venv} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", AIPERF], check=True)
    return binary


def start_serve(repository: Path, workdir: Path):
    from portable_ep.triton_process import free_port

    port = free_port()
    log = open(workdir / "serve.log", "w")
    grpc_port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "portable_ep.cli", "serve", str(repository), "--quiet",
                                "--http-port", str(free_port()), "--grpc-port", str(grpc_port),
                                "--metrics-port", str(free_port()), "--openai-port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    expected = len([p for p in repository.iterdir() if p.is_dir()])
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"portable-ep serve exited: {(workdir / 'serve.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as response:
                if len(json.loads(response.read())["data"]) == expected:
                    return process, url, f"127.0.0.1:{grpc_port}"
        except OSError:
            pass
        time.sleep(1)
    process.kill()
    raise SystemExit("the OpenAI API did not list the models in 600 s")


def run_aiperf(aiperf: Path, url: str, model: str, tokenizer: Path, out: Path, args: list) -> dict:
    command = [str(aiperf), "profile", "--model", model, "--url", url, "--tokenizer", str(tokenizer),
               "--ui-type", "none", "--artifact-dir", str(out), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    (out / "aiperf-console.log").parent.mkdir(parents=True, exist_ok=True)
    (out / "aiperf-console.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"aiperf failed ({result.returncode}): {(result.stdout + result.stderr)[-2000:]}")
    export = json.loads((out / "profile_export_aiperf.json").read_text())
    export["command"] = " ".join(command)
    return export


def frontend_overhead(url: str, grpc_url: str, model: str, prompt: str, max_tokens: int, rounds: int) -> dict:
    """The same streamed request through the OpenAI API and straight to Triton's gRPC, alternated:
    median time to first text and to the end, and what the API adds (its HTTP, JSON, template
    and tokenizer work). On a shared machine the absolute figures move; the difference is the point."""
    import statistics

    from openai import OpenAI

    from portable_ep.generation.client import StreamingClient

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    sampling = {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    api, direct = {"ttft": [], "total": []}, {"ttft": [], "total": []}
    with StreamingClient(grpc_url, model) as grpc_client:
        for _ in range(rounds):
            started, first = time.perf_counter(), None
            for chunk in client.completions.create(model=model, prompt=prompt, stream=True, max_tokens=max_tokens,
                                                   temperature=0, extra_body={"ignore_eos": True}):
                if first is None and chunk.choices and chunk.choices[0].text:
                    first = time.perf_counter()
            api["ttft"].append((first - started) * 1000)
            api["total"].append((time.perf_counter() - started) * 1000)
            result = grpc_client.generate(prompt, sampling)
            direct["ttft"].append(result.ttft_s * 1000)
            direct["total"].append(result.total_s * 1000)
    med = {k: {m: round(statistics.median(v), 2) for m, v in d.items()} for k, d in (("openai_api", api), ("grpc", direct))}
    med["added_ttft_ms"] = round(med["openai_api"]["ttft"] - med["grpc"]["ttft"], 2)
    med["added_total_ms"] = round(med["openai_api"]["total"] - med["grpc"]["total"], 2)
    med.update(rounds=rounds, max_tokens=max_tokens)
    return med


def figure(export: dict, metric: str, stat: str):
    value = (export.get(metric) or {}).get(stat)
    return round(value, 2) if isinstance(value, (int, float)) else None


def main() -> int:
    from generation import ensure_bundle

    from portable_ep.exporters.repository import RepoOptions, add_to_repository

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="a generative bundle (default: SmolLM2, exported once into --cache)")
    parser.add_argument("--embedding-bundle", help="an encoder bundle with a tokenizer for /v1/embeddings "
                        "(default: all-MiniLM-L6-v2, exported once into --cache; 'none' to skip)")
    parser.add_argument("--providers", default="openvino,cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    parser.add_argument("--isl", type=int, default=128, help="prompt tokens (aiperf's synthetic prompts)")
    parser.add_argument("--osl", type=int, default=64, help="output tokens per request")
    parser.add_argument("--aiperf", help="an aiperf binary to use (default: its own venv under --cache, made once)")
    parser.add_argument("--overhead-rounds", type=int, default=10,
                        help="requests each way for the API-vs-gRPC comparison (default: %(default)s)")
    parser.add_argument("--overhead-tokens", type=int, default=16)
    parser.add_argument("--cache", default=str(ROOT / ".cache" / "bench"))
    parser.add_argument("--out", default=str(ROOT / "bench-output" / "openai_api"))
    args = parser.parse_args()
    cache, out = Path(args.cache), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = ensure_bundle(args.bundle, cache)
    if args.embedding_bundle is None:
        from perf_analyzer_encoder import ensure_minilm

        args.embedding_bundle = str(ensure_minilm(cache))
    elif args.embedding_bundle == "none":
        args.embedding_bundle = None
    aiperf = Path(args.aiperf) if args.aiperf else aiperf_binary(cache)
    levels = [int(c) for c in args.concurrency.split(",")]
    results = {"bundle": str(bundle), "providers": args.providers, "precision": args.precision, "cpu_count": os.cpu_count(),
               "isl": args.isl, "osl": args.osl, "chat": [], "embeddings": None, "overhead": None}
    with tempfile.TemporaryDirectory(prefix="openai-bench-") as work:
        repository = Path(work) / "models"
        add_to_repository(bundle, repository, "llm", RepoOptions(providers=args.providers, precision=args.precision))
        if args.embedding_bundle:
            add_to_repository(args.embedding_bundle, repository, "embedder", RepoOptions(providers="cpu", precision="fp32"))
        process, url, grpc_url = start_serve(repository, Path(work))
        try:
            results["overhead"] = frontend_overhead(url, grpc_url, "llm", "The capital of France is", args.overhead_tokens,
                                                    args.overhead_rounds)
            print(json.dumps({"overhead": results["overhead"]}), flush=True)
            for level in levels:
                export = run_aiperf(aiperf, url, "llm", bundle / "tokenizer", out / f"chat_c{level}",
                                    ["--endpoint-type", "chat", "--streaming", "--concurrency", str(level),
                                     "--request-count", str(max(args.requests, level)), "--warmup-request-count", str(level),
                                     "--isl", str(args.isl), "--osl", str(args.osl), "--extra-inputs", "ignore_eos:true"])
                row = {"concurrency": level, "requests": figure(export, "request_count", "avg"),
                       "errors": len(export.get("error_summary") or []),
                       "ttft_p50_ms": figure(export, "time_to_first_token", "p50"),
                       "ttft_p99_ms": figure(export, "time_to_first_token", "p99"),
                       "itl_p50_ms": figure(export, "inter_token_latency", "p50"),
                       "itl_p99_ms": figure(export, "inter_token_latency", "p99"),
                       "output_tokens_per_s": figure(export, "output_token_throughput", "avg"),
                       "request_latency_p50_ms": figure(export, "request_latency", "p50"),
                       "aiperf_command": export["command"]}
                results["chat"].append(row)
                print(json.dumps(row), flush=True)
            if args.embedding_bundle:
                export = run_aiperf(aiperf, url, "embedder", Path(args.embedding_bundle) / "tokenizer", out / "embeddings",
                                    ["--endpoint-type", "embeddings", "--concurrency", "4", "--request-count", "64",
                                     "--isl", "32"])
                results["embeddings"] = {"concurrency": 4, "requests": figure(export, "request_count", "avg"),
                                         "errors": len(export.get("error_summary") or []),
                                         "latency_p50_ms": figure(export, "request_latency", "p50"),
                                         "latency_p99_ms": figure(export, "request_latency", "p99"),
                                         "requests_per_s": figure(export, "request_throughput", "avg"),
                                         "aiperf_command": export["command"]}
                print(json.dumps(results["embeddings"]), flush=True)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    (out / "openai_api.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\naiperf against the OpenAI-compatible API: {bundle.name} on {args.providers} {args.precision}, "
          f"{args.isl} prompt / {args.osl} output tokens, {os.cpu_count()} cores")
    print("| concurrency | requests | errors | TTFT p50 / p99 ms | ITL p50 / p99 ms | output tokens/s |")
    print("|---|---|---|---|---|---|")
    for row in results["chat"]:
        print(f"| {row['concurrency']} | {row['requests']:.0f} | {row['errors']} | {row['ttft_p50_ms']} / {row['ttft_p99_ms']} | "
              f"{row['itl_p50_ms']} / {row['itl_p99_ms']} | {row['output_tokens_per_s']} |")
    o = results["overhead"]
    print(f"the API beside Triton's gRPC, same streamed request ({o['max_tokens']} tokens, medians of {o['rounds']}): "
          f"time to first text {o['openai_api']['ttft']} vs {o['grpc']['ttft']} ms (+{o['added_ttft_ms']}), "
          f"to the end {o['openai_api']['total']} vs {o['grpc']['total']} ms (+{o['added_total_ms']})")
    if results["embeddings"]:
        e = results["embeddings"]
        print(f"embeddings (concurrency 4): {e['requests']:.0f} requests, {e['errors']} errors, latency p50 / p99 "
              f"{e['latency_p50_ms']} / {e['latency_p99_ms']} ms, {e['requests_per_s']} requests/s")
    failed = sum(r["errors"] for r in results["chat"]) + ((results["embeddings"] or {}).get("errors") or 0)
    print(f"written {out / 'openai_api.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
