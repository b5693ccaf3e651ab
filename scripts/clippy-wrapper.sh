#!/usr/bin/env bash
# scripts/test.sh's RUSTC_WORKSPACE_WRAPPER: clippy-driver (rustc plus clippy's lints) for every
# workspace unit of the test build, and, for samay-server's library and binaries, the same
# compilation again in the configurations that ship, which that build cannot show:
#
#   shipped   the samay-server binaries and library as `cargo build -p samay-server` makes them:
#             PostgreSQL on, no fault injection (`faults` is turned on by the tests' samay-testkit,
#             and one build unifies features across the workspace);
#   embedded  the library as the sidecar embeds it (`default-features = false`): neither
#             PostgreSQL nor faults.
#
# Code only the tests use (dead code, unused imports, lints inside `cfg(not(feature = ...))`)
# shows only there. These runs only type-check and lint (`--emit=metadata`), with the exact
# command line cargo gave the unit — same flags, lints, environment and dependencies — minus the
# features; so they need no build of their own. (Two `cargo clippy -p samay-server` passes did
# this before: they checked about 200 dependencies over again, ~100 s of CPU.) The
# dependencies are those of the test build, whose features are the workspace's union: a
# dependency feature only the tests turn on would go unnoticed here (the release build of the
# sidecar, `cargo build --release`, shows that).
#
# A warning in either configuration fails the unit (`-D warnings` comes with the command
# line), and its diagnostics are printed under a line naming the configuration.
set -uo pipefail
driver="${CLIPPY_DRIVER:-$(command -v clippy-driver)}" || {
    echo "clippy-wrapper.sh: clippy-driver not found (rustup component add clippy)" >&2
    exit 1
}
"$driver" "$@" || exit $?

[ "${CARGO_PKG_NAME:-}" = samay-server ] || exit 0
crate_name="" crate_type="" out_dir="" is_test=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --crate-name) crate_name="${args[$((i + 1))]}" ;;
        --crate-type) crate_type="${args[$((i + 1))]}" ;;
        --out-dir) out_dir="${args[$((i + 1))]}" ;;
        --test) is_test=1 ;;
    esac
done
[ "$is_test" = 0 ] && [ -n "$out_dir" ] || exit 0
# The library and the two binaries; not tests, benches or a build script (they are built with
# the tests' dev-dependencies, which need the library with `faults`).
case "$crate_type:$crate_name" in
    lib:samay_server) configs=(shipped embedded) ;;
    bin:samay_server | bin:samay_dev_server) configs=(shipped) ;;
    *) exit 0 ;;
esac

# Runs the unit's command line again: `$1` = the configuration; the features it drops follow.
recheck() {
    local config="$1"
    shift
    local drop=("$@") dir
    dir="$(dirname "$out_dir")/shipped-configs/$config"
    mkdir -p "$dir"
    local cmd=() skip_next=0 a i
    for ((i = 0; i < ${#args[@]}; i++)); do
        a="${args[$i]}"
        if [ "$skip_next" = 1 ]; then
            skip_next=0
            continue
        fi
        case "$a" in
            --cfg)
                local next="${args[$((i + 1))]}" f hit=0
                for f in "${drop[@]}"; do
                    [ "$next" = "feature=\"$f\"" ] && hit=1
                done
                if [ "$hit" = 1 ]; then
                    skip_next=1
                    continue
                fi
                ;;
            --extern)
                local next="${args[$((i + 1))]}"
                # Without PostgreSQL there is no sqlx to link.
                if [ "$config" = embedded ] && [[ "$next" == sqlx=* ]]; then
                    skip_next=1
                    continue
                fi
                # The binaries see the library of their own configuration.
                if [[ "$next" == samay_server=* ]]; then
                    local lib
                    lib="$(basename "${next#samay_server=}")"
                    lib="$dir/${lib%.*}.rmeta"
                    [ -f "$lib" ] || {
                        echo "clippy-wrapper.sh: no $lib (the library's $config check); touch crates/samay-server/src/lib.rs and build again" >&2
                        return 1
                    }
                    cmd+=(--extern "samay_server=$lib")
                    skip_next=1
                    continue
                fi
                ;;
            --out-dir)
                cmd+=(--out-dir "$dir")
                skip_next=1
                continue
                ;;
            --emit=*)
                cmd+=(--emit=metadata)
                continue
                ;;
            # Human-readable diagnostics: cargo passes non-JSON lines through as they are.
            --error-format=* | --json=*) continue ;;
            --error-format | --json)
                skip_next=1
                continue
                ;;
        esac
        cmd+=("$a")
    done
    local out
    if ! out="$("$driver" "${cmd[@]}" --color=never 2>&1)"; then
        echo "== samay-server ($config configuration: without features ${drop[*]}) does not pass clippy:" >&2
        echo "$out" >&2
        return 1
    fi
}

status=0
for config in "${configs[@]}"; do
    case "$config" in
        shipped) recheck shipped faults || status=1 ;;
        embedded) recheck embedded faults postgres default || status=1 ;;
    esac
done
exit "$status"
