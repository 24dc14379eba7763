#!/usr/bin/env bash
# The main job on a fresh machine: set up, generate the default data set, train JTM on it,
# export the artifact, and serve it on http://127.0.0.1:${PORT:-8000}.
# Re-running reuses the artifact; FRESH=1 retrains.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
PY=.venv/bin/python
data=${DATA:-data/demo.parquet}
run=runs/demo
artifact=artifacts/demo
port=${PORT:-8000}
if [ ! -f "$data" ]; then
    $PY -m trainer synth --out "$data" --items 3000 --users 2000 --seed 0
fi
if [ -n "${FRESH:-}" ]; then
    rm -rf "$run" "$artifact"
fi
if [ ! -f "$artifact/manifest.json" ]; then
    rm -rf "$run" "$artifact"
    $PY -m trainer train --data "$data" --method jtm --out "$run" --epochs 3 --iterations 1 \
        --retrain-epochs 1 --export "$artifact"
fi
cat <<MSG

Serving $artifact on http://127.0.0.1:$port  (Ctrl-C stops). Try, from another terminal:

  curl -s -X POST http://127.0.0.1:$port/v1/recommend -H 'content-type: application/json' \\
       -d '{"history": [5000714, 5011228, 5016688], "k": 5, "exclude_seen": true}'

MSG
exec $PY -m service --artifact "$artifact" --port "$port"
