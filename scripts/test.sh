#!/usr/bin/env bash
# The full test suite: starts every service the tests need (idempotently), then runs every
# test of the workspace, then the simulation sweep (KINSUMER_SIM_SEEDS seeds, default 10,000)
# with its count printed. (The simulation is the testkit's feature `sim`; the testkit's own tests
# turn it on through their dev-dependency, so both commands below build and run it.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-rust.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
bash scripts/services.sh
cargo test --workspace --release -- --skip sweep
KINSUMER_SIM_SEEDS="${KINSUMER_SIM_SEEDS:-10000}" \
  cargo test --release -p kinsumer-testkit --test sim -- sweep --exact --nocapture
