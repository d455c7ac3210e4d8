"""Deployment files: they parse, and every image, command, flag, setting, port, path and secret they name
exists and agrees with the code and with each other (tests/test_deploy_schemas.py checks them against the
Kubernetes, KEDA and Compose schemas)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest

from hark.cli import build_parser
from hark.settings import SETTING_NAMES, Settings

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PINNED = re.compile(r"^[\w./-]+:v?\d+(\.\d+)+[\w.-]*$")
# The longest batch the README sizes for: HARK_BATCH_FILES files of an hour of audio each, at about 110 s of
# CPU embedding per hour of audio (int8). Stop grace must exceed it, the visibility timeout too.
EMBED_SECONDS_PER_AUDIO_HOUR = 110


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _k8s_docs() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    return docs


def _find(docs: list[dict], kind: str, name: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _pod_spec(doc: dict) -> dict:
    return doc.get("spec", {}).get("template", {}).get("spec", {})


def _containers(doc: dict) -> list[dict]:
    return _pod_spec(doc).get("containers", [])


def _hark_command_lines(container: dict) -> list[list[str]]:
    """The `hark ...` invocations a container runs: its command, or the lines of an `sh -c` script."""
    command = [*container.get("command", []), *container.get("args", [])]
    if command and command[0] == "hark":
        return [command]
    if command[:2] == ["sh", "-c"] or command[:2] == ["/bin/sh", "-c"]:
        lines = [shlex.split(line.strip().removeprefix("exec ")) for line in command[2].splitlines()]
        return [line for line in lines if line and line[0] == "hark"]
    return []


def _is_hark(container: dict) -> bool:
    return "hark-runtime" in container["image"]


def _check_hark_command(command: list[str]) -> None:
    """A `hark ...` command line must parse with the real CLI parser: no unknown command or flag."""
    assert command[0] == "hark", command
    args, extra = build_parser().parse_known_args(command[1:])
    assert not extra, f"unknown arguments {extra} in {command}"
    assert args.func is not None


def _config(docs: list[dict]) -> dict[str, str]:
    return _find(docs, "ConfigMap", "hark-config")["data"]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _longest_batch_seconds(batch_files: int) -> int:
    return batch_files * EMBED_SECONDS_PER_AUDIO_HOUR


def _duration(text: str) -> int:
    """Compose durations ("20m", "1h30m", "90s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([hms])", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(int(n) * units[u] for n, u in parts)


# --- compose ------------------------------------------------------------------------------------------------

def test_compose_services_images_and_commands():
    compose = _compose()
    services = compose["services"]
    assert {"qdrant", "redis", "serve", "worker", "worker-gpu", "beat", "register"} <= set(services)
    built = {s["image"] for s in services.values() if "build" in s}
    assert len(built) == 1
    for name, service in services.items():
        image = service["image"]
        if "build" in service:
            assert (ROOT / service["build"]["dockerfile"]).is_file()
        elif image not in built:
            assert PINNED.match(image), f"{name}: third-party image {image} must be pinned"
        command = service.get("command")
        if command and command[0] == "hark":
            _check_hark_command(command)
            assert image in built, f"{name} runs hark from another image than the one built"
    # The built image name resolves to a local registry name, never to Docker Hub.
    default = re.fullmatch(r"\$\{HARK_IMAGE:-([^}]+)\}", next(iter(built)))
    assert default and default.group(1).startswith("localhost/"), built
    assert services["qdrant"]["environment"]["QDRANT__INFERENCE__ADDRESS"] == "http://serve:8000/infer"
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["count"] == 1
    assert services["worker-gpu"]["command"][services["worker-gpu"]["command"].index("--pool") + 1] == "solo"
    assert set(compose["volumes"]) >= {"qdrant_storage", "models", "redis_data", "beat_state"}


def test_compose_redis_caps_memory_and_never_evicts():
    command = _compose()["services"]["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert re.fullmatch(r"\$\{REDIS_MAXMEMORY:-\d+[kmg]b\}", command[command.index("--maxmemory") + 1])
    assert command[command.index("--appendonly") + 1] == "yes"


def test_compose_qdrant_key_is_required_and_shared():
    compose = _compose()
    qdrant_key = compose["services"]["qdrant"]["environment"]["QDRANT__SERVICE__API_KEY"]
    assert qdrant_key.startswith("${QDRANT_API_KEY:?"), "an unset key must stop compose, not become empty"
    for name, service in compose["services"].items():
        if service.get("command", [""])[0] == "hark":
            assert service["environment"]["HARK_QDRANT_API_KEY"] == qdrant_key, name


def test_compose_restart_grace_and_health():
    compose = _compose()
    services = compose["services"]
    longest = _longest_batch_seconds(int(compose["x-hark-env"]["HARK_BATCH_FILES"]))
    visibility = int(compose["x-hark-env"]["HARK_VISIBILITY_TIMEOUT"])
    for name in ("qdrant", "redis", "serve", "worker", "worker-gpu", "beat"):
        assert services[name]["restart"] == "unless-stopped", name
    assert services["register"]["restart"] == "no" and services["register"]["profiles"] == ["register"]
    for name in ("worker", "worker-gpu"):
        grace = _duration(services[name]["stop_grace_period"])
        assert longest < grace < visibility, (name, longest, grace, visibility)
    # Celery processes have no HTTP port: the image's /healthz check must not run for them.
    for name in ("worker", "worker-gpu", "beat", "register"):
        assert services[name]["healthcheck"] == {"disable": True}, name
    assert "/readyz" in " ".join(services["serve"]["healthcheck"]["test"])
    # hark serve stays up without a bundle (503 on /readyz): nothing may wait for it to be healthy, or the
    # registration that makes it healthy could never run.
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert depends.get("serve", {}).get("condition") != "service_healthy", name


def test_compose_ports_and_paths_agree_with_the_code():
    compose = _compose()
    services = compose["services"]
    defaults = Settings()
    serve = services["serve"]["command"]
    port = serve[serve.index("--port") + 1]
    assert int(port) == defaults.port
    assert services["serve"]["ports"] == [f"${{HARK_BIND_ADDRESS:-127.0.0.1}}:{port}:{port}"]
    for name, service in services.items():
        for published in service.get("ports", []):
            assert published.startswith("${HARK_BIND_ADDRESS:-127.0.0.1}:"), (name, published)
    env = compose["x-hark-env"]
    assert urlparse(env["HARK_QDRANT_URL"]).hostname == "qdrant"
    assert urlparse(env["HARK_BROKER_URL"]).hostname == "redis"
    for name, service in services.items():
        if service.get("command", [""])[0] != "hark":
            continue
        mounts = {v.split(":")[1]: v for v in service["volumes"]}
        assert env["HARK_MODELS_DIR"] in mounts and mounts[env["HARK_MODELS_DIR"]].startswith("models:"), name
        # Only serve (registration through `exec`) and the one-shot register write the registry.
        writable = not mounts[env["HARK_MODELS_DIR"]].endswith(":ro")
        assert writable == (name in {"serve", "register"}), name
        if "/audio" in mounts:
            assert mounts["/audio"].endswith(":ro")
    assert services["serve"]["environment"]["HARK_MEDIA_ROOTS"] == "/audio"
    assert "HARK_ORT_THREADS" in env


# --- Kubernetes ---------------------------------------------------------------------------------------------

def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


def test_kubernetes_manifests():
    docs = _k8s_docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("StatefulSet", "qdrant") in kinds and ("Deployment", "hark-serve") in kinds
    assert ("Deployment", "hark-worker") in kinds and ("ScaledObject", "hark-worker") in kinds
    assert ("Deployment", "hark-worker-gpu") in kinds and ("Job", "hark-register-model") in kinds
    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    for doc in docs:
        for container in _containers(doc):
            for command in _hark_command_lines(container):
                _check_hark_command(command)
            image = container["image"]
            assert PINNED.match(image), image
            assert container.get("imagePullPolicy") == "IfNotPresent", (doc["metadata"]["name"], image)
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps
        for volume in _pod_spec(doc).get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
    assert {"hark-serve", "qdrant", "qdrant-headless", "redis"} <= services


def test_kubernetes_images_use_one_placeholder_registry():
    docs = _k8s_docs()
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    mapped = {i["name"] for i in kustomization["images"]}
    hark_images = {c["image"] for d in docs for c in _containers(d) if _is_hark(c)}
    assert len(hark_images) == 1, hark_images
    image = next(iter(hark_images))
    name = image.rsplit(":", 1)[0]
    assert name in mapped
    # A first path component with a dot is a registry host: the name can never resolve to Docker Hub.
    assert "." in name.split("/")[0], image
    readme = (DEPLOY / "README.md").read_text()
    assert f"kustomize edit set image {name}=" in readme


def test_kubernetes_namespace_and_keda_address():
    docs = _k8s_docs()
    namespace = next(d for d in docs if d["kind"] == "Namespace")["metadata"]["name"]
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, doc["metadata"]["name"]
    from kombu.transport.redis import Channel

    from hark.workers.app import QUEUE

    redis_port = _find(docs, "Service", "redis")["spec"]["ports"][0]["port"]
    scaled = _find(docs, "ScaledObject", "hark-worker")
    triggers = {t["name"]: t for t in scaled["spec"]["triggers"]}
    for trigger in triggers.values():
        assert trigger["type"] == "redis"
        # KEDA resolves the address in its own namespace: it must be fully qualified.
        assert trigger["metadata"]["address"] == f"redis.{namespace}.svc.cluster.local:{redis_port}"
    broker = urlparse(_config(docs)["HARK_BROKER_URL"])
    for trigger in triggers.values():
        assert trigger["metadata"]["databaseIndex"] == broker.path.strip("/")
    lists = {t["metadata"]["listName"] for t in triggers.values()}
    # Waiting messages (the queue's list) plus delivered, unacknowledged ones (kombu's unacked hash).
    assert lists == {QUEUE, Channel.unacked_key}
    formula = scaled["spec"]["advanced"]["scalingModifiers"]["formula"]
    assert re.fullmatch(r"\s*(\w+)\s*\+\s*(\w+)\s*", formula) and set(re.findall(r"\w+", formula)) == set(triggers)
    assert _find(docs, "Deployment", "hark-worker")["metadata"]["name"] == scaled["spec"]["scaleTargetRef"]["name"]


def test_kubernetes_worker_grace_covers_the_longest_batch():
    docs = _k8s_docs()
    config = _config(docs)
    longest = _longest_batch_seconds(int(config["HARK_BATCH_FILES"]))
    visibility = int(config["HARK_VISIBILITY_TIMEOUT"])
    for name in ("hark-worker", "hark-worker-gpu"):
        grace = _pod_spec(_find(docs, "Deployment", name))["terminationGracePeriodSeconds"]
        assert longest < grace < visibility, (name, longest, grace, visibility)
    behavior = _find(docs, "ScaledObject", "hark-worker")["spec"]["advanced"]["horizontalPodAutoscalerConfig"]
    assert behavior["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_every_hark_container_bounds_onnx_runtime_threads():
    docs = _k8s_docs()
    for doc in docs:
        for container in _containers(doc):
            if _is_hark(container) and any(c[1] != "models" for c in _hark_command_lines(container)):
                threads = _env(container).get("HARK_ORT_THREADS", {}).get("value")
                assert threads and int(threads) >= 1, doc["metadata"]["name"]
                cpu = container["resources"]["requests"].get("cpu", "1")
                cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
                command = _hark_command_lines(container)[0]
                processes = int(command[command.index("--concurrency") + 1]) if "--concurrency" in command else 1
                assert processes * int(threads) <= max(1, cores), (doc["metadata"]["name"], processes, threads, cpu)


def test_kubernetes_secrets_are_referenced_consistently():
    docs = _k8s_docs()
    template = yaml.safe_load((K8S / "secret.example.yaml.tmpl").read_text())
    keys = set(template["stringData"])
    readme = (DEPLOY / "README.md").read_text()
    by_env: dict[str, set[str]] = {}
    for doc in docs:
        for container in _containers(doc):
            for name, entry in _env(container).items():
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == template["metadata"]["name"]
                    assert ref["key"] in keys, ref
                    by_env.setdefault(name, set()).add(ref["key"])
    # Qdrant's key and the key hark sends are one secret value.
    assert by_env["QDRANT__SERVICE__API_KEY"] == by_env["HARK_QDRANT_API_KEY"] == {"qdrant-api-key"}
    assert by_env["HARK_API_KEY"] == {"api-key"} and by_env["HARK_READ_ONLY_API_KEY"] == {"read-only-api-key"}
    for key in keys:  # the README's `kubectl create secret` line creates every key
        assert f"--from-literal={key}=" in readme, key
    for doc in docs:
        for container in _containers(doc):
            for name in ("HARK_QDRANT_API_KEY", "HARK_API_KEY", "QDRANT__SERVICE__API_KEY"):
                assert "value" not in _env(container).get(name, {}), f"{name} must come from the Secret"


def test_qdrant_cluster_forms_and_is_reachable():
    docs = _k8s_docs()
    qdrant = _find(docs, "StatefulSet", "qdrant")
    headless = _find(docs, "Service", qdrant["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    container = _containers(qdrant)[0]
    env = _env(container)
    assert env["QDRANT__CLUSTER__ENABLED"]["value"] == "true" and qdrant["spec"]["replicas"] >= 3
    p2p = headless["spec"]["ports"][0]["port"]
    assert env["QDRANT__CLUSTER__P2P__PORT"]["value"] == str(p2p)
    script = container["args"][0]
    assert f"qdrant-0.{headless['metadata']['name']}.${{POD_NAMESPACE}}.svc.cluster.local:{p2p}" in script
    assert "--bootstrap" in script and "--uri" in script
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    service = _find(docs, "Service", "qdrant")
    config = _config(docs)
    url = urlparse(config["HARK_QDRANT_URL"])
    assert url.hostname.split(".")[0] == "qdrant" and url.port in {p["port"] for p in service["spec"]["ports"]}
    assert int(config["HARK_SHARDS"]) <= qdrant["spec"]["replicas"]
    assert int(config["HARK_REPLICATION"]) >= 2, "with one copy per shard, any restarted peer loses shards"
    inference = urlparse(env["QDRANT__INFERENCE__ADDRESS"]["value"])
    serve = _find(docs, "Service", "hark-serve")
    assert inference.hostname.split(".")[0] == "hark-serve" and inference.path == "/infer"
    assert inference.port == serve["spec"]["ports"][0]["port"]


def test_kubernetes_redis_caps_memory_and_never_evicts():
    redis = _find(_k8s_docs(), "StatefulSet", "redis")
    container = _containers(redis)[0]
    args = container["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    maxmemory = args[args.index("--maxmemory") + 1]
    assert maxmemory.endswith("mb")
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and int(maxmemory[:-2]) < int(limit[:-2]) * 1024
    broker = urlparse(_config(_k8s_docs())["HARK_BROKER_URL"])
    assert broker.hostname.split(".")[0] == "redis" and broker.port == container["ports"][0]["containerPort"]


def test_serve_probes_ports_and_registry():
    docs = _k8s_docs()
    serve = _find(docs, "Deployment", "hark-serve")
    container = _containers(serve)[0]
    command = container["command"]
    port = int(command[command.index("--port") + 1])
    assert port == container["ports"][0]["containerPort"]
    service = _find(docs, "Service", "hark-serve")
    assert service["spec"]["ports"][0]["targetPort"] == port
    routes = "\n".join(p.read_text() for p in (ROOT / "plugin").rglob("*.py"))
    for probe, path in (("startupProbe", "/healthz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert container[probe]["httpGet"] == {"path": path, "port": port}, probe
        assert re.search(rf'@\w+\.get\("{path}"', routes), f"no {path} route in plugin/"
    # The startup probe gives a bundle load minutes before liveness may restart the pod.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    models_dir = _config(docs)["HARK_MODELS_DIR"]
    for doc in docs:
        for c in _containers(doc):
            for mount in c.get("volumeMounts", []):
                if mount["mountPath"] == models_dir:
                    # Only the registration Job writes the registry.
                    assert mount.get("readOnly", False) == (doc["kind"] != "Job"), doc["metadata"]["name"]


def test_registration_job_registers_an_uploaded_bundle():
    docs = _k8s_docs()
    job = _find(docs, "Job", "hark-register-model")
    container = _containers(job)[0]
    commands = _hark_command_lines(container)
    assert len(commands) == 1 and commands[0][:3] == ["hark", "models", "register"]
    bundle = commands[0][3]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert any(bundle.startswith(path + "/") for path in mounts), bundle
    assert _config(docs)["HARK_MODELS_DIR"] in mounts
    assert _pod_spec(job)["restartPolicy"] == "Never"
    readme = (DEPLOY / "README.md").read_text()
    assert f":{bundle}" in readme and "app=hark-register-model" in readme


def test_gpu_worker():
    docs = _k8s_docs()
    gpu = _find(docs, "Deployment", "hark-worker-gpu")
    container = _containers(gpu)[0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    command = container["command"]
    assert command[command.index("--pool") + 1] == "solo" and command[command.index("--device") + 1] == "cuda"
    assert _env(container)["HARK_DEVICE"]["value"] == "cuda"


def test_rwx_claims_name_a_storage_class():
    for doc in _k8s_docs():
        if doc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in doc["spec"]["accessModes"]:
            assert doc["spec"].get("storageClassName"), doc["metadata"]["name"]
    assert "storageClassName" in (DEPLOY / "README.md").read_text()


def test_kubernetes_pods_run_as_the_images_user():
    uid = re.search(r"useradd --uid (\d+)", (DEPLOY / "Dockerfile.runtime").read_text()).group(1)
    for doc in _k8s_docs():
        if any(_is_hark(c) for c in _containers(doc)):
            context = _pod_spec(doc)["securityContext"]
            assert context["runAsUser"] == context["fsGroup"] == int(uid), doc["metadata"]["name"]


# --- settings and documentation -----------------------------------------------------------------------------

def test_every_setting_named_in_deploy_files_exists():
    files = [DEPLOY / "docker-compose.yml", DEPLOY / "env.example", *sorted(K8S.glob("*.yaml")),
             K8S / "secret.example.yaml.tmpl", DEPLOY / "Dockerfile.runtime", DEPLOY / "Dockerfile.train"]
    text = "\n".join(p.read_text() for p in files)
    compose_only = {"HARK_AUDIO_DIR", "HARK_BIND_ADDRESS", "HARK_BUNDLE_SRC", "HARK_IMAGE"}
    named = set(re.findall(r"\bHARK_[A-Z_]+\b", text)) - compose_only
    unknown = named - set(SETTING_NAMES)
    assert not unknown, f"deploy files name settings hark does not have: {sorted(unknown)}"
    readme = (DEPLOY / "README.md").read_text()
    documented = set(re.findall(r"`(HARK_[A-Z_]+)`", readme))
    assert set(SETTING_NAMES) <= documented, sorted(set(SETTING_NAMES) - documented)
    for name in compose_only | {"QDRANT_API_KEY", "REDIS_MAXMEMORY"}:
        assert f"`{name}`" in readme, name


def test_every_setting_value_in_deploy_files_loads():
    """ConfigMap and compose values go through the real settings loader (types, allowed values)."""
    config = _config(_k8s_docs())
    Settings.load(toml_path=ROOT / "no-such.toml", env=dict(config))
    env = {k: v for k, v in _compose()["x-hark-env"].items() if "${" not in str(v)}
    Settings.load(toml_path=ROOT / "no-such.toml", env={k: str(v) for k, v in env.items()})


# --- images -------------------------------------------------------------------------------------------------

def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_dockerfiles_copy_every_package_and_run_real_commands():
    package_dirs = set(_pyproject()["tool"]["setuptools"]["package-dir"].values())
    for name in ("Dockerfile.runtime", "Dockerfile.train"):
        text = (DEPLOY / name).read_text()
        copied = set()
        for line in text.splitlines():
            if line.startswith("COPY "):
                for src in shlex.split(line)[1:-1]:
                    assert (ROOT / src).exists(), f"{name}: COPY {src} does not exist"
                    copied.add(src.rstrip("/"))
        assert package_dirs <= copied, f"{name} does not copy {sorted(package_dirs - copied)}"
        cmd = re.search(r'^CMD \[(.*)\]$', text, re.M)
        if cmd and '"hark"' in cmd.group(1):
            _check_hark_command([s.strip().strip('"') for s in cmd.group(1).split(",")])
        assert (DEPLOY / f"{name}.dockerignore").read_text().count(".venv")
    assert "torch" not in (DEPLOY / "Dockerfile.runtime").read_text().split("no torch")[1]


def test_every_subpackage_is_installed():
    """`pip install .` (the runtime image) installs only the packages pyproject lists: a sub-folder with an
    __init__.py that is missing there works in an editable checkout and is absent from the image."""
    setuptools = _pyproject()["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    for package, folder in setuptools["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            if any(p.startswith(".") or p == "__pycache__" for p in parts):
                continue
            name = ".".join((package, *parts))
            assert name in listed, f"{name} ({init.parent.relative_to(ROOT)}) is not in pyproject's packages"


def _lock() -> dict[str, str]:
    pins = {}
    for line in (DEPLOY / "requirements-runtime.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_runtime_lock_pins_every_dependency():
    from packaging.requirements import Requirement
    from packaging.version import Version

    pins = _lock()
    for spec in _pyproject()["project"]["dependencies"]:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{name} is not pinned in deploy/requirements-runtime.txt: regenerate it"
        assert Version(pins[name]) in req.specifier, (name, pins[name], str(req.specifier))
    assert "torch" not in pins and "onnxruntime" not in pins, "never onnxruntime next to onnxruntime-gpu"
    assert "-c deploy/requirements-runtime.txt" in (DEPLOY / "Dockerfile.runtime").read_text()


def test_onnxruntime_gpu_build_matches_the_cuda_base_image():
    base = re.search(r"^FROM nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime", (DEPLOY / "Dockerfile.runtime").read_text(),
                     re.M)
    assert base, "the runtime image must start from an nvidia/cuda cudnn runtime image"
    pinned = _lock()["onnxruntime-gpu"]
    info = pytest.importorskip("onnxruntime.capi.build_and_package_info")
    if info.__version__ != pinned or info.package_name != "onnxruntime-gpu":
        pytest.skip(f"installed onnxruntime is {info.package_name} {info.__version__}, the lock pins {pinned}")
    # The CUDA major the pinned wheel was built for must be the base image's (12.x builds fail on CUDA 13).
    assert info.cuda_version.split(".")[0] == base.group(1), (info.cuda_version, base.group(0))


def test_runtime_install_has_no_torch_and_imports(tmp_path):
    """The runtime image's install step: `pip install -c deploy/requirements-runtime.txt .` into a fresh venv,
    then import the runtime."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    done = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "-c", str(DEPLOY / "requirements-runtime.txt"), str(ROOT)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    check = ("import importlib.util, hark.plugin.serve, hark.plugin.search, hark.workers.app, hark.cli\n"
             "assert importlib.util.find_spec('torch') is None, 'torch was installed'\n"
             "print('ok')")
    done = subprocess.run([str(py), "-c", check], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    done = subprocess.run([str(venv / "bin" / "hark"), "train", "tiny", "--data", ".", "--out", "x"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "pip install 'hark[train]'" in done.stderr
