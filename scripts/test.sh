#!/usr/bin/env bash
# The full test suite: starts every service the tests need (idempotently), then runs every
# test of the workspace, including the simulation sweep (KINSUMER_SIM_SEEDS, default 1000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-rust.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
bash scripts/services.sh
cargo test --workspace --release
