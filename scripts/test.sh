#!/usr/bin/env bash
# The README's second command: set up a virtual environment with the training stack and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[train,test]'
.venv/bin/python -m pytest -q "$@"
