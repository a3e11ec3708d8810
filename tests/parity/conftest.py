"""Targets for the parity suite: the very same tests run against any Triton.

A target is ``URL,MODEL,BUNDLE[,PROVIDER[,PRECISION]]`` (PROVIDER/PRECISION: what must
serve it), from ``--parity-target`` (repeatable) or ``PORTABLE_EP_PARITY_TARGETS``
(separated by ``;``). With none given, the suite exports a tiny BERT classifier
(seed 0), serves it with the bundled tritonserver on cpu and openvino at fp32 and
int8 (and bf16 where the CPU does it natively) and checks those.

Reports go to ``--parity-reports DIR`` (default: a temp dir); the merged matrix is
printed at the end of the run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest

ENV = "PORTABLE_EP_PARITY_TARGETS"
SEQUENCE = 16
# name: (provider chain, precision, extra repo options)
LOCAL_MODELS = {
    "parity_cpu_fp32": ("cpu", "fp32", {}),
    "parity_openvino_fp32": ("openvino", "fp32", {}),
    "parity_cpu_int8": ("cpu", "int8", {}),
    "parity_openvino_int8": ("openvino", "int8", {}),
    "parity_openvino_bf16": ("openvino", "bf16", {}),
    # An NPU compiles one static shape: batch 1, the sequence fixed, so Triton never stacks requests.
    "parity_npu_int8": ("npu", "int8", {"max_batch_size": 1, "parameters": {
        "npu.static_shapes": f"input_ids:1x{SEQUENCE},attention_mask:1x{SEQUENCE},token_type_ids:1x{SEQUENCE}"}}),
}


@dataclass(frozen=True)
class ParityTarget:
    url: str
    model: str
    bundle: Path
    provider: Optional[str] = None
    precision: Optional[str] = None
    metrics_url: Optional[str] = None

    def __str__(self) -> str:
        return self.model

    @classmethod
    def parse(cls, text: str) -> "ParityTarget":
        parts = [p.strip() for p in text.split(",")]
        if len(parts) < 3:
            raise pytest.UsageError(f"parity target {text!r}: use URL,MODEL,BUNDLE[,PROVIDER[,PRECISION]]")
        return cls(parts[0], parts[1], Path(parts[2]), *(parts[3:5] + [None] * (5 - len(parts)))[:2])


def pytest_addoption(parser):
    parser.addoption("--parity-target", action="append", default=[], help="URL,MODEL,BUNDLE[,PROVIDER[,PRECISION]]")
    parser.addoption("--parity-reports", default=None, help="folder for each target's report and the merged matrix")


def _given(config) -> List[ParityTarget]:
    texts = list(config.getoption("--parity-target")) + [t for t in os.environ.get(ENV, "").split(";") if t.strip()]
    return [ParityTarget.parse(t) for t in texts]


def _not_here(precision: str) -> str:
    """Why a local target cannot run on this machine ("" when it can)."""
    from portable_ep.backends.cpu_features import detect_cpu_features

    cpu = detect_cpu_features()
    if precision == "bf16" and not cpu.native_bf16:
        return f"openvino bf16 needs native BF16 (AMX or AVX-512 BF16) and this CPU ({cpu.model_name}) has neither"
    return ""


def _local_models() -> dict:
    return dict(LOCAL_MODELS)


def pytest_generate_tests(metafunc):
    if "parity_target" in metafunc.fixturenames:
        given = _given(metafunc.config)
        ids = [t.model for t in given] if given else list(_local_models())
        metafunc.parametrize("parity_target", ids, indirect=True, ids=ids, scope="session")


@pytest.fixture(scope="session")
def local_parity_server(tmp_path_factory, installed_backend_dir):
    from portable_ep.exporters.bundle import ExportOptions, export_bundle
    from portable_ep.exporters.repository import RepoOptions, add_to_repository
    from portable_ep.models.huggingface import build_tiny_bert_classifier
    from portable_ep.triton_process import TritonServer

    root = tmp_path_factory.mktemp("parity")
    folder = build_tiny_bert_classifier(root / "tiny-bert", seed=0)
    bundle = export_bundle(folder, root / "bundle", ExportOptions(sequence_length=SEQUENCE, progress=False)).bundle
    for name, (chain, precision, extra) in _local_models().items():
        if _not_here(precision):
            continue
        add_to_repository(bundle, root / "repo", name, RepoOptions(providers=chain, precision=precision, **extra))
    with TritonServer(root / "repo", backend_directory=installed_backend_dir) as server:
        yield server


@pytest.fixture(scope="session")
def parity_target(request) -> ParityTarget:
    given = {t.model: t for t in _given(request.config)}
    if given:
        return given[request.param]
    chain, precision, _ = _local_models()[request.param]
    if _not_here(precision):
        pytest.skip(_not_here(precision))
    server = request.getfixturevalue("local_parity_server")
    return ParityTarget(server.grpc_url, request.param, server.model_repository / request.param / "1",
                        chain.split(",")[0], precision, server.metrics_url)


@pytest.fixture(scope="session")
def parity_reports(request, tmp_path_factory) -> Path:
    option = request.config.getoption("--parity-reports")
    path = Path(option) if option else tmp_path_factory.mktemp("parity-reports")
    path.mkdir(parents=True, exist_ok=True)
    request.config._parity_reports = path
    return path


def pytest_terminal_summary(terminalreporter, config):
    path = getattr(config, "_parity_reports", None)
    reports = sorted(path.glob("*/report.json")) if path else []
    if not reports:
        return
    from portable_ep.check.merge import merge

    result = merge(reports, path / "matrix")
    terminalreporter.section("parity matrix (portable-ep check merge)")
    terminalreporter.write(result["markdown"])
    terminalreporter.write_line(f"reports: {path}")
