#!/bin/sh
# One-shot trainer job: train JTM, export, and publish into the shared registry, announcing the
# new version on Redis. Settings from env. Without JTM_TRAIN_DATA it trains on the bundled
# default data set, generated here (synthetic, seeded: the one `make demo` uses); with it, on
# that log, and a missing file is an error rather than a silent switch to synthetic data.
set -eu
REGISTRY=${JTM_REGISTRY:-/registry}
RUN=/work/runs/$(date -u +%Y%m%dT%H%M%S)
if [ -n "${JTM_TRAIN_DATA:-}" ]; then
    DATA=$JTM_TRAIN_DATA
    if [ ! -f "$DATA" ]; then
        echo "error: JTM_TRAIN_DATA=$DATA: no such file" >&2
        exit 2
    fi
else
    DATA=/work/data/default.parquet
    if [ ! -f "$DATA" ]; then
        python -m trainer synth --out "$DATA" --items "${JTM_SYNTH_ITEMS:-3000}" --users "${JTM_SYNTH_USERS:-2000}" --seed 0
    fi
fi
python -m trainer train --data "$DATA" --method "${JTM_METHOD:-jtm}" --out "$RUN" \
    --epochs "${JTM_EPOCHS:-3}" --iterations "${JTM_ITERATIONS:-1}" --retrain-epochs 1 \
    --publish "$REGISTRY" ${JTM_REDIS_URL:+--redis-url "$JTM_REDIS_URL"}
