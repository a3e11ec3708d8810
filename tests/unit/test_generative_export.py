"""`portable-ep export --task text-generation` on a tiny random Llama: files, manifest, measured variants, errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="generative export reads the model with transformers (export extra)")

from portable_ep.backends.artifacts import find_model_artifacts  # noqa: E402
from portable_ep.exporters.errors import ExportError  # noqa: E402
from portable_ep.exporters.llm_export import BUDGETS, GenerativeOptions, export_generative, is_generative_source  # noqa: E402
from portable_ep.exporters.llm_variants import fold_transposed_weights  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from tiny_llm import build_tiny_llama

    work = tmp_path_factory.mktemp("gen-export")
    build_tiny_llama(work / "hf")
    result = export_generative(work / "hf", work / "bundle", GenerativeOptions(progress=False))
    return work, result


def test_bundle_holds_every_variant_measured_with_the_serving_loop(exported):
    work, result = exported
    bundle, manifest = result.bundle, result.manifest
    assert manifest["task"] == "text-generation" and manifest["budgets"] == BUDGETS
    info = manifest["decoder"]
    assert (info["num_layers"], info["num_kv_heads"], info["head_dim"], info["context_length"]) == (2, 2, 16, 512)
    assert info["eos_token_ids"] == [0] and info["chat_template"] is True
    for name in ("model.onnx", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "golden/generation.json"):
        assert (bundle / name).is_file(), name
    fp32 = {(v["format"]): v for v in manifest["variants"] if v["precision"] == "fp32"}
    for variant in fp32.values():  # the source's greedy tokens, every one
        assert variant["status"] == "ok" and variant["accuracy"]["greedy_identical"]
        assert variant["accuracy"]["top1_agreement"] == pytest.approx(1.0)
    for variant in manifest["variants"]:
        assert variant["status"] in ("ok", "out_of_budget")
        acc = variant["accuracy"]
        assert 0 <= acc["top1_agreement"] <= 1 and acc["perplexity_ratio"] > 0
        if variant["status"] == "out_of_budget":  # left out, with the figure that missed
            assert variant["file"] is None and variant["problems"]
            assert any(variant["format"] in p and variant["precision"] in p for p in result.problems)
        else:
            assert (bundle / variant["file"]).is_file()
    # every file hashed; the artifacts loader sees the int4/int8 variants that were kept
    assert set(manifest["files"]) >= {"model.onnx", "golden/generation.json", "tokenizer/tokenizer.json"}
    kept = {(v.format, v.precision) for v in find_model_artifacts(bundle).variants}
    assert ("onnx", "fp32") in kept and ("openvino", "fp32") in kept


def test_golden_data_is_transformers_greedy_and_encodes_like_the_server(exported):
    work, result = exported
    from transformers import AutoModelForCausalLM

    import torch

    from portable_ep.generation.tokenizer import BundleTokenizer

    golden = json.loads((result.bundle / "golden" / "generation.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(work / "hf").eval()
    tokenizer = BundleTokenizer(result.bundle / "tokenizer")
    assert len(golden["prompts"]) == 4
    for prompt in golden["prompts"]:
        assert prompt["text"].endswith("assistant:")  # the chat template was applied
        assert tokenizer.encode(prompt["text"]) == prompt["prompt_ids"]
        out = model.generate(torch.tensor([prompt["prompt_ids"]]), max_new_tokens=32, do_sample=False, eos_token_id=0, pad_token_id=0)
        assert out[0, len(prompt["prompt_ids"]):].tolist() == prompt["greedy_ids"]
    forced = golden["teacher_forced"]
    assert len(forced["ids"]) == len(forced["reference_top1"]) > 100 and forced["reference_perplexity"] > 1


def test_sources_and_refusals(tmp_path, exported):
    work, _ = exported
    assert is_generative_source(Path("m.gguf"), None) and is_generative_source(work / "hf", "text-generation")
    assert is_generative_source(work / "hf", None)  # a …ForCausalLM folder needs no --task
    assert not is_generative_source(work / "hf", "feature-extraction")
    with pytest.raises(ExportError, match="does not exist"):
        export_generative(tmp_path / "missing.gguf", tmp_path / "out", GenerativeOptions(progress=False))
    with pytest.raises(ExportError, match="unknown precision.*fp16"):
        export_generative(work / "hf", tmp_path / "out", GenerativeOptions(precisions=("fp16",), progress=False))
    # a model that is not a causal LM, through the CLI: one line, no traceback
    from transformers import BertConfig, BertForSequenceClassification

    BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=64, vocab_size=100)).save_pretrained(tmp_path / "bert")
    run = subprocess.run([sys.executable, "-m", "portable_ep.cli", "export", str(tmp_path / "bert"), str(tmp_path / "o"),
                          "--task", "text-generation"], capture_output=True, text=True)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "needs a causal language model" in run.stderr and "BertForSequenceClassification" in run.stderr


def test_tied_output_projection_is_folded_for_the_quantizers(exported):
    import onnx

    _, result = exported
    model = onnx.load(str(result.bundle / "model.onnx"))
    transposes = sum(1 for n in model.graph.node if n.op_type == "Transpose" and n.input[0] in {i.name for i in model.graph.initializer})
    assert fold_transposed_weights(model) == transposes >= 1
    assert not any(n.op_type == "Transpose" and n.input[0] in {i.name for i in model.graph.initializer} for n in model.graph.node)


def test_a_native_crash_costs_one_decoder_variant(tmp_path, exported, monkeypatch):
    """The generative variants are built in the worker process too (exporters/worker.py)."""
    from portable_ep.exporters.worker import FAULT_ENV, ISOLATION_ENV

    monkeypatch.delenv(ISOLATION_ENV, raising=False)
    monkeypatch.setenv(FAULT_ENV, "onnx int8=segv")
    work, _ = exported
    result = export_generative(work / "hf", tmp_path / "bundle", GenerativeOptions(formats=("onnx",), progress=False))
    by = {v["precision"]: v for v in result.manifest["variants"]}
    assert by["int8"]["status"] == "failed" and by["int8"]["error"] == "onnxruntime crashed (SIGSEGV) creating the int8 session"
    assert by["fp32"]["status"] == "ok" and by["int4"]["status"] in ("ok", "out_of_budget")
    assert not (tmp_path / "bundle" / "model.int8.onnx").exists() and not list(tmp_path.glob(".bundle.partial-*"))
