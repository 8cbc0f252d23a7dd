#!/usr/bin/env bash
# What the next releases of camsam's dependencies would do, learnt before a user meets them.
# Candidate locks with the newest versions the inputs allow today (`scripts/lock.sh --upgrade
# --out .upgrades/requirements`: pyproject.toml's ranges, requirements/*.in's bounds and pins)
# are installed into two fresh venvs, .venv-latest/ (camsam and its tests) and
# .venv-latest-label-studio/ (the tests' Label Studio); the test suite runs in them, and the
# report says how it fared and what moved against the committed locks: .upgrades/report.md
# (also printed). Exit status: the suite's (or 1 when the candidates cannot be installed).
#
#   scripts/upgrades.sh [PYTEST ARGS...]      (make upgrades; default: the whole suite)
#
# Green: `cp .upgrades/requirements/*.txt requirements/`, `make test`, commit (README,
# "Upgrades"). Red: the report names what broke; bound it in pyproject.toml or requirements/*.in
# and run this again.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=.upgrades
candidates=$out/requirements
rm -rf "$out" .venv-latest .venv-latest-label-studio
mkdir -p "$out"

report() {  # report.md from what is known so far; $1: the outcome line
  {
    echo "# Upgrades checked $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "$1"
    if [ -s "$out/failure.log" ]; then
      echo
      echo '```'
      tail -25 "$out/failure.log"
      echo '```'
    fi
    for pair in "camsam:test.txt:.venv-latest" "Label Studio:label-studio.txt:.venv-latest-label-studio"; do
      IFS=: read -r name lock venv <<< "$pair"
      [ -x "$venv/bin/python" ] || continue
      echo
      echo "## $name ($venv/ against requirements/$lock)"
      echo '```'
      "$python" scripts/locks.py diff "requirements/$lock" "$venv/bin/python"
      echo '```'
    done
  } > "$out/report.md"
  cat "$out/report.md"
}

step() {  # run a step; on failure, the report says which and why, and the script ends
  local what=$1 && shift
  if ! "$@" > "$out/step.log" 2>&1; then
    cp "$out/step.log" "$out/failure.log"
    report "Could not $what: the candidates are not installable as they are."
    exit 1
  fi
}

step "write the candidate locks" bash scripts/lock.sh --upgrade --out "$candidates"
step "make .venv-latest" "$python" -m venv .venv-latest
step "update its pip" .venv-latest/bin/python -m pip install -q --upgrade pip setuptools wheel
step "install camsam's candidate lock" \
  .venv-latest/bin/python scripts/locks.py install "$candidates/test.txt"
step "install camsam" .venv-latest/bin/python -m pip install -q --no-deps -e .
step "make .venv-latest-label-studio" "$python" -m venv .venv-latest-label-studio
step "install Label Studio's candidate lock" \
  .venv-latest-label-studio/bin/python scripts/locks.py install "$candidates/label-studio.txt"

CAMSAM_LABEL_STUDIO_VENV=$PWD/.venv-latest-label-studio \
  .venv-latest/bin/python -m pytest -q -p no:cacheprovider "${@:-tests}" > "$out/pytest.log" 2>&1
status=$?
summary="$(tail -1 "$out/pytest.log"); the whole log in $out/pytest.log"
if [ "$status" = 0 ]; then
  report "Test suite with the candidate locks: passed ($summary)."
else
  grep -E '^E   ' "$out/pytest.log" | awk '!seen[$0]++' > "$out/failure.log"
  report "Test suite with the candidate locks: FAILED, exit $status ($summary)."
fi
exit "$status"
