#!/usr/bin/env bash
# The main job on a fresh machine: set up, generate the default data set, compare methods.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
data=${DATA:-data/demo.parquet}
if [ ! -f "$data" ]; then
    .venv/bin/python -m trainer synth --out "$data" --items 5000 --users 3000 --seed 0
fi
.venv/bin/python -m trainer compare --data "$data" --methods pop,itemcf,youtube --m 200 \
    --json runs/demo/compare.json
