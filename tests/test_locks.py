"""The lock files in requirements/ and scripts/locks.py, which installs them.

The locks must agree with what they were made from (pyproject.toml, requirements/*.in): a bound
changed without `scripts/lock.sh` fails here, before an install takes a version nobody tested.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO

REQUIREMENTS = REPO / "requirements"


def load_locks():
    spec = importlib.util.spec_from_file_location("locks", REPO / "scripts" / "locks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["locks"] = module
    spec.loader.exec_module(module)
    return module


locks = load_locks()
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def input_requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def assert_locked_within(lock: Path, requirements: list[Requirement]) -> None:
    """Every requirement has a pin in the lock, and every pin of it is within its bounds."""
    pins: dict[str, list[str]] = {}
    for package in locks.read_lock(lock):
        pins.setdefault(package.name, []).append(package.version)
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock.name} lacks {name}: run scripts/lock.sh"
        for version in pins[name]:
            assert requirement.specifier.contains(Version(version), prereleases=True), (
                f"{lock.name} pins {name}=={version}, outside {requirement}: run scripts/lock.sh"
            )


@pytest.mark.parametrize(
    ("lock", "extras"), [("run.txt", []), ("test.txt", ["test"]), ("web.txt", None)]
)
def test_each_lock_holds_what_its_inputs_ask_within_their_bounds(lock, extras):
    if extras is None:
        wanted = input_requirements(REQUIREMENTS / "web.in")
    else:
        wanted = [Requirement(r) for r in PROJECT["dependencies"]]
        optional = PROJECT["optional-dependencies"]
        wanted += [Requirement(r) for extra in extras for r in optional[extra]]
        wanted += input_requirements(REQUIREMENTS / "pins.in")
    assert_locked_within(REQUIREMENTS / lock, wanted)


@pytest.mark.parametrize("lock", ["test.txt", "web.txt"])
def test_the_tests_and_the_web_image_take_the_worker_images_versions(lock):
    run = {(p.name, p.version) for p in locks.read_lock(REQUIREMENTS / "run.txt")}
    run_names = {name for name, _ in run}
    for package in locks.read_lock(REQUIREMENTS / lock):
        if package.name in run_names:
            assert (package.name, package.version) in run, package.name


@pytest.mark.parametrize("lock", ["run.txt", "test.txt", "web.txt", "label-studio.txt"])
def test_each_lock_was_written_from_the_inputs_as_they_are(lock):
    """pyproject.toml's requirements or an .in file changed (a requirement removed, an extra
    added, a bound moved) without `scripts/lock.sh`: the locks install what nobody asked for."""
    written = locks.written_digest(REQUIREMENTS / lock)
    assert written == locks.inputs_digest(), f"{lock} is older than its inputs: scripts/lock.sh"


def test_the_inputs_digest_sees_a_removed_requirement_and_an_added_extra(tmp_path):
    (tmp_path / "requirements").mkdir()
    for name in ("pyproject.toml", "requirements/pins.in", "requirements/web.in"):
        (tmp_path / name).write_text((REPO / name).read_text())
    before = locks.inputs_digest(tmp_path)
    pyproject = (tmp_path / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(pyproject.replace('    "matplotlib>=3.8",\n', ""))
    removed = locks.inputs_digest(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        pyproject.replace('"requests>=2.31"', '"requests[socks]>=2.31"')
    )
    extra = locks.inputs_digest(tmp_path)
    assert len({before, removed, extra}) == 3


def test_the_label_studio_lock_keeps_the_bounds_that_let_it_start():
    wanted = input_requirements(REQUIREMENTS / "label-studio.in")
    assert "label-studio==1.23.2" in {str(r) for r in wanted}
    assert "sentry-sdk<3" in {str(r) for r in wanted}
    assert_locked_within(REQUIREMENTS / "label-studio.txt", wanted)


@pytest.mark.parametrize("lock", ["run.txt", "test.txt", "web.txt", "label-studio.txt"])
def test_every_locked_package_has_its_hashes_and_a_valid_marker(lock):
    packages = locks.read_lock(REQUIREMENTS / lock)
    assert len(packages) > 10
    for package in packages:
        hashes = [line for line in package.lines[1:] if "--hash=sha256:" in line]
        assert hashes and len(hashes) == len(package.lines) - 1, package.name
        if package.marker:
            Marker(package.marker)


LOCK = """\
# a header
camsam-dep==1.0 \\
    --hash=sha256:aa
    # via camsam (pyproject.toml)
shared==2.0 \\
    --hash=sha256:bb \\
    --hash=sha256:cc
    # via
    #   camsam (pyproject.toml)
    #   torch
nvidia-lib==3.0 ; sys_platform == 'linux' \\
    --hash=sha256:dd
    # via torch
lib-of-lib==4.0 \\
    --hash=sha256:ee
    # via nvidia-lib
sam2==1.1.0 \\
    --hash=sha256:ff
    # via camsam (pyproject.toml)
torch==2.14.1 \\
    --hash=sha256:11
    # via
    #   -c requirements/pins.in
    #   camsam (pyproject.toml)
    #   sam2
"""


def test_a_lock_is_read_with_its_hashes_markers_and_dependants(tmp_path):
    path = tmp_path / "lock.txt"
    path.write_text(LOCK)
    packages = {p.name: p for p in locks.read_lock(path)}
    assert list(packages) == ["camsam-dep", "shared", "nvidia-lib", "lib-of-lib", "sam2", "torch"]
    assert packages["shared"].via == {"camsam", "torch"}
    assert packages["torch"].via == {"-c requirements/pins.in", "camsam", "sam2"}
    assert packages["nvidia-lib"].marker == "sys_platform == 'linux'"
    assert packages["nvidia-lib"].pin == "nvidia-lib==3.0 ; sys_platform == 'linux'"
    assert len(packages["shared"].lines) == 3
    assert locks.torch_stack(list(packages.values())) == {
        "torch",
        "torchvision",
        "nvidia-lib",
        "lib-of-lib",
    }


def test_a_lock_with_a_line_it_does_not_know_is_refused(tmp_path):
    path = tmp_path / "lock.txt"
    path.write_text(LOCK.replace("shared==2.0", "shared>=2.0"))
    with pytest.raises(ValueError, match="lock.txt:5: not a pinned requirement"):
        locks.read_lock(path)


def record_pip(monkeypatch) -> list[tuple]:
    """Each pip call install() makes: its arguments, the requirement files' text, and
    SAM2_BUILD_CUDA as the call sees it."""
    calls = []

    def record(*args, env=None):
        files = [Path(a).read_text() for a in args if a.endswith(".txt")]
        calls.append((args, files, (env or {}).get("SAM2_BUILD_CUDA")))

    monkeypatch.setattr(locks, "pip", record)
    return calls


def test_install_checks_every_hash_and_builds_sam2_against_the_torch_installed(
    tmp_path, monkeypatch
):
    path = tmp_path / "lock.txt"
    path.write_text(LOCK)
    calls = record_pip(monkeypatch)
    locks.install(path, None, None)
    (first, rest, _), (second, sam2, cuda) = calls
    assert first[0] == "--require-hashes" and "--no-build-isolation" not in first
    assert "sam2" not in rest[0] and "torch==2.14.1" in rest[0] and "sha256:dd" in rest[0]
    assert {"--require-hashes", "--no-deps", "--no-build-isolation"} <= set(second)
    assert sam2[0].startswith("sam2==1.1.0") and "sha256:ff" in sam2[0] and cuda == "0"


def test_install_with_another_torch_keeps_the_rest_at_its_versions_without_hashes(
    tmp_path, monkeypatch
):
    path = tmp_path / "lock.txt"
    path.write_text(LOCK)
    calls = record_pip(monkeypatch)
    installed = {"torch": "2.14.1+cpu", "torchvision": "0.29.1+cpu"}
    monkeypatch.setattr(locks, "installed_version", installed.get)
    locks.install(path, "torch==2.14.1+cpu", None)
    (torch, _, _), (_, (held, rest), _), (sam2_args, (held_again, sam2), cuda) = calls
    assert torch == ("torch==2.14.1+cpu", "torchvision")
    # the torch chosen is held while the rest installs, and the torch stack is left to it
    assert held.split() == held_again.split() == ["torch==2.14.1+cpu", "torchvision==0.29.1+cpu"]
    assert rest.split() == ["camsam-dep==1.0", "shared==2.0"]
    assert "--require-hashes" not in sam2_args and "--no-build-isolation" in sam2_args
    assert sam2.strip() == "sam2==1.1.0" and cuda == "0"


def test_differences_name_what_moved_came_and_went():
    locked = {"a": "1.0", "b": "2.0", "c": "3.0"}
    have = {"a": "1.0", "b": "2.1", "d": "4.0"}
    assert locks.differences(locked, have) == [
        "~ b 2.0 -> 2.1",
        "- c 3.0 (locked, not installed)",
        "+ d 4.0 (not in the lock)",
    ]


def test_diff_reads_an_environment_and_leaves_out_what_is_locked_for_other_platforms(tmp_path):
    pytest_version = importlib.metadata.version("pytest")
    path = tmp_path / "lock.txt"
    path.write_text(
        f"pytest=={pytest_version} \\\n    --hash=sha256:aa\n"
        "packaging==0.0.1 \\\n    --hash=sha256:bb\n"
        "elsewhere-only==1.0 ; sys_platform == 'plan9' \\\n    --hash=sha256:cc\n"
        "missing-here==1.0 \\\n    --hash=sha256:dd\n"
    )
    lines = locks.diff(path, sys.executable)
    packaging_now = importlib.metadata.version("packaging")
    assert f"~ packaging 0.0.1 -> {packaging_now}" in lines
    assert "- missing-here 1.0 (locked, not installed)" in lines
    assert not any(" pytest " in line or "elsewhere-only" in line for line in lines)
    assert any(line.startswith("+ ") for line in lines)
