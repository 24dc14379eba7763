#!/usr/bin/env bash
# The project's test command: set up, make sure Redis runs, run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/ensure_redis.sh
exec .venv/bin/python -m pytest -q "$@"
