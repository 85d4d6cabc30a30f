#!/usr/bin/env bash
# Shared install step: a CPU torch first where none is installed (a bare `torch`
# requirement would otherwise pull a multi-GB CUDA build), then fxparam itself.
set -euo pipefail
extras="${1:-plot}"
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "[fxparam] torch not found: installing the CPU build torch==2.13.0"
    "$PY" -m pip install --quiet "torch==2.13.0" \
        || "$PY" -m pip install --quiet "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
fi
"$PY" -m pip install --quiet -e ".[${extras}]"
