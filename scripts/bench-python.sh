#!/usr/bin/env bash
# Catch-up benchmark against the Python aw-server: how fast does aw-sync-samay deliver a backlog
# of N events (default 100 000) to an upstream, and how much memory does it take?
#
#   N=100000 bash scripts/bench-python.sh
#
# What it does, all on loopback and in a throw-away directory:
#   1. cargo build --release
#   2. starts Python aw-server (.peers/aw-venv, --testing, free port, isolated HOME/XDG dirs),
#      creates 4 realistic buckets (window, afk, web, editor) and inserts N events in chunks;
#   3. measures the floor: one `limit=-1` GET per bucket (curl), i.e. what reading everything
#      costs aw-server with no sync logic at all;
#   4. starts target/release/samay-dev-server and runs
#      `/usr/bin/time -v target/release/aw-sync-samay --port P --config CFG --once`
#      with the DEFAULT [sync] settings (what users run), then again with a fresh state and
#      larger pages/batches (TUNED=0 skips that run);
#   5. checks through the dev server's GET /v1/inspect that each run's device holds N events,
#      and prints a markdown table (wall time, events/s, peak RSS, CPU of the sync and of
#      aw-server during the run).
#
# Environment: N (events, default 100000), TUNED (1 = also run tuned settings, default 1),
# KEEP (1 = keep the work dir for inspection), TIMEOUT (seconds per sync run, default 900).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
N="${N:-100000}"
TUNED="${TUNED:-1}"
KEEP="${KEEP:-0}"
TIMEOUT="${TIMEOUT:-900}"
TOKEN=bench
AW_PY="$ROOT/.peers/aw-venv/bin/python"
AW_EXE="$ROOT/.peers/aw-venv/bin/aw-server"

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ "$N" =~ ^[0-9]+$ && "$N" -ge 4 ]] || die "N must be an integer >= 4 (got $N)"
[ -x "$AW_EXE" ] || die "$AW_EXE is missing: run scripts/install-peers.sh"

if [ ! -x /usr/bin/time ]; then
    log "/usr/bin/time missing: installing Debian's 'time' package"
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
    "${sudo[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends time
fi

WORK="$(mktemp -d -t aw-sync-samay-bench.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$KEEP" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    "$AW_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_http URL SECONDS: until URL answers 2xx, or fail.
wait_http() {
    local url=$1 deadline=$((SECONDS + $2))
    until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || die "$url did not answer within $2 s"
        sleep 0.2
    done
}

# cpu_ticks PID: utime+stime of a running process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CLK_TCK="$(getconf CLK_TCK)"

log "cargo build --release"
cargo build --release --quiet
SYNC_BIN="$ROOT/target/release/aw-sync-samay"
DEV_BIN="$ROOT/target/release/samay-dev-server"

# ---- Python aw-server ----------------------------------------------------------------------
AW_PORT="$(free_port)"
mkdir -p "$WORK/aw/home" "$WORK/aw/data" "$WORK/aw/config" "$WORK/aw/cache"
log "starting Python aw-server on 127.0.0.1:$AW_PORT"
env -u XDG_RUNTIME_DIR HOME="$WORK/aw/home" XDG_DATA_HOME="$WORK/aw/data" \
    XDG_CONFIG_HOME="$WORK/aw/config" XDG_CACHE_HOME="$WORK/aw/cache" \
    "$AW_EXE" --testing --host 127.0.0.1 --port "$AW_PORT" >"$WORK/aw-server.log" 2>&1 &
AW_PID=$!
PIDS+=("$AW_PID")
wait_http "http://127.0.0.1:$AW_PORT/api/0/info" 30

log "creating 4 buckets and inserting $N events"
t0=$(date +%s.%N)
timeout 1200 "$AW_PY" - "$AW_PORT" "$N" <<'PY'
import json, random, sys, urllib.request
from datetime import datetime, timedelta, timezone

port, n = int(sys.argv[1]), int(sys.argv[2])
base = f"http://127.0.0.1:{port}/api/0"
host = "bench-host"
rng = random.Random(42)

def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        r.read()

apps = [("firefox", ["GitHub - activitywatch", "Inbox (3) - Mail", "Rust docs"]),
        ("code", ["main.rs - aw-sync-samay", "Cargo.toml - aw-sync-samay"]),
        ("gnome-terminal", ["cargo test", "htop"]), ("slack", ["#general", "#dev"])]
urls = ["https://github.com/ActivityWatch/activitywatch/issues/%d",
        "https://docs.rs/tokio/latest/tokio/?q=%d", "https://news.ycombinator.com/item?id=%d",
        "https://mail.example.com/#inbox/%d"]
files = ["src/engine/scan.rs", "src/engine/upload.rs", "src/main.rs", "README.md", "Cargo.toml"]
langs = {"rs": "rust", "md": "markdown", "toml": "toml"}

def window(i):
    app, titles = apps[i % len(apps)]
    return {"app": app, "title": rng.choice(titles)}

def afk(i):
    return {"status": "afk" if i % 2 else "not-afk"}

def web(i):
    u = rng.choice(urls) % rng.randrange(1, 10**6)
    return {"url": u, "title": u.split("/")[2] + " page", "audible": i % 17 == 0,
            "incognito": False, "tabCount": rng.randrange(1, 40)}

def editor(i):
    f = rng.choice(files)
    return {"file": "/home/user/src/aw-sync-samay/" + f, "project": "/home/user/src/aw-sync-samay",
            "language": langs[f.rsplit(".", 1)[1]]}

# (bucket, type, client, share of N, data maker, mean duration in seconds)
buckets = [
    (f"aw-watcher-window_{host}", "currentwindow", "aw-watcher-window", 0.40, window, 12.0),
    (f"aw-watcher-afk_{host}", "afkstatus", "aw-watcher-afk", 0.10, afk, 300.0),
    (f"aw-watcher-web-firefox_{host}", "web.tab.current", "aw-client-web", 0.30, web, 20.0),
    (f"aw-watcher-vscode_{host}", "app.editor.activity", "aw-watcher-vscode", 0.20, editor, 30.0),
]
counts = [int(n * b[3]) for b in buckets]
counts[0] += n - sum(counts)
now = datetime.now(timezone.utc)
for (bid, btype, client, _, make, mean), count in zip(buckets, counts):
    call("POST", f"/buckets/{bid}", {"client": client, "type": btype, "hostname": host})
    # Back-to-back events ending a minute ago; microsecond timestamps like real watchers.
    durations = [round(rng.expovariate(1 / mean), 3) for _ in range(count)]
    t = now - timedelta(seconds=60 + sum(durations) * 1.05)
    events = []
    for i, d in enumerate(durations):
        events.append({"timestamp": t.isoformat(), "duration": d, "data": make(i)})
        t += timedelta(seconds=d * 1.05)
    for k in range(0, count, 1000):
        call("POST", f"/buckets/{bid}/events", events[k:k + 1000])
    print(f"{bid}: {count} events", file=sys.stderr)
PY
t1=$(date +%s.%N)
INSERT_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
log "inserted $N events in ${INSERT_S} s"

BUCKETS=$(curl -fsS "http://127.0.0.1:$AW_PORT/api/0/buckets/" |
    "$AW_PY" -c 'import json,sys; print("\n".join(sorted(json.load(sys.stdin))))')

# ---- floor: read everything once, no sync logic ---------------------------------------------
log "floor: one limit=-1 GET per bucket"
aw_before=$(cpu_ticks "$AW_PID")
t0=$(date +%s.%N)
while read -r b; do
    curl -fsS --max-time 600 -o /dev/null "http://127.0.0.1:$AW_PORT/api/0/buckets/$b/events?limit=-1"
done <<<"$BUCKETS"
t1=$(date +%s.%N)
aw_after=$(cpu_ticks "$AW_PID")
FLOOR_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')
FLOOR_AW_CPU=$(awk -v a="$aw_before" -v b="$aw_after" -v t="$CLK_TCK" 'BEGIN{printf "%.2f", (b-a)/t}')
FLOOR_EPS=$(awk -v n="$N" -v s="$FLOOR_S" 'BEGIN{printf "%.0f", n/s}')

# ---- dev upstream ---------------------------------------------------------------------------
DEV_PORT="$(free_port)"
log "starting samay-dev-server on 127.0.0.1:$DEV_PORT"
"$DEV_BIN" --bind "127.0.0.1:$DEV_PORT" --db "$WORK/dev.sqlite" --token "$TOKEN" \
    >"$WORK/dev-server.log" 2>&1 &
DEV_PID=$!
PIDS+=("$DEV_PID")
wait_http "http://127.0.0.1:$DEV_PORT/v1/health" 30

# run_sync NAME EXTRA_TOML: one `--once` catch-up with its own HOME/XDG dirs (so its own state
# and device id). Appends a table row to $ROWS.
ROWS=()
run_sync() {
    local name=$1 extra=$2 home="$WORK/sync-$1"
    mkdir -p "$home/config" "$home/data" "$home/cache"
    local cfg="$home/aw-sync-samay.toml"
    printf '[sync]\nbase_url = "http://127.0.0.1:%s"\n%s\n' "$DEV_PORT" "$extra" >"$cfg"
    local cmd=(/usr/bin/time -v -o "$home/time.txt" "$SYNC_BIN" --port "$AW_PORT" --config "$cfg" --once)
    log "sync run '$name': ${cmd[*]}"
    log "config: $(tr '\n' ' ' <"$cfg")"
    local aw0 dev0 aw1 dev1
    aw0=$(cpu_ticks "$AW_PID")
    dev0=$(cpu_ticks "$DEV_PID")
    env -u RUST_LOG -u LOG_LEVEL HOME="$home" XDG_CONFIG_HOME="$home/config" \
        XDG_DATA_HOME="$home/data" XDG_CACHE_HOME="$home/cache" AW_SYNC_SAMAY_TOKEN="$TOKEN" \
        timeout "$TIMEOUT" "${cmd[@]}" >"$home/stdout.txt" 2>"$home/stderr.txt" || {
        cat "$home/stdout.txt" "$home/stderr.txt" >&2
        die "sync run '$name' failed"
    }
    aw1=$(cpu_ticks "$AW_PID")
    dev1=$(cpu_ticks "$DEV_PID")
    cat "$home/stdout.txt" >&2
    local wall user sys rss
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,p,":"); s=0; for(i=1;i<=n;i++) s=s*60+p[i]; printf "%.2f", s}' "$home/time.txt")
    user=$(awk -F': ' '/User time \(seconds\)/{print $2}' "$home/time.txt")
    sys=$(awk -F': ' '/System time \(seconds\)/{print $2}' "$home/time.txt")
    rss=$(awk -F': ' '/Maximum resident set size/{printf "%.1f", $2/1024}' "$home/time.txt")
    # The device this run uploaded as is the one not seen before; count what it holds.
    local held
    held=$(curl -fsS "http://127.0.0.1:$DEV_PORT/v1/inspect" | "$AW_PY" -c '
import json, sys
seen = set(sys.argv[1:])
devs = [d for d in json.load(sys.stdin)["devices"] if d["device_id"] not in seen]
assert len(devs) == 1, devs
d = devs[0]
print(d["device_id"], sum(b["events"] for b in d["buckets"]))
' "${DEVICES[@]}")
    local device=${held% *} count=${held#* }
    DEVICES+=("$device")
    [ "$count" -eq "$N" ] || die "run '$name': the upstream holds $count events for device $device, expected $N"
    log "run '$name': upstream holds $count events for device $device"
    local eps aw_cpu dev_cpu
    eps=$(awk -v n="$N" -v s="$wall" 'BEGIN{printf "%.0f", n/s}')
    aw_cpu=$(awk -v a="$aw0" -v b="$aw1" -v t="$CLK_TCK" 'BEGIN{printf "%.1f", (b-a)/t}')
    dev_cpu=$(awk -v a="$dev0" -v b="$dev1" -v t="$CLK_TCK" 'BEGIN{printf "%.1f", (b-a)/t}')
    ROWS+=("| $name | $wall | $eps | $rss | $user + $sys | $aw_cpu | $dev_cpu | $count |")
}
DEVICES=()

run_sync defaults ""
if [ "$TUNED" = 1 ]; then
    run_sync tuned "page_size = 10000
batch_size = 1000
offline_queue_size = 10000"
fi

# ---- report ---------------------------------------------------------------------------------
cat <<EOF

## aw-sync-samay catch-up from Python aw-server: N = $N events, 4 buckets

Machine: $(nproc) CPUs, $(uname -sr); aw-server $("$AW_EXE" --version 2>&1 | tail -n1)
Inserting the events took ${INSERT_S} s.

| run | wall s | events/s | peak RSS MiB | sync CPU s (user + sys) | aw-server CPU s | dev upstream CPU s | held upstream |
|---|---|---|---|---|---|---|---|
$(printf '%s\n' "${ROWS[@]}")
| floor: one \`limit=-1\` GET per bucket (curl -o /dev/null) | $FLOOR_S | $FLOOR_EPS | – | – | $FLOOR_AW_CPU | – | – |

defaults = the shipped [sync] settings (page_size 1000, batch_size 100, offline_queue_size 1000,
gzip on); tuned = page_size 10000, batch_size 1000, offline_queue_size 10000.
Command (per run): AW_SYNC_SAMAY_TOKEN=$TOKEN /usr/bin/time -v target/release/aw-sync-samay --port <aw-port> --config <cfg> --once
EOF
