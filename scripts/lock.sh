#!/usr/bin/env bash
# Write the lock files in requirements/ from pyproject.toml and the .in files beside them: exact
# versions with every file's hash, for every platform and Python >= 3.11 (uv's universal
# resolution). The installs read only these: scripts/bootstrap.sh (run.txt, test.txt), the
# Dockerfiles (run.txt, web.txt) and the tests' Label Studio (label-studio.txt).
#
#   scripts/lock.sh            keep every locked version the inputs still allow (after a change
#                              to pyproject.toml or an .in file: only what it touches moves)
#   scripts/lock.sh --upgrade  the newest versions the inputs allow today (README, "Upgrades")
#
# uv itself comes from PyPI into .venv-tools/ at the version below.
set -euo pipefail
cd "$(dirname "$0")/.."
uv_version=0.13.10
uv=.venv-tools/bin/uv
if ! "$uv" --version 2>/dev/null | grep -q " $uv_version\b"; then
  python3 -m venv .venv-tools
  .venv-tools/bin/python -m pip install -q --disable-pip-version-check "uv==$uv_version"
fi
compile() {
  "$uv" pip compile --quiet --universal --python-version 3.11 --generate-hashes \
    --custom-compile-command "scripts/lock.sh" "$@"
}
compile "$@" pyproject.toml -c requirements/pins.in -o requirements/run.txt
compile "$@" pyproject.toml --extra test -c requirements/pins.in -o requirements/test.txt
# The web image takes the worker image's versions of what both install.
compile "$@" requirements/web.in -c requirements/run.txt -o requirements/web.txt
compile "$@" requirements/label-studio.in -o requirements/label-studio.txt
echo "camsam: requirements/*.txt written; git diff requirements/ shows what moved" >&2
