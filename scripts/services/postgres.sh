#!/usr/bin/env bash
# PostgreSQL for kinsumer-postgres's tests, idempotently: installs Debian's `postgresql` if it
# is missing, starts the cluster if nothing answers on 127.0.0.1:5432, makes sure TCP login
# works for the tests' default URL (postgres://postgres:postgres@127.0.0.1:5432/postgres) and
# waits until the server answers. Runs as root on Debian; exits non-zero on failure.
set -euo pipefail

HOST=127.0.0.1
PORT=5432
PASSWORD=postgres

log() { echo "postgres.sh: $*"; }

if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  log "installing postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi

# The newest installed major version.
VERSION=$(ls /usr/lib/postgresql | sort -n | tail -1)
BIN=/usr/lib/postgresql/$VERSION/bin
[ -x "$BIN/postgres" ] || { log "no server binary under $BIN"; exit 1; }

ready() { pg_isready -q -h "$HOST" -p "$PORT" -t 1 >/dev/null 2>&1; }

if ! ready; then
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $1, $2}' | grep -qx "$VERSION main"; then
    log "creating cluster $VERSION/main"
    pg_createcluster "$VERSION" main --port "$PORT" >/dev/null
  fi
  log "starting cluster $VERSION/main"
  # Exits 2 when the cluster is already running (e.g. on another address): the wait decides.
  pg_ctlcluster --skip-systemctl-redirect "$VERSION" main start || true
fi

for _ in $(seq 1 60); do
  ready && break
  sleep 0.5
done
ready || { log "PostgreSQL does not answer on $HOST:$PORT after 30 s"; exit 1; }

# TCP login with a password: set it once (harmless when trust auth is configured, needed for
# the md5/scram-sha-256 rules of a fresh Debian install).
if ! PGPASSWORD=$PASSWORD psql -h "$HOST" -p "$PORT" -U postgres -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
  log "setting the postgres user's password"
  runuser -u postgres -- psql -p "$PORT" -q -c "ALTER USER postgres PASSWORD '$PASSWORD'" >/dev/null
fi
PGPASSWORD=$PASSWORD psql -h "$HOST" -p "$PORT" -U postgres -d postgres -tAc 'SELECT 1' >/dev/null \
  || { log "cannot log in as postgres over TCP at $HOST:$PORT"; exit 1; }
log "PostgreSQL $VERSION ready on $HOST:$PORT"
