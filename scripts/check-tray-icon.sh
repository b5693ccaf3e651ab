#!/usr/bin/env bash
# Type-checks the macOS/Windows tray adapter (src/tray/native.rs) on Linux, against tray-icon's
# Linux (gtk + appindicator) backend, through the `tray-icon-typecheck` feature. MANUAL ONLY:
# not part of scripts/test.sh or CI (it needs gtk's headers and adds minutes), and no shipped
# build enables the feature.
#
# What it shows: the platform-independent part of the adapter (the menu built from the model,
# the icon's pixels, the click routing, redraws) compiles against tray-icon's API, with clippy's
# lints. What it does not: the Windows thread and message loop (cfg(windows)) and anything on
# macOS are not compiled; nothing is run.
#
#   sudo apt-get install -y libgtk-3-dev libxdo-dev libayatana-appindicator3-dev
#   bash scripts/check-tray-icon.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
for lib in gtk+-3.0 ayatana-appindicator3-0.1; do
    if ! pkg-config --exists "$lib"; then
        echo "check-tray-icon: $lib is not installed (apt-get install -y libgtk-3-dev libxdo-dev libayatana-appindicator3-dev)" >&2
        exit 2
    fi
done
# Its own target directory: the feature changes the root crate and pulls in gtk, which would
# otherwise rebuild the normal check's artifacts back and forth.
cargo clippy --locked -p aw-sync-samay --lib --features tray-icon-typecheck \
    --target-dir target/tray-icon-typecheck -- -D warnings
echo "check-tray-icon: src/tray/native.rs type-checks against tray-icon's Linux backend"
