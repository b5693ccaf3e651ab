#!/usr/bin/env bash
# The fault suite of docs/reliability.md in one command (it is also part of scripts/test.sh):
# kill -9 during a 200k-event sync and during a small one, the model-based property test of
# cursor/dedupe, every upstream fault with its request bound, a week offline, short-lived
# tokens, and the property tests of every parser of outside input.
#
#   bash scripts/faults.sh
#   PROPTEST_CASES=2000 CRASH_SEED=7 bash scripts/faults.sh     # longer / another seed
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ ! -x .peers/aw-venv/bin/aw-server ]; then
    bash scripts/install-peers.sh
fi
# tests/faults: crash, offline, model, fault_upstream, fuzz_parsers (one test binary).
cargo test --locked --test faults -- --test-threads=4
# The property tests that live next to the code they check (hash, backoff, parsers).
cargo test --locked --lib -- props prop_ raw_and_parsed --test-threads=4
