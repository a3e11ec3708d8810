"""``portable-ep images build|test|matrix [--targets ...]``: the verbs, wired to the modules above."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List

from portable_ep.images.matrix import (BUILT, PASS, MatrixOptions, TargetResult, build_one, existing_image, exit_code,
                                       test_one, timings_markdown, write_matrix)
from portable_ep.images.targets import default_images_dir, load_targets, parse_overrides, select


def log(line: str) -> None:
    print(line, flush=True)


def run_images(action: str, args) -> int:
    from portable_ep import __version__
    from portable_ep.images.engine import connect

    images_dir = Path(args.images_dir) if args.images_dir else default_images_dir()
    targets = select(load_targets(images_dir / "targets.toml"), args.targets)
    required = [n.strip() for n in (args.require or "").split(",") if n.strip()]
    options = MatrixOptions(out=Path(args.out), cache=Path(args.cache), version=__version__,
                            base_overrides=parse_overrides(args.base), download=not args.no_download,
                            concurrency=[int(c) for c in args.concurrency.split(",")], requests=args.requests,
                            verbose=args.verbose)
    options.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    client = connect()
    log(f"images {action}: targets {', '.join(t.name for t in targets)}; engine {client.api.base_url} "
        f"(Docker {client.version().get('Version')}, storage {client.info().get('Driver')})")

    results: List[TargetResult] = []
    repository = None
    for target in targets:
        if action == "test":
            results.append(existing_image(client, target, options.version))
        else:
            log(f"== {target.name}: build")
            results.append(build_one(client, target, options, images_dir.parent, log))

    if action in ("test", "matrix") and any(r.status == BUILT for r in results):
        from portable_ep.images.example import build_example_repository

        t0 = time.monotonic()
        repository = build_example_repository(options.cache / "example", log)
        log(f"example repository ready in {time.monotonic() - t0:.0f} s")
        for target, result in zip(targets, results):
            if result.status == BUILT:
                log(f"== {target.name}: run and check")
                test_one(client, target, result, repository, options, log)

    pod_checks = []
    if action in ("test", "matrix") and not args.no_pod_spec:
        pod_checks = check_pod_specs(client, targets, results, repository, options)

    text = write_matrix(results, options.out)
    if pod_checks:
        text += "\n\n" + pod_spec_markdown(pod_checks)
        (options.out / "images-matrix.md").write_text(text + "\n" + timings_markdown(results))
    print()
    print(text)
    print(timings_markdown(results))
    log(f"images {action}: {time.monotonic() - started:.0f} s in all; reports in {options.out} "
        f"(images-matrix.md, matrix/matrix.png, <target>/<model>/report.*)")
    return max(exit_code(results, required), 0 if all(c.ok for c in pod_checks) else 1)


def check_pod_specs(client, targets, results, repository, options) -> list:
    """`deploy render --flavor kubernetes` run as a pod: for every target that passed on its own hardware.

    Where the hardware is absent the image test above already ran the fallback; the rendered spec
    would only repeat it, so those targets are not run again.
    """
    from portable_ep.deploy.pod_run import check_rendered_pod

    checks = []
    for target, result in zip(targets, results):
        if result.status != PASS or repository is None:
            continue
        log(f"== {target.name}: the rendered Kubernetes pod spec, run with Docker")
        started = time.monotonic()
        check = check_rendered_pod(client, target, repository, options.out / target.name / "pod-spec", options.version, log)
        log(f"pod spec {target.name}: {'pass' if check.ok else 'FAIL'} in {time.monotonic() - started:.0f} s: "
            f"{check.detail.splitlines()[0]}")
        checks.append(check)
    return checks


def pod_spec_markdown(checks) -> str:
    lines = ["| rendered pod spec (deploy render --flavor kubernetes) | result | detail |", "|---|---|---|"]
    lines += [f"| {c.target} | {'pass' if c.ok else 'FAIL'} | {c.detail.splitlines()[0]} |" for c in checks]
    return "\n".join(lines)


def add_images_parser(verbs) -> None:
    images = verbs.add_parser(
        "images",
        help="build one serving image per hardware target, run the parity check in each, merge the matrix",
        description="build: a wheelhouse per target (pip download for the image's Python) and its image from "
        "images/<target>.Dockerfile via the Docker SDK. test: start each built image on the example model "
        "repository (host network, the target's devices when present), wait for /v2/health/ready and run "
        "`portable-ep check` against it. matrix: build then test, and merge every report into one table. "
        "Needs a Docker engine (DOCKER_HOST, or ci/start_docker.sh).",
    )
    images.add_argument("action", choices=("build", "test", "matrix"))
    images.add_argument("--targets", help="comma-separated targets (default: all in images/targets.toml)")
    images.add_argument("--require", help="targets that must be built and checked, else exit 1 (default: none)")
    images.add_argument("--base", action="append", default=[], metavar="TARGET=IMAGE",
                        help="override a target's BASE_IMAGE build argument, repeatable")
    images.add_argument("--no-pod-spec", action="store_true", help="skip running the rendered Kubernetes pod spec "
                        "(deploy render) of each target that passed on its own hardware")
    images.add_argument("--no-download", action="store_true", help="never run pip download: use the wheelhouse as it is (air-gapped)")
    images.add_argument("--concurrency", default="1,4,16", help="check concurrency levels (default: %(default)s)")
    images.add_argument("--requests", type=int, default=200, help="check requests per level (default: %(default)s)")
    images.add_argument("--out", default="build/images", help="reports (default: %(default)s)")
    images.add_argument("--cache", default=".cache/images", help="base tarball, wheelhouses, example repository (default: %(default)s)")
    images.add_argument("--images-dir", help="folder with targets.toml and the Dockerfiles (default: the checkout's images/)")
    images.add_argument("--verbose", action="store_true", help="print the whole build output, not only its steps")
    images.set_defaults(handler=_cmd_images)


def _cmd_images(args) -> int:
    from portable_ep.images.engine import EngineUnavailable
    from portable_ep.images.targets import TargetsError

    try:
        return run_images(args.action, args)
    except (EngineUnavailable, TargetsError) as exc:
        print(f"portable-ep images: error: {exc}", file=sys.stderr)
        return 2
