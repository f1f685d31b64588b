#!/usr/bin/env bash
# Builds (or reuses) the project's virtual environment at .venv/.
# Reproducible: every package is pinned in constraints.txt, so pip never backtracks.
# The dependency set is rebuilt only when constraints.txt changes; the project itself
# is reinstalled (editable, seconds) when setup.py changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
deps_stamp=.venv/.deps-$(sha256sum constraints.txt | cut -c1-16)
proj_stamp=.venv/.project-$(cat setup.py constraints.txt | sha256sum | cut -c1-16)
[ -f "$proj_stamp" ] && exit 0
log=$(mktemp -t setup_env.XXXXXX.log)
pip_install() {  # quiet on success; the whole log on failure
  if ! .venv/bin/python -m pip install --ignore-requires-python -c constraints.txt "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2; echo "error: pip install failed (log: $log)" >&2; exit 1
  fi
}
if [ ! -f "$deps_stamp" ]; then
  if ! "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
    echo "error: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1
  fi
  echo "Building .venv with $($PYTHON --version) (about 4 minutes, 3.4 GB)..."
  rm -rf .venv
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "pip==24.3.1" \
    >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
  # --ignore-requires-python: TFX 1.16 declares python<3.11, yet every binary it needs
  # ships cp311 wheels.
  pip_install -e ".[test]"
  touch "$deps_stamp"
else
  echo "Reinstalling the project into .venv (setup.py changed)..."
  pip_install --no-deps -e ".[test]"
fi
rm -f .venv/.project-*
touch "$proj_stamp"
echo "Environment ready: .venv"
