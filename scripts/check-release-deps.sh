#!/usr/bin/env bash
# The shipped `aw-sync-samay` carries neither the aw-server double nor the server's fault
# injection: both are for tests only (issue 12). Fails if either comes back into its normal
# (non-dev) dependency graph. Part of scripts/test.sh.
#
#   bash scripts/check-release-deps.sh                              # the dependency graph
#   bash scripts/check-release-deps.sh target/release/aw-sync-samay # and a built binary's text
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
fail=0

# What `cargo build --release` links into aw-sync-samay: normal dependencies only, with the
# features they are built with.
graph="$(cargo tree --locked -p aw-sync-samay -e normal,features --prefix none)"
for crate in samay-aw-double samay-testkit; do
    if grep -q "^$crate " <<<"$graph"; then
        echo "FAIL: $crate is a normal dependency of aw-sync-samay:" >&2
        cargo tree --locked -p aw-sync-samay -e normal -i "$crate" >&2
        fail=1
    fi
done
if ! grep -q '^samay-server ' <<<"$graph"; then
    echo "FAIL: samay-server is not in the graph (is the check still looking at the right crate?)" >&2
    fail=1
fi
if grep -q '^samay-server feature "faults"' <<<"$graph"; then
    echo "FAIL: aw-sync-samay builds samay-server with its \"faults\" feature:" >&2
    cargo tree --locked -p aw-sync-samay -e normal,features -i samay-server >&2
    fail=1
fi

# A built binary: none of the fault endpoint's or the double's own texts. (LTO drops unused
# code, so this checks what ships, not what compiles.)
if [ $# -gt 0 ]; then
    binary="$1"
    [ -f "$binary" ] || { echo "FAIL: no binary at $binary" >&2; exit 1; }
    for text in "/v1/_faults" "injected fault" "samay-aw-double" "aw double connection"; do
        if grep -aqF "$text" "$binary"; then
            echo "FAIL: $binary contains \"$text\"" >&2
            fail=1
        fi
    done
    # The check must see the embedded server, or it proves nothing about its features.
    grep -aqF "/v1/inspect/events" "$binary" || {
        echo "FAIL: $binary has no dev server in it (\"/v1/inspect/events\"): wrong binary?" >&2
        fail=1
    }
fi

if [ "$fail" -ne 0 ]; then
    exit 1
fi
echo "ok: aw-sync-samay links neither samay-aw-double nor samay-server's \"faults\"${1:+ ($1 checked too)}"
