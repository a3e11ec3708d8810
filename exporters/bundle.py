"""``portable-ep export``: one source in, one self-checking bundle out.

Everything is written into a temporary folder beside OUT_DIR and moved into place
only when every variant was built and measured, so a failed export leaves nothing
half-written behind.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from portable_ep.backends.artifacts import FORMATS
from portable_ep.exporters import onnx_variants, openvino_variants
from portable_ep.exporters.accuracy import DEFAULT_BUDGETS
from portable_ep.exporters.errors import ExportError
from portable_ep.exporters.inputs import Feeds, check_inputs, generate_inputs, load_inputs, vocab_sizes_from_onnx
from portable_ep.exporters.manifest import file_entry, now_utc, tool_versions, write_manifest
from portable_ep.exporters.progress import Stages
from portable_ep.exporters.signature import Signature, signature_from_onnx
from portable_ep.exporters.sources import TASKS, Source, resolve_source
from portable_ep.exporters.verify import measure, run_variant

PRECISIONS = ("fp32", "fp16", "int8")
INT8_MODES = ("static", "dynamic")
FILES = {
    ("onnx", "fp32"): "model.onnx",
    ("onnx", "fp16"): "model.fp16.onnx",
    ("onnx", "int8"): "model.int8.onnx",
    ("openvino", "fp32"): "openvino/model.xml",
    ("openvino", "fp16"): "openvino/model.fp16.xml",
    ("openvino", "int8"): "openvino/model.int8.xml",
}


@dataclass
class ExportOptions:
    task: Optional[str] = None
    precisions: Sequence[str] = PRECISIONS
    formats: Sequence[str] = FORMATS
    opset: int = onnx_variants.DEFAULT_OPSET
    calibration: Optional[str] = None  # a .npz of inputs; generated when None
    calibration_samples: int = 32
    reference_samples: int = 16
    sequence_length: int = 128
    int8_mode: str = "static"
    allow_out_of_budget: bool = False
    overwrite: bool = False
    seed: int = 0
    name: Optional[str] = None
    progress: bool = True

    def check(self) -> None:
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            hint = " (bf16 is not stored: it is OpenVINO running the fp32 IR with precision bf16)" if "bf16" in unknown else ""
            raise ExportError(f"unknown precision(s) {', '.join(unknown)}; export writes {', '.join(PRECISIONS)}{hint}")
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ExportError(f"unknown format(s) {', '.join(unknown)}; export writes {', '.join(FORMATS)}")
        if self.int8_mode not in INT8_MODES:
            raise ExportError(f"unknown int8 mode {self.int8_mode!r}; choose {' or '.join(INT8_MODES)}")
        if self.opset not in onnx_variants.HF_OPSETS:
            r = onnx_variants.HF_OPSETS
            raise ExportError(f"opset {self.opset} is not supported for export from PyTorch; choose {r.start}..{r.stop - 1}")
        for label, value in (("calibration samples", self.calibration_samples), ("reference samples", self.reference_samples),
                             ("sequence length", self.sequence_length)):
            if value < 1:
                raise ExportError(f"{label} must be at least 1, not {value}")


@dataclass
class ExportResult:
    bundle: Path
    manifest: dict
    problems: List[str] = field(default_factory=list)


def _logits_outputs(source: Source, signature: Signature, hf_logits: Sequence[str]) -> Tuple[str, ...]:
    if source.kind == "huggingface":
        return tuple(hf_logits)
    classifying = source.task in ("text-classification", "image-classification")
    return tuple(
        s.name for s in signature.outputs
        if s.dtype.kind == "f" and ("logits" in s.name.lower() or (classifying and len(s.shape) == 2))
    )


class _Exporter:
    def __init__(self, source: Source, work: Path, options: ExportOptions, stages: Stages):
        self.source, self.work, self.options, self.stages = source, work, options, stages
        self.hf = None
        self.vocab_sizes: Dict[str, int] = {}
        self.text = None  # the built-in corpus, tokenized, when the source has a tokenizer

    # -- fp32 ONNX, the base every other variant is made from -----------------------------
    def base_onnx(self) -> Path:
        dest = self.work / FILES["onnx", "fp32"]
        if self.source.kind == "huggingface":
            from portable_ep.exporters.huggingface import HuggingFaceModel

            with self.stages.stage("load Hugging Face model"):
                self.hf = HuggingFaceModel(self.source)
            with self.stages.stage(f"export fp32 ONNX (opset {self.options.opset})"):
                self.hf.export_onnx(dest, self.options.opset)
            if self.hf.vocab_size:
                self.vocab_sizes = {"input_ids": int(self.hf.vocab_size)}
            self.text = self.hf.tokenized_corpus()
            model = onnx_variants.load_checked(dest)
        else:
            with self.stages.stage("check source ONNX"):
                model = onnx_variants.load_checked(self.source.path)
                shutil.copyfile(self.source.path, dest)
        self.model = model
        self.signature = signature_from_onnx(model)
        if self.source.kind == "onnx":
            self.vocab_sizes = vocab_sizes_from_onnx(model, self.signature)
        return dest

    # -- inputs ----------------------------------------------------------------------------
    def inputs(self) -> Tuple[Feeds, Feeds, str]:
        """(calibration inputs, reference inputs, where the reference came from)."""
        o = self.options
        if o.calibration:
            calibration = load_inputs(o.calibration, self.signature, self.vocab_sizes)
        else:
            calibration = generate_inputs(self.signature, o.calibration_samples, seed=o.seed,
                                          sequence_length=o.sequence_length, vocab_sizes=self.vocab_sizes, text=self.text)
        try:
            # A different seed: accuracy is measured on inputs the quantizer did not calibrate on.
            reference = generate_inputs(self.signature, o.reference_samples, seed=o.seed + 1,
                                        sequence_length=o.sequence_length, vocab_sizes=self.vocab_sizes, text=self.text)
            origin = "generated text" if self.text is not None else "generated"
        except ExportError:
            reference, origin = {k: v[: o.reference_samples] for k, v in calibration.items()}, "calibration file"
        check_inputs(reference, self.signature, "reference inputs", self.vocab_sizes)
        return calibration, reference, origin

    def golden(self, reference: Feeds) -> Tuple[Dict[str, np.ndarray], str]:
        with self.stages.stage("golden outputs"):
            if self.hf is not None:
                return self.hf.run(reference), "pytorch"
            try:
                return run_variant(self.work, "onnx", "fp32", self.work / FILES["onnx", "fp32"], reference), "onnxruntime"
            except Exception as exc:
                raise ExportError(f"ONNX Runtime cannot run {self.source.path}: {str(exc).splitlines()[0]}") from None

    # -- variants --------------------------------------------------------------------------
    def is_transformer(self) -> bool:
        return any(s.dtype.kind in "iu" for s in self.signature.inputs)

    def build(self, fmt: str, precision: str, calibration: Feeds) -> dict:
        base = self.work / FILES["onnx", "fp32"]
        dest = self.work / FILES[fmt, precision]
        extra: dict = {}
        if fmt == "onnx" and precision == "fp16":
            with self.stages.stage("fp16 ONNX"):
                onnx_variants.convert_fp16(base, dest)
        elif fmt == "onnx" and precision == "int8" and self.options.int8_mode == "dynamic":
            with self.stages.stage("int8 ONNX (dynamic)"):
                onnx_variants.quantize_dynamic_int8(base, dest)
            extra["quantization"] = "dynamic"
        elif fmt == "onnx" and precision == "int8":
            n = len(next(iter(calibration.values())))
            with self.stages.stage("int8 ONNX (static QDQ, calibrating)", total=n) as stage:
                onnx_variants.quantize_static_qdq(base, dest, calibration, on_batch=stage.advance)
            extra.update(quantization="static-qdq", calibration_samples=n)
        elif fmt == "openvino" and precision in ("fp32", "fp16"):
            with self.stages.stage(f"OpenVINO IR {precision}"):
                openvino_variants.save_ir(base, dest, compress_to_fp16=precision == "fp16")
        elif fmt == "openvino" and precision == "int8":
            n = len(next(iter(calibration.values())))
            with self.stages.stage("OpenVINO IR int8 (NNCF)"):
                openvino_variants.quantize_int8(base, dest, calibration, transformer=self.is_transformer())
            extra.update(quantization="nncf-ptq", calibration_samples=n)
        if fmt == "onnx":
            extra["opset"] = onnx_variants.default_domain_opset(self.model)
        return extra


def export_bundle(source_path, out_dir, options: Optional[ExportOptions] = None) -> ExportResult:
    options = options or ExportOptions()
    options.check()
    source = resolve_source(source_path, options.task)
    out = Path(out_dir).resolve()
    occupied = out.is_file() or (out.is_dir() and any(out.iterdir()))
    if occupied:
        if not options.overwrite:
            raise ExportError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        with Stages(options.progress) as stages:
            result = _export_into(source, work, out, options, stages)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        work.rename(out)
        result.bundle = out
        return result
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _export_into(source: Source, work: Path, out: Path, options: ExportOptions, stages: Stages) -> ExportResult:
    exporter = _Exporter(source, work, options, stages)
    exporter.base_onnx()
    calibration, reference, origin = exporter.inputs()
    golden, golden_framework = exporter.golden(reference)
    logits = _logits_outputs(source, exporter.signature, exporter.hf.logits_outputs if exporter.hf else ())
    precisions = ["fp32"] + [p for p in PRECISIONS if p in options.precisions and p != "fp32"]

    variants, problems = [], []
    for fmt in FORMATS:
        if fmt not in options.formats and not (fmt == "onnx" and "openvino" in options.formats):
            continue
        for precision in precisions:
            if fmt == "onnx" and fmt not in options.formats and precision != "fp32":
                continue
            extra = exporter.build(fmt, precision, calibration)
            file = FILES[fmt, precision]
            with stages.stage(f"measure {fmt} {precision}"):
                accuracy, missed = measure(work, fmt, precision, work / file, reference, golden,
                                           DEFAULT_BUDGETS[precision], logits)
            problems.extend(f"{fmt} {precision} ({file}): {line}" for line in missed)
            variants.append({"format": fmt, "precision": precision, **file_entry(work, file), **extra,
                             "accuracy": accuracy, "within_budget": not missed})
    if "onnx" not in options.formats:
        # The fp32 ONNX was only the stepping stone to the IR.
        (work / FILES["onnx", "fp32"]).unlink()
        variants = [v for v in variants if v["format"] != "onnx"]

    ref_dir = work / "reference"
    ref_dir.mkdir()
    np.savez(ref_dir / "inputs.npz", **reference)
    np.savez(ref_dir / "outputs.npz", **golden)
    signature = exporter.signature.as_dict()
    signature["output_kinds"] = {s.name: ("logits" if s.name in logits else None) for s in exporter.signature.outputs}
    manifest = {
        "name": options.name or (source.path.stem if source.kind == "onnx" else source.path.name),
        "created": now_utc(),
        "source": {"kind": source.kind, "path": str(source.path), "task": source.task, "framework": golden_framework},
        "signature": signature,
        "budgets": {p: DEFAULT_BUDGETS[p] for p in DEFAULT_BUDGETS},
        "variants": variants,
        "reference": {"inputs": "reference/inputs.npz", "outputs": "reference/outputs.npz",
                      "samples": int(len(next(iter(reference.values())))), "origin": origin,
                      "sequence_length": options.sequence_length, "seed": options.seed + 1},
        "calibration": {"origin": str(options.calibration) if options.calibration
                        else ("generated text" if exporter.text is not None else "generated"),
                        "samples": int(len(next(iter(calibration.values())))), "seed": options.seed},
        "tools": tool_versions(),
    }
    write_manifest(work, manifest)
    if problems and not options.allow_out_of_budget:
        raise ExportError(
            "export failed its accuracy check, no bundle written: " + "; ".join(problems)
            + " (pass --allow-out-of-budget to write it anyway, marked within_budget=false)"
        )
    return ExportResult(out, manifest, problems)
