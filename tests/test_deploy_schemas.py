"""Deployment files against the schemas of the systems that read them: Kubernetes (kubernetes-validate ships
the API schemas per version), KEDA's ScaledObject CRD (tests/schemas/), and the Compose Specification
(check-jsonschema ships compose-spec.json). Each validator is also shown to reject a typo, so a pass means
something."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
# The oldest Kubernetes minor the manifests must apply to (HPA behavior, Job TTL and sizeLimit are older).
K8S_VERSIONS = ("1.29", "1.33")
VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def k8s_docs() -> list[tuple[str, dict]]:
    """(file, document) for every resource kustomization.yaml applies, plus the Secret template."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = [*kustomization["resources"], "secret.example.yaml.tmpl"]
    return [(name, doc) for name in files for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def keda_schema() -> dict:
    return json.loads((SCHEMAS / "keda-scaledobject.schema.json").read_text())


def compose_schema() -> dict:
    path = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(path.read_text())


def schema_errors(schema: dict, doc: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]


class InterpolationError(ValueError):
    pass


def interpolate(value, env: dict[str, str]):
    """Compose's variable interpolation (${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err},
    ${VAR:+alt}, $VAR, $$) applied to every string in a loaded compose file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("bare"):
            return env.get(match.group("bare"), "")
        expr = match.group("braced")
        found = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?$", expr, re.S)
        if not found:
            raise InterpolationError(f"invalid interpolation ${{{expr}}}")
        name, op, arg = found.groups()
        present, set_nonempty = name in env, bool(env.get(name))
        if op is None:
            return env.get(name, "")
        if op in (":-", "-"):
            return env[name] if (set_nonempty if op == ":-" else present) else arg
        if op in (":?", "?"):
            if not (set_nonempty if op == ":?" else present):
                raise InterpolationError(f"{name}: {arg}")
            return env[name]
        return arg if (set_nonempty if op == ":+" else present) else ""

    return VAR.sub(one, value)


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (DEPLOY / "env.example").read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_match_the_kubernetes_schemas(version):
    checked = set()
    for name, doc in k8s_docs():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked against KEDA's schema below
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
        checked.add(doc["kind"])
    assert {"Namespace", "ConfigMap", "PersistentVolumeClaim", "Service", "StatefulSet", "Deployment",
            "HorizontalPodAutoscaler", "Job", "Secret"} <= checked


def test_kubernetes_validation_rejects_a_misspelt_field():
    headless = next(d for _, d in k8s_docs() if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None")
    bad = copy.deepcopy(headless)
    bad["spec"]["publishNotReadyAdresses"] = bad["spec"].pop("publishNotReadyAddresses")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)
    worker = next(d for _, d in k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "hark-worker")
    bad = copy.deepcopy(worker)
    bad["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "1200"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def test_scaled_object_matches_kedas_crd_schema():
    scaled = [d for _, d in k8s_docs() if d["kind"] == "ScaledObject"]
    assert scaled, "no ScaledObject"
    for doc in scaled:
        assert not schema_errors(keda_schema(), doc), schema_errors(keda_schema(), doc)
        # scalingModifiers' formula may name only the triggers (by their `name`).
        modifiers = doc["spec"].get("advanced", {}).get("scalingModifiers")
        if modifiers:
            names = {t.get("name") for t in doc["spec"]["triggers"]}
            used = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", modifiers["formula"]))
            assert used and used <= names, (used, names)


def test_keda_schema_rejects_typos_and_wrong_types():
    doc = next(d for _, d in k8s_docs() if d["kind"] == "ScaledObject")
    bad = copy.deepcopy(doc)
    trigger = bad["spec"]["triggers"][0]["metadata"]
    trigger["adress"] = trigger.pop("address")
    assert schema_errors(keda_schema(), bad)
    bad = copy.deepcopy(doc)
    bad["spec"]["advanced"]["scalingModifiers"]["target"] = 2
    assert schema_errors(keda_schema(), bad)
    bad = copy.deepcopy(doc)
    bad["spec"]["maxReplicas"] = 5
    assert schema_errors(keda_schema(), bad)


def test_compose_file_matches_the_compose_specification():
    raw = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert not schema_errors(compose_schema(), raw), schema_errors(compose_schema(), raw)
    env = {**env_example(), "QDRANT_API_KEY": "k" * 64}
    resolved = interpolate(raw, env)
    assert not schema_errors(compose_schema(), resolved), schema_errors(compose_schema(), resolved)
    bad = copy.deepcopy(raw)
    bad["services"]["worker"]["stop_grace_priod"] = bad["services"]["worker"].pop("stop_grace_period")
    assert schema_errors(compose_schema(), bad)


def test_compose_needs_a_qdrant_key_and_gives_both_sides_the_same_one():
    raw = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    # deploy/env.example as shipped leaves the key empty: compose must refuse, not start Qdrant with "".
    with pytest.raises(InterpolationError, match="QDRANT_API_KEY"):
        interpolate(raw, env_example())
    with pytest.raises(InterpolationError, match="QDRANT_API_KEY"):
        interpolate(raw, {})
    resolved = interpolate(raw, {"QDRANT_API_KEY": "s3cret"})
    services = resolved["services"]
    assert services["qdrant"]["environment"]["QDRANT__SERVICE__API_KEY"] == "s3cret"
    for name, service in services.items():
        if service.get("command", [""])[0] == "hark":
            assert service["environment"]["HARK_QDRANT_API_KEY"] == "s3cret", name


def test_compose_publishes_on_loopback_by_default():
    raw = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    for env in ({"QDRANT_API_KEY": "x"}, {**env_example(), "QDRANT_API_KEY": "x"}):
        services = interpolate(raw, env)["services"]
        published = [(name, port) for name, s in services.items() for port in s.get("ports", [])]
        assert ("serve", "127.0.0.1:8000:8000") in published
        for name, port in published:
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)
    exposed = interpolate(raw, {"QDRANT_API_KEY": "x", "HARK_BIND_ADDRESS": "0.0.0.0"})["services"]
    assert exposed["serve"]["ports"] == ["0.0.0.0:8000:8000"]


def test_interpolation_follows_compose_rules():
    env = {"SET": "v", "EMPTY": ""}
    text = "${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $$HOME ${SET:+a}${EMPTY:+b}"
    assert interpolate(text, env) == "v d  d $HOME a"
    with pytest.raises(InterpolationError):
        interpolate("${EMPTY:?needed}", env)
    assert interpolate("${EMPTY?needed}", env) == ""
