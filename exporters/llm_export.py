"""``portable-ep export SOURCE OUT --task text-generation``: a causal LM into one generative bundle.

SOURCE is a Hugging Face causal-LM folder or a ``.gguf`` file (transformers dequantizes
it to fp32 through the ``gguf`` package). The bundle::

    manifest.json                 task "text-generation", decoder layout, budgets, variants, files
    model.onnx                    the decoder with KV cache (optimum text-generation-with-past), fp32
    model.int8.onnx|int4.onnx     MatMulNBits weight-only 8/4-bit (ONNX Runtime)
    openvino/model[.int8|.int4].xml|bin   IR fp32, NNCF INT8 / INT4 group-wise (+ INT8 backup)
    tokenizer/                    tokenizer.json (what the server reads) and the chat template
    golden/generation.json        greedy continuations and teacher-forced data from the source framework

Every variant is measured through the provider that serves its format with the same
decode loop the server runs (``portable_ep.generation.decoder``): greedy tokens against
the source's, teacher-forced top-1 agreement and perplexity on a built-in text.
"""
from __future__ import annotations

import importlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from portable_ep.exporters.errors import ExportError, one_line
from portable_ep.exporters.manifest import file_entry, local_paths_removed, now_utc, tool_versions, write_manifest
from portable_ep.exporters.progress import Stages

TASK = "text-generation"
PRECISIONS = ("fp32", "int8", "int4")
FORMATS = ("onnx", "openvino")
FILES = {
    ("onnx", "fp32"): "model.onnx", ("onnx", "int8"): "model.int8.onnx", ("onnx", "int4"): "model.int4.onnx",
    ("openvino", "fp32"): "openvino/model.xml", ("openvino", "int8"): "openvino/model.int8.xml",
    ("openvino", "int4"): "openvino/model.int4.xml",
}
GREEDY_TOKENS = 32
PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the ocean.",
    "Explain in one sentence what a CPU does.",
    "Name three fruits that are red.",
)
TEXT_FILE = Path(__file__).parent / "data" / "generation_text.txt"
# Budgets. fp32: the rule, the source's greedy tokens exactly. int8/int4 are judged on the
# teacher-forced text (greedy text leaves the source's after the first near tie and says little).
# Measured on SmolLM2-135M-Instruct (docs/bundle.md): top-1 agreement / perplexity ratio ONNX int8
# 0.971 / 1.006, IR int8 0.963 / 1.004, ONNX int4 0.650 / 1.166, IR int4 0.758 / 1.170. A 135M model
# is about the most int4-sensitive there is; the limits leave room for it and for other models of its
# size while a broken quantization (top-1 ~0.1, ratio > 2) never passes.
BUDGETS = {
    "fp32": {"greedy_identical": True, "min_top1_agreement": 0.99, "max_perplexity_ratio": 1.01},
    "int8": {"greedy_identical": False, "min_top1_agreement": 0.90, "max_perplexity_ratio": 1.05},
    "int4": {"greedy_identical": False, "min_top1_agreement": 0.55, "max_perplexity_ratio": 1.35},
}


@dataclass
class GenerativeOptions:
    precisions: Sequence[str] = PRECISIONS
    formats: Sequence[str] = FORMATS
    required: bool = False  # variants named by the user: failing one fails the export
    overwrite: bool = False
    name: Optional[str] = None
    progress: bool = True
    allow_out_of_budget: bool = False


@dataclass
class GenerativeResult:
    bundle: Path
    manifest: dict
    problems: List[str]


def is_generative_source(source: Path, task: Optional[str]) -> bool:
    """A .gguf file, --task text-generation, or (no task given) a folder whose architecture is a causal LM."""
    source = Path(source)
    if task == TASK or source.suffix.lower() == ".gguf":
        return True
    if task is None and (source / "config.json").is_file():
        try:
            architectures = json.loads((source / "config.json").read_text()).get("architectures") or []
        except (OSError, ValueError):
            return False
        return any(str(a).endswith("ForCausalLM") for a in architectures)
    return False


def _load_source(source: Path):
    """(transformers model in fp32, tokenizer, source entry) from a GGUF file or a Hugging Face folder."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise ExportError("exporting a language model needs torch and transformers: pip install 'portable-ep[export]'") from None
    if source.suffix.lower() == ".gguf":
        if not source.is_file():
            raise ExportError(f"{source} does not exist")
        try:
            importlib.import_module("gguf")  # transformers reads GGUF through it
        except ImportError:
            raise ExportError("reading a .gguf file needs the gguf package: pip install 'portable-ep[smollm2]' or pip install gguf") from None
        kwargs = {"gguf_file": source.name}
        folder = source.parent
        entry = {"kind": "gguf", "path": source.name, "task": TASK, "framework": "pytorch (transformers, GGUF dequantized to fp32)"}
    else:
        if not (source / "config.json").is_file():
            raise ExportError(f"{source} is neither a .gguf file nor a Hugging Face folder with config.json")
        config = AutoConfig.from_pretrained(source, local_files_only=True)
        architectures = config.architectures or []
        if not any(a.endswith("ForCausalLM") for a in architectures):
            raise ExportError(f"--task {TASK} needs a causal language model (…ForCausalLM); {source} is "
                              f"{', '.join(architectures) or config.model_type} — export it without --task {TASK}")
        kwargs, folder = {}, source
        entry = {"kind": "huggingface", "path": source.name, "task": TASK, "framework": "pytorch (transformers)"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
        if source.suffix.lower() == ".gguf":
            from portable_ep.exporters.llm_tokenizer_files import correct_gguf_tokenizer

            correct_gguf_tokenizer(tokenizer, source)  # BOS/EOS and the BOS rule the GGUF states
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32,
                                                     attn_implementation="eager", **kwargs).eval()
    except (OSError, ValueError, KeyError) as exc:
        # No weights beside config.json, a damaged or non-LLM GGUF ("GGUF magic invalid"), an architecture
        # this transformers cannot read from GGUF: transformers' own line names what is wrong.
        raise ExportError(f"cannot load {source} as a causal language model: {one_line(exc)}") from None
    return model, tokenizer, entry


def _prompts(tokenizer) -> List[str]:
    if getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in PROMPTS]
    return list(PROMPTS)


def _eos_ids(model, tokenizer) -> List[int]:
    ids = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


def export_decoder(model, dest: Path) -> None:
    """optimum's text-generation-with-past export of the loaded model into ``dest`` (one file, < 2 GB inline)."""
    import warnings

    import torch
    from optimum.exporters.onnx import onnx_export_from_model

    folder = dest.parent / ".optimum"
    from portable_ep.exporters.llm_variants import quiet_tools

    try:
        # Tracer/user warnings (a shape branch became a constant, index lowering) and optimum's note on
        # tied weights say nothing a user can act on: the variants are measured against the source.
        with warnings.catch_warnings(), quiet_tools("optimum", "transformers"):
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            onnx_export_from_model(model, folder, task="text-generation-with-past", do_validation=False)
    except Exception as exc:  # noqa: BLE001 - optimum's own words name the unsupported part
        raise ExportError(f"optimum cannot export this model with its KV cache: {one_line(exc)}") from None
    written = folder / "model.onnx"
    if not written.is_file():
        raise ExportError(f"optimum wrote no model.onnx (files: {sorted(p.name for p in folder.iterdir())})")
    written.rename(dest)
    data = folder / "model.onnx_data"
    if data.exists():  # weights over 2 GB stay external; the manifest hashes the file beside the graph
        data.rename(dest.parent / "model.onnx_data")
    shutil.rmtree(folder, ignore_errors=True)


def golden_data(model, tokenizer, server_tokenizer, eos_ids: Sequence[int], advance=lambda: None) -> dict:
    """Greedy continuations and teacher-forced data from the source framework."""
    import inspect

    import torch
    from transformers import GenerationConfig

    from portable_ep.generation.tokenizer import drop_repeated_bos

    # Plain greedy, as the server's decode loop runs it at temperature 0. A folder's generation_config.json
    # often carries sampling defaults (Qwen2.5-Instruct: repetition_penalty 1.05, top_k, top_p) that
    # transformers would otherwise merge into any config given here (its use_model_defaults); a repetition
    # penalty changes greedy tokens, so the fp32 decoder would "miss" a reference it was never meant to match.
    greedy_config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=GREEDY_TOKENS,
                                     eos_token_id=list(eos_ids) or None, pad_token_id=(list(eos_ids) or [0])[0])
    pure = {"use_model_defaults": False} if "use_model_defaults" in inspect.signature(model.generate).parameters else {}
    prompts = []
    for text in _prompts(tokenizer):
        ids = server_tokenizer.encode(text)
        # The server's rule against a second BOS applies to the source's encoding too: a rendered chat
        # template then gives transformers' apply_chat_template ids, not [BOS, BOS, ...].
        source_ids = drop_repeated_bos(tokenizer(text, add_special_tokens=True)["input_ids"], text,
                                       server_tokenizer.bos_token_id, server_tokenizer.bos_text)
        if ids != source_ids:
            raise ExportError("the bundle's tokenizer.json encodes the golden prompt differently from the source's "
                              f"tokenizer ({len(ids)} vs {len(source_ids)} tokens); the tokenizer cannot be served as is")
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 generation_config=greedy_config, **pure)
        greedy = out[0, len(ids):].tolist()
        prompts.append({"text": text, "prompt_ids": ids, "greedy_ids": greedy,
                        "greedy_text": server_tokenizer.decode([t for t in greedy if t not in eos_ids])})
        advance()
    text_ids = server_tokenizer.encode(TEXT_FILE.read_text().strip())
    with torch.no_grad():
        logits = model(torch.tensor([text_ids])).logits[0].float()
    log_probs = torch.log_softmax(logits[:-1], dim=-1)
    nll = float(-log_probs[torch.arange(len(text_ids) - 1), torch.tensor(text_ids[1:])].mean())
    return {"prompts": prompts, "greedy_tokens": GREEDY_TOKENS,
            "teacher_forced": {"text": TEXT_FILE.name, "ids": text_ids, "reference_top1": logits.argmax(-1).tolist(),
                               "reference_perplexity": float(np.exp(nll))}}


def measure_variant(session, decoder_info: dict, golden: dict) -> dict:
    """What the served decode loop gives on this variant: greedy tokens and teacher-forced figures."""
    from portable_ep.check.generation import teacher_forced
    from portable_ep.generation.bundle import bundle_decoder

    decoder = bundle_decoder(session, {"decoder": decoder_info})
    eos = decoder_info["eos_token_ids"]
    matched = []
    for prompt in golden["prompts"]:
        expected = prompt["greedy_ids"]
        got = decoder.greedy(prompt["prompt_ids"], len(expected), eos)
        n = 0
        while n < min(len(got), len(expected)) and got[n] == expected[n]:
            n += 1
        matched.append(n)
    forced = teacher_forced(session, {"decoder": decoder_info}, golden)
    identical = all(m == len(p["greedy_ids"]) for m, p in zip(matched, golden["prompts"]))
    return {"runtime": "", "greedy_matched_tokens": matched, "greedy_identical": identical,
            "top1_agreement": forced["top1_agreement"], "perplexity": forced["perplexity"],
            "perplexity_ratio": forced["perplexity_ratio"]}


def budget_problems(accuracy: dict, budget: dict) -> List[str]:
    problems = []
    if budget.get("greedy_identical") and not accuracy["greedy_identical"]:
        problems.append(f"greedy tokens differ from the source's (matched {accuracy['greedy_matched_tokens']} of "
                        f"{GREEDY_TOKENS} per prompt)")
    from portable_ep.check.generation import teacher_forced_problems

    return problems + teacher_forced_problems(accuracy, budget)


def _decoder_info(model, tokenizer, eos_ids, eot_id=None) -> dict:
    config = model.config
    heads = config.num_attention_heads
    return {
        "architecture": (config.architectures or [type(model).__name__])[0],
        "context_length": int(getattr(config, "max_position_embeddings", 2048)),
        "eos_token_ids": list(eos_ids), "bos_token_id": tokenizer.bos_token_id, "eot_token_id": eot_id,
        "vocab_size": int(config.vocab_size), "num_layers": int(config.num_hidden_layers),
        "num_kv_heads": int(getattr(config, "num_key_value_heads", None) or heads),
        "head_dim": int(getattr(config, "head_dim", None) or config.hidden_size // heads),
        "kv_dtype": "float32", "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "tokenizer": "tokenizer", "golden": "golden/generation.json",
    }


def _plan(options: GenerativeOptions):
    unknown = [p for p in options.precisions if p not in PRECISIONS]
    if unknown:
        raise ExportError(f"unknown precision(s) {', '.join(unknown)} for a generative model; export writes {', '.join(PRECISIONS)}")
    unknown = [f for f in options.formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown format(s) {', '.join(unknown)}; export writes {', '.join(FORMATS)}")
    precisions = ["fp32"] + [p for p in PRECISIONS if p in options.precisions and p != "fp32"]
    plan = [(fmt, p) for fmt in FORMATS if fmt in options.formats for p in precisions]
    # The fp32 ONNX decoder is built and measured whatever --formats says: every other variant is made
    # from it, and it is the variant that proves the export reproduces the source (_decide).
    return plan if ("onnx", "fp32") in plan else [("onnx", "fp32")] + plan


def _build(work: Path, fmt: str, precision: str) -> dict:
    from portable_ep.exporters.llm_variants import onnx_weight_only, openvino_ir

    if fmt == "onnx":
        return onnx_weight_only(work / FILES["onnx", "fp32"], work / FILES[fmt, precision], 8 if precision == "int8" else 4)
    return openvino_ir(work / FILES["onnx", "fp32"], work / FILES[fmt, precision], precision)


def export_generative(source, out_dir, options: Optional[GenerativeOptions] = None) -> GenerativeResult:
    from portable_ep.exporters.bundle import write_bundle

    options = options or GenerativeOptions()
    plan = _plan(options)
    source = Path(source).resolve()
    return write_bundle(Path(out_dir).resolve(), options.overwrite, options.progress,
                        lambda work, stages: _export_into(source, work, plan, options, stages))


def build_and_measure(work: Path, fmt: str, precision: str, info: dict, golden: dict, stages) -> tuple:
    """(manifest fields, accuracy) of one decoder variant, built and measured (run in the worker process)."""
    from portable_ep.exporters.verify import RUNTIME_OF_FORMAT, variant_session

    with stages.stage(f"build {fmt} {precision}"):
        extra = _build(work, fmt, precision) if (fmt, precision) != ("onnx", "fp32") else {}
    with stages.stage(f"measure {fmt} {precision}"):
        with variant_session(work, fmt, precision, work / FILES[fmt, precision]) as session:
            accuracy = measure_variant(session, info, golden)
        accuracy["runtime"] = f"{RUNTIME_OF_FORMAT[fmt]} provider"
    return extra, accuracy


def _export_into(source: Path, work: Path, plan, options: GenerativeOptions, stages: Stages) -> GenerativeResult:
    from portable_ep.exporters.worker import Worker

    with Worker.shared(stages) as worker:
        return _export_with(worker, source, work, plan, options, stages)


def _export_with(worker, source: Path, work: Path, plan, options: GenerativeOptions, stages: Stages) -> GenerativeResult:
    from portable_ep.exporters.bundle import bundle_file_sums, exporting_machine_paths, remove_new_files, remove_variant_files
    from portable_ep.backends.routes import route_entry
    from portable_ep.exporters.verify import RUNTIME_OF_FORMAT
    from portable_ep.exporters.worker import WorkerDied, fault_for
    from portable_ep.generation.tokenizer import BundleTokenizer

    from portable_ep.exporters.llm_tokenizer_files import check_saved_tokenizer, end_of_turn_id, fix_tokenizer_class

    with stages.stage("load the language model"):
        model, tokenizer, source_entry = _load_source(source)
        # The chat template's end-of-turn token ends an answer as EOS does (when it is not EOS itself).
        eot_id = end_of_turn_id(tokenizer)
        eos_ids = sorted(set(_eos_ids(model, tokenizer)) | ({eot_id} if eot_id is not None else set()))
        # The chat template inside tokenizer_config.json, where every client and older transformers look
        # (transformers >= 4.56 would otherwise write it to chat_template.jinja beside it).
        tokenizer.save_pretrained(work / "tokenizer", save_jinja_files=False)
        if not (work / "tokenizer" / "tokenizer.json").is_file():
            raise ExportError(f"{source}'s tokenizer has no fast (tokenizer.json) form, which the server needs")
        fix_tokenizer_class(work / "tokenizer")
        check_saved_tokenizer(work / "tokenizer", tokenizer, _prompts(tokenizer))
    with stages.stage("export the decoder with KV cache"):
        export_decoder(model, work / FILES["onnx", "fp32"])
    info = _decoder_info(model, tokenizer, eos_ids, eot_id)
    with stages.stage("golden data from the source", total=len(PROMPTS) + 1) as stage:
        golden = golden_data(model, tokenizer, BundleTokenizer(work / "tokenizer", info["bos_token_id"]), eos_ids,
                             stage.advance)
        (work / "golden").mkdir()
        (work / info["golden"]).write_text(json.dumps(golden) + "\n")
    del model

    variants, problems = [], []
    for fmt, precision in plan:
        file = FILES[fmt, precision]
        entry: dict = {"format": fmt, "precision": precision}
        before = set(work.rglob("*"))
        try:
            # In the worker process (exporters/worker.py): a native crash or hang costs this variant only.
            extra, accuracy = worker.call(build_and_measure, work, fmt, precision, info, golden, with_stages=True,
                                          fault=fault_for(f"{fmt} {precision}"))
        except Exception as exc:  # noqa: BLE001 - a tool's failure costs this variant, not the export
            message = one_line(exc)
            if isinstance(exc, WorkerDied):
                remove_new_files(work, before)
            remove_variant_files(work, file)
            if (fmt, precision) == ("onnx", "fp32"):
                raise ExportError(f"the fp32 decoder cannot run on ONNX Runtime: {message}") from None
            variants.append({**entry, "file": None, "status": "failed", "error": message, "within_budget": False})
            problems.append(f"{fmt} {precision}: failed: {message}")
            continue
        missed = budget_problems(accuracy, BUDGETS[precision])
        entry.update(file_entry(work, file), **extra, accuracy=accuracy, within_budget=not missed,
                     status="ok" if not missed else "out_of_budget",
                     routes={RUNTIME_OF_FORMAT[fmt]: route_entry(not missed, missed)})
        if missed:
            entry["problems"] = missed
            problems.extend(f"{fmt} {precision} ({file}): {line}" for line in missed)
            if not options.allow_out_of_budget and (fmt, precision) != ("onnx", "fp32"):
                remove_variant_files(work, file)
                entry["file"] = None
        variants.append(entry)
    _decide(variants, problems, options)
    if "onnx" not in options.formats:
        # The fp32 ONNX was the stepping stone to the IR (as in exporters/bundle.py): not shipped.
        remove_variant_files(work, FILES["onnx", "fp32"])
        variants = [v for v in variants if v["format"] != "onnx"]
    manifest = {
        "name": options.name or (source.stem if source.suffix.lower() == ".gguf" else source.name),
        "created": now_utc(), "task": TASK, "source": source_entry, "decoder": info,
        "budgets": BUDGETS, "variants": variants, "tools": tool_versions(),
    }
    manifest["files"] = bundle_file_sums(work, variants)
    manifest = local_paths_removed(manifest, exporting_machine_paths(work, source))
    write_manifest(work, manifest)
    return GenerativeResult(work, manifest, problems)


def _decide(variants: List[dict], problems: List[str], options: GenerativeOptions) -> None:
    fp32 = next(v for v in variants if v["format"] == "onnx" and v["precision"] == "fp32")
    if fp32["status"] != "ok" and not options.allow_out_of_budget:
        raise ExportError(f"the fp32 decoder does not reproduce the source: {'; '.join(fp32.get('problems', []))} "
                          "(pass --allow-out-of-budget to keep it anyway)")
    if options.required:
        failed = [v for v in variants if v["status"] != "ok"]
        if failed and not options.allow_out_of_budget:
            raise ExportError("variant(s) you named could not be built within budget: " + "; ".join(problems))
