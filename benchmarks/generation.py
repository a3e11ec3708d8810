"""Token generation, measured in one run: served vs in-process, batching, int4, and two yardsticks.

For each (provider, precision) of the SmolLM2 bundle: output tokens/s at concurrency 1
and 8, in-process (the engine loop on the provider, no server) and served (tritonserver,
gRPC streams, the same prompt and length). Beside them, on the same weights:
transformers' ``generate`` (PyTorch eager, fp32 from the GGUF) and openvino-genai's
``LLMPipeline`` (reads the GGUF itself). Prints the table and the ratios the issue
asks for, writes ``generation.json`` and ``generation.png``.

    .venv/bin/python benchmarks/generation.py [--bundle DIR] [--max-tokens 64]

Every request generates exactly ``--max-tokens`` tokens (ignore_eos), so the counts are exact.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Write a short poem about the sea and a lighthouse keeper."
VARIANTS = [("openvino", "fp32"), ("openvino", "int8"), ("openvino", "int4"), ("cpu", "fp32"), ("cpu", "int4")]
GOALS = {"served_c1_over_inprocess_c1": 0.9, "served_c8_over_served_c1": 3.0, "openvino_int4_over_fp32": 1.5}


def chat_prompt(bundle: Path) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundle / "tokenizer")
    return tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)


def ensure_bundle(bundle, cache: Path) -> Path:
    if bundle:
        return Path(bundle)
    out = cache / "smollm2"
    if not (out / "manifest.json").is_file():
        from portable_ep.models.smollm2 import smollm2_gguf_path

        print(f"exporting SmolLM2 into {out} (once; cached)", flush=True)
        subprocess.run([sys.executable, "-m", "portable_ep.cli", "export", str(smollm2_gguf_path()), str(out),
                        "--overwrite"], check=True)
    return out


class InProcess:
    """One variant's session and engine in this process (the server's stubs hold their own)."""

    def __init__(self, bundle: Path, provider: str, precision: str):
        from portable_ep.backends import LoadRequest, find_model_artifacts
        from portable_ep.backends.registry import default_registry
        from portable_ep.generation.bundle import bundle_engine

        artifacts = find_model_artifacts(bundle)
        self.session = default_registry().get(provider).load(LoadRequest(artifacts=artifacts, precision=precision))
        self.engine = bundle_engine(self.session, bundle, artifacts.manifest, 4 << 30, 16)
        self.tokenizer = self.engine.tokenizer

    def tokens_per_s(self, prompt: str, max_tokens: int, concurrency: int) -> float:
        from portable_ep.generation.load import inprocess_level

        return inprocess_level(self.engine, self.tokenizer.encode(prompt), max_tokens, concurrency)["tokens_per_s"]

    def close(self) -> None:
        self.session.close()


def side_by_side(bundle: Path, prompt: str, max_tokens: int, levels, rounds: int, workdir: Path):
    """In-process and served figures of each variant, alternated ``rounds`` times; the median of each.

    On a small shared machine memory bandwidth drifts by tens of percent between minutes;
    alternating the two in one run keeps the ratio honest.
    """
    import statistics

    from portable_ep.exporters.repository import RepoOptions, add_to_repository
    from portable_ep.generation.load import served_level
    from portable_ep.triton_process import TritonServer

    repository = workdir / "models"
    for provider, precision in VARIANTS:
        add_to_repository(bundle, repository, f"{provider}_{precision}", RepoOptions(providers=provider, precision=precision,
                                                                                     overwrite=True))
    inprocess, served = {}, {}
    with TritonServer(repository, log_path=workdir / "tritonserver.log") as server:
        for provider, precision in VARIANTS:
            name = f"{provider}_{precision}"
            local = InProcess(bundle, provider, precision)
            try:
                for c in levels:
                    own, remote = [], []
                    for _ in range(rounds):
                        own.append(local.tokens_per_s(prompt, max_tokens, c))
                        level = served_level(server.grpc_url, name, prompt, max_tokens, c, requests_per_client=1 if c > 1 else 3)
                        if level["errors"]:
                            raise SystemExit(f"{name} at concurrency {c}: {level['first_error']}")
                        remote.append(level)
                    inprocess.setdefault(name, {})[c] = statistics.median(own)
                    middle = sorted(remote, key=lambda lv: lv["tokens_per_s"])[len(remote) // 2]
                    served.setdefault(name, {})[c] = middle
            finally:
                local.close()
            print(f"  {name}: " + ", ".join(f"c{c} in-process {inprocess[name][c]:.1f} / served {served[name][c]['tokens_per_s']:.1f} tok/s"
                                            for c in levels), flush=True)
    return inprocess, served


def transformers_generate(prompt: str, max_tokens: int, levels) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from portable_ep.models.smollm2 import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    out = {}
    for c in levels:
        batch = tokenizer([prompt] * c, return_tensors="pt", padding=True)
        kwargs = dict(max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                      pad_token_id=tokenizer.eos_token_id)
        with torch.no_grad():
            model.generate(**batch, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})
            started = time.perf_counter()
            model.generate(**batch, **kwargs)
        out[c] = c * max_tokens / (time.perf_counter() - started)
    return out


def genai_pipeline(prompt: str, max_tokens: int, levels) -> dict:
    import openvino_genai

    from portable_ep.models.smollm2 import smollm2_gguf_path

    pipe = openvino_genai.LLMPipeline(str(smollm2_gguf_path()), "CPU")
    config = openvino_genai.GenerationConfig()
    config.max_new_tokens = config.min_new_tokens = max_tokens
    out = {}
    for c in levels:
        prompts = [prompt] * c
        pipe.generate(prompts if c > 1 else prompt, max_new_tokens=4)
        started = time.perf_counter()
        pipe.generate(prompts if c > 1 else prompt, config)
        out[c] = c * max_tokens / (time.perf_counter() - started)
    return out


def plot(rows, levels, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 0.45 * len(rows) + 2))
    names = [r["name"] for r in rows]
    height = 0.8 / len(levels)
    for i, c in enumerate(levels):
        ax.barh([y + i * height for y in range(len(rows))], [r.get(f"c{c}") or 0 for r in rows], height=height,
                label=f"concurrency {c}")
    ax.set_yticks([y + height * (len(levels) - 1) / 2 for y in range(len(rows))], names)
    ax.invert_yaxis()
    ax.set(xlabel="output tokens / s", title="SmolLM2-135M generation, one run")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="a SmolLM2 bundle (default: export one into --cache)")
    parser.add_argument("--cache", default=str(ROOT / ".cache" / "bench"), help="where the exported bundle is kept")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "bench-output"))
    parser.add_argument("--rounds", type=int, default=2, help="alternating in-process/served rounds per level (median)")
    parser.add_argument("--skip-yardsticks", action="store_true", help="leave out transformers and openvino-genai")
    args = parser.parse_args()
    levels = (1, 8)
    bundle = ensure_bundle(args.bundle, Path(args.cache))
    prompt = chat_prompt(bundle)
    rows = []
    print(f"bundle {bundle}; prompt {len(prompt)} chars; {args.max_tokens} tokens per request; cpu count {os.cpu_count()}; "
          f"{args.rounds} alternating rounds, medians")
    with tempfile.TemporaryDirectory(prefix="portable-ep-genbench-") as work:
        inprocess, served_figures = side_by_side(bundle, prompt, args.max_tokens, levels, args.rounds, Path(work))
    for provider, precision in VARIANTS:
        name = f"{provider}_{precision}"
        rows.append({"name": f"in-process {provider} {precision}", **{f"c{c}": v for c, v in inprocess[name].items()}})
    for name, by_level in served_figures.items():
        rows.append({"name": f"served {name.replace('_', ' ')}", **{f"c{c}": lv["tokens_per_s"] for c, lv in by_level.items()},
                     "ttft_ms_c1": by_level[1]["ttft_p50_ms"], "itl_ms_c1": by_level[1]["itl_p50_ms"],
                     "itl_p99_ms_c8": by_level[8]["itl_p99_ms"]})
    if not args.skip_yardsticks:
        rows.append({"name": "transformers generate (fp32, eager)", **{f"c{c}": v for c, v in
                                                                       transformers_generate(prompt, args.max_tokens, levels).items()}})
        rows.append({"name": "openvino-genai LLMPipeline (GGUF)", **{f"c{c}": v for c, v in
                                                                     genai_pipeline(prompt, args.max_tokens, levels).items()}})
    by_name = {r["name"]: r for r in rows}
    print("\n| runner | c1 tokens/s | c8 tokens/s | c8/c1 | TTFT p50 ms c1 | ITL p50 ms c1 | ITL p99 ms c8 |\n|---|---|---|---|---|---|---|")
    for r in rows:
        extra = (f"{r['ttft_ms_c1']:.1f} | {r['itl_ms_c1']:.2f} | {r['itl_p99_ms_c8']:.1f}" if "ttft_ms_c1" in r else "- | - | -")
        print(f"| {r['name']} | {r['c1']:.1f} | {r['c8']:.1f} | {r['c8'] / r['c1']:.2f} | {extra} |")
    ratios = {}
    for provider, precision in VARIANTS:
        s, i = by_name[f"served {provider} {precision}"], by_name[f"in-process {provider} {precision}"]
        ratios[f"{provider} {precision}"] = {"served_c1_over_inprocess_c1": s["c1"] / i["c1"], "served_c8_over_served_c1": s["c8"] / s["c1"]}
    ratios["openvino_int4_over_fp32"] = by_name["served openvino int4"]["c1"] / by_name["served openvino fp32"]["c1"]
    print("\nratios (goal):")
    for key, value in ratios.items():
        if isinstance(value, dict):
            print(f"  {key}: served/in-process c1 {value['served_c1_over_inprocess_c1']:.3f} (>= {GOALS['served_c1_over_inprocess_c1']}), "
                  f"served c8/c1 {value['served_c8_over_served_c1']:.2f} (>= {GOALS['served_c8_over_served_c1']})")
    print(f"  served openvino int4 / fp32 at c1: {ratios['openvino_int4_over_fp32']:.2f} (>= {GOALS['openvino_int4_over_fp32']})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "generation.json").write_text(json.dumps({"rows": rows, "ratios": ratios, "max_tokens": args.max_tokens,
                                                     "cpu_count": os.cpu_count()}, indent=2) + "\n")
    plot(rows, levels, out / "generation.png")
    print(f"wrote {out / 'generation.json'}, {out / 'generation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
