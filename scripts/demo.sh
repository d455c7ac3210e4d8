#!/usr/bin/env bash
# The README's first command: set up a virtual environment and run the main job (`hark demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[train]'
.venv/bin/hark demo "$@"
