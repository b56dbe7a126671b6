"""The production overlay (deploy/production), checked offline: rendered by kustomize, the built-in kinds
against the Kubernetes schemas (kubernetes-validate, strict), the ServiceMonitor against a closed structural
schema of the fields it uses (written from the Prometheus Operator's API reference: its CRD is in no package
the tests install), and what the pieces must agree on: the Secret's keys reach the pods, the Ingress and the
ServiceMonitor name Services and ports that exist, TLS covers every host, the thread settings fit the CPU limit.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from adserve.server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ROOT / "deploy" / "production"
K8S_VERSION = "1.30.0"


def _closed(properties: dict, required=()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_STRING = {"type": "string"}
_LABELS = {"type": "object", "additionalProperties": _STRING}
SERVICE_MONITOR = _closed({
    "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
    "metadata": _closed({"name": _STRING, "namespace": _STRING, "labels": _LABELS}, ["name"]),
    "spec": _closed({
        "selector": _closed({"matchLabels": _LABELS}),
        "namespaceSelector": _closed({"matchNames": {"type": "array", "items": _STRING}}),
        "endpoints": {"type": "array", "minItems": 1, "items": _closed({
            "port": _STRING, "path": _STRING, "scheme": {"enum": ["http", "https"]},
            "interval": {"type": "string", "pattern": "^[0-9]+[smh]$"},
            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+[smh]$"}}, ["port"])}},
        ["selector", "endpoints"])}, ["apiVersion", "kind", "metadata", "spec"])


@pytest.fixture(scope="module")
def docs() -> dict:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed to render the overlay (it patches the Deployment of ../k8s)")
    text = subprocess.run([kubectl, "kustomize", str(PRODUCTION)], check=True, capture_output=True, text=True).stdout
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(text) if d}


def test_every_resource_passes_its_schema(docs):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    jsonschema = pytest.importorskip("jsonschema")
    for (kind, name), doc in docs.items():
        if kind == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR)
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{kind}/{name}: {e.message} at {'.'.join(map(str, e.path))}")


def test_the_api_keys_come_from_the_secret_as_digests(docs):
    secret = docs["Secret", "adserve-api-keys"]["stringData"]
    keys = Settings(api_keys=secret["ADSERVE_API_KEYS"]).api_keys
    assert keys and all(re.fullmatch(r"sha256:[0-9a-f]{64}", k) for k in keys)  # no key stored as itself
    (container,) = docs["Deployment", "adserve"]["spec"]["template"]["spec"]["containers"]
    sources = container["envFrom"]
    assert {"secretRef": {"name": "adserve-api-keys"}} in sources
    assert {"configMapRef": {"name": "adserve-config"}} in sources
    assert "ADSERVE_API_KEYS" not in docs["ConfigMap", "adserve-config"]["data"]


def test_the_ingresses_reach_the_services_over_tls(docs):
    services = {name: {p["name"] for p in d["spec"]["ports"]} for (kind, name), d in docs.items() if kind == "Service"}
    max_body = int(docs["ConfigMap", "adserve-config"]["data"].get("ADSERVE_MAX_BODY_BYTES", 16 << 20))
    for (kind, name), ingress in docs.items():
        if kind != "Ingress":
            continue
        spec = ingress["spec"]
        covered = {h for t in spec["tls"] for h in t["hosts"]}
        for rule in spec["rules"]:
            assert rule["host"] in covered, f"{name}: {rule['host']} has no TLS"
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["port"]["name"] in services[backend["name"]], name
        size = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
        assert int(size.rstrip("m")) << 20 >= max_body, f"{name} refuses bodies the server takes"
    grpc = docs["Ingress", "adserve-grpc"]["metadata"]["annotations"]
    assert grpc["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    assert docs["Ingress", "adserve"]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"


def test_the_service_monitor_scrapes_metrics_of_the_pods(docs):
    monitor = docs["ServiceMonitor", "adserve"]["spec"]
    selected = [d for (kind, _), d in docs.items() if kind == "Service"
                and monitor["selector"]["matchLabels"].items() <= d["metadata"].get("labels", {}).items()]
    (endpoint,) = monitor["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert any(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in selected)
    assert monitor["namespaceSelector"]["matchNames"] == [docs["Deployment", "adserve"]["metadata"]["namespace"]]


def test_the_thread_settings_fit_the_cpu_limit(docs):
    config = docs["ConfigMap", "adserve-config"]["data"]
    (container,) = docs["Deployment", "adserve"]["spec"]["template"]["spec"]["containers"]
    cores = int(container["resources"]["limits"]["cpu"])
    assert int(config["NUMBA_NUM_THREADS"]) == cores
    assert Settings(max_optimizers=config["ADSERVE_MAX_OPTIMIZERS"]).max_optimizers == 2 * cores
