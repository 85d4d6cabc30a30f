#!/usr/bin/env bash
# Install fxparam and run its main job on the built-in default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/_install.sh plot
exec "${PYTHON:-python3}" -m fxparam coord-check "$@"
