#!/usr/bin/env bash
# The whole test suite, from a clean clone: installs every peer the tests need (scripts/
# install-peers.sh), checks formatting and lints, then runs every test. This is the README's
# test command and what CI runs (.ci/run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/install-peers.sh

# A run from a clean clone has no incremental state to reuse: writing it costs time and about
# 1.7 GB of target/. Set CARGO_INCREMENTAL=1 to keep it for repeated local runs.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The server as the sidecar links it: without its `faults` feature (tests turn it on).
cargo clippy -p samay-server --all-targets --locked -- -D warnings

echo "== the shipped binary carries no test double and no fault injection"
bash scripts/check-release-deps.sh

echo "== cargo test"
# Integration tests each start their own aw-server and upstream on free loopback ports.
cargo test --workspace --all-targets --locked -- --test-threads=4
