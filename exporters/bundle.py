"""``portable-ep export``: one source in, one self-checking bundle out.

Everything is written into a temporary folder beside OUT_DIR and moved into place
only when the export succeeded, so a failed export leaves nothing half-written behind.

A variant that a tool cannot build (a quantizer crash, an op OpenVINO lacks) or that
misses its accuracy budget costs that variant only: it is recorded in the manifest
with the reason (``status: failed`` / ``out_of_budget``) and the others are written.
The export fails when a variant the user asked for by name did not make it, or when
none did.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from portable_ep.backends.artifacts import FORMATS, MANIFEST_NAME
from portable_ep.backends.routes import ROUTE_OF_FORMAT, route_entry
from portable_ep.exporters import onnx_variants, openvino_variants
from portable_ep.exporters.accuracy import DEFAULT_BUDGETS, SORTED_ROWS
from portable_ep.exporters.errors import ExportError, one_line
from portable_ep.exporters.inputs import (InputProfile, check_inputs, generate_inputs, layout_text, load_inputs,
                                          profiles_of, vocab_sizes_from_onnx)
from portable_ep.exporters.samples import Feeds, rows, take, to_unbatched
from portable_ep.exporters.manifest import (file_entry, local_paths_removed, now_utc, sha256_of, tool_versions,
                                            write_manifest)
from portable_ep.exporters.progress import Stages
from portable_ep.exporters.signature import Signature, signature_from_onnx, sorted_set_outputs
from portable_ep.interrupts import sigterm_as_interrupt
from portable_ep.exporters.sources import Source, resolve_source
from portable_ep.exporters.verify import measure, run_variant, variant_session
from portable_ep.exporters.worker import DEFAULT_TIMEOUT, Worker, WorkerDied, fault_for, phase
from portable_ep.python_backend.request_limits import ROBERTA_POSITION_OFFSET, limits_from_onnx

PRECISIONS = ("fp32", "fp16", "int8")
INT8_MODES = ("auto", "static", "dynamic")
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
    #: Variants the user named (--precisions / --formats given): export fails when one of them
    #: cannot be built or misses its budget. Variants asked for by default are dropped instead.
    required: bool = False
    opset: Optional[int] = None  # Hugging Face sources: None is optimum's choice for the architecture
    calibration: Optional[str] = None  # a .npz of inputs; generated when None
    golden: Optional[str] = None  # a .npz of the user's golden inputs; generated when None
    input_shapes: Dict[str, Tuple[int, ...]] = field(default_factory=dict)  # --input-shape NAME=AxBxC
    calibration_samples: int = 32
    # 32: with 16, one flipped sample already puts top-1 agreement (0.9375) under the int8 budget of 0.95.
    reference_samples: int = 32
    sequence_length: int = 128
    # auto: transformer fusions + dynamic int8 for BERT-like encoders (static QDQ where that fails
    # or misses the budget), static QDQ for everything else.
    int8_mode: str = "auto"
    allow_out_of_budget: bool = False
    overwrite: bool = False
    seed: int = 0
    name: Optional[str] = None
    progress: bool = True
    #: Outputs to compare as sets of rows (besides those the graph shows come out of TopK/NMS).
    sorted_outputs: Sequence[str] = ()
    #: Seconds one variant's build and measurement (or the golden run) may take in the worker
    #: process before it is stopped and the variant recorded as failed (exporters/worker.py).
    variant_timeout: float = DEFAULT_TIMEOUT

    def check(self) -> None:
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            hint = " (bf16 is not stored: it is OpenVINO running the fp32 IR with precision bf16)" if "bf16" in unknown else ""
            raise ExportError(f"unknown precision(s) {', '.join(unknown)}; export writes {', '.join(PRECISIONS)}{hint}")
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ExportError(f"unknown format(s) {', '.join(unknown)}; export writes {', '.join(FORMATS)}")
        if self.int8_mode not in INT8_MODES:
            raise ExportError(f"unknown int8 mode {self.int8_mode!r}; choose {', '.join(INT8_MODES)}")
        if self.opset is not None and self.opset not in onnx_variants.HF_OPSETS:
            r = onnx_variants.HF_OPSETS
            raise ExportError(f"opset {self.opset} is not supported for export from PyTorch; choose {r.start}..{r.stop - 1}")
        if not self.variant_timeout > 0:
            raise ExportError(f"the variant timeout must be a positive number of seconds, not {self.variant_timeout}")
        for label, value in (("calibration samples", self.calibration_samples), ("reference samples", self.reference_samples),
                             ("sequence length", self.sequence_length)):
            if value < 1:
                raise ExportError(f"{label} must be at least 1, not {value}")


@dataclass
class ExportResult:
    bundle: Path
    manifest: dict
    problems: List[str] = field(default_factory=list)  # one line per variant dropped, failed or out of budget


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
        self.tokenizer: Optional[str] = None  # the bundle's tokenizer folder, when the source has a fast one
        self.opset_note: dict = {}
        self.batching: dict = {"batched": True}
        self.origins: Dict[str, Dict[str, str]] = {}
        self.dim_sizes: Dict[str, int] = {}
        self.hints: Dict[str, str] = {}
        self.external = False  # the source ONNX keeps its weights in external data
        self.profiles: Dict[str, InputProfile] = {}  # what the user's calibration/golden file looks like, per input
        self.profiles_from: Optional[str] = None

    # -- fp32 ONNX, the base every other variant is made from -----------------------------
    def base_onnx(self) -> Path:
        dest = self.work / FILES["onnx", "fp32"]
        if self.source.kind == "huggingface":
            from portable_ep.exporters.huggingface import HuggingFaceModel

            with self.stages.stage("load Hugging Face model"):
                self.hf = HuggingFaceModel(self.source)
            with self.stages.stage(f"export fp32 ONNX (optimum, opset {self.options.opset or 'default'})"):
                self.hf.export_onnx(dest, self.options.opset)
            if self.hf.vocab_size:
                self.vocab_sizes = {"input_ids": int(self.hf.vocab_size)}
            self.text = self.hf.tokenized_corpus()
            self.tokenizer = "tokenizer" if self.hf.save_tokenizer(self.work / "tokenizer") else None
            self.dim_sizes = dict(getattr(self.hf, "dim_sizes", {}) or {})
            if self.source.task != "audio-classification":
                # Text length is the user's --sequence-length; optimum's suggestion is only for audio samples.
                self.dim_sizes.pop("sequence_length", None)
            self.hints = dict(getattr(self.hf, "input_hints", {}) or {})
            model = onnx_variants.load_checked(dest)
            self.original = dest
        else:
            with self.stages.stage("check source ONNX"):
                original = onnx_variants.load_checked(self.source.path)
                self.original = self.source.path
                self.external = onnx_variants.has_external_data(self.source.path)
                model, self.opset_note = onnx_variants.upgrade_opset(original)
                onnx_variants.save(model, dest, external=self.external)
        self.model = model
        self.signature = signature_from_onnx(model)
        if self.source.kind == "onnx":
            self.vocab_sizes = vocab_sizes_from_onnx(model, self.signature)
        self.limits = self.request_limits(model)
        return dest

    def request_limits(self, model) -> dict:
        """Vocabularies and the longest sequence, for the backend's request checks (manifest ``limits``)."""
        inputs = self.signature.inputs
        limits = limits_from_onnx(model, {s.name: s.shape for s in inputs}, [s.name for s in inputs if s.dtype.kind in "iu"])
        limits["vocab_sizes"] = {**limits["vocab_sizes"], **self.vocab_sizes}
        config = self.hf.config if self.hf is not None else {}
        if limits.get("max_dims") and "roberta" in str(config.get("model_type", "")):
            symbol, rows = next(iter(limits["max_dims"].items()))
            limits["max_dims"] = {symbol: rows - ROBERTA_POSITION_OFFSET}
            limits["origin"] = "the model's position table, less RoBERTa's padding offset"
        for symbol, longest in (limits.get("max_dims") or {}).items():
            # A model with a short position table (64 rows) cannot take the default 128 tokens.
            if self.options.sequence_length > longest and symbol not in self.dim_sizes:
                self.dim_sizes[symbol] = int(longest)
                self.hints[symbol] = f"{longest} (the position table's length; --sequence-length was {self.options.sequence_length})"
        return limits

    def restore_original_opset(self, reason: str) -> None:
        """The upgraded graph answered differently from the file it came from: keep the file as it was."""
        import onnx

        dest = self.work / FILES["onnx", "fp32"]
        self.model = onnx.load(str(self.source.path))
        onnx_variants.save(self.model, dest, external=self.external)
        self.opset_note = {**self.opset_note, "upgraded_to": None, "upgrade_reverted": reason}

    # -- batching --------------------------------------------------------------------------
    def probe_batching(self, worker: Worker) -> None:
        """Stack two samples and compare with running them one by one; a model that fails or answers
        differently cannot batch (a state batched on axis 1, a reshape to a fixed batch of 1)."""
        if not self.signature.batched:
            self.batching = {"batched": False, "reason": _unbatched_reason(self.signature)}
            return
        if self.source.kind == "huggingface":
            return
        probe = self._probe_samples()
        if probe is None:
            return
        try:
            reason = worker.call(batching_mismatch, self.original, probe)
        except WorkerDied:
            reason = None  # a runtime that dies on these inputs says nothing about batching; the golden run reports it
        if reason:
            self.signature = self.signature.unbatched()
            self.batching = {"batched": False, "reason": reason}

    def _probe_samples(self):
        """Two samples: the user's own first two when a file was given (their real shapes), else generated."""
        o = self.options
        for path in (o.calibration, o.golden):
            if path:
                try:
                    feeds = load_inputs(path, self.signature, self.vocab_sizes)
                except ExportError:
                    continue
                if rows(feeds) >= 2:
                    return take(feeds, 0, 2)
        try:
            return generate_inputs(self.signature, 2, seed=o.seed + 2, sequence_length=o.sequence_length,
                                   vocab_sizes=self.vocab_sizes, text=self.text, dim_sizes=self.dim_sizes,
                                   shapes=o.input_shapes, hints=self.hints)
        except ExportError:
            return None

    # -- inputs ----------------------------------------------------------------------------
    def _generate(self, samples: int, seed: int, origins: Dict[str, str]) -> Feeds:
        o = self.options
        return generate_inputs(self.signature, samples, seed=seed, sequence_length=o.sequence_length,
                               vocab_sizes=self.vocab_sizes, text=self.text, dim_sizes=self.dim_sizes,
                               shapes=o.input_shapes, hints=self.hints, origins=origins, profiles=self.profiles)

    def _load(self, path: str, what: str) -> Feeds:
        try:
            return load_inputs(path, self.signature, self.vocab_sizes, what=what)
        except ExportError:
            if self.batching.get("batched", True) or self.batching.get("reason", "").startswith("shapes"):
                raise
            # Written in the batched layout the shapes suggest, before export found that the model cannot batch.
            as_batched = Signature(self.signature.inputs, self.signature.outputs)
            return to_unbatched(load_inputs(path, as_batched, self.vocab_sizes, what=what))

    def inputs(self) -> Tuple[Feeds, Feeds]:
        """(calibration inputs, reference inputs); self.origins says where each input came from."""
        o = self.options
        # The user's files, loaded first: what is generated beside them takes their shapes and ranges.
        given_calibration = self._load(o.calibration, "calibration file") if o.calibration else None
        given_golden = self._load(o.golden, "golden inputs file") if o.golden else None
        for path, feeds in ((o.calibration, given_calibration), (o.golden, given_golden)):
            if feeds is not None:
                self.profiles, self.profiles_from = profiles_of(feeds), Path(path).name
                break
        calibration_origin: Dict[str, str] = {}
        if given_calibration is not None:
            calibration = given_calibration
            calibration_origin = {name: f"calibration file {Path(o.calibration).name}" for name in calibration}
        else:
            calibration = self._generate(o.calibration_samples, o.seed, calibration_origin)
        reference_origin: Dict[str, str] = {}
        if given_golden is not None:
            reference = given_golden
            reference_origin = {name: f"golden inputs file {Path(o.golden).name}" for name in reference}
        else:
            try:
                # A different seed: accuracy is measured on inputs the quantizer did not calibrate on.
                reference = self._generate(o.reference_samples, o.seed + 1, reference_origin)
            except ExportError:
                reference = take(calibration, 0, o.reference_samples)
                reference_origin = {name: f"calibration file {Path(o.calibration).name} (first {rows(reference)} samples)"
                                    for name in reference}
        check_inputs(reference, self.signature, "reference inputs", self.vocab_sizes)
        self.origins = {"calibration": calibration_origin, "reference": reference_origin}
        return calibration, reference

    def golden(self, reference: Feeds, worker: Worker) -> Tuple[Dict[str, np.ndarray], str]:
        with self.stages.stage("golden outputs"):
            if self.hf is not None:
                return self.hf.run(reference), "pytorch"
            try:
                # The original file, not the upgraded one: an opset upgrade is judged by its outputs.
                return worker.call(run_variant, self.source.path.parent, "onnx", "fp32", self.source.path, reference,
                                   self.signature.batched), "onnxruntime"
            except Exception as exc:
                raise ExportError(f"ONNX Runtime cannot run {self.source.path} on the reference inputs: {one_line(exc)}"
                                  f" (give inputs that fit: --golden FILE.npz holding {layout_text(self.signature)};"
                                  f" or --input-shape NAME=AxBxC)") from None

    # -- variants --------------------------------------------------------------------------
    def is_transformer(self) -> bool:
        return any(s.dtype.kind in "iu" for s in self.signature.inputs)

    def int8_onnx(self, base: Path, dest: Path, calibration: Feeds, mode: str) -> dict:
        """The int8 ONNX variant by ``mode`` (ExportOptions.int8_mode); returns its manifest fields."""
        skipped = None
        if mode == "dynamic" or (mode == "auto" and self.is_transformer()):
            try:
                with self.stages.stage("int8 ONNX (transformer fusions + dynamic)"):
                    phase("onnxruntime's transformer optimizer", "building the fused dynamic int8 model")
                    fields = onnx_variants.quantize_dynamic_fused(base, dest)
                return {"quantization": "dynamic-fused", **fields}
            except Exception as exc:  # the optimizer or quantizer on an unusual graph: the plain recipes still work
                remove_variant_files(self.work, dest.name)
                skipped = f"fused dynamic int8 not built: {one_line(exc)}"
            if mode == "dynamic":
                with self.stages.stage("int8 ONNX (dynamic)"):
                    phase("onnxruntime's quantizer", "quantizing to dynamic int8")
                    onnx_variants.quantize_dynamic_int8(base, dest)
                return {"quantization": "dynamic", "note": skipped}
        n = rows(calibration)
        fields: dict = {}
        with self.stages.stage("int8 ONNX (static QDQ, calibrating)", total=n) as stage:
            phase("onnxruntime's quantizer", "calibrating and quantizing to static int8 QDQ")
            fields.update(onnx_variants.quantize_static_qdq(base, dest, calibration, on_batch=stage.advance,
                                                            batched=self.signature.batched))
        fields.update(quantization="static-qdq", calibration_samples=n)
        if skipped:
            fields["note"] = skipped
        return fields

    def build(self, fmt: str, precision: str, calibration: Feeds) -> dict:
        base = self.work / FILES["onnx", "fp32"]
        dest = self.work / FILES[fmt, precision]
        batched = self.signature.batched
        extra: dict = {}
        if fmt == "onnx" and precision == "fp16":
            with self.stages.stage("fp16 ONNX"):
                phase("onnxruntime's fp16 converter", "converting the model to fp16")
                onnx_variants.convert_fp16(base, dest)
        elif fmt == "onnx" and precision == "int8":
            extra.update(self.int8_onnx(base, dest, calibration, self.options.int8_mode))
        elif fmt == "openvino" and precision in ("fp32", "fp16"):
            with self.stages.stage(f"OpenVINO IR {precision}"):
                phase("OpenVINO", f"converting the model to the {precision} IR")
                openvino_variants.save_ir(base, dest, compress_to_fp16=precision == "fp16")
        elif fmt == "openvino" and precision == "int8":
            n = rows(calibration)
            with self.stages.stage("OpenVINO IR int8 (NNCF)"):
                phase("NNCF", "quantizing the OpenVINO IR to int8")
                bits = openvino_variants.quantize_int8(base, dest, calibration, transformer=self.is_transformer(),
                                                       batched=batched)
            extra.update(quantization="nncf-ptq", calibration_samples=n, weight_bits=bits)
        if fmt == "onnx":
            import onnx

            extra["opset"] = onnx_variants.default_domain_opset(onnx.load(str(dest), load_external_data=False))
        return extra


def _unbatched_reason(signature: Signature) -> str:
    for spec in signature.inputs + signature.outputs:
        if not spec.shape:
            return f"shapes: {spec.name!r} is a scalar"
        if not isinstance(spec.shape[0], str):
            return f"shapes: {spec.name!r} has a fixed first dim {spec.shape[0]} ({list(spec.shape)})"
    return "shapes"


def batching_mismatch(model_path: Path, probe: Feeds) -> Optional[str]:
    """None when two samples stacked give what each gives alone; else why not."""
    from portable_ep.exporters.samples import run_samples

    try:
        with variant_session(model_path.parent, "onnx", "fp32", model_path) as session:
            try:
                alone = run_samples(session.run, probe, batched=True, batch=1)
            except Exception:
                return None  # these inputs do not fit the model at all: that says nothing about batching
            try:
                whole = run_samples(session.run, probe, batched=True, batch=2)
            except Exception as exc:
                return f"a batch of 2 fails where each sample alone runs: {one_line(exc)}"
    except Exception:
        return None  # the model does not load: export says so where it runs the model
    for name, expected in alone.items():
        got = whole.get(name)
        if got is None or got.shape != expected.shape:
            return f"output {name!r} is {None if got is None else got.shape} for a batch of 2, not {expected.shape}"
        scale = max(1.0, float(np.abs(expected).max()) if expected.size else 1.0)
        if expected.dtype.kind == "f" and not np.allclose(got, expected, rtol=1e-3, atol=1e-4 * scale):
            return f"output {name!r} changes when samples share a batch (max |diff| {float(np.abs(got - expected).max()):.3g})"
    return None


def export_bundle(source_path, out_dir, options: Optional[ExportOptions] = None) -> ExportResult:
    options = options or ExportOptions()
    options.check()
    source = resolve_source(source_path, options.task)
    out = Path(out_dir).resolve()
    return write_bundle(out, options.overwrite, options.progress,
                        lambda work, stages: _export_into(source, work, out, options, stages))


def write_bundle(out: Path, overwrite: bool, progress: bool, build: Callable[[Path, Stages], "ExportResult"]):
    """Run ``build(work, stages)`` in a temporary folder beside ``out`` and move it into place only when complete.

    A failed or interrupted export (Ctrl-C, and SIGTERM handled the same way) leaves ``out`` as it was and no
    ``.partial-`` folder. ``build`` returns a result whose ``bundle`` is set to ``out``.
    """
    occupied = out.is_file() or (out.is_dir() and any(out.iterdir()))
    if occupied and not overwrite:
        raise ExportError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with sigterm_as_interrupt():
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            with Stages(progress) as stages:
                result = build(work, stages)
            if out.exists():
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            work.rename(out)
            result.bundle = out
            return result
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)


def _variant_plan(options: ExportOptions) -> List[Tuple[str, str]]:
    precisions = ["fp32"] + [p for p in PRECISIONS if p in options.precisions and p != "fp32"]
    plan = []
    for fmt in FORMATS:
        if fmt not in options.formats and not (fmt == "onnx" and "openvino" in options.formats):
            continue
        for precision in precisions:
            if fmt == "onnx" and fmt not in options.formats and precision != "fp32":
                continue
            plan.append((fmt, precision))
    return plan


def remove_variant_files(work: Path, file: str) -> None:
    """A variant's file and its weights beside it (IR .bin; ONNX external data as .onnx.data or optimum's .onnx_data)."""
    path = work / file
    beside = [path.with_suffix(".bin")] if path.suffix == ".xml" else [path.with_name(path.name + ".data"),
                                                                        path.with_name(path.name + "_data")]
    for leftover in (path, *beside):
        if leftover.exists():
            leftover.unlink()


@dataclass
class VariantJob:
    """What building and measuring one variant needs, sent to the worker process (exporters/worker.py)."""

    source: Source
    work: Path
    options: ExportOptions
    signature: Signature
    opset_note: dict
    external: bool
    calibration: Feeds
    reference: Feeds
    golden: Feeds
    logits: Tuple[str, ...]
    sorted_outputs: Tuple[str, ...]
    budgets: Dict[str, dict]  # read in the export process, so a budget set there is the one applied

    def exporter(self, stages) -> "_Exporter":
        exporter = _Exporter(self.source, self.work, self.options, stages)
        exporter.signature, exporter.opset_note, exporter.external = self.signature, dict(self.opset_note), self.external
        return exporter

    def measure(self, fmt: str, precision: str, provider: str = ""):
        return measure(self.work, fmt, precision, self.work / FILES[fmt, precision], self.reference, self.golden,
                       self.budgets[precision], self.logits, self.signature.batched, provider=provider,
                       sorted_outputs=self.sorted_outputs)


def build_and_measure(job: VariantJob, fmt: str, precision: str, stages) -> dict:
    """Build one variant and measure it (run in the worker process): ``{extra, accuracy, missed, opset_note}``.

    Raises when a tool cannot build or run it; the caller records that variant as failed.
    """
    import onnx

    exporter = job.exporter(stages)
    work, options = job.work, job.options
    file = FILES[fmt, precision]
    fp32_onnx = (fmt, precision) == ("onnx", "fp32")
    if fp32_onnx:
        extra = {"opset": onnx_variants.default_domain_opset(onnx.load(str(work / file), load_external_data=False))}
    else:
        extra = exporter.build(fmt, precision, job.calibration)
    fused_auto = extra.get("quantization") == "dynamic-fused" and options.int8_mode == "auto"
    with stages.stage(f"measure {fmt} {precision}"):
        try:
            accuracy, missed = job.measure(fmt, precision)
        except Exception as exc:
            if not fused_auto:
                raise
            # The fused graph built but ONNX Runtime cannot run it (a contrib op on an unusual
            # shape): auto still has the static recipe.
            accuracy, missed = None, [f"ONNX Runtime cannot run it: {one_line(exc)}"]
    if missed and fp32_onnx and exporter.opset_note.get("upgraded_to"):
        exporter.restore_original_opset(f"the opset {exporter.opset_note['upgraded_to']} graph missed the fp32 budget: {missed[0]}")
        extra = {"opset": onnx_variants.default_domain_opset(exporter.model)}
        accuracy, missed = job.measure(fmt, precision)
    if missed and fused_auto:
        # Dynamic int8 quantizes activations per call, which some models' outliers do not survive:
        # auto falls back to calibrated static QDQ and says why.
        failed = accuracy is None
        why = f"dynamic-fused int8 {'failed' if failed else 'missed the budget'} ({missed[0]}); static QDQ instead"
        remove_variant_files(work, file)
        extra = {**exporter.int8_onnx(work / FILES["onnx", "fp32"], work / file, job.calibration, "static"), "note": why}
        with stages.stage(f"measure {fmt} {precision} (static)"):
            accuracy, missed = job.measure(fmt, precision)
    return {"extra": extra, "accuracy": accuracy, "missed": missed, "opset_note": exporter.opset_note}


def remove_new_files(work: Path, before: set) -> None:
    """Files a dead worker left half-written (a quantizer's .pre.onnx, a truncated variant): not part of the bundle."""
    for path in sorted(work.rglob("*"), reverse=True):  # deepest first: a folder after its files
        if path not in before:
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
            elif path.is_file():
                path.unlink()


def _export_into(source: Source, work: Path, out: Path, options: ExportOptions, stages: Stages) -> ExportResult:
    with Worker.shared(stages, options.variant_timeout) as worker:
        return _export_with(worker, source, work, out, options, stages)


def _export_with(worker: Worker, source: Source, work: Path, out: Path, options: ExportOptions,
                 stages: Stages) -> ExportResult:
    exporter = _Exporter(source, work, options, stages)
    exporter.base_onnx()
    exporter.probe_batching(worker)
    calibration, reference = exporter.inputs()
    try:
        golden, golden_framework = exporter.golden(reference, worker)
    except ExportError as first:
        if options.golden:
            raise
        if options.calibration:
            # Generated beside the user's calibration file and still not runnable: their own samples are.
            reference = take(calibration, 0, options.reference_samples)
            exporter.origins["reference"] = {name: f"calibration file {Path(options.calibration).name} (first {rows(reference)} samples)"
                                             for name in reference}
            golden, golden_framework = exporter.golden(reference, worker)
        else:
            options = exporter.options = _longer_inputs(exporter, options, worker, first)
            calibration, reference = exporter.inputs()
            golden, golden_framework = exporter.golden(reference, worker)
    logits = _logits_outputs(source, exporter.signature, exporter.hf.logits_outputs if exporter.hf else ())
    sorted_outputs = _sorted_outputs(exporter, options)
    batched = exporter.signature.batched
    budgets = {p: dict(DEFAULT_BUDGETS[p]) for p in DEFAULT_BUDGETS}

    variants, problems = [], []
    for fmt, precision in _variant_plan(options):
        file = FILES[fmt, precision]
        entry: dict = {"format": fmt, "precision": precision}
        job = VariantJob(source, work, options, exporter.signature, exporter.opset_note, exporter.external, calibration,
                         reference, golden, logits, sorted_outputs, budgets)
        before = set(work.rglob("*"))
        try:
            step = worker.call(build_and_measure, job, fmt, precision, with_stages=True, fault=fault_for(f"{fmt} {precision}"))
        except Exception as exc:  # a tool's failure or a native crash costs this variant, not the export
            message = one_line(exc)
            if isinstance(exc, WorkerDied):
                remove_new_files(work, before)
            remove_variant_files(work, file)
            if (fmt, precision) == ("onnx", "fp32"):
                raise ExportError(f"the fp32 ONNX model cannot run on ONNX Runtime: {message}") from None
            variants.append({**entry, "file": None, "status": "failed", "error": message, "within_budget": False})
            problems.append(f"{fmt} {precision}: failed: {message}")
            continue
        extra, accuracy, missed = step["extra"], step["accuracy"], step["missed"]
        if step["opset_note"] != exporter.opset_note:  # the worker reverted an opset upgrade and rewrote model.onnx
            exporter.opset_note = step["opset_note"]
        entry.update(file_entry(work, file), **extra, accuracy=accuracy, within_budget=not missed,
                     routes={ROUTE_OF_FORMAT[fmt]: route_entry(not missed, missed,
                                                               requires_cpu="vnni" if extra.get("weight_bits") == 8 else "")})
        if not missed:
            entry["status"] = "ok"
        else:
            entry["status"] = "out_of_budget"
            entry["problems"] = missed
            problems.extend(f"{fmt} {precision} ({file}): {line}" for line in missed)
            if not options.allow_out_of_budget and (fmt, precision) != ("onnx", "fp32"):
                remove_variant_files(work, file)
                entry["file"] = None
        variants.append(entry)
    if "openvino" in options.formats:
        problems.extend(measure_openvino_on_onnx(work, variants, reference, golden, logits, batched, stages, worker,
                                                 sorted_outputs))
    if "onnx" not in options.formats:
        # The fp32 ONNX was only the stepping stone to the IR.
        remove_variant_files(work, FILES["onnx", "fp32"])
        variants = [v for v in variants if v["format"] != "onnx"]
    _decide(variants, problems, options)

    ref_dir = work / "reference"
    ref_dir.mkdir()
    np.savez(ref_dir / "inputs.npz", **reference)
    np.savez(ref_dir / "outputs.npz", **golden)
    signature = exporter.signature.as_dict()
    signature["output_kinds"] = {s.name: ("logits" if s.name in logits else SORTED_ROWS if s.name in sorted_outputs else None)
                                 for s in exporter.signature.outputs}
    # The source's file or folder name only: a bundle travels, and records no path of the machine it was made on.
    source_entry = {"kind": source.kind, "path": source.path.name, "task": source.task, "framework": golden_framework}
    if exporter.opset_note:
        source_entry["opset"] = exporter.opset_note
    manifest = {
        "name": options.name or (source.path.stem if source.kind == "onnx" else source.path.name),
        "created": now_utc(),
        "source": source_entry,
        "signature": signature,
        "batching": exporter.batching,
        "limits": exporter.limits,
        "budgets": {p: DEFAULT_BUDGETS[p] for p in DEFAULT_BUDGETS},
        "variants": variants,
        "reference": {"inputs": "reference/inputs.npz", "outputs": "reference/outputs.npz",
                      "samples": rows(reference), "origin": _origin_summary(exporter.origins["reference"]),
                      "inputs_origin": exporter.origins["reference"],
                      "sequence_length": options.sequence_length, "seed": options.seed + 1,
                      "layout": "batch axis" if batched else "leading sample axis"},
        "calibration": {"origin": Path(options.calibration).name if options.calibration
                        else _origin_summary(exporter.origins["calibration"]),
                        "inputs_origin": exporter.origins["calibration"],
                        "samples": rows(calibration), "seed": options.seed},
        "generation": {"dim_sizes": exporter.dim_sizes, "input_shapes": {k: list(v) for k, v in options.input_shapes.items()},
                       "hints": exporter.hints,
                       "profiles": {name: p.as_dict() for name, p in exporter.profiles.items()},
                       "profiles_from": exporter.profiles_from},
        "tools": tool_versions(),
    }
    if exporter.tokenizer:
        manifest["tokenizer"] = exporter.tokenizer
    manifest["files"] = bundle_file_sums(work, variants)
    manifest = local_paths_removed(manifest, exporting_machine_paths(work, source.path))
    write_manifest(work, manifest)
    return ExportResult(out, manifest, problems)


def measure_openvino_on_onnx(work: Path, variants: List[dict], reference: Feeds, golden: Feeds, logits, batched: bool,
                             stages: Stages, worker: Worker, sorted_outputs: Sequence[str] = ()) -> List[str]:
    """Record what OpenVINO answers when it reads an ONNX variant whose IR was left out (failed or out of budget).

    The ``openvino`` provider reads the ONNX file when a precision has no IR, a route
    export would otherwise never have measured (docs/bundle.md "Routes"). Measured here,
    the verdict goes into the ONNX variant's ``routes`` table, so the server refuses that
    route by name instead of serving answers nobody checked. Returns a warning per route that missed.
    """
    problems = []
    servable_ir = {v["precision"] for v in variants if v["format"] == "openvino" and v.get("file") and v["status"] != "failed"}
    for entry in variants:
        if entry["format"] != "onnx" or not entry.get("file") or entry["precision"] in servable_ir:
            continue
        precision = entry["precision"]
        with stages.stage(f"measure openvino on {entry['file']}"):
            try:
                _, missed = worker.call(measure, work, "onnx", precision, work / entry["file"], reference, golden,
                                        DEFAULT_BUDGETS[precision], logits, batched, provider="openvino",
                                        sorted_outputs=sorted_outputs)
            except Exception as exc:  # noqa: BLE001 - OpenVINO that cannot run the file is a verdict too
                missed = [f"OpenVINO cannot run it: {one_line(exc)}"]
        entry["routes"]["openvino"] = route_entry(not missed, missed)
        if missed:
            problems.append(f"openvino reading {entry['file']} ({precision}, the route it takes without the IR): "
                            f"{missed[0]}; the server will not serve that route")
    return problems


def exporting_machine_paths(work: Path, source: Path) -> List[Path]:
    """Folders of this machine a tool's message may quote (the work folder, the source's, the temporary folder a
    quantizer works in): kept out of the manifest."""
    source = Path(source).resolve()
    return [work, work.resolve(), work.parent.resolve(), source, source.parent, Path.cwd(), Path.home(),
            Path(tempfile.gettempdir())]


def bundle_file_sums(work: Path, variants: List[dict]) -> Dict[str, str]:
    """sha256 of every file in the bundle (the backend and `portable-ep verify` check them)."""
    sums = {}
    for entry in variants:
        if entry.get("file") and entry.get("sha256"):
            sums[entry["file"]] = entry["sha256"]
            if entry.get("weights_file"):
                sums[entry["weights_file"]] = entry["weights_sha256"]
    for path in sorted(work.rglob("*")):
        relative = str(path.relative_to(work))
        if path.is_file() and relative not in sums and path.name != MANIFEST_NAME:
            sums[relative] = sha256_of(path)
    return sums


#: Lengths tried for generated inputs' free dims when the default does not run: a convolution
#: stack or a window (an audio frontend's 400-sample frames, a 1,760-sample wake-word window)
#: needs more than --sequence-length's 128 values, and export cannot read every minimum from the graph.
RETRY_LENGTHS = (512, 2048)


def _longer_inputs(exporter: "_Exporter", options: ExportOptions, worker: Worker, failure: ExportError) -> ExportOptions:
    """Options whose generated inputs the source runs on: the free dims made longer; else ``failure`` is raised.

    Only for an ONNX source with generated inputs and a free (symbolic, non-batch) dim the
    length changes; a Hugging Face source's shapes come from its config.
    """
    from dataclasses import replace

    lead = 1 if exporter.signature.batched else 0
    free = any(isinstance(d, str) and d not in exporter.dim_sizes for s in exporter.signature.inputs for d in s.shape[lead:])
    if exporter.source.kind != "onnx" or not free or options.input_shapes:
        raise failure
    def shapes() -> dict:
        try:
            return {name: array.shape for name, array in exporter._generate(1, options.seed, {}).items()}
        except ExportError:
            return {}

    default = shapes()
    for length in (n for n in RETRY_LENGTHS if n > options.sequence_length):
        longer = replace(options, sequence_length=length)
        exporter.options = longer
        if shapes() == default:
            break  # no input takes the sequence length (an image's sides are 224): longer changes nothing
        try:
            _, reference = exporter.inputs()
            exporter.golden(take(reference, 0, 2), worker)
        except ExportError:
            continue
        return longer
    exporter.options = options
    raise failure


def _sorted_outputs(exporter: "_Exporter", options: ExportOptions) -> Tuple[str, ...]:
    """Outputs compared as sets of rows: those the graph ranks (TopK, NonMaxSuppression) and those the user named."""
    names = {s.name for s in exporter.signature.outputs}
    unknown = [name for name in options.sorted_outputs if name not in names]
    if unknown:
        raise ExportError(f"--sorted-output names {', '.join(map(repr, unknown))}, not an output of the model "
                          f"(its outputs: {', '.join(sorted(names))})")
    return tuple(dict.fromkeys([*sorted_set_outputs(exporter.model), *options.sorted_outputs]))


def _origin_summary(origins: Dict[str, str]) -> str:
    kinds = sorted(set(origins.values()))
    return kinds[0] if len(kinds) == 1 else "; ".join(f"{name}: {origin}" for name, origin in origins.items())


def _decide(variants: List[dict], problems: List[str], options: ExportOptions) -> None:
    """Raise when the bundle would not hold what the user asked for; otherwise the problems are warnings."""
    def usable(v):
        return v["status"] == "ok" or (v["status"] == "out_of_budget" and options.allow_out_of_budget and v.get("file"))

    if not any(usable(v) for v in variants):
        raise ExportError("no variant could be built, no bundle written: " + "; ".join(problems))
    if options.required:
        missing = [f"{v['format']} {v['precision']}" for v in variants if not usable(v)]
        if missing:
            raise ExportError(
                f"export failed for the variant(s) you asked for ({', '.join(missing)}), no bundle written: "
                + "; ".join(problems)
                + (" (pass --allow-out-of-budget to keep out-of-budget variants, marked within_budget=false)"
                   if any(v["status"] == "out_of_budget" for v in variants) else "")
            )
