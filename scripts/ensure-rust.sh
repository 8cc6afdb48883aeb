#!/usr/bin/env bash
# Makes sure a Rust toolchain new enough for this workspace (>= 1.94) is on PATH.
# On a fresh Debian machine (as root) it installs one with rustup; Debian's own `cargo`
# package is too old for edition 2024.
set -euo pipefail
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
need_minor=94
have_minor() { rustc --version 2>/dev/null | sed -E 's/^rustc 1\.([0-9]+).*/\1/'; }
if command -v cargo >/dev/null 2>&1 && [ "$(have_minor || echo 0)" -ge "$need_minor" ]; then
  exit 0
fi
echo "ensure-rust: installing a Rust toolchain with rustup (need rustc >= 1.$need_minor)" >&2
if ! command -v curl >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq curl ca-certificates gcc >/dev/null
fi
curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
