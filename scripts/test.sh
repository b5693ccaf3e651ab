#!/usr/bin/env bash
# The whole test suite, from a clean clone: installs every peer the tests need (scripts/
# install-peers.sh), checks formatting and lints, then runs every test. This is the README's
# test command and what CI runs (.ci/run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/install-peers.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test"
# Integration tests each start their own aw-server and upstream on free loopback ports.
cargo test --all-targets --locked -- --test-threads=4
