"""Install from a lock file in requirements/, or compare an environment with one.

    python scripts/locks.py install requirements/test.txt [--torch SPEC --torchvision SPEC]
    python scripts/locks.py diff requirements/test.txt VENV_PYTHON
    python scripts/locks.py digest

``install`` runs pip with the interpreter that runs this script. Every file is checked against
the lock's hashes (pip's ``--require-hashes``), in two steps: everything but sam2, then sam2,
which ships no wheel and is built against the torch just installed, without build isolation
(which would fetch another torch) and without its optional CUDA extension. With ``--torch`` the
torch stack (torch, torchvision and what only they require, CUDA libraries among them) comes
from the specs given instead, and the rest of the lock is installed at its versions without
hashes, since another torch build may need other versions of its own libraries.

``diff`` lists the packages whose installed version differs from the lock, the new ones and the
ones gone: what an upgrade would change. ``digest`` is the SHA-256 of what the locks are made
from (pyproject.toml's requirements and requirements/*.in), which scripts/lock.sh writes at the
end of each lock and tests/test_locks.py recomputes.

Only the standard library: this runs before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BUILT_HERE = "sam2"
REPO = Path(__file__).resolve().parent.parent
DIGEST_LINE = "# camsam-inputs-sha256: "
TORCH = ("torch", "torchvision")
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(;[^\\]*)?")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Locked:
    """One package of a lock: its name, version, environment marker, the lines that pin it
    (requirement and hashes) and what requires it (the lock's ``# via`` comments)."""

    name: str
    version: str
    marker: str
    lines: list[str] = field(default_factory=list)
    via: set[str] = field(default_factory=set)

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}" + (f" ; {self.marker}" if self.marker else "")


def read_lock(path: Path) -> list[Locked]:
    """The packages of a lock written by ``uv pip compile --generate-hashes``.

    Raises:
        ValueError: a line that is neither a pin, a hash, a comment nor blank.
    """
    packages: list[Locked] = []
    in_via = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            in_via = False
            continue
        if not line[0].isspace() and not line.startswith("#"):
            match = REQUIREMENT.match(line)
            if match is None:
                raise ValueError(f"{path}:{number}: not a pinned requirement: {line!r}")
            name, version, marker = match.groups()
            marker = (marker or "").lstrip(";").strip()
            packages.append(Locked(canonical(name), version, marker, [line]))
            in_via = False
        elif stripped.startswith("--hash=") and packages:
            packages[-1].lines.append(line)
        elif stripped.startswith("# via") and packages:
            rest = stripped.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                packages[-1].via.add(via_name(rest))
        elif in_via and stripped.startswith("#   ") and packages:
            packages[-1].via.add(via_name(stripped.removeprefix("#").strip()))
        elif not stripped.startswith("#"):
            raise ValueError(f"{path}:{number}: unexpected line: {line!r}")
    return packages


def via_name(text: str) -> str:
    """``camsam (pyproject.toml)`` -> ``camsam``; ``-c requirements/pins.in`` stays as it is."""
    return text if text.startswith("-") else canonical(text.split()[0])


def torch_stack(packages: list[Locked]) -> set[str]:
    """torch, torchvision and every package that only they (directly or not) require."""
    stack = set(TORCH)
    grew = True
    while grew:
        grew = False
        for package in packages:
            required_by = {v for v in package.via if not v.startswith("-")}
            if package.name not in stack and required_by and required_by <= stack:
                stack.add(package.name)
                grew = True
    return stack


def inputs_digest(repo: Path = REPO) -> str:
    """SHA-256 over what the locks are made from: pyproject.toml's requirements (dependencies,
    optional dependencies, requires-python) and every requirements/*.in file."""
    import tomllib

    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    wanted = {
        key: project.get(key)
        for key in ("dependencies", "optional-dependencies", "requires-python")
    }
    inputs = {path.name: path.read_text() for path in sorted(repo.glob("requirements/*.in"))}
    text = json.dumps({"pyproject": wanted, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def written_digest(lock: Path) -> str | None:
    """The inputs' digest a lock was written with (its last such line), if any."""
    lines = [line for line in lock.read_text().splitlines() if line.startswith(DIGEST_LINE)]
    return lines[-1].removeprefix(DIGEST_LINE).strip() if lines else None


def pip(*args: str, env: dict | None = None) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "-q", *args]
    subprocess.run(command, check=True, env=env)


def write(lines: list[str], folder: str, name: str) -> str:
    path = Path(folder) / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def install(lock: Path, torch: str | None, torchvision: str | None) -> None:
    packages = read_lock(lock)
    built = [p for p in packages if p.name == BUILT_HERE]
    rest = [p for p in packages if p.name != BUILT_HERE]
    hashed = torch is None
    checking = ["--require-hashes"] if hashed else []
    with tempfile.TemporaryDirectory() as folder:
        if not hashed:
            pip(torch, torchvision or "torchvision")
            stack = torch_stack(packages)
            rest = [p for p in rest if p.name not in stack]
            # The torch chosen stays: nothing below may swap it for another build.
            held = [f"{name}=={installed_version(name)}" for name in TORCH]
            checking = ["-c", write(held, folder, "torch.txt")]

        def requirements(group: list[Locked]) -> list[str]:
            return [line for p in group for line in p.lines] if hashed else [p.pin for p in group]

        pip(*checking, "-r", write(requirements(rest), folder, "rest.txt"))
        if built:
            sam2 = write(requirements(built), folder, "sam2.txt")
            no_cuda = {**os.environ, "SAM2_BUILD_CUDA": "0"}
            pip(*checking, "--no-deps", "--no-build-isolation", "-r", sam2, env=no_cuda)


def installed_version(name: str) -> str:
    """The version of ``name`` installed for this interpreter."""
    return importlib.metadata.version(name)


def installed(python: str) -> dict[str, str]:
    """Every distribution in the environment of ``python``, by canonical name."""
    listed = subprocess.run(
        [python, "-m", "pip", "--disable-pip-version-check", "list", "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {canonical(d["name"]): d["version"] for d in json.loads(listed)}


def differences(locked: dict[str, str], have: dict[str, str]) -> list[str]:
    """One line for each package whose version moved, came or went, by name."""
    lines = []
    for name in sorted(locked.keys() | have.keys()):
        old, new = locked.get(name), have.get(name)
        if old == new:
            continue
        if old is None:
            lines.append(f"+ {name} {new} (not in the lock)")
        elif new is None:
            lines.append(f"- {name} {old} (locked, not installed)")
        else:
            lines.append(f"~ {name} {old} -> {new}")
    return lines


def diff(lock: Path, python: str) -> list[str]:
    """The changes between a lock and an environment. Pins for other platforms or Pythons
    (their markers false in that environment), and the tools every venv has, are left out."""
    packages = read_lock(lock)
    applies = json.loads(
        subprocess.run(
            [python, "-c", MARKER_CHECK, json.dumps([p.marker for p in packages])],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    locked = {p.name: p.version for p, apply in zip(packages, applies, strict=True) if apply}
    have = installed(python)
    for tool in ("pip", "setuptools", "wheel", "camsam"):
        if tool not in locked:
            have.pop(tool, None)
    return differences(locked, have)


# Evaluated by the environment's own interpreter, with its pip's vendored packaging.
MARKER_CHECK = """
import json, sys
from pip._vendor.packaging.markers import Marker
print(json.dumps([not m or Marker(m).evaluate() for m in json.loads(sys.argv[1])]))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    to_install = commands.add_parser("install", help="install a lock with this interpreter's pip")
    to_install.add_argument("lock", type=Path)
    to_install.add_argument("--torch", help="a torch requirement instead of the lock's")
    to_install.add_argument("--torchvision", help="a torchvision requirement (with --torch)")
    to_compare = commands.add_parser("diff", help="what an environment changes against a lock")
    to_compare.add_argument("lock", type=Path)
    to_compare.add_argument("python", help="the environment's interpreter")
    commands.add_parser("digest", help="the digest of the locks' inputs")
    args = parser.parse_args(argv)
    if args.command == "digest":
        print(inputs_digest())
        return 0
    if args.command == "install":
        if args.torchvision and not args.torch:
            parser.error("--torchvision needs --torch")
        install(args.lock, args.torch, args.torchvision)
        return 0
    lines = diff(args.lock, args.python)
    print("\n".join(lines) if lines else "no change")
    return 0


if __name__ == "__main__":
    sys.exit(main())
