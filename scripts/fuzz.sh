#!/usr/bin/env bash
# Longer fuzzing runs of every parser of outside input (the bounded run is part of `cargo test`:
# tests/faults/fuzz_parsers/ and the property tests in the modules).
#
#   scripts/fuzz.sh                     each cargo-fuzz target for FUZZ_SECONDS (default 60) s
#   FUZZ_SECONDS=3600 scripts/fuzz.sh   an hour each
#   FUZZ_TARGETS="config aw_events" scripts/fuzz.sh
#   FUZZ_JOBS=2 scripts/fuzz.sh         libFuzzer workers per target (default 1)
#   PROPTEST_CASES=20000 scripts/fuzz.sh --proptest
#                                       the property tests with at least that many cases each
#                                       (default 10000), instead of cargo-fuzz
#
# cargo-fuzz needs nightly Rust's -Z flags. On a stable toolchain this script sets
# RUSTC_BOOTSTRAP=1, which lets stable rustc accept them (tested with 1.95); set
# FUZZ_TOOLCHAIN=nightly to use a nightly toolchain instead. Install cargo-fuzz once with
# `cargo install cargo-fuzz --locked`.
#
# Inputs that crash or hang land in fuzz/artifacts/<target>/; replay one with
# `cargo fuzz run <target> fuzz/artifacts/<target>/<file>`. New interesting inputs are kept in
# fuzz/corpus/<target>/ (not committed); fuzz/seeds/<target>/ are the committed starting points.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"

if [[ "${1:-}" == "--proptest" ]]; then
    cd "$root"
    export PROPTEST_CASES="${PROPTEST_CASES:-10000}"
    cargo test --test faults -- fuzz_parsers::
    exec cargo test --lib -- properties:: paste::tests fuzzing::
fi

cd "$root/fuzz"
seconds="${FUZZ_SECONDS:-60}"
jobs="${FUZZ_JOBS:-1}"
max_len="${FUZZ_MAX_LEN:-40000}"

if [[ -n "${FUZZ_TOOLCHAIN:-}" ]]; then
    fuzz=(cargo "+$FUZZ_TOOLCHAIN" fuzz)
else
    export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"
    fuzz=(cargo fuzz)
fi
if ! "${fuzz[@]}" --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 2
fi

targets="${FUZZ_TARGETS:-$("${fuzz[@]}" list)}"
"${fuzz[@]}" build -O

dict_of() {
    case "$1" in
        callback_*) echo dicts/callback.dict ;;
        config) echo dicts/config.dict ;;
        aw_events | event_data | upstream_answer | token_answer) echo dicts/json.dict ;;
    esac
}

failed=()
for target in $targets; do
    mkdir -p "corpus/$target"
    corpora=("corpus/$target")
    [[ -d "seeds/$target" ]] && corpora+=("seeds/$target")
    options=(
        "-max_total_time=$seconds"
        "-max_len=$max_len"
        -timeout=10
        -rss_limit_mb=2048
        -print_final_stats=1
    )
    if (( jobs > 1 )); then
        options+=("-jobs=$jobs" "-workers=$jobs")
    fi
    dict="$(dict_of "$target")"
    [[ -n "$dict" ]] && options+=("-dict=$dict")
    # The paste target's prompt writes to stderr for every refused line: close it.
    [[ "$target" == callback_paste ]] && options+=(-close_fd_mask=2)
    echo "== $target: ${seconds}s" >&2
    if ! "${fuzz[@]}" run -O "$target" "${corpora[@]}" -- "${options[@]}"; then
        failed+=("$target")
    fi
done

if (( ${#failed[@]} > 0 )); then
    echo "failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "all targets ran ${seconds}s without a finding" >&2
