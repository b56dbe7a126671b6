"""The KServe overlay (deploy/kserve), checked offline: what it renders, each resource against a schema,
and what the files must agree on (ports, probes, the protocol, the settings, the image tag).

The CustomResourceDefinitions of KServe are not in any package the tests install, so `SCHEMAS` below is
a small structural schema of the fields these manifests use, written from KServe's API reference
(ServingRuntime v1alpha1, InferenceService v1beta1), closed (`additionalProperties: false`) so a misspelt
field fails. Where KServe's own CRD files are at hand (`KSERVE_CRD_DIR` holding
serving.kserve.io_servingruntimes.yaml and serving.kserve.io_inferenceservices.yaml, from KServe's
config/crd/full), each resource is also validated against the CRD's openAPIV3Schema, unknown fields
included; without them that test is skipped.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from adserve.server.settings import Settings

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[2]
KSERVE = ROOT / "deploy" / "kserve"
SETTINGS = {f"ADSERVE_{name.upper()}" for name in Settings.model_fields}


def _closed(properties: dict, required=()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_STRING, _INT = {"type": "string"}, {"type": "integer"}
_QUANTITY = {"type": ["string", "integer"]}
_LABELS = {"type": "object", "additionalProperties": _STRING}
_METADATA = _closed({"name": _STRING, "namespace": _STRING, "labels": _LABELS, "annotations": _LABELS}, ["name"])
_PROBE = _closed({"httpGet": _closed({"path": _STRING, "port": {"type": ["integer", "string"]}}, ["port"]),
                  "periodSeconds": _INT, "timeoutSeconds": _INT, "failureThreshold": _INT})
_CONTAINER = _closed({
    "name": _STRING, "image": _STRING, "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    "args": {"type": "array", "items": _STRING},
    "envFrom": {"type": "array", "items": _closed({"configMapRef": _closed({"name": _STRING}, ["name"])})},
    "env": {"type": "array", "items": _closed({"name": _STRING, "value": _STRING}, ["name"])},
    "ports": {"type": "array", "items": _closed({"name": _STRING, "containerPort": _INT,
                                                 "protocol": {"enum": ["TCP", "UDP", "SCTP"]}}, ["containerPort"])},
    "readinessProbe": _PROBE, "livenessProbe": _PROBE,
    "resources": _closed({"requests": {"type": "object", "additionalProperties": _QUANTITY},
                          "limits": {"type": "object", "additionalProperties": _QUANTITY}}),
    "securityContext": _closed({"allowPrivilegeEscalation": {"type": "boolean"},
                                "readOnlyRootFilesystem": {"type": "boolean"}, "runAsNonRoot": {"type": "boolean"},
                                "runAsUser": _INT, "capabilities": _closed({"drop": {"type": "array"}})}),
    "volumeMounts": {"type": "array", "items": _closed({"name": _STRING, "mountPath": _STRING},
                                                       ["name", "mountPath"])}}, ["name", "image"])
SCHEMAS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): _closed({
        "apiVersion": _STRING, "kind": _STRING, "metadata": _METADATA,
        "spec": _closed({
            "supportedModelFormats": {"type": "array", "minItems": 1, "items": _closed(
                {"name": _STRING, "version": _STRING, "autoSelect": {"type": "boolean"}}, ["name"])},
            "protocolVersions": {"type": "array", "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}},
            "containers": {"type": "array", "minItems": 1, "items": _CONTAINER},
            "volumes": {"type": "array", "items": _closed({"name": _STRING, "emptyDir": _closed(
                {"sizeLimit": _QUANTITY})}, ["name"])}}, ["containers"])}, ["apiVersion", "kind", "metadata", "spec"]),
    ("serving.kserve.io/v1beta1", "InferenceService"): _closed({
        "apiVersion": _STRING, "kind": _STRING, "metadata": _METADATA,
        "spec": _closed({"predictor": _closed({
            "labels": _LABELS, "annotations": _LABELS, "minReplicas": _INT, "maxReplicas": _INT,
            "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]}, "scaleTarget": _INT,
            "model": _closed({"modelFormat": _closed({"name": _STRING, "version": _STRING}, ["name"]),
                              "runtime": _STRING, "protocolVersion": {"enum": ["v1", "v2", "grpc-v2"]},
                              "storageUri": _STRING}, ["modelFormat"])})}, ["predictor"])},
        ["apiVersion", "kind", "metadata", "spec"]),
}
CRD_FILES = {"ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
             "InferenceService": "serving.kserve.io_inferenceservices.yaml"}


@pytest.fixture(scope="module")
def docs() -> dict:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed to render the overlay (it deletes resources of ../k8s by patch)")
    text = subprocess.run([kubectl, "kustomize", str(KSERVE)], check=True, capture_output=True, text=True).stdout
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(text) if d}


def test_kserve_makes_the_pods_and_services_the_plain_manifests_made(docs):
    kinds = {kind for kind, _ in docs}
    assert {"ServingRuntime", "InferenceService", "ConfigMap", "Namespace"} <= kinds
    assert ("Deployment", "adserve") not in docs and ("Service", "adserve") not in docs
    assert "HorizontalPodAutoscaler" not in kinds and "PodDisruptionBudget" not in kinds
    assert ("Deployment", "adserve-redis") in docs  # the shared store stays
    assert {d["metadata"].get("namespace") for d in docs.values() if d["kind"] != "Namespace"} == {"adserve"}


@pytest.mark.parametrize("kind", ["ServingRuntime", "InferenceService"])
def test_the_resources_match_the_structural_schema(docs, kind):
    (doc,) = [d for (k, _), d in docs.items() if k == kind]
    jsonschema.validate(doc, SCHEMAS[doc["apiVersion"], kind])


@pytest.mark.parametrize("kind", ["ServingRuntime", "InferenceService"])
def test_the_resources_match_kserves_crds(docs, kind):
    crd_dir = os.environ.get("KSERVE_CRD_DIR")
    if not crd_dir:
        pytest.skip("KSERVE_CRD_DIR is not set: no KServe CRD files to validate against")
    crd = yaml.safe_load((Path(crd_dir) / CRD_FILES[kind]).read_text())
    (doc,) = [d for (k, _), d in docs.items() if k == kind]
    group, version = doc["apiVersion"].split("/")
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    (schema,) = [v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version]
    jsonschema.validate(doc, schema)
    # metadata is the API server's ObjectMeta, which a CRD does not spell out
    assert _unknown_fields(doc["spec"], schema["properties"]["spec"], f"{kind}.spec") == []


def _unknown_fields(value, schema: dict, where: str) -> list:
    """Fields the schema does not name (the API server would drop them silently)."""
    if isinstance(value, dict) and schema.get("type") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in schema:
            item = schema.get("additionalProperties")
            return [u for k, v in value.items() for u in
                    (_unknown_fields(v, item, f"{where}.{k}") if isinstance(item, dict) else [])]
        properties = schema.get("properties", {})
        return [u for k, v in value.items()
                for u in (_unknown_fields(v, properties[k], f"{where}.{k}") if k in properties else [f"{where}.{k}"])]
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [u for i, v in enumerate(value) for u in _unknown_fields(v, schema["items"], f"{where}[{i}]")]
    return []


def test_runtime_ports_probes_protocol_and_settings_agree(docs):
    runtime, isvc = docs["ServingRuntime", "adserve"]["spec"], docs["InferenceService", "adserve"]["spec"]
    (c,) = runtime["containers"]
    assert c["name"] == "kserve-container"  # the name KServe looks for
    env = {e["name"]: e["value"] for e in c["env"]}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http1": int(env["ADSERVE_HTTP_PORT"]), "h2c": int(env["ADSERVE_GRPC_PORT"])}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": ports["http1"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": ports["http1"]}
    assert {"v2", "grpc-v2"} <= set(runtime["protocolVersions"])
    assert c["envFrom"][0]["configMapRef"]["name"] in {name for kind, name in docs if kind == "ConfigMap"}
    assert set(env) <= SETTINGS
    mounts = {m["name"] for m in c["volumeMounts"]}
    assert mounts <= {v["name"] for v in runtime["volumes"]}
    config = docs["ConfigMap", "adserve-config"]["data"]
    assert config["ADSERVE_CACHE_DIR"] in {m["mountPath"] for m in c["volumeMounts"]}
    model = isvc["predictor"]["model"]
    assert model["runtime"] == "adserve" and model["modelFormat"]["name"] in \
        {f["name"] for f in runtime["supportedModelFormats"]}
    base = yaml.safe_load((ROOT / "deploy" / "k8s" / "kustomization.yaml").read_text())
    assert c["image"] == f"adserve:{base['images'][0]['newTag']}"
    # the Redis NetworkPolicy admits the predictor's pods
    policy = docs["NetworkPolicy", "adserve-redis"]["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert policy.items() <= isvc["predictor"]["labels"].items()
