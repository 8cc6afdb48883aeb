#!/usr/bin/env bash
# Redis for the kinsumer-redis tests, idempotently: installs redis-server if missing, starts it
# on 127.0.0.1:6379 if nothing answers there, and waits (bounded) until it answers PONG.
# Exits non-zero if Redis cannot be made to answer.
set -euo pipefail

HOST=127.0.0.1
PORT=6379

answers() {
  [ "$(redis-cli -h "$HOST" -p "$PORT" ping 2>/dev/null || true)" = "PONG" ]
}

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "redis: installing redis-server"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq redis-server >/dev/null
fi

if answers; then
  echo "redis: already answering on $HOST:$PORT"
  exit 0
fi

echo "redis: starting redis-server on $HOST:$PORT"
redis-server --daemonize yes --bind "$HOST" --port "$PORT" --save "" --appendonly no

for _ in $(seq 1 100); do # up to ~10 s
  if answers; then
    echo "redis: answering on $HOST:$PORT"
    exit 0
  fi
  sleep 0.1
done
echo "redis: redis-server does not answer on $HOST:$PORT" >&2
exit 1
