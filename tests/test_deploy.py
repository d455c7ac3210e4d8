"""Deployment files: they parse, and every image, command, flag and setting they name exists."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hark.cli import build_parser
from hark.settings import SETTING_NAMES

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PINNED = re.compile(r"^[\w./-]+:v?\d+(\.\d+)+[\w.-]*$")


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _k8s_docs() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", [])


def _check_hark_command(command: list[str]) -> None:
    """A `hark ...` command line must parse with the real CLI parser: no unknown command or flag."""
    assert command[0] == "hark", command
    args, extra = build_parser().parse_known_args(command[1:])
    assert not extra, f"unknown arguments {extra} in {command}"
    assert args.func is not None


def test_compose_services_images_and_commands():
    compose = _compose()
    services = compose["services"]
    assert {"qdrant", "redis", "serve", "worker", "worker-gpu", "beat"} <= set(services)
    built = {s["image"] for s in services.values() if "build" in s}
    for name, service in services.items():
        image = service["image"]
        if "build" in service:
            assert (ROOT / service["build"]["dockerfile"]).is_file()
        elif image not in built:
            assert PINNED.match(image), f"{name}: third-party image {image} must be pinned"
        command = service.get("command")
        if command and command[0] == "hark":
            _check_hark_command(command)
    assert "--maxmemory-policy" in services["redis"]["command"] and "noeviction" in services["redis"]["command"]
    assert services["qdrant"]["environment"]["QDRANT__INFERENCE__ADDRESS"].endswith(":8000/infer")
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert "healthcheck" in services["serve"] and "healthcheck" in services["qdrant"]
    assert set(compose["volumes"]) >= {"qdrant_storage", "models"}


def test_every_setting_named_in_deploy_files_exists():
    text = "\n".join(p.read_text() for p in [DEPLOY / "docker-compose.yml", *sorted((DEPLOY / "k8s").glob("*.yaml")),
                                            DEPLOY / "Dockerfile.runtime", DEPLOY / "Dockerfile.train"])
    named = set(re.findall(r"\bHARK_[A-Z_]+\b", text)) - {"HARK_AUDIO_DIR"}  # compose-only host path
    unknown = named - set(SETTING_NAMES)
    assert not unknown, f"deploy files name settings hark does not have: {sorted(unknown)}"
    documented = set(re.findall(r"`(HARK_[A-Z_]+)`", (DEPLOY / "README.md").read_text()))
    assert set(SETTING_NAMES) <= documented, sorted(set(SETTING_NAMES) - documented)


def test_kubernetes_manifests():
    docs = _k8s_docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("StatefulSet", "qdrant") in kinds and ("Deployment", "hark-serve") in kinds
    assert ("Deployment", "hark-worker") in kinds and ("ScaledObject", "hark-worker") in kinds
    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    for doc in docs:
        for container in _containers(doc):
            if container.get("command", [""])[0] == "hark":
                _check_hark_command(container["command"])
            image = container["image"]
            assert image.startswith("hark-runtime") or PINNED.match(image), image
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps
        volumes = doc.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", [])
        for volume in volumes:
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
    qdrant = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "qdrant")
    env = {e["name"]: e["value"] for e in _containers(qdrant)[0]["env"]}
    assert env["QDRANT__CLUSTER__ENABLED"] == "true" and qdrant["spec"]["replicas"] >= 3
    assert "hark-serve" in services and "qdrant" in services and "redis" in services


def test_dockerfiles_copy_what_exists_and_run_real_commands():
    for name in ("Dockerfile.runtime", "Dockerfile.train"):
        text = (DEPLOY / name).read_text()
        for line in text.splitlines():
            if line.startswith("COPY "):
                for src in shlex.split(line)[1:-1]:
                    assert (ROOT / src).exists(), f"{name}: COPY {src} does not exist"
        cmd = re.search(r'^CMD \[(.*)\]$', text, re.M)
        if cmd and '"hark"' in cmd.group(1):
            _check_hark_command([s.strip().strip('"') for s in cmd.group(1).split(",")])
    assert "torch" not in (DEPLOY / "Dockerfile.runtime").read_text().split("no torch")[1]


def test_runtime_install_has_no_torch_and_imports(tmp_path):
    """The runtime image's install step: a plain `pip install .` into a fresh venv, then import the runtime."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    done = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    check = ("import importlib.util, hark.plugin.service, hark.plugin.search, hark.workers.app, hark.cli\n"
             "assert importlib.util.find_spec('torch') is None, 'torch was installed'\n"
             "print('ok')")
    done = subprocess.run([str(py), "-c", check], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    done = subprocess.run([str(venv / "bin" / "hark"), "train", "tiny", "--data", ".", "--out", "x"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "pip install 'hark[train]'" in done.stderr
