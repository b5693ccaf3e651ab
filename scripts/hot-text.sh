#!/usr/bin/env bash
# Writes packaging/linux/hot-text.ld: the functions a sync runs, which packaging/build.rs has
# the linker place together at the start of the release binary's code (why: there). Run it after a
# change that moves the catch-up or the idle cycle onto other code (a new dependency, a
# rewritten reader), then `bash scripts/bench.sh` shows the peak RSS it gives.
#
#   bash scripts/hot-text.sh            # ≈ 12 min of release builds + ≈ 2 min under callgrind
#
# How: an unstripped release build runs the benchmark's catch-ups of 10k and 100k events, the
# back-dated insert, `--verify` and the idle daemon under valgrind's callgrind, which names
# every function that ran; each becomes a pattern of input sections. Rust's legacy symbol names
# end in a hash of the build (`17h<16 hex digits>E`), replaced by `*` so the list holds across
# builds and cargo settings, as are the numbers LTO appends to local copies (`.llvm.<n>`,
# `.<n>`); every pattern ends in `*`. Needs valgrind (Debian package `valgrind`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
command -v valgrind >/dev/null || { echo "hot-text.sh: valgrind is not installed" >&2; exit 1; }

work="$ROOT/target/hot-text"
mkdir -p "$work/callgrind"
rm -f "$work"/callgrind/*
# Symbols kept; the layout script is not applied to this build (it is being rewritten).
CARGO_PROFILE_RELEASE_STRIP=false CARGO_TARGET_DIR="$work/build" SAMAY_NO_HOT_TEXT=1 \
    cargo build --release --locked -p aw-sync-samay --bin aw-sync-samay
bin="$work/build/release/aw-sync-samay"

cargo build --release --locked -p samay-aw-double -p samay-server --bins
bench_exe=$(cargo bench --locked --bench catchup --no-run --message-format=json \
    | sed -n 's/.*"executable":"\([^"]*\/deps\/catchup-[^"]*\)".*/\1/p' | tail -n 1)
[ -x "$bench_exe" ] || { echo "hot-text.sh: the benchmark's executable was not found" >&2; exit 1; }

wrapper="$work/under-callgrind.sh"
cat > "$wrapper" <<EOF
#!/usr/bin/env bash
exec valgrind -q --tool=callgrind --demangle=no \
    --callgrind-out-file="$work/callgrind/out.%p" "$bin" "\$@"
EOF
chmod +x "$wrapper"
BENCH_BIN="$wrapper" BENCH_SIZES=10000,100000 BENCH_PYTHON=0 BENCH_DEV=0 BENCH_LEGACY=0 \
    BENCH_PG=0 BENCH_GZIP=0 "$bench_exe" --bench >"$work/bench.txt" 2>&1 \
    || echo "hot-text.sh: the benchmark failed under callgrind (timings are off there); using what ran" >&2

python3 - "$bin" "$work/callgrind" packaging/linux/hot-text.ld <<'EOF'
import glob, os, re, subprocess, sys
binary, outs, target = sys.argv[1:4]
ran = set()
for path in glob.glob(os.path.join(outs, "out.*")):
    with open(path, errors="replace") as f:
        for line in f:
            m = re.match(r"c?fn=\(\d+\) (\S+)", line)
            if m:
                ran.add(re.sub(r"'\d+$", "", m.group(1)))
nm = subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout
code = {p[2] for p in (l.split() for l in nm.splitlines()) if len(p) == 3 and p[1] in "tTwW"}
patterns = set()
for name in ran & code:
    # The suffixes LTO gives local copies (`.llvm.<n>`, `.<n>`) differ from build to build.
    name = re.sub(r"(\.llvm)?\.\d+$", "", name)
    m = re.match(r"^(_ZN.*17h)[0-9a-f]{16}E$", name)
    patterns.add(m.group(1) + "*" if m else name + "*")
patterns = sorted(p for p in patterns if re.fullmatch(r"[A-Za-z0-9_$.*]+", p))
if len(patterns) < 500:
    sys.exit(f"hot-text.sh: only {len(patterns)} functions ran under callgrind; not written")
with open(target, "w") as f:
    f.write("/* Written by scripts/hot-text.sh: the functions a sync runs, placed together ahead\n"
            "   of the rest of the code (build.rs says why). */\n")
    f.write("SECTIONS\n{\n  .text.hot :\n  {\n")
    # LLVM puts a function marked cold (`#[cold]`: a vector's growth, a lazy initialisation,
    # an error's construction) in `.text.unlikely.<name>`; those that ran come along too.
    f.writelines(f"    *(.text.{p} .text.unlikely.{p})\n" for p in patterns)
    f.write("  }\n}\nINSERT BEFORE .text;\n")
print(f"hot-text.sh: {len(patterns)} patterns from {len(ran & code)} functions that ran -> {target}")
EOF
