#!/usr/bin/env bash
# Checks that the published crates would publish and build for their users:
# 1. `cargo package` of every published crate, each built from its own package (nothing reaches
#    outside it), against the others packaged alongside;
# 2. their docs as docs.rs builds them (every feature, `--cfg docsrs` for the feature badges),
#    warnings denied — on this stable toolchain, with RUSTC_BOOTSTRAP letting it take
#    `feature(doc_cfg)` as docs.rs's nightly does;
# 3. the workspace's declared `rust-version` (the MSRV) builds them: that toolchain is installed
#    with rustup (minimal profile) and checks every target.
# Separate target directories, so none of this invalidates the test build's cache.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
unpublished=(--exclude kinsumer-bench --exclude kinsumer-test-env --exclude xtask)
published=(-p kinsumer -p kinsumer-core -p kinsumer-testkit -p kinsumer-kinesis -p kinsumer-dynamo
  -p kinsumer-redis -p kinsumer-postgres)

echo "publish-check: cargo package" >&2
CARGO_TARGET_DIR=target/publish-check cargo package --quiet --workspace "${unpublished[@]}" --allow-dirty

echo "publish-check: docs as docs.rs builds them" >&2
RUSTC_BOOTSTRAP=1 RUSTDOCFLAGS="--cfg docsrs -D warnings" CARGO_TARGET_DIR=target/docsrs \
  cargo doc --quiet --no-deps --all-features "${published[@]}"

msrv=$(sed -nE 's/^rust-version = "([0-9.]+)"/\1/p' Cargo.toml)
echo "publish-check: rust-version $msrv builds every target" >&2
if ! command -v rustup >/dev/null 2>&1; then
  echo "publish-check: rustup is missing, so rust-version $msrv cannot be checked" >&2
  echo "publish-check: install Rust with rustup (bash scripts/ensure-rust.sh does on a fresh machine)" >&2
  if [ "${CI:-}" = "true" ]; then exit 1; fi
  exit 0
fi
rustup toolchain install "$msrv" --profile minimal >/dev/null 2>&1 || rustup toolchain install "$msrv" --profile minimal
CARGO_TARGET_DIR=target/msrv cargo "+$msrv" check --quiet --workspace --all-targets --all-features
