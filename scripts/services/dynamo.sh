#!/usr/bin/env bash
# moto's server 5.2.5 (a DynamoDB API emulator) on 127.0.0.1:5000, plain HTTP, for the DynamoDB
# lease store's tests. Installs it into a venv if missing; starts it if nothing answers.
set -euo pipefail
dir=${KINSUMER_SERVICES_DIR:-/opt/kinsumer}
port=${KINSUMER_DYNAMO_PORT:-5000}
venv=$dir/moto
answering() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
if answering; then
  echo "moto (DynamoDB): already answering on $port"
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$dir"
  # A fresh Debian has python3 but not its venv module (ensurepip comes with python3-venv).
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
fi
if [ ! -x "$venv/bin/moto_server" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.2.5'
fi
nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >/var/log/moto.log 2>&1 &
for _ in $(seq 1 300); do
  if answering; then
    echo "moto (DynamoDB): started on $port"
    exit 0
  fi
  sleep 0.1
done
echo "moto (DynamoDB) did not start within 30 s; see /var/log/moto.log" >&2
exit 1
