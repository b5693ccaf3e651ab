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

# Clippy's lints run inside the build of the tests instead of in a `cargo clippy` pass of their
# own: clippy-driver is rustc plus the lints, so as the workspace's compiler it lints every
# target `cargo clippy --workspace --all-targets` lints while it compiles them, and -D warnings
# fails the build on any warning as `cargo clippy -- -D warnings` does. A separate pass type-
# checked the whole workspace and every dependency a second time: a quarter of the suite's
# time. (Dependencies are built with `--cap-lints allow` by cargo, so the flag only reaches
# the workspace.) `cargo clippy --workspace --all-targets -- -D warnings` stays the command to
# run by hand; it checks the same. The wrapper also lints samay-server in the configurations
# that ship, which this build's unified features cannot show (see scripts/clippy-wrapper.sh):
# as it ships (no fault injection) and as the sidecar embeds it (neither PostgreSQL nor
# faults), from the same command lines, without a build of their own.
export RUSTC_WORKSPACE_WRAPPER="${RUSTC_WORKSPACE_WRAPPER-$ROOT/scripts/clippy-wrapper.sh}"
export RUSTFLAGS="${RUSTFLAGS:-} -D warnings"

echo "== cargo test: build, with clippy's lints"
# --message-format=json: the test executables, run below without cargo (so that the clippy
# pass running beside them does not wait for cargo's build lock, nor they for it).
list="$(mktemp)"
logs="$(mktemp -d)"
trap 'rm -rf "$list" "$logs"' EXIT
cargo test --workspace --all-targets --locked --no-run --message-format=json-render-diagnostics \
    | python3 -c '
import json, os, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        kind = m["target"]["kind"][0]
        print(m["target"]["name"], kind, os.path.dirname(m["manifest_path"]), m["executable"])
' >"$list"
[ -s "$list" ] || { echo "test.sh: no test executables were built" >&2; exit 1; }

# Runs one test executable as `cargo test` would (from its package's directory).
run_test() { # NAME DIR EXE THREADS
    echo "== $1 ($(basename "$3"))"
    (cd "$2" && "$3" --test-threads="$4")
}

# Integration tests each start their own aw-server and upstream on free loopback ports; most
# of their time is spent waiting on those processes. So the sidecar's two big test binaries
# (tests/it and tests/faults) run at the same time, and beside them, on what CPU they leave:
# the release dependency check and every other test executable. tests/it, the longest (its
# tests wait more than they compute: 3 threads kept less than one core busy), gets 4 threads.
status=0
pids=()
for name in it faults; do
    read -r _ _ dir exe < <(awk -v n="$name" '$1 == n && $2 == "test"' "$list" | head -n 1) \
        || { echo "test.sh: no test executable named $name" >&2; exit 1; }
    threads=3
    [ "$name" = it ] && threads=4
    run_test "$name" "$dir" "$exe" "$threads" >"$logs/$name" 2>&1 &
    pids+=($!)
done
{
    rest=0
    echo "== the shipped binary carries no test double and no fault injection"
    bash scripts/check-release-deps.sh || rest=1
    while read -r name kind dir exe; do
        if [ "$kind" = test ] && { [ "$name" = it ] || [ "$name" = faults ]; }; then
            continue
        fi
        run_test "$name ($kind)" "$dir" "$exe" 4 || rest=1
    done <"$list"
    exit "$rest"
} >"$logs/rest" 2>&1 &
pids+=($!)
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || status=1
done
for log in it faults rest; do
    cat "$logs/$log"
done
[ "$status" = 0 ] && echo "== all tests passed" || echo "== FAILED (see above)"
exit "$status"
