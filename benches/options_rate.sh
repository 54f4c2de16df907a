#!/usr/bin/env bash
# End-to-end OPTIONS rate: SIPp sends OPTIONS at a fixed rate to the running podpbx binary and to
# Kamailio (stateful tm reply, the reference) on loopback, both given one core (taskset), SIPp on
# the other. Reports completed/failed and server CPU seconds per 10 000 requests, and the ratio.
# Bounded: N requests per run (default 20000), each run capped at 60 s.
#   usage: benches/options_rate.sh [requests] [rate]    (env BIN=path: another podpbx binary)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-60000}
RATE=${2:-6000}
PORT=${PORT:-15060}
SIPP_PORT=$((PORT + 10))
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do
        for q in $(family "$p" 2>/dev/null | tac); do kill "$q" 2>/dev/null || true; done
    done
    rm -rf "$work"
}
trap cleanup EXIT

# BIN=path: another podpbx binary (before/after runs); else the tree's release build.
if [ -z "${BIN:-}" ]; then
    cargo build --release -q -p podpbx
    BIN=target/release/podpbx
fi

# A process and all its descendants (Kamailio -DD: the started process forks the real main
# process, which forks the workers).
family() {
    local c
    echo "$1"
    for c in $(pgrep -P "$1" || true); do family "$c"; done
}

# CPU ticks of a process and its descendants.
cpu_ticks() {
    local total=0 p
    for p in $(family "$1"); do
        [ -r "/proc/$p/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$total"
}

run_sipp() { # label pid
    local t0 t1 out
    t0=$(cpu_ticks "$2")
    out=$(timeout 60 taskset -c 1 sipp 127.0.0.1:"$PORT" -sf tests/sipp/options.xml -i 127.0.0.1 -p "$SIPP_PORT" \
        -t u1 -m "$N" -r "$RATE" -l 2000 -nostdin -timeout 60s -trace_stat -stf "$work/$1.csv" -fd 1 2>&1 || true)
    t1=$(cpu_ticks "$2")
    local ok fail hz
    ok=$(tail -1 "$work/$1.csv" | awk -F';' '{print $16}')
    fail=$(tail -1 "$work/$1.csv" | awk -F';' '{print $18}')
    hz=$(getconf CLK_TCK)
    echo "$1 $ok $fail $(( (t1 - t0) )) $hz"
}

# podpbx on one core
cat > "$work/podpbx.toml" <<CFG
[sip]
ipv4 = "127.0.0.1"
port = $PORT
transports = ["udp"]
[log]
level = "warn"
[admin]
listen = ""
[storage]
data_dir = "$work/data"
CFG
taskset -c 0 "$BIN" run --config "$work/podpbx.toml" 2>"$work/podpbx.log" &
pids+=($!); PBX=$!
sleep 1
r1=$(run_sipp podpbx "$PBX")
kill "$PBX"; wait "$PBX" 2>/dev/null || true

# Kamailio on one core, same load
mpath=$(dirname "$(find /usr/lib -name sl.so -path '*kamailio*' | head -1)")
sed "s#@MPATH@#$mpath/#" benches/kamailio/options.cfg > "$work/kam.cfg"
taskset -c 0 kamailio -f "$work/kam.cfg" -DD -E -l "udp:127.0.0.1:$PORT" -n 1 2>"$work/kam.log" &
pids+=($!); KAM=$!
sleep 1
r2=$(run_sipp kamailio "$KAM")
# Stop every process of the Kamailio tree by PID (a TERM to the creator alone orphans the rest).
for p in $(family "$KAM" | tac); do kill "$p" 2>/dev/null || true; done
wait "$KAM" 2>/dev/null || true

echo
printf '%-10s %10s %8s %16s\n' server completed failed "cpu_s/10k_req"
for r in "$r1" "$r2"; do
    set -- $r
    printf '%-10s %10s %8s %16.3f\n' "$1" "$2" "$3" "$(echo "$4 / $5 / $2 * 10000" | bc -l)"
done
set -- $r1; a=$(echo "$4 / $2" | bc -l)
set -- $r2; b=$(echo "$4 / $2" | bc -l)
echo "ratio podpbx/kamailio CPU per request: $(echo "$a / $b" | bc -l | cut -c1-5) (target <= 1: lower is better)"
echo "(offered rate: $RATE req/s, $N requests)"
