#!/usr/bin/env bash
# Label Studio 1.23.2 in a venv of its own, from requirements/label-studio.txt (versions and
# hashes; scripts/lock.sh writes it from requirements/label-studio.in): the Label Studio that the
# end-to-end tests and scripts/bench_label_studio.sh run. Prints the path of its `label-studio`
# command. A second run with the same lock returns at once.
#
#   scripts/label_studio_venv.sh [VENV]    (default .venv-label-studio)
#   PYTHON   interpreter for the venv (default python3)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$repo/.venv-label-studio}
lock=$repo/requirements/label-studio.txt
stamp=$venv/.camsam-label-studio
python=${PYTHON:-python3}
want=$({ sha256sum "$lock" "$repo/scripts/locks.py"; "$python" --version; } | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "camsam: installing Label Studio from $lock into $venv" >&2
  "$python" -m venv --clear "$venv"
  "$venv/bin/python" "$repo/scripts/locks.py" install "$lock" >&2
  echo "$want" > "$stamp"
fi
echo "$venv/bin/label-studio"
