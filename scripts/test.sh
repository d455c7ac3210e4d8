#!/usr/bin/env bash
# The README's second command: set up a virtual environment with the training stack and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[train,test]'
# The browser test drives the distribution's Chromium (Playwright's own browser download is not used).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "warning: could not install chromium; the browser test will be skipped" >&2
fi
# Browser screenshots (desktop and phone widths) are kept here as test artefacts.
export HARK_TEST_ARTIFACTS=${HARK_TEST_ARTIFACTS:-tests/artifacts}
.venv/bin/python -m pytest -q "$@"
