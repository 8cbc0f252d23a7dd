"""The layers of docs/architecture.md, kept by import-linter (contracts in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

LINT = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"]


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [*LINT, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_import_contracts_hold():
    result = lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_import_contracts_fail_on_forbidden_imports(tmp_path):
    """A copy of the tree with three forbidden imports: each breaks its contract."""
    for part in ("worker", "ml_backend"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    additions = {
        "ml_backend/protocol.py": "import torch  # noqa\n",  # the web side loads torch
        "worker/pipeline/masks.py": "from worker.training import job  # noqa\n",  # inference
        "worker/contract/store.py": "import worker.pipeline.checkpoint  # noqa\n",  # upward
    }
    for path, line in additions.items():
        with open(tmp_path / path, "a") as f:
            f.write(line)
    result = lint(tmp_path)
    assert result.returncode != 0
    out = result.stdout
    assert "worker is layered: each part imports only the parts below it BROKEN" in out
    assert "the web side imports only the worker's torch-free contract BROKEN" in out
    assert "ml_backend.protocol -> torch" in out
    assert "worker.pipeline.masks -> worker.training" in out
    assert "worker.contract.store -> worker.pipeline.checkpoint" in out


def test_the_web_app_and_the_command_line_parser_load_no_torch(tmp_path):
    """What static contracts cannot see: a library that imports torch when the web app starts,
    or the parser that ``camsam serve`` forks its web workers from."""
    code = (
        "import sys; from ml_backend.app import create_app; "
        f"app = create_app({{'MODEL_DIR': {str(tmp_path)!r}, "
        "'REDIS_URL': 'redis://127.0.0.1:1/0'}); "
        "app.test_client().get('/health'); "
        "from worker.cli.main import build_parser; build_parser(); "
        "from worker.contract.label_config import load_label_config; "
        "load_label_config('label_config.xml'); "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode == 0
