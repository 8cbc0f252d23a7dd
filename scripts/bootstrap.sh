#!/usr/bin/env bash
# Create or update .venv/ with everything camsam needs; with --tests also what the test suite
# needs (pytest, ruff, playwright, import-linter and, as root on Debian, redis-server, chromium
# and docker-compose). Every package of the lock comes at its version and is checked against its
# hashes (pip and the build tools aside): requirements/run.txt, or requirements/test.txt with
# --tests (scripts/lock.sh writes them). Idempotent: a second run with the same locks returns
# at once.
#
#   scripts/bootstrap.sh [--tests]
#   TORCH_SPEC        another torch build than the lock's, e.g. 'torch==2.14.1+cpu' with
#                     PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu; the rest of the
#                     lock is then installed at its versions without hashes, in a new .venv/
#   TORCHVISION_SPEC  the torchvision to go with it (default: the newest that pip finds)
#   PYTHON            interpreter for the venv (default python3, must be >= 3.11)
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
tests=${1:-}
case $tests in
  "" | --tests) ;;
  *) echo "scripts/bootstrap.sh: unknown argument $tests (--tests, or none)" >&2 && exit 2 ;;
esac
lock=requirements/run.txt
[ "$tests" = --tests ] && lock=requirements/test.txt
stamp=.venv/.camsam-installed
# Which torch: another build than the last one's starts a new .venv/ (pip would keep the one
# installed wherever its version satisfies the lock, a CPU build among them).
torch_choice="${TORCH_SPEC:-lock} ${TORCHVISION_SPEC:-} ${PIP_EXTRA_INDEX_URL:-} $python"
digest=$(cat pyproject.toml scripts/bootstrap.sh scripts/locks.py requirements/run.txt \
  requirements/test.txt | { cat; echo "$torch_choice"; } | sha256sum | cut -c1-16)
want="$digest ${tests:-run}"

# The tests start their own redis-server on a free port, the end-to-end test drives Debian's
# chromium, and docker-compose.yml is checked with docker-compose (or the compose plugin);
# install them where we may. Running camsam needs none of them.
if [ "$tests" = --tests ]; then
  missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 \
    || missing+=(docker-compose)
  if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "camsam: installing ${missing[*]} (for the tests)" >&2
    { apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
      >/dev/null || echo "camsam: could not install ${missing[*]}: their tests will be skipped" >&2
  fi
fi

# A .venv with the tests' packages serves running camsam too.
have=$(cat "$stamp" 2>/dev/null || true)
if [ "$have" = "$want" ] || [ "$have" = "$digest --tests" ]; then
  exit 0
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "camsam needs Python >= 3.11 (set PYTHON=...)" >&2
  exit 1
}
if [ "$(cat .venv/.camsam-torch 2>/dev/null || true)" != "$torch_choice" ]; then
  "$python" -m venv --clear .venv
  echo "$torch_choice" > .venv/.camsam-torch
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }

echo "camsam: installing $lock into .venv/ (torch, SAM2 from source, the rest)" >&2
pip install -q --upgrade pip setuptools wheel
# sam2 ships no wheel: locks.py builds it against the lock's torch (scripts/locks.py says how).
torch_args=()
[ -n "${TORCH_SPEC:-}" ] && torch_args+=(--torch "$TORCH_SPEC")
[ -n "${TORCHVISION_SPEC:-}" ] && torch_args+=(--torchvision "$TORCHVISION_SPEC")
.venv/bin/python scripts/locks.py install "$lock" ${torch_args[@]+"${torch_args[@]}"}
# camsam itself, editable; what it requires is in the lock (its build gets the setuptools
# pyproject.toml asks for, in pip's isolated build environment).
pip install -q --no-deps -e .
echo "$want" > "$stamp"
