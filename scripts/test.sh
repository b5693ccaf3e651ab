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
# The server as the sidecar links it: without its `faults` feature (its tests turn it on, and
# the pass above unifies it in), the library and binaries only.
cargo clippy -p samay-server --lib --bins --locked -- -D warnings

echo "== the shipped binary carries no test double and no fault injection"
bash scripts/check-release-deps.sh

echo "== cargo test"
# Integration tests each start their own aw-server and upstream on free loopback ports. Most of
# their time is spent waiting on those processes, so the sidecar's two big test binaries
# (tests/it and tests/faults) run at the same time, and every other test target after them:
# together exactly what `cargo test --workspace --all-targets` runs. Every run selects the
# whole workspace, so features resolve as in that one command and nothing is built twice;
# cargo holds its build lock only while building.
cargo test --workspace --all-targets --locked --no-run
other_tests=$(cargo metadata --format-version 1 --no-deps --locked | python3 -c '
import json, sys
names = {t["name"] for p in json.load(sys.stdin)["packages"] for t in p["targets"] if "test" in t["kind"]}
print(" ".join("--test " + n for n in sorted(names - {"it", "faults"})))')
faults_log="$(mktemp)"
trap 'rm -f "$faults_log"' EXIT
cargo test --workspace --test faults --locked -- --test-threads=3 >"$faults_log" 2>&1 &
faults_pid=$!
status=0
cargo test --workspace --test it --locked -- --test-threads=3 || status=$?
# shellcheck disable=SC2086 # one word per flag
cargo test --workspace --lib --bins --benches --examples $other_tests --locked -- --test-threads=4 || status=$?
faults_status=0
wait "$faults_pid" || faults_status=$?
echo "== tests/faults (ran alongside tests/it)"
cat "$faults_log"
[ "$faults_status" = 0 ] || status=$faults_status
exit "$status"
