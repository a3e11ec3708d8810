"""The ``portable-ep`` command line: one verb per job, mirroring the library."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from rich.console import Console

EPILOG = """\
examples:
  portable-ep demo                                   build a tiny model, serve it, check it end to end
  portable-ep serve models/                          serve a model repository on 127.0.0.1:8000/8001/8002
  portable-ep backend install /opt/tritonserver/backends
                                                     add the portable_ep backend to your own Triton
  portable-ep doctor                                 which providers can run here, and why not

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
        quiet=args.quiet,
    )


def _cmd_demo(args) -> int:
    from portable_ep.demo import run_demo

    return run_demo(args.output)


def _cmd_doctor(args) -> int:
    from portable_ep.doctor import doctor_report, print_doctor_report

    report = doctor_report()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_doctor_report(report, Console())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portable-ep",
        description="Export a model once, serve it through Triton on any hardware.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from portable_ep import __version__

    parser.add_argument("--version", action="version", version=f"portable-ep {__version__}")
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
    serve.add_argument("--tritonserver", metavar="PATH", help="tritonserver binary to run")
    serve.add_argument("--quiet", action="store_true", help="do not echo the server log")
    serve.set_defaults(handler=_cmd_serve)

    demo = verbs.add_parser(
        "demo",
        help="build a tiny model, serve it on openvino and cpu, compare with ONNX Runtime",
        description="Builds a small text classifier with a fixed seed, writes a model repository, starts the "
        "bundled tritonserver, sends the same batch over HTTP and gRPC, and prints the serving provider "
        "and the max abs difference from a direct ONNX Runtime run. Exits 1 if it exceeds 1e-5.",
    )
    demo.add_argument("--output", metavar="DIR", help="where to write the model and repository (default: a temp dir)")
    demo.set_defaults(handler=_cmd_demo)

    doctor = verbs.add_parser("doctor", help="probe this machine: CPU features, providers usable and why not")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(handler=_cmd_doctor)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one readable line, not a traceback, for expected failures
        from portable_ep.errors import USER_ERRORS

        if isinstance(exc, USER_ERRORS):
            print(f"portable-ep: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
