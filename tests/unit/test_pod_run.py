"""A rendered Deployment becomes the `docker run` a kubelet would do: same user, read-only root,
shm size, scratch and model mounts, probes (the real run is in the image stage: `make images`)."""
import pytest

from portable_ep.deploy.model_source import DeployError
from portable_ep.deploy.pod_run import container_ports, docker_options, pod_of, probe, quantity_bytes
from portable_ep.deploy.render import DeployOptions, render_documents
from portable_ep.images.targets import load_targets

TARGETS = load_targets()


def _deployment(**options):
    documents = render_documents(TARGETS["openvino"], DeployOptions(**options), "0.1.0")
    return next(d for d in documents if d["kind"] == "Deployment")


def test_the_container_runs_with_the_rendered_settings():
    deployment = _deployment(repository="hostpath:///srv/models", shm_size="2Gi", memory="6Gi")
    options = docker_options(deployment)
    assert options["image"] == "portable-ep/openvino:0.1.0"
    assert options["user"] == "10001:10001" and options["read_only"] is True
    assert options["cap_drop"] == ["ALL"] and options["security_opt"] == ["no-new-privileges"]
    assert options["shm_size"] == 2 * 2**30 and options["mem_limit"] == 6 * 2**30
    assert options["tmpfs"] == {"/tmp": "mode=1777"}
    assert options["volumes"] == {"/srv/models": {"bind": "/models", "mode": "ro"}}
    assert options["environment"]["MODEL_REPOSITORY"] == "/models"
    assert options["environment"]["PORTABLE_EP_PROVIDERS"] == "openvino"
    assert "entrypoint" not in options and "command" not in options  # the image's own ENTRYPOINT


def test_a_claim_needs_a_host_folder_and_is_mounted_read_only():
    deployment = _deployment()  # pvc://portable-ep-models
    with pytest.raises(DeployError, match="needs a host folder"):
        docker_options(deployment)
    options = docker_options(deployment, {"portable-ep-models": "/data/repo"})
    assert options["volumes"] == {"/data/repo": {"bind": "/models", "mode": "ro"}}


def test_init_containers_and_sub_paths_are_refused_not_skipped():
    with pytest.raises(DeployError, match="init containers"):
        docker_options(_deployment(repository="oci://registry.example/models:1"))
    with pytest.raises(DeployError, match="subPath"):
        docker_options(_deployment(repository="pvc://claim/sub"), {"claim": "/data"})


def test_probes_resolve_named_ports():
    container = pod_of(_deployment())["containers"][0]
    assert container_ports(container) == {"http": 8000, "grpc": 8001, "metrics": 8002}
    ready = probe(container, "readinessProbe")
    assert (ready.path, ready.port) == ("/v2/health/ready", 8000)
    assert probe(container, "startupProbe").budget_s == 600


@pytest.mark.parametrize("value,expected", [("1Gi", 2**30), ("512Mi", 512 * 2**20), ("2G", 2 * 10**9), ("1000", 1000)])
def test_quantities(value, expected):
    assert quantity_bytes(value) == expected


def test_bad_quantity():
    with pytest.raises(DeployError):
        quantity_bytes("1 GB")
