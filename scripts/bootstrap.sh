#!/usr/bin/env bash
# Create or update .venv/ with everything camsam needs; with --tests also what the test suite
# needs (pytest, ruff, playwright, import-linter and, as root on Debian, redis-server, chromium
# and docker-compose). Idempotent: a second run with the same pyproject.toml returns at once.
#
#   scripts/bootstrap.sh [--tests]
#   TORCH_SPEC        torch requirement (default torch==2.14.1)
#   TORCHVISION_SPEC  torchvision requirement (default torchvision==0.29.1)
#   PYTHON            interpreter for the venv (default python3, must be >= 3.11)
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.14.1}
torchvision_spec=${TORCHVISION_SPEC:-torchvision==0.29.1}
tests=${1:-}
stamp=.venv/.camsam-installed
digest=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
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
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }

echo "camsam: installing into .venv/ (torch, SAM2 from source, the rest)" >&2
pip install -q --upgrade pip setuptools wheel
pip install -q "$torch_spec" "$torchvision_spec"
# sam2 ships no wheel: build it against the torch above, without its optional CUDA extension
# (it only speeds up hole filling) and without build isolation, which would fetch another torch.
SAM2_BUILD_CUDA=0 pip install -q --no-build-isolation "sam2>=1.1"
if [ "$tests" = --tests ]; then pip install -q -e ".[test]"; else pip install -q -e .; fi
echo "$want" > "$stamp"
