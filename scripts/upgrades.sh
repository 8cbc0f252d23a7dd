#!/usr/bin/env bash
# What the next releases of camsam's dependencies would do, learnt before a user meets them.
# Two fresh venvs take the newest versions allowed: .venv-latest/ by pyproject.toml (camsam and
# its test extras; torch the newest pip may install here) and .venv-latest-label-studio/ by
# Label Studio 1.23.2's own requirements, with none of requirements/label-studio.in's bounds.
# Then the test suite runs in them, and the report says what moved against the locks and how
# the suite fared: .upgrades/report.md (also printed). Exit status: the suite's.
#
#   scripts/upgrades.sh [PYTEST ARGS...]      (make upgrades; default: the whole suite)
#
# A green report means `scripts/lock.sh --upgrade` can be taken (README, "Upgrades"); a red one
# names the package to bound, in pyproject.toml or requirements/*.in, before a user installs it.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=.upgrades
mkdir -p "$out"
pip() { "$1/bin/python" -m pip --disable-pip-version-check install -q "${@:2}"; }

set -e
rm -rf .venv-latest .venv-latest-label-studio
"$python" -m venv .venv-latest
pip .venv-latest --upgrade pip setuptools wheel
pip .venv-latest --upgrade torch torchvision
SAM2_BUILD_CUDA=0 pip .venv-latest --upgrade --no-build-isolation sam2
pip .venv-latest --upgrade --upgrade-strategy eager -e ".[test]"
"$python" -m venv .venv-latest-label-studio
pip .venv-latest-label-studio --upgrade pip
pip .venv-latest-label-studio "$(grep -m1 '^label-studio==' requirements/label-studio.in)"
set +e

CAMSAM_LABEL_STUDIO_VENV=$PWD/.venv-latest-label-studio \
  .venv-latest/bin/python -m pytest -q -p no:cacheprovider "${@:-tests}" 2>&1 \
  | tee "$out/pytest.log"
status=${PIPESTATUS[0]}

{
  echo "# Upgrades checked $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Test suite with the newest versions: $( [ "$status" = 0 ] && echo passed || echo "FAILED (exit $status)")"
  echo "($(tail -1 "$out/pytest.log"); the whole log in $out/pytest.log)"
  if [ "$status" != 0 ]; then
    echo
    echo '```'
    grep -E '^E   ' "$out/pytest.log" | awk '!seen[$0]++' | tail -25
    echo '```'
  fi
  echo
  echo "## camsam (.venv-latest/ against requirements/test.txt)"
  echo '```'
  "$python" scripts/locks.py diff requirements/test.txt .venv-latest/bin/python
  echo '```'
  echo
  echo "## Label Studio (.venv-latest-label-studio/ against requirements/label-studio.txt)"
  echo '```'
  "$python" scripts/locks.py diff requirements/label-studio.txt .venv-latest-label-studio/bin/python
  echo '```'
} > "$out/report.md"
cat "$out/report.md"
exit "$status"
