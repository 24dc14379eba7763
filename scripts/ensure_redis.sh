#!/usr/bin/env bash
# Make sure a Redis answers on 127.0.0.1:${REDIS_PORT:-6379}; start a throwaway one if not.
set -euo pipefail
port=${REDIS_PORT:-6379}
ping() { (exec 3<>/dev/tcp/127.0.0.1/"$port" && printf 'PING\r\n' >&3 && timeout 2 head -c 5 <&3 | grep -q PONG) 2>/dev/null; }
if ping; then exit 0; fi
if ! command -v redis-server >/dev/null; then
    echo "ensure_redis: no Redis on 127.0.0.1:$port and redis-server is not installed" >&2
    exit 1
fi
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no >/dev/null
for _ in $(seq 50); do ping && exit 0; sleep 0.1; done
echo "ensure_redis: started redis-server but it does not answer on port $port" >&2
exit 1
