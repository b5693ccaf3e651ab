#!/usr/bin/env bash
# Type-checks the sidecar for Windows and macOS on this Linux machine: `cargo clippy -D
# warnings` of the root package (library and binary, features as shipped, with the workspace
# crates it builds: samay-api, samay-common, samay-server) for x86_64-pc-windows-gnu and
# x86_64-apple-darwin. Every `cfg(windows)` / `cfg(target_os = "macos")` line is compiled and
# linted against the real dependencies of that target (tray-icon, objc2/AppKit, windows-sys,
# the keyring's platform stores, ...). Nothing is linked or run: there is no macOS or Windows
# machine here (README, "Tray" and "How it is built").
#
# A check still runs the build scripts, and three of them compile C: libsqlite3-sys (bundled
# SQLite), ring (rustls, the JWT checks) and blake3 (its SIMD assembly). Zig's `zig cc`
# carries the libc headers of both targets (macOS's from Apple's SDK, Windows' from MinGW), so
# cargo-zigbuild (PyPI, with the `ziglang` package) is their C compiler; no Apple SDK, no
# osxcross, no MinGW from apt.
#
# Installs what it needs: the targets' standard libraries (rustup; a no-op once installed) and
# cargo-zigbuild + ziglang in a venv under target/cross-tools. Artifacts: target/<triple>/.
#
#   bash scripts/check-cross.sh            # both targets
#   bash scripts/check-cross.sh x86_64-apple-darwin
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(x86_64-pc-windows-gnu x86_64-apple-darwin)

installed="$(rustup target list --installed)"
for t in "${targets[@]}"; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

tools="$ROOT/target/cross-tools"
if ! "$tools/bin/cargo-zigbuild" --version >/dev/null 2>&1; then
    echo "check-cross: installing cargo-zigbuild and ziglang into $tools"
    rm -rf "$tools"
    python3 -m venv "$tools"
    "$tools/bin/pip" install --disable-pip-version-check --quiet \
        'cargo-zigbuild==0.24.1' 'ziglang==0.17.1'
fi
export PATH="$tools/bin:$PATH"

for t in "${targets[@]}"; do
    echo "== cargo clippy --target $t -p aw-sync-samay -- -D warnings"
    cargo-zigbuild clippy --locked -p aw-sync-samay --target "$t" -- -D warnings
done
echo "check-cross: aw-sync-samay type-checks and lints clean for ${targets[*]}"
