#!/usr/bin/env bash
# Install fxparam with its test dependencies and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/_install.sh dev
export TRITON_INTERPRET=1
exec "${PYTHON:-python3}" -m pytest -q "$@"
