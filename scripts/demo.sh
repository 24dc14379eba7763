#!/usr/bin/env bash
# The main job on a fresh machine: set up, generate the default data set, train JTM on it,
# export the artifact, publish it into a local registry and serve it on
# http://127.0.0.1:${PORT:-8000}, with the learning loop running beside the service (no Redis):
# the service logs every event posted to it into a spool directory (JTM_SPOOL_DIR), `trainer
# ingest` moves them into the Parquet event log, and `trainer refresh` (every REFRESH_INTERVAL
# seconds, default 60) fine-tunes the served version on them and publishes the result when the
# quality gate passes; the service follows the registry and swaps to it. Ctrl-C stops all three.
# Re-running reuses the artifact, the registry and the log; FRESH=1 retrains and starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
PY=.venv/bin/python
data=${DATA:-data/demo.parquet}
run=runs/demo
artifact=artifacts/demo
registry=registry/demo
loop=runs/demo-loop  # spool/ (the service's event log), log/ (ingest's Parquet log), *.out
port=${PORT:-8000}
interval=${REFRESH_INTERVAL:-60}
if [ ! -f "$data" ]; then
    $PY -m trainer synth --out "$data" --items 3000 --users 2000 --seed 0
fi
if [ -n "${FRESH:-}" ]; then
    rm -rf "$run" "$artifact"
fi
# trainer.npz (the configuration and dense weights) is what refresh continues training from:
# an artifact exported without it is trained again.
if [ ! -f "$artifact/manifest.json" ] || [ ! -f "$artifact/trainer.npz" ]; then
    rm -rf "$run" "$artifact"
    $PY -m trainer train --data "$data" --method jtm --out "$run" --epochs 3 --iterations 1 \
        --retrain-epochs 1 --export "$artifact"
    # A new model starts a new loop: the registry's versions and the log's watermark were the old one's.
    rm -rf "$registry" "$loop"
fi
mkdir -p "$loop"
if [ ! -f "$registry/CURRENT" ]; then
    echo "publishing $artifact into the registry $registry"
    $PY -m trainer publish --artifact "$artifact" --registry "$registry"
fi

pids=()
stop() {
    trap - EXIT
    if [ ${#pids[@]} -gt 0 ]; then
        echo "stopping ingest and refresh (${pids[*]})"
        kill "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
$PY -m trainer ingest --spool "$loop/spool" --log "$loop/log" >"$loop/ingest.out" 2>&1 &
pids+=($!)
echo "ingest (pid $!): $loop/spool -> $loop/log, output in $loop/ingest.out"
$PY -m trainer refresh --registry "$registry" --log "$loop/log" --interval "$interval" >"$loop/refresh.out" 2>&1 &
pids+=($!)
echo "refresh (pid $!): every ${interval} s, the served version + $loop/log -> $registry, decisions in $loop/refresh.out"
cat <<MSG

Serving $registry (current: $(cat "$registry/CURRENT")) on http://127.0.0.1:$port  (Ctrl-C stops). Try, from another terminal:

  curl -s -X POST http://127.0.0.1:$port/v1/recommend -H 'content-type: application/json' \\
       -d '{"history": [5000714, 5011228, 5016688], "k": 5, "exclude_seen": true}'

Events posted to the service reach a new served version within ${interval} s or so (when the gate passes):

  curl -s -X POST http://127.0.0.1:$port/v1/events -H 'content-type: application/json' \\
       -d '{"events": [{"user_id": 7, "item_id": 5000714}, {"user_id": 7, "item_id": 5011228}, {"user_id": 7, "item_id": 5016688}]}'
  tail -f $loop/refresh.out
  curl -s http://127.0.0.1:$port/v1/model    # "refresh": the watermark and the last decision

MSG
JTM_SPOOL_DIR=$loop/spool $PY -m service --registry "$registry" --port "$port"
