#!/usr/bin/env bash
# The project's test command: set up, make sure Redis runs (one started here keeps running
# afterwards), run the suite. Arguments go to pytest: `make test-fast` passes -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/ensure_redis.sh
exec .venv/bin/python -m pytest -q "$@"
