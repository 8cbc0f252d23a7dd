#!/usr/bin/env bash
# Write the lock files in requirements/ from pyproject.toml and the .in files beside them: exact
# versions with every file's hash, for every platform and Python >= 3.11 (uv's universal
# resolution). The installs read only these: scripts/bootstrap.sh (run.txt, test.txt), the
# Dockerfiles (run.txt, web.txt) and the tests' Label Studio (label-studio.txt). Each lock ends
# with a digest of those inputs, which tests/test_locks.py recomputes: an input changed without
# a new lock fails the suite.
#
#   scripts/lock.sh                 keep every locked version the inputs still allow (after a
#                                   change to pyproject.toml or an .in file: only what it
#                                   touches moves)
#   scripts/lock.sh --upgrade       the newest versions the inputs allow today (README, "Upgrades")
#   scripts/lock.sh ... --out DIR   write the locks to DIR instead (scripts/upgrades.sh's
#                                   candidates), starting from requirements/'s versions
#
# uv itself comes from PyPI into .venv-tools/ at the version below.
set -euo pipefail
cd "$(dirname "$0")/.."
out=requirements
options=()
while [ $# -gt 0 ]; do
  case $1 in
    --upgrade) options+=(--upgrade) ;;
    --out) out=${2:?--out needs a folder} && shift ;;
    *) echo "scripts/lock.sh: unknown argument $1 (--upgrade, --out DIR)" >&2 && exit 2 ;;
  esac
  shift
done
uv_version=0.13.10
uv=.venv-tools/bin/uv
if ! "$uv" --version 2>/dev/null | grep -q " $uv_version\b"; then
  python3 -m venv .venv-tools
  .venv-tools/bin/python -m pip install -q --disable-pip-version-check "uv==$uv_version"
fi
mkdir -p "$out"
if [ "$out" != requirements ]; then
  cp requirements/*.txt "$out"/  # the starting versions, which --upgrade replaces
fi
compile() {
  "$uv" pip compile --quiet --universal --python-version 3.11 --generate-hashes \
    --custom-compile-command "scripts/lock.sh" ${options[@]+"${options[@]}"} "$@"
}
compile pyproject.toml -c requirements/pins.in -o "$out/run.txt"
# The tests and the web image take the worker image's versions of what they share with it.
compile pyproject.toml --extra test -c requirements/pins.in -c "$out/run.txt" -o "$out/test.txt"
compile requirements/web.in -c "$out/run.txt" -o "$out/web.txt"
compile requirements/label-studio.in -o "$out/label-studio.txt"
digest=$(python3 scripts/locks.py digest)
for lock in run test web label-studio; do
  echo "# camsam-inputs-sha256: $digest" >> "$out/$lock.txt"
done
echo "camsam: $out/*.txt written; git diff $out/ shows what moved" >&2
