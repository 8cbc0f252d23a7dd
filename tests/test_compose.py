"""docker-compose.yml and the two images, checked without building them (no Docker daemon)."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import shutil
import subprocess
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO
from tests.test_locks import locks


def compose_command() -> list[str] | None:
    """Debian's docker-compose (1.29), else the docker compose plugin."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        found = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
        if found.returncode == 0:
            return ["docker", "compose"]
    return None


def compose_config(directory, *options: str) -> subprocess.CompletedProcess:
    command = compose_command()
    if command is None:
        pytest.skip(
            "neither docker-compose nor the docker compose plugin is installed "
            "(scripts/bootstrap.sh --tests installs Debian's docker-compose as root)"
        )
    return subprocess.run(
        [*command, "-f", "docker-compose.yml", "config", *options],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_is_valid_and_builds_the_web_side_without_torch():
    checked = compose_config(REPO, "-q")
    assert checked.returncode == 0, checked.stderr
    resolved = compose_config(REPO)
    assert resolved.returncode == 0, resolved.stderr
    services = yaml.safe_load(resolved.stdout)["services"]
    dockerfiles = {
        name: (service["build"].get("dockerfile") or "Dockerfile")
        for name, service in services.items()
        if "build" in service
    }
    assert dockerfiles == {
        "ml-backend": "Dockerfile.web",
        "worker": "Dockerfile",
        "trainer": "Dockerfile",
        "cli": "Dockerfile",
    }
    assert services["ml-backend"]["image"] != services["worker"]["image"]


def test_compose_check_fails_on_a_broken_file(tmp_path):
    """The check above has teeth: a misspelt key is an error."""
    text = (REPO / "docker-compose.yml").read_text()
    (tmp_path / "docker-compose.yml").write_text(text.replace("    ports:", "    portz:", 1))
    checked = compose_config(tmp_path, "-q")
    assert checked.returncode != 0
    assert "portz" in checked.stderr


def pip_installs(dockerfile: str) -> list[list[str]]:
    """The arguments of each ``pip install`` in a Dockerfile's RUN instructions."""
    text = re.sub(r"\\\n", " ", (REPO / dockerfile).read_text())
    found = []
    for line in text.splitlines():
        if not line.startswith("RUN "):
            continue
        for command in re.split(r"&&|;|\|\|", line.removeprefix("RUN ")):
            words = shlex.split(command)
            for k in range(len(words) - 1):
                if words[k].endswith("pip") and words[k + 1] == "install":
                    found.append(words[k + 2 :])
    return found


def forbidden_distributions() -> set[str]:
    """What provides the modules pyproject.toml's web-side import contract forbids (torch,
    numpy, OpenCV, ...), as installed here."""
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (web,) = [c for c in contracts["contracts"] if c["id"] == "web-side"]
    providers = importlib.metadata.packages_distributions()
    modules = [m for m in web["forbidden_modules"] if not m.startswith("worker")]
    assert all(m in providers for m in modules), modules
    return {canonicalize_name(d) for m in modules for d in providers[m]}


def test_the_web_image_installs_no_torch():
    """Statically: Dockerfile.web installs its lock, hash-checked, and the package with
    --no-deps; the lock's inputs carry pyproject.toml's bounds, and nothing in the lock (every
    package it would install, what they require included) is torch or another of the worker
    side's."""
    installs = pip_installs("Dockerfile.web")
    assert installs == [["--require-hashes", "-r", "requirements/web.txt"], ["--no-deps", "."]]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {canonicalize_name(Requirement(r).name): Requirement(r) for r in project}
    inputs = [Requirement(r) for r in requirement_lines(REPO / "requirements" / "web.in")]
    assert inputs
    for requirement in inputs:
        name = canonicalize_name(requirement.name)
        assert name in declared, f"{name} is not in pyproject.toml's dependencies"
        assert requirement.specifier == declared[name].specifier, name
    locked = {p.name for p in locks.read_lock(REPO / "requirements" / "web.txt")}
    assert {canonicalize_name(r.name) for r in inputs} <= locked
    assert not locked & forbidden_distributions(), locked & forbidden_distributions()


def requirement_lines(path) -> list[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def test_the_worker_image_installs_the_worker_side_from_its_lock():
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    assert "python scripts/locks.py install requirements/run.txt" in text
    assert ["--no-deps", "."] in pip_installs("Dockerfile")
    copied = re.findall(r"^COPY (\S+) ", text, flags=re.MULTILINE)
    assert {"requirements/run.txt", "scripts/locks.py"} <= set(copied)


def test_the_worker_host_file_joins_a_stack_by_its_addresses_and_needs_them():
    """docker-compose.worker.yml: prediction workers only, by REDIS_URL and LABEL_STUDIO_URL,
    and a clear refusal without REDIS_URL."""
    import os

    command = compose_command()
    if command is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LABEL_STUDIO_URL")}
    joined = {"REDIS_URL": "redis://first:6379/0", "LABEL_STUDIO_URL": "http://first:8080"}

    def config(extra: dict) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*command, "-f", "docker-compose.worker.yml", "config"],
            cwd=REPO,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )

    resolved = config(joined)
    assert resolved.returncode == 0, resolved.stderr
    (worker,) = yaml.safe_load(resolved.stdout)["services"].values()
    assert worker["command"] == ["worker"] and worker["build"].get("dockerfile", "Dockerfile")
    assert worker["environment"]["REDIS_URL"] == joined["REDIS_URL"]
    assert worker["environment"]["LABEL_STUDIO_URL"] == joined["LABEL_STUDIO_URL"]
    assert worker["environment"]["MODEL_DIR"] == "/models"
    refused = config({"LABEL_STUDIO_URL": "http://first:8080"})
    assert refused.returncode != 0 and "REDIS_URL" in refused.stderr
