#!/bin/sh
# One-shot trainer job: train JTM on the bundled default (synthetic) data set, export, and
# publish into the shared registry, announcing the new version on Redis. Settings from env.
set -eu
DATA=${JTM_TRAIN_DATA:-/work/data/default.parquet}
REGISTRY=${JTM_REGISTRY:-/registry}
RUN=/work/runs/$(date -u +%Y%m%dT%H%M%S)
if [ ! -f "$DATA" ]; then
    python -m trainer synth --out "$DATA" --items "${JTM_SYNTH_ITEMS:-3000}" --users "${JTM_SYNTH_USERS:-2000}" --seed 0
fi
python -m trainer train --data "$DATA" --method "${JTM_METHOD:-jtm}" --out "$RUN" \
    --epochs "${JTM_EPOCHS:-3}" --iterations "${JTM_ITERATIONS:-1}" --retrain-epochs 1 \
    --publish "$REGISTRY" ${JTM_REDIS_URL:+--redis-url "$JTM_REDIS_URL"}
