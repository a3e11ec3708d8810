"""optimum's ONNX export of each tiny zoo model matches PyTorch under ONNX Runtime, and bad requests fail in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("optimum.exporters.onnx", reason="needs optimum-onnx (portable-ep[export])")
ort = pytest.importorskip("onnxruntime")

from portable_ep.exporters.errors import ExportError  # noqa: E402
from portable_ep.exporters.optimum_export import (  # noqa: E402
    SUPPORTED_TASKS, export_onnx, pytorch_outputs, supported_tasks_for,
)
from portable_ep.models.hf_zoo import BUILDERS, build  # noqa: E402

ROWS = 5  # not a multiple of the golden batch below, so the last chunk is a partial one
TEXT_LENGTH = 24  # shorter than the suggested 128: enough to exercise masking, and quick

EXPECTED = {  # zoo model -> (input names, output names, logits outputs)
    "bert-text-classification": (["input_ids", "attention_mask", "token_type_ids"], ["logits"], ("logits",)),
    "distilbert-token-classification": (["input_ids", "attention_mask"], ["logits"], ("logits",)),
    "roberta-question-answering": (["input_ids", "attention_mask"], ["start_logits", "end_logits"],
                                   ("start_logits", "end_logits")),
    "albert-fill-mask": (["input_ids", "attention_mask", "token_type_ids"], ["logits"], ("logits",)),
    "electra-feature-extraction": (["input_ids", "attention_mask", "token_type_ids"], ["last_hidden_state"], ()),
    "vit-image-classification": (["pixel_values"], ["logits"], ("logits",)),
    "yolos-object-detection": (["pixel_values"], ["logits", "pred_boxes"], ("logits",)),
    "segformer-semantic-segmentation": (["pixel_values"], ["logits"], ()),
    "wav2vec2-audio-classification": (["input_values"], ["logits"], ("logits",)),
}


def make_feeds(session, dim_sizes, vocab, rng):
    """Random inputs that respect the graph: ids within the vocabulary, masks of ones (with some
    right padding, so masking is exercised), zero token types, normal floats for pixels and audio."""
    feeds = {}
    for spec in session.get_inputs():
        shape = [ROWS]
        for dim in spec.shape[1:]:
            if isinstance(dim, int):
                shape.append(dim)
            elif dim == "sequence_length" and spec.type == "tensor(int64)":
                shape.append(TEXT_LENGTH)
            else:
                assert dim in dim_sizes, f"export_onnx suggests no size for {spec.name}'s dim {dim!r}"
                shape.append(dim_sizes[dim])
        if spec.name == "input_ids":
            feeds[spec.name] = rng.integers(0, vocab, shape, dtype=np.int64)
        elif spec.name == "attention_mask":
            mask = np.ones(shape, dtype=np.int64)
            mask[1, TEXT_LENGTH // 2:] = 0
            feeds[spec.name] = mask
        elif spec.name == "token_type_ids":
            feeds[spec.name] = np.zeros(shape, dtype=np.int64)
        else:
            assert spec.type == "tensor(float)", spec
            feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_export_matches_pytorch(tmp_path, name):
    task, _ = BUILDERS[name]
    folder = build(name, tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"]
    assert task in supported_tasks_for(folder)

    onnx = export_onnx(folder, task, tmp_path / "out" / "model.onnx")
    assert onnx.path == tmp_path / "out" / "model.onnx"
    assert sorted(p.name for p in onnx.path.parent.iterdir()) == ["model.onnx"]  # one file, no leftovers
    inputs, outputs, logits = EXPECTED[name]
    assert (onnx.input_names, onnx.output_names, onnx.logits_outputs) == (inputs, outputs, logits)

    session = ort.InferenceSession(str(onnx.path), providers=["CPUExecutionProvider"])
    feeds = make_feeds(session, onnx.dim_sizes, config.get("vocab_size", 0), np.random.default_rng(0))
    got = dict(zip(onnx.output_names, session.run(onnx.output_names, feeds)))
    want = pytorch_outputs(folder, task, feeds, onnx.output_names, batch=2)
    for output in onnx.output_names:
        assert got[output].shape == want[output].shape, output
        scale = max(1.0, float(np.abs(want[output]).max()))
        assert float(np.abs(got[output] - want[output]).max()) < 1e-4 * scale, output
    for output in onnx.logits_outputs:  # top-1 along the last axis agrees where it is meaningful
        agree = (got[output].argmax(-1) == want[output].argmax(-1)).mean()
        assert agree == 1.0, (output, agree)


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return build("vit-image-classification", tmp_path_factory.mktemp("zoo") / "vit")


def test_task_the_architecture_lacks(vit, tmp_path):
    with pytest.raises(ExportError) as err:
        export_onnx(vit, "question-answering", tmp_path / "model.onnx")
    message = str(err.value)
    assert "\n" not in message
    assert "vit" in message and "question-answering" in message and "image-classification" in message
    assert not (tmp_path / "model.onnx").exists()


def test_unknown_task_and_bad_folder(vit, tmp_path):
    with pytest.raises(ExportError, match="summarization.*" + SUPPORTED_TASKS[0]):
        export_onnx(vit, "summarization", tmp_path / "model.onnx")
    with pytest.raises(ExportError, match="not a Hugging Face model folder"):
        export_onnx(tmp_path, "image-classification", tmp_path / "model.onnx")
