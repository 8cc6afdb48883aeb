#!/usr/bin/env bash
# Starts every service the test suite needs, idempotently (they may already be running):
# each backend has its own scripts/services/NAME.sh, which installs its server if missing,
# starts it if it is not answering, and waits until it answers.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
scripts=(scripts/services/*.sh)
if [ ${#scripts[@]} -eq 0 ]; then
  echo "services: none needed yet (all tests run in memory)"
fi
for s in "${scripts[@]}"; do
  echo "services: $s"
  bash "$s"
done
