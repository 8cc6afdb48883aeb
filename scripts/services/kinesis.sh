#!/usr/bin/env bash
# kinesis-local 0.6.2 (kinesis-mock compiled to JavaScript) on 127.0.0.1:4567, plain HTTP, for
# the Kinesis tests. Installs Node.js and the package if missing; starts it if nothing answers.
set -euo pipefail
dir=${KINSUMER_SERVICES_DIR:-/opt/kinsumer}
port=${KINSUMER_KINESIS_PORT:-4567}
pkg=$dir/kinesis-local/node_modules/kinesis-local
answering() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
if answering; then
  echo "kinesis-local: already answering on $port"
  exit 0
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -f "$pkg/main.js" ]; then
  mkdir -p "$dir"
  npm install --no-audit --no-fund --prefix "$dir/kinesis-local" kinesis-local@0.6.2 >/dev/null
fi
# It crashes without KINESIS_MOCK_CERT_PATH (the package's own server.json); the *_DURATION
# settings make stream operations take 20 ms instead of seconds.
env KINESIS_MOCK_PLAIN_PORT="$port" KINESIS_MOCK_TLS_PORT="$((port + 1))" \
  KINESIS_MOCK_CERT_PATH="$pkg/server.json" LOG_LEVEL=WARN SHARD_LIMIT=1000 \
  CREATE_STREAM_DURATION=20ms DELETE_STREAM_DURATION=20ms SPLIT_SHARD_DURATION=20ms \
  MERGE_SHARDS_DURATION=20ms UPDATE_SHARD_COUNT_DURATION=20ms \
  REGISTER_STREAM_CONSUMER_DURATION=20ms DEREGISTER_STREAM_CONSUMER_DURATION=20ms \
  nohup node "$pkg/main.js" >/var/log/kinesis-local.log 2>&1 &
for _ in $(seq 1 150); do
  if answering; then
    echo "kinesis-local: started on $port"
    exit 0
  fi
  sleep 0.1
done
echo "kinesis-local did not start within 15 s; see /var/log/kinesis-local.log" >&2
exit 1
