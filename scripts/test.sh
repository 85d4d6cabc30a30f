#!/usr/bin/env bash
# Install fxparam with its test dependencies and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/_install.sh dev
export TRITON_INTERPRET=1
# two workers (pytest-xdist): the suite is single-threaded Python, CI has 2 cores (FXPARAM_TEST_WORKERS=0: one process)
exec "${PYTHON:-python3}" -m pytest -q -n "${FXPARAM_TEST_WORKERS:-2}" "$@"
