"""`portable-ep deploy render`: every target × flavor renders manifests that Kubernetes' schemas
(strict) and KServe's SDK models accept, with the settings the issue and the vendors' docs ask for."""
import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from portable_ep.cli import main
from portable_ep.deploy import autoscaling
from portable_ep.deploy.model_source import DeployError, parse_model_source
from portable_ep.deploy.render import DeployOptions, render_documents
from portable_ep.images.targets import load_targets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from manifest_schemas import kserve_problems_many, kubernetes_problems  # noqa: E402

TARGETS = load_targets()
# The oldest Kubernetes a maintained cluster runs today and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
VARIANTS = {
    "defaults": {},
    "oci+namespace": {"repository": "oci://registry.example/models:3", "namespace": "serving", "replicas": 2,
                      "min_replicas": 2, "max_replicas": 8, "env": {"OMP_NUM_THREADS": "4"}},
    "hostpath": {"repository": "hostpath:///srv/models", "cpu": "500m", "memory": "16Gi", "shm_size": "2Gi"},
}
KSERVE_VARIANTS = {"defaults": {}, "s3+namespace": {"repository": "s3://bucket/repo", "namespace": "serving"}}
MONITORING = "monitoring.coreos.com/v1"


def _render(target, flavor, **options):
    return render_documents(TARGETS[target], DeployOptions(flavor=flavor, **options), "0.1.0")


def _by_kind(documents):
    return {d["kind"]: d for d in documents}


def _server(documents):
    deployment = _by_kind(documents)["Deployment"]
    return deployment["spec"]["template"]["spec"], deployment["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_kubernetes_flavor_is_valid_for_kubernetes_schemas(target, variant):
    documents = _render(target, "kubernetes", **VARIANTS[variant])
    builtin = [d for d in documents if d["apiVersion"] != MONITORING]
    assert [d["kind"] for d in builtin] == ["Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                                            "ConfigMap"]
    for version in KUBERNETES_VERSIONS:
        problems = [p for d in builtin for p in kubernetes_problems(d, version)]
        assert not problems, f"{target}/{variant} on Kubernetes {version}: {problems}"


@pytest.fixture(scope="module")
def kserve_verdicts():
    """Every target × KServe variant, walked against KServe's SDK models in one child interpreter."""
    keys = [(t, v) for t in sorted(TARGETS) for v in KSERVE_VARIANTS]
    documents = {key: _render(key[0], "kserve", **KSERVE_VARIANTS[key[1]]) for key in keys}
    flat = [d for key in keys for d in documents[key]]
    problems = iter(kserve_problems_many(flat))
    return {key: (documents[key], [next(problems) for _ in documents[key]]) for key in keys}


@pytest.mark.parametrize("variant", KSERVE_VARIANTS)
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_kserve_flavor_is_valid_for_kserve_models(target, variant, kserve_verdicts):
    documents, problems = kserve_verdicts[(target, variant)]
    assert [d["kind"] for d in documents] == ["ClusterServingRuntime", "InferenceService"]
    assert problems == [[], []]
    # The runtime's pod settings embed Kubernetes types: validate its container strictly too,
    # by wrapping it in a Pod (kubernetes-validate validates whole objects).
    runtime = documents[0]["spec"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime"},
           "spec": {"containers": runtime["containers"], "volumes": runtime["volumes"],
                    "tolerations": runtime.get("tolerations", []), **({"affinity": runtime["affinity"]} if "affinity" in runtime else {})}}
    assert kubernetes_problems(pod, KUBERNETES_VERSIONS[-1]) == []


def test_validators_reject_an_unknown_or_mistyped_field():
    """The checks above can fail: one wrong field anywhere is an error."""
    deployment = copy.deepcopy(_by_kind(_render("cpu", "kubernetes"))["Deployment"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/v2/health/ready"
    assert kubernetes_problems(deployment, "1.37.0")
    runtime, service = (copy.deepcopy(d) for d in _render("cuda", "kserve"))
    runtime["spec"]["containers"][0]["resorces"] = {}
    service["spec"]["predictor"]["minReplicas"] = "1"
    runtime_problems, service_problems = kserve_problems_many([runtime, service])
    assert any("resorces: unknown field" in p for p in runtime_problems)
    assert any("minReplicas: expected int" in p for p in service_problems)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_pod_runs_non_root_read_only_with_memory_shm_and_triton_probes(target):
    pod, server = _server(_render(target, "kubernetes"))
    assert pod["securityContext"]["runAsNonRoot"] and server["securityContext"]["runAsUser"] == 10001
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert server["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    assert mounts["/models"]["readOnly"] is True and "/tmp" in mounts
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert server["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert all(p["httpGet"]["port"] in ports for p in (server["readinessProbe"], server["livenessProbe"]))
    env = {e["name"]: e["value"] for e in server["env"]}
    assert env["PORTABLE_EP_PROVIDERS"] == TARGETS[target].providers and env["MODEL_REPOSITORY"] == "/models"
    assert server["image"] == f"portable-ep/{target}:0.1.0"


@pytest.mark.parametrize("target,resource", [("cuda", "nvidia.com/gpu"), ("rocm", "amd.com/gpu"),
                                             ("npu", "npu.intel.com/accel"), ("cpu", None), ("openvino", None)])
def test_device_resource_and_toleration_per_vendor(target, resource):
    for flavor in ("kubernetes", "kserve"):
        documents = _render(target, flavor)
        if flavor == "kubernetes":
            pod, server = _server(documents)
        else:
            pod = documents[0]["spec"]
            server = pod["containers"][0]
        limits = server["resources"]["limits"]
        extended = [k for k in limits if "/" in k]
        assert extended == ([resource] if resource else []), f"{target}/{flavor}: {limits}"
        if resource:
            assert limits[resource] == "1"
            assert {"key": resource, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        else:
            assert "tolerations" not in pod


def test_openvino_prefers_amx_nodes_by_their_nfd_label():
    pod, _ = _server(_render("openvino", "kubernetes"))
    preferred = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    first = preferred[0]["preference"]["matchExpressions"][0]
    assert first == {"key": "feature.node.kubernetes.io/cpu-cpuid.AMXBF16", "operator": "In", "values": ["true"]}
    assert preferred[0]["weight"] > preferred[1]["weight"]
    assert "affinity" not in _server(_render("cpu", "kubernetes"))[0]


def test_selectors_match_the_pods_and_the_hpa_reads_the_recorded_metric():
    documents = _by_kind(_render("cpu", "kubernetes", min_replicas=2, max_replicas=6, queue_target_ms=25))
    pod_labels = documents["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for selector in (documents["Deployment"]["spec"]["selector"]["matchLabels"], documents["Service"]["spec"]["selector"],
                     documents["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
                     documents["ServiceMonitor"]["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()
    assert documents["ServiceMonitor"]["spec"]["selector"]["matchLabels"].items() <= documents["Service"]["metadata"]["labels"].items()
    assert documents["ServiceMonitor"]["spec"]["endpoints"][0]["port"] in {p["name"] for p in documents["Service"]["spec"]["ports"]}
    hpa = documents["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == autoscaling.QUEUE_METRIC
    assert hpa["metrics"][0]["pods"]["target"] == {"type": "AverageValue", "averageValue": "25000"}
    recorded = documents["PrometheusRule"]["spec"]["groups"][0]["rules"][0]["record"]
    adapter = yaml.safe_load(documents["ConfigMap"]["data"]["config.yaml"])["rules"][0]
    assert recorded == autoscaling.QUEUE_METRIC == adapter["name"]["as"]
    assert adapter["seriesQuery"].startswith(recorded)


def test_recording_rule_and_kserve_query_are_valid_promql(tmp_path):
    """promtool (Debian's prometheus package, installed by scripts/bootstrap.sh) parses the rules."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: run scripts/bootstrap.sh (it installs Debian's prometheus package)"
    rules = _by_kind(_render("openvino", "kubernetes"))["PrometheusRule"]["spec"]
    query = _render("openvino", "kserve", namespace="serving")[1]["spec"]["predictor"]["autoScaling"]["metrics"][0]
    rules = {"groups": rules["groups"] + [{"name": "kserve-query", "rules": [
        {"record": "portable_ep_kserve_queue_time_us", "expr": query["external"]["metric"]["query"]}]}]}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_model_repository_sources():
    pvc = parse_model_source("pvc://models/team-a/repo", "kubernetes")
    assert pvc.volume()["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert pvc.mount()["subPath"] == "team-a/repo"
    oci = _render("cpu", "kubernetes", repository="oci://registry.example/models:3")
    pod, _ = _server(oci)
    assert pod["initContainers"][0]["image"] == "registry.example/models:3"
    assert {"name": "model-repository", "emptyDir": {}} in pod["volumes"]
    isvc = _render("cpu", "kserve", repository="gs://bucket/repo")[1]
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "gs://bucket/repo"
    assert _render("cpu", "kserve")[1]["spec"]["predictor"]["model"]["storageUri"] == "pvc://portable-ep-models"


@pytest.mark.parametrize("flavor,uri,message", [
    ("kubernetes", "s3://bucket/models", "need --flavor kserve"),
    ("kserve", "hostpath:///srv/models", "not a KServe storageUri"),
    ("kubernetes", "hostpath://relative", "must be absolute"),
    ("kubernetes", "models", "use pvc://"),
])
def test_unusable_repository_is_refused_with_the_fix(flavor, uri, message):
    with pytest.raises(DeployError, match=message):
        parse_model_source(uri, flavor)


@pytest.mark.parametrize("options,message", [
    ({"name": "Bad_Name"}, "--name"), ({"max_replicas": 0}, "--max-replicas"), ({"memory": "4 GB"}, "--memory"),
    ({"queue_target_ms": 0}, "--queue-target-ms"), ({"namespace": "UPPER"}, "--namespace"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(DeployError, match=message):
        _render("cpu", "kubernetes", **options)


def test_cli_writes_one_file_per_document_and_reports_errors_in_one_line(tmp_path, capsys):
    out = tmp_path / "deploy"
    assert main(["deploy", "render", "--target", "rocm", "--out", str(out), "--image", "registry.example/pe/rocm:1"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["01-deployment.yaml", "02-service.yaml", "03-pod-disruption-budget.yaml",
                     "04-horizontal-pod-autoscaler.yaml", "05-service-monitor.yaml", "06-prometheus-rule.yaml",
                     "07-config-map.yaml"]
    deployment = yaml.safe_load((out / "01-deployment.yaml").read_text())
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/pe/rocm:1"
    assert main(["deploy", "render", "--target", "rocm", "--flavor", "kserve", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["01-cluster-serving-runtime.yaml", "02-inference-service.yaml"]
    capsys.readouterr()
    assert main(["deploy", "render", "--target", "tpu", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("portable-ep: error: unknown target(s) tpu") and "\n" not in err
