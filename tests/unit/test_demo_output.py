"""The demo reuses one output folder: a previous demo's output is replaced, anything else is refused."""
import pytest

from portable_ep.demo import OUTPUT_MARKER, prepare_output


def test_new_folder_is_created_and_marked(tmp_path):
    out = prepare_output(str(tmp_path / "demo"))
    assert out.is_dir() and (out / OUTPUT_MARKER).exists()


def test_previous_demo_output_is_replaced(tmp_path):
    out = prepare_output(str(tmp_path / "demo"))
    (out / "models").mkdir()
    (out / "models" / "big.onnx").write_bytes(b"x" * 10)
    again = prepare_output(str(out))
    assert sorted(p.name for p in again.iterdir()) == [OUTPUT_MARKER]


def test_foreign_folder_is_refused_and_left_alone(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not written by `portable-ep demo`"):
        prepare_output(str(tmp_path))
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_empty_existing_folder_is_used(tmp_path):
    assert prepare_output(str(tmp_path)) == tmp_path
