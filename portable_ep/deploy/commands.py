"""``portable-ep deploy render``: the verb and its flags, wired to render.py."""
from __future__ import annotations

from pathlib import Path

from portable_ep.deploy.autoscaling import DEFAULT_QUEUE_TARGET_MS, QUEUE_METRIC
from portable_ep.deploy.model_source import DEFAULT_REPOSITORY, DeployError
from portable_ep.deploy.render import DEFAULT_PROMETHEUS_URL, FLAVORS, DeployOptions, render_documents, write_documents


def _env_pairs(pairs) -> dict:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise DeployError(f"--env {pair!r}: use NAME=VALUE")
        result[key.strip()] = value
    return result


def run_render(args) -> int:
    from portable_ep import __version__
    from portable_ep.images.targets import default_images_dir, load_targets, select

    images_dir = Path(args.images_dir) if args.images_dir else default_images_dir()
    targets = select(load_targets(images_dir / "targets.toml"), args.target)
    if len(targets) != 1:
        raise DeployError("--target names one target (render each target into its own --out folder)")
    options = DeployOptions(flavor=args.flavor, repository=args.repository, image=args.image, name=args.name,
                            namespace=args.namespace or "", replicas=args.replicas, min_replicas=args.min_replicas,
                            max_replicas=args.max_replicas, queue_target_ms=args.queue_target_ms, cpu=args.cpu,
                            memory=args.memory, shm_size=args.shm_size, prometheus_url=args.prometheus_url,
                            env=_env_pairs(args.env))
    documents = render_documents(targets[0], options, __version__)
    paths = write_documents(documents, Path(args.out))
    for path, document in zip(paths, documents):
        print(f"{path}  {document['kind']} {document['metadata']['name']}")
    print(f"apply with: kubectl apply -f {args.out}")
    return 0


def add_deploy_parser(verbs) -> None:
    deploy = verbs.add_parser(
        "deploy",
        help="render Kubernetes or KServe manifests for one image target",
        description="Render the manifests that run one target's image (images/targets.toml) on a cluster. "
        "kubernetes: Deployment (non-root, read-only root filesystem, /dev/shm as memory, Triton's health "
        "probes, the target's device resource and tolerations, NFD node affinity), Service (HTTP, gRPC, metrics), "
        f"PodDisruptionBudget, HorizontalPodAutoscaler on the per-pod queue time ({QUEUE_METRIC}), the "
        "PrometheusRule that records it, a ServiceMonitor and the prometheus-adapter rule. kserve: a "
        "ClusterServingRuntime for the image and an InferenceService using it (KEDA scales on the same queue time).",
    )
    actions = deploy.add_subparsers(dest="action", required=True, metavar="ACTION")
    render = actions.add_parser("render", help="write the manifests into --out", description=deploy.description)
    render.add_argument("--target", required=True, help="cpu, openvino, npu, cuda or rocm (a [target.NAME] of targets.toml)")
    render.add_argument("--flavor", choices=FLAVORS, default="kubernetes", help="default: %(default)s")
    render.add_argument("--out", required=True, metavar="DIR", help="folder for the YAML files (one per document)")
    render.add_argument("--repository", metavar="URI", help=f"the model repository: pvc://CLAIM[/SUBPATH], hostpath:///PATH, "
                        f"oci://IMAGE, or with kserve any storageUri such as s3://BUCKET/PATH (default: {DEFAULT_REPOSITORY})")
    render.add_argument("--image", help="the serving image (default: portable-ep/TARGET:VERSION as `make images` tags it; "
                        "push it to your registry and name that here)")
    render.add_argument("--name", help="name of the Deployment/InferenceService (default: portable-ep-TARGET)")
    render.add_argument("--namespace", help="namespace for the namespaced documents (default: none, kubectl's current)")
    render.add_argument("--replicas", type=int, default=1, help="Deployment replicas before the HPA acts (default: %(default)s)")
    render.add_argument("--min-replicas", type=int, default=1, help="default: %(default)s")
    render.add_argument("--max-replicas", type=int, default=4, help="default: %(default)s")
    render.add_argument("--queue-target-ms", type=float, default=DEFAULT_QUEUE_TARGET_MS,
                        help="scale out when a pod's mean queue time exceeds this (default: %(default)s ms)")
    render.add_argument("--cpu", default="2", help="CPU request per pod (default: %(default)s)")
    render.add_argument("--memory", default="4Gi", help="memory request and limit per pod, /dev/shm use included "
                        "(default: %(default)s)")
    render.add_argument("--shm-size", default="1Gi", help="size of the memory-backed /dev/shm the python backend passes "
                        "tensors through (default: %(default)s)")
    render.add_argument("--prometheus-url", default=DEFAULT_PROMETHEUS_URL, help="kserve: the Prometheus KEDA queries "
                        "(default: %(default)s)")
    render.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra container environment, repeatable")
    render.add_argument("--images-dir", metavar="DIR", help="folder holding targets.toml (default: this checkout's images/)")
    render.set_defaults(handler=lambda args: run_render(args))
