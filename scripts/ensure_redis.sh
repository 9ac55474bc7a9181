#!/usr/bin/env bash
# Make sure a Redis server answers on 127.0.0.1:${CORDT1_REDIS_PORT:-6379}; start one if not.
set -euo pipefail
PORT=${CORDT1_REDIS_PORT:-6379}
if redis-cli -h 127.0.0.1 -p "$PORT" ping >/dev/null 2>&1; then
  exit 0
fi
DIR=${TMPDIR:-/tmp}/cordt1-redis-$PORT
mkdir -p "$DIR"
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --dir "$DIR" --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log"
for _ in $(seq 1 100); do
  redis-cli -h 127.0.0.1 -p "$PORT" ping >/dev/null 2>&1 && exit 0
  sleep 0.1
done
echo "ensure_redis: redis-server did not answer on port $PORT" >&2
exit 1
