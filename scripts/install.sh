#!/usr/bin/env bash
# Installs aw-sync-samay where aw-qt finds its modules, and registers the sign-in deep-link
# handler. Linux and macOS (Windows: see packaging/README.md).
#
#   scripts/install.sh                      build (release) and install into ~/.local/bin
#   scripts/install.sh --aw-qt-dir DIR      install next to aw-qt (DIR holds the aw-qt program)
#   scripts/install.sh --prefix DIR         install into DIR/bin
#   options:
#     --binary PATH          install this binary instead of target/release/aw-sync-samay
#     --no-build             do not run `cargo build --release` (use --binary or an earlier build)
#     --no-register-scheme   skip `aw-sync-samay --register-scheme`
#     --autostart            also start it at login WITHOUT aw-qt: systemd user unit (Linux) or
#                            launchd agent (macOS). Don't combine with the aw-qt module.
#
# aw-qt looks for executables named aw-* in its own folder (and the parent), then on PATH. So
# without --aw-qt-dir, the install directory must be on PATH for aw-qt — this script says so
# when it is not. Then add aw-sync-samay to aw-qt's autostart_modules (packaging/aw-qt.toml).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME=aw-sync-samay

log() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

prefix="$HOME/.local"
dest_dir=""
aw_qt_dir=""
binary=""
build=1
register=1
autostart=0

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix="$2"; shift 2 ;;
        --aw-qt-dir) [ $# -ge 2 ] || die "--aw-qt-dir needs a directory"; aw_qt_dir="$2"; shift 2 ;;
        --binary) [ $# -ge 2 ] || die "--binary needs a path"; binary="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        --no-register-scheme) register=0; shift ;;
        --autostart) autostart=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

if [ -n "$aw_qt_dir" ]; then
    [ -d "$aw_qt_dir" ] || die "--aw-qt-dir $aw_qt_dir is not a directory"
    ls "$aw_qt_dir"/aw-qt* >/dev/null 2>&1 ||
        log "warning: no aw-qt program in $aw_qt_dir; aw-qt looks for modules in its own folder"
    dest_dir="$aw_qt_dir"
else
    dest_dir="$prefix/bin"
fi

if [ -z "$binary" ]; then
    binary="$ROOT/target/release/$NAME"
    if [ "$build" -eq 1 ]; then
        log "cargo build --release --bin $NAME"
        (cd "$ROOT" && cargo build --release --locked --bin "$NAME")
    fi
fi
[ -f "$binary" ] && [ -x "$binary" ] || die "$binary is not an executable (build it, or pass --binary PATH)"

mkdir -p "$dest_dir"
target="$dest_dir/$NAME"
# Copy to a temporary name, then rename: a running aw-sync-samay keeps its old file, and a
# half-copied binary is never what aw-qt starts.
tmp="$(mktemp "$dest_dir/.$NAME.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
cp "$binary" "$tmp"
chmod 755 "$tmp"
mv -f "$tmp" "$target"
trap - EXIT
log "installed $target"

if [ -z "$aw_qt_dir" ]; then
    case ":$PATH:" in
        *":$dest_dir:"*) log "$dest_dir is on PATH: aw-qt will find $NAME there" ;;
        *) log "warning: $dest_dir is not on PATH. aw-qt finds modules next to itself or on PATH:" \
               "add it (e.g. export PATH=\"$dest_dir:\$PATH\" in ~/.profile, then log in again)," \
               "or install with --aw-qt-dir" ;;
    esac
fi

if [ "$register" -eq 1 ]; then
    log "$target --register-scheme"
    "$target" --register-scheme || log "warning: registering the samay:// handler failed; the browser login still works over the loopback callback"
fi

if [ "$autostart" -eq 1 ]; then
    case "$(uname -s)" in
        Linux)
            unit_dir="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
            mkdir -p "$unit_dir"
            # The unit runs %h/.local/bin/aw-sync-samay; point it at where we installed.
            sed "s|^ExecStart=.*|ExecStart=$target|" "$ROOT/packaging/linux/$NAME.service" >"$unit_dir/$NAME.service"
            log "wrote $unit_dir/$NAME.service"
            if command -v systemctl >/dev/null 2>&1 && systemctl --user daemon-reload 2>/dev/null; then
                systemctl --user enable --now "$NAME.service"
                log "enabled and started $NAME.service (systemctl --user status $NAME)"
            else
                log "no systemd user session here: run 'systemctl --user enable --now $NAME' in your session"
            fi
            ;;
        Darwin)
            agents="$HOME/Library/LaunchAgents"
            plist="$agents/net.activitywatch.$NAME.plist"
            mkdir -p "$agents"
            sed "s|exec \"\$HOME/.local/bin/$NAME\"|exec \"$target\"|" \
                "$ROOT/packaging/macos/net.activitywatch.$NAME.plist" >"$plist"
            log "wrote $plist"
            launchctl bootout "gui/$(id -u)" "$plist" 2>/dev/null || true
            launchctl bootstrap "gui/$(id -u)" "$plist"
            log "loaded the launchd agent (launchctl print gui/$(id -u)/net.activitywatch.$NAME)"
            ;;
        *) log "--autostart: not supported on $(uname -s); see packaging/README.md" ;;
    esac
else
    log "to start it with ActivityWatch, add \"$NAME\" to autostart_modules in aw-qt.toml (packaging/aw-qt.toml)"
fi
