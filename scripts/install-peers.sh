#!/usr/bin/env bash
# Installs the real peers the integration tests run against into .peers/ under the repo root.
#
# Tests talk to real servers (not mocks) because the interesting facts — clipping, id counters,
# heartbeat merging, error shapes — are the servers' behaviour, not ours. A fresh machine has
# none of them, so this script must work from scratch and be cheap to re-run (idempotent).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="$ROOT/.peers"
mkdir -p "$PEERS"

log() { printf 'install-peers: %s\n' "$*"; }

# need_apt PKG...: install only the Debian packages that are missing, running `apt-get update`
# at most once per script run (install_keyring uses it).
APT_UPDATED=0
need_apt() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "apt: already installed: $*"
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt: apt-get update"
        "${sudo[@]}" apt-get update
        APT_UPDATED=1
    fi
    log "apt: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
}

# install_aw_server: Python aw-server 0.12.0 in .peers/aw-venv. `peewee<4` is pinned because
# peewee 4.x makes every bucket request answer 500.
install_aw_server() {
    local venv="$PEERS/aw-venv"
    if "$venv/bin/aw-server" --version >/dev/null 2>&1; then
        log "aw-server: already installed in $venv ($("$venv/bin/aw-server" --version 2>&1 | tail -n1))"
        return 0
    fi
    local python="${PYTHON:-python3}"
    if ! command -v "$python" >/dev/null 2>&1; then
        log "aw-server: $python not found"
        return 1
    fi
    if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        # Debian splits venv/ensurepip into python3-venv.
        need_apt python3-venv
    fi
    log "aw-server: creating venv $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    log "aw-server: pip install aw-server==0.12.0 'peewee<4'"
    "$venv/bin/pip" install --disable-pip-version-check --quiet 'aw-server==0.12.0' 'peewee<4'
    "$venv/bin/aw-server" --version >/dev/null 2>&1 || {
        log "aw-server: installed but '$venv/bin/aw-server --version' fails"
        return 1
    }
    log "aw-server: installed ($("$venv/bin/aw-server" --version 2>&1 | tail -n1))"
}

# install_keyring: a real Secret Service for tests/it/keyring.rs. gnome-keyring gives
# gnome-keyring-daemon, libsecret-tools gives secret-tool (the test checks the secret is really
# in the Secret Service), and dbus-daemon gives dbus-run-session (a private session bus per test;
# on Debian 12 it lives in dbus-daemon, not dbus-x11).
install_keyring() {
    need_apt gnome-keyring libsecret-tools dbus-daemon
    local tool
    for tool in dbus-run-session gnome-keyring-daemon secret-tool; do
        command -v "$tool" >/dev/null 2>&1 || { log "keyring: $tool missing after install"; return 1; }
    done
    log "keyring: gnome-keyring-daemon, secret-tool and dbus-run-session present"
}

# install_oidc: oidc-provider (a certified OpenID provider, npm) in .peers/oidc, from the pinned
# peers/oidc/package.json + package-lock.json (`npm ci`). peers/oidc/provider.mjs loads it from
# there. Skipped when the installed lock file matches the pinned one.
install_oidc() {
    local src="$ROOT/peers/oidc" dst="$PEERS/oidc"
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        log "oidc: node and npm are required (Node >= 20)"
        return 1
    fi
    if [ -f "$dst/node_modules/oidc-provider/package.json" ] &&
        cmp -s "$src/package-lock.json" "$dst/package-lock.json"; then
        log "oidc: already installed in $dst (oidc-provider $(node -p "require('$dst/node_modules/oidc-provider/package.json').version"))"
        return 0
    fi
    log "oidc: npm ci in $dst"
    mkdir -p "$dst"
    cp "$src/package.json" "$src/package-lock.json" "$dst/"
    # `npm ci --prefix` misreads the project here (npm 11: "Missing: oidc@0.0.0"); cd instead.
    (cd "$dst" && npm ci --no-audit --no-fund --loglevel=error)
    log "oidc: installed (oidc-provider $(node -p "require('$dst/node_modules/oidc-provider/package.json').version"))"
}

# install_desktop_tools: desktop-file-validate checks the deep-link handler --register-scheme writes.
install_desktop_tools() {
    need_apt desktop-file-utils
}

# install_packaging_tools: tests/it/packaging.rs checks the launchd plist with xmllint and the
# systemd user unit with systemd-analyze.
install_packaging_tools() {
    need_apt libxml2-utils systemd
}

# install_postgres: the PostgreSQL server binaries (initdb, pg_ctl) for samay-server's tests, which
# make a throwaway cluster per test run (crates/samay-testkit/src/postgres.rs). No service is
# started or needed; the tests fail, never skip, without these binaries.
install_postgres() {
    need_apt postgresql
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        log "postgres: initdb missing after installing postgresql"
        return 1
    fi
    log "postgres: $(ls -d /usr/lib/postgresql/*/bin | tail -n1) present"
}

install_aw_server
install_keyring
install_postgres
install_oidc
install_desktop_tools
install_packaging_tools
# install_keyring (need_apt gnome-keyring ...), ...

log "done"
