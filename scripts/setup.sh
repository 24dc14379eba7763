#!/usr/bin/env bash
# Create .venv and install the project with every extra. Idempotent: re-runs only when
# pyproject.toml changed. torch is pinned to the CPU build first, so the `train` extra's
# range (<2.14) is already satisfied and pip never fetches a multi-GB CUDA wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "setup: installing into .venv (first run takes a few minutes)" >&2
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[train,serve,dev]"
echo "$want" > "$stamp"
