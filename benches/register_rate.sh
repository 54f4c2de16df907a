#!/usr/bin/env bash
# Authenticated REGISTER load: podpbx (release binary) vs Kamailio 5.6 as the reference registrar
# in its fastest configuration (HA1s in an htable, pv_www_authenticate, usrloc in memory,
# registrar save, stateless replies, 4 UDP workers: benches/kamailio/registrar.cfg), both on
# loopback, the server (all its processes) pinned to one core (taskset), SIPp on the other. One "REGISTER" is a
# full digest round (SIPp call of benches/sipp/register_auth.xml): REGISTER -> 401 -> REGISTER with
# Authorization -> 200, for USERS distinct users from an injection file (SEQUENTIAL).
#
# Per round, for each server in turn (the order alternates between rounds), a fresh server:
#   1. memory before any load (VmRSS/VmHWM; Kamailio: summed over its processes, plus PSS, which
#      shares shared memory out fairly, and its shm use from kamcmd core.shmmem);
#   2. fixed rate: USERS REGISTERs at RATE/s (every user once): server CPU seconds per 10 000;
#   3. memory again, with USERS bindings (checked: bindings.json / usrloc:registered_users);
#   4. load: LOAD_RATE/s (10 000) for LOAD_SECS s, re-registrations with the bindings in place:
#      server CPU per REGISTER at that rate and PSS under it (peak of 1 s samples);
#   5. rate steps (STEPS, STEP_SECS worth of REGISTERs each, stopping after the first step with
#      >= 1 % failures): achieved rate, failures, server CPU and SIPp's own CPU (SIPp is
#      single-threaded: at 100 % of its core it, not the server, is the ceiling);
#   6. sustained: SUSTAIN_RATE/s for SUSTAIN_SECS s (>= 60 s, longer than the 32 s a UDP server
#      transaction lives for Timer J, so transaction and nonce expiries happen inside the window):
#      per 10 s window the achieved rate, server CPU per REGISTER and PSS, so a cost that grows
#      with time (a cliff) shows;
#   7. podpbx only: restarted on its saved bindings.json, memory with the bindings restored (no
#      transaction state, no allocator leftovers from the load).
# A failure is any of the offered REGISTERs not ending in 200 (SIPp failed calls, calls never
# started within the time limit). Every SIPp run is bounded by count and by `timeout`.
# The table at the end gives medians over ROUNDS rounds.
#
#   usage: benches/register_rate.sh [rounds]
#   env:   USERS=10000 RATE=1000 LOAD_RATE=10000 LOAD_SECS=6
#          STEPS="8000 12000 16000 20000 24000 28000" STEP_SECS=4
#          SUSTAIN_RATE=5000 SUSTAIN_SECS=70 (0: no sustained phase) PORT=15080
#          SERVER_CORE=0 SIPP_CORE=1 KAM_CHILDREN=4 (Kamailio UDP workers) KAM_TM=1 (Kamailio
#          creates a transaction per REGISTER, kept ~5 s; default stateless, as its registrar
#          usually runs) BIN=target/release/podpbx (another podpbx binary: before/after runs)
#          ONLY=podpbx|kamailio (one server only) KEEP=1 (keep the work directory and logs)
#          PRIO=1 (run server and SIPp at nice -10: less disturbed by other work on a shared host)
#          IDLE_SECS=40 (after the steps, wait this long, then memory once more: podpbx keeps every
#          server transaction for Timer J, 32 s over UDP, so memory right after a burst includes them)
#          SIPP_BUF=8388608 (SIPp's socket buffers, -buff_size; empty: SIPp's default. With the
#          default, a server that answers a batch of requests at once overflows SIPp's one
#          receive buffer: measured 6 Dec, podpbx at 16 000/s lost 650-11 000 responses there
#          (RcvbufErrors, SIPp's socket) and SIPp retransmitted them, more the faster podpbx
#          answered; with 8 MB, none for either server.)
#          AB=1: instead of all the above, both servers run at once (podpbx on PORT, Kamailio on
#          PORT+100, both pinned to SERVER_CORE, each idle while the other is loaded), every user
#          registered on each, then AB_CHUNKS chunks of AB_SECS s at LOAD_RATE/s alternating
#          podpbx/Kamailio in the order A B B A A B B A ..., as call_rate.sh does: a host that
#          speeds up or slows down during the run (this VM's neighbours moved both servers by up to
#          40 % within minutes, while the phases above measure one server minutes after the
#          other) then falls on both alike. Reports CPU per REGISTER of each, pooled and per
#          A/B pair, and the ratio. AB_CHUNKS=8 AB_SECS=3.
#          CALLGRIND=1: instead of all the above, user-space instructions per REGISTER round of
#          each server under valgrind's callgrind (every process: Kamailio's workers too), which
#          unlike CPU time on a shared VM repeats to ~1 %: CG_N rounds (2000) at CG_RATE/s (200)
#          register the first CG_N users, the counters are zeroed, the same CG_N users register
#          again (refreshes, the bindings in place) and are counted. Kernel work is not counted,
#          and valgrind emulates no SHA extensions (podpbx's nonce HMAC counts ~4x its native
#          share); so this is a ratio of user-space work, beside the CPU-time ratio, not instead.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-${ROUNDS:-3}}
USERS=${USERS:-10000}
RATE=${RATE:-1000}
LOAD_RATE=${LOAD_RATE:-10000}
LOAD_SECS=${LOAD_SECS:-6}
SUSTAIN_RATE=${SUSTAIN_RATE:-5000}
SUSTAIN_SECS=${SUSTAIN_SECS:-70}
STEPS=${STEPS:-"8000 12000 16000 20000 24000 28000"}
STEP_SECS=${STEP_SECS:-4}
PORT=${PORT:-15080}
SIPP_PORT=$((PORT + 10))
SERVER_CORE=${SERVER_CORE:-0}
SIPP_CORE=${SIPP_CORE:-1}
KAM_CHILDREN=${KAM_CHILDREN:-4}
KAM_TM=${KAM_TM:-0}
ONLY=${ONLY:-}
KEEP=${KEEP:-0}
IDLE_SECS=${IDLE_SECS:-0}
PRIO=${PRIO:-0}
SIPP_BUF=${SIPP_BUF-8388608}
CALLGRIND=${CALLGRIND:-0}
AB=${AB:-0}
AB_CHUNKS=${AB_CHUNKS:-8}
AB_SECS=${AB_SECS:-3}
CG_N=${CG_N:-2000}
CG_RATE=${CG_RATE:-200}
REALM=bench.test
HZ=$(getconf CLK_TCK)

for tool in sipp kamailio kamcmd taskset timeout awk python3; do
    command -v "$tool" >/dev/null || { echo "register_rate: $tool not found" >&2; exit 1; }
done

work=$(mktemp -d /tmp/register_rate.XXXXXX)
pids=()
failed=0
# Stop a process by PID: SIGTERM, up to 5 s; then SIGTERM and, 2 s later, SIGKILL to whatever is
# left of it and of the descendants it had (each by PID).
stop_pid() {
    local p=$1 fam q i left
    kill -0 "$p" 2>/dev/null || return 0
    fam=$(family "$p")
    kill "$p" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    for sig in TERM KILL; do
        left=""
        for q in $fam; do kill -0 "$q" 2>/dev/null && left+=" $q"; done
        [ -z "$left" ] && break
        for q in $left; do kill -"$sig" "$q" 2>/dev/null || true; done
        sleep 2
    done
    wait "$p" 2>/dev/null || true
}
cleanup() {
    local p i
    # Newest first: Kamailio's main process before its creator.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[i]}"; done
    if [ "$KEEP" = 1 ] || [ "$failed" = 1 ]; then
        echo "work directory kept: $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
die() {
    failed=1
    echo "register_rate: $*" >&2
    local f
    for f in "$work"/*.log; do
        [ -s "$f" ] && { echo "--- tail of $f" >&2; tail -5 "$f" >&2; }
    done
    exit 1
}

if [ -z "${BIN:-}" ]; then
    cargo build --release -q -p podpbx || die "cargo build --release -p podpbx failed"
    BIN=target/release/podpbx
fi
[ -x "$BIN" ] || die "no podpbx binary at $BIN"

# ---------------------------------------------------------------------------------------------
# Inputs: users (SIPp injection file, podpbx [[users]], Kamailio subscriber table)
# ---------------------------------------------------------------------------------------------
# users.csv: user;password;[authentication ...] (see the scenario for why field2 exists); Kamailio's
# htable `pw` is loaded from a db_text table at start (user name -> MD5 HA1).
awk -v n="$USERS" 'BEGIN {
    print "SEQUENTIAL"
    for (i = 1; i <= n; i++) {
        u = sprintf("reg%05d", i); p = sprintf("pw-%05d-%x", i, i * 7919)
        printf "%s;%s;[authentication username=%s password=%s]\n", u, p, u, p
    }
}' > "$work/users.csv"

mkdir -p "$work/kamdb" "$work/pbxdata"
printf 'table_name(string) table_version(int)\nhtable:2\n' > "$work/kamdb/version"
# Kamailio gets each user's HA1 = MD5(user:realm:password), not the password: podpbx makes its
# users' MD5 HA1 once at start (`Key::Prepared`), so the reference skips that hash per request too
# (pv_www_authenticate flag 1).
python3 - "$work/users.csv" "$REALM" > "$work/kamdb/htable" <<'PY'
import hashlib, sys
print("id(int,auto) key_name(string) key_type(int) value_type(int) key_value(string) expires(int)")
with open(sys.argv[1]) as f:
    next(f)
    for i, line in enumerate(f, 1):
        user, pw = line.split(";")[:2]
        ha1 = hashlib.md5(f"{user}:{sys.argv[2]}:{pw}".encode()).hexdigest()
        print(f"{i}:{user}:0:0:{ha1}:0")
PY

{
    cat <<CFG
[sip]
ipv4 = "127.0.0.1"
port = $PORT
transports = ["udp"]
domain = "$REALM"
[security]
trusted_networks = ["127.0.0.0/8"]
[log]
level = "warn"
[admin]
listen = ""
[storage]
data_dir = "$work/pbxdata"
CFG
    awk -F';' 'NR > 1 { printf "[[users]]\nname = \"%s\"\npassword = \"%s\"\n", $1, $2 }' "$work/users.csv"
} > "$work/podpbx.toml"
"$BIN" check --config "$work/podpbx.toml" >/dev/null || die "podpbx rejects the generated config"

mpath=$(dirname "$(find /usr/lib /usr/local/lib -name htable.so -path '*kamailio*' 2>/dev/null | head -1)")
[ -f "$mpath/htable.so" ] || die "Kamailio modules (htable.so) not found"
sed -e "s#@MPATH@#$mpath/#" -e "s#@CTL@#$work/kam.ctl#" -e "s#@DBDIR@#$work/kamdb#" \
    -e "s#@REALM@#$REALM#g" benches/kamailio/registrar.cfg > "$work/kamailio.cfg"
kam_defs=()
[ "$KAM_TM" = 1 ] && kam_defs=(-A WITH_TM)
prio=()
[ "$PRIO" = 1 ] && prio=(nice -n -10)
# CALLGRIND=1: every server process runs under callgrind, counting from the start (zeroed later).
vg=()
if [ "$CALLGRIND" = 1 ]; then
    command -v valgrind >/dev/null && command -v callgrind_control >/dev/null \
        || die "CALLGRIND=1 needs valgrind (callgrind, callgrind_control)"
    vg=(valgrind --tool=callgrind --trace-children=yes --dump-instr=no --cache-sim=no)
fi
kamailio -f "$work/kamailio.cfg" "${kam_defs[@]}" -c >"$work/kamcheck.out" 2>&1 \
    || { cat "$work/kamcheck.out" >&2; die "Kamailio rejects benches/kamailio/registrar.cfg"; }

# ---------------------------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------------------------
# The process and all its descendants (Kamailio: with -DD the PID started is a "creator" waiting
# for the main process, which forks the workers).
family() {
    local c
    echo "$1"
    for c in $(pgrep -P "$1" || true); do family "$c"; done
}

# CPU ticks (utime + stime, all threads) of a process and its children.
cpu_ticks() {
    local total=0 p
    for p in $(family "$1"); do
        [ -r "/proc/$p/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$total"
}

# Busy ticks (user + nice + system + steal) of one CPU, from /proc/stat.
core_busy() { awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $9}' /proc/stat; }

# "rss_kb hwm_kb pss_kb processes" summed over a process and its children.
mem_kb() {
    local rss=0 hwm=0 pss=0 np=0 p v
    for p in $(family "$1"); do
        [ -r "/proc/$p/status" ] || continue
        np=$((np + 1))
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status"); rss=$((rss + ${v:-0}))
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status"); hwm=$((hwm + ${v:-0}))
        v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || true); pss=$((pss + ${v:-0}))
    done
    echo "$rss $hwm $pss $np"
}

# Kamailio shared memory in use (kB), "-" when kamcmd cannot tell.
kam_shm_kb() {
    timeout 5 kamcmd -s "unix:$work/kam.ctl" core.shmmem 2>/dev/null \
        | awk '/real_used:/ {printf "%d", $2 / 1024; found = 1} END {if (!found) print "-"}'
}

# Registered AORs: podpbx's saved state file (written <= 100 ms after a change), Kamailio's
# usrloc statistics.
bindings() {
    if [ "$1" = podpbx ]; then
        { grep -o '"aor"' "$work/pbxdata/bindings.json" 2>/dev/null || true; } | wc -l
    else
        timeout 5 kamcmd -s "unix:$work/kam.ctl" stats.get_statistics usrloc: 2>/dev/null \
            | awk -F' = ' '$1 == "usrloc:registered_users" {print $2 + 0; found = 1} END {if (!found) print "-"}'
    fi
}

# Every second until stopped: "epoch_s cpu_ticks rss_kb pss_kb" of the server (all processes).
sampler() { # pid file
    local m
    while kill -0 "$1" 2>/dev/null; do
        m=$(mem_kb "$1")
        echo "$(date +%s.%N) $(cpu_ticks "$1") $(echo "$m" | awk '{print $1, $3}')"
        sleep 1
    done > "$2"
}

# 10 s windows of a run from its samples and SIPp's per-second statistics: one line per window
# "server round window_start_s achieved_per_s cpu_% us_per_register pss_kb".
windows() { # server round tag
    awk -v s="$1" -v r="$2" -v hz="$HZ" -F'[ ;\t]+' '
        FNR == 1 && NR != 1 { csv = 1 }
        !csv { t[++n] = $1; c[n] = $2; p[n] = $4; next }
        # each time stamp of a data row is 3 fields (date, time, epoch), one in the header
        FNR == 1 { for (i = 1; i <= NF; i++) if ($i == "SuccessfulCall(C)") col = i + 6; next }
        { e[++m] = $9; ok[m] = $col }
        END {
            # cumulative successes at each sample time: the last SIPp row at or before it
            j = 0
            for (i = 1; i <= n; i++) { while (j < m && e[j + 1] <= t[i]) j++; done[i] = j ? ok[j] : 0 }
            for (i = 1; i + 10 <= n; i += 10) {
                w = t[i + 10] - t[i]; regs = done[i + 10] - done[i]; cpu = (c[i + 10] - c[i]) / hz
                printf "%s %s %d %.0f %.0f %.1f %d\n", s, r, t[i] - t[1], regs / w, cpu / w * 100,
                    (regs > 0 ? cpu / regs * 1e6 : 0), p[i + 10]
            }
        }' "$work/$3.samples" "$work/$3.csv"
}

port_busy() { ss -Hlun "sport = :$PORT" 2>/dev/null | grep -q . ; }

# Starts a server pinned to SERVER_CORE; sets SRV (its PID). Fails loudly if it dies or does not
# answer an OPTIONS within 10 s.
start_server() { # name [keep: podpbx restores the bindings saved by the previous run]
    local name=$1 i
    port_busy && die "UDP port $PORT is already in use (another run? set PORT=...)"
    if [ "$name" = podpbx ]; then
        [ "${2:-}" = keep ] || rm -f "$work/pbxdata/bindings.json"
        "${prio[@]}" taskset -c "$SERVER_CORE" "${vg[@]}" ${vg:+--callgrind-out-file="$work/cg-podpbx.%p"} \
            "$BIN" run --config "$work/podpbx.toml" 2>>"$work/podpbx.log" &
    else
        "${prio[@]}" taskset -c "$SERVER_CORE" "${vg[@]}" ${vg:+--callgrind-out-file="$work/cg-kamailio.%p"} \
            kamailio -f "$work/kamailio.cfg" "${kam_defs[@]}" -DD -E \
            -l "udp:127.0.0.1:$PORT" -n "$KAM_CHILDREN" -m 256 -M 16 >>"$work/kamailio.log" 2>&1 &
    fi
    SRV=$!
    pids+=("$SRV")
    STOP=$SRV
    local tries=20
    [ "$CALLGRIND" = 1 ] && tries=240 # start-up runs ~50x slower under valgrind
    for i in $(seq 1 "$tries"); do
        kill -0 "$SRV" 2>/dev/null || die "$name exited at start-up (see $work/$name.log)"
        if timeout 2 sipp 127.0.0.1:"$PORT" -sf benches/sipp/options_ping.xml -i 127.0.0.1 -p "$SIPP_PORT" \
            -t u1 -m 1 -nostdin -timeout 1s -timeout_error >/dev/null 2>&1; then
            # Kamailio: SIGTERM to the creator would kill only it (default action) and orphan the
            # rest; the main process (its child) stops the workers and then the creator exits.
            if [ "$name" = kamailio ]; then
                STOP=$(pgrep -P "$SRV" | head -1)
                [ -n "$STOP" ] || die "Kamailio main process not found under PID $SRV"
                pids+=("$STOP")
            fi
            return 0
        fi
        sleep 0.5
    done
    die "$name did not answer OPTIONS on 127.0.0.1:$PORT within $((tries / 2)) s"
}

# The value of column $2 (by header name) in the last line of SIPp's statistics file $1.
stat_col() {
    awk -F';' -v col="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i }
        END { v = $c; if (v == "") v = 0; print v }' "$1"
}
# Seconds between StartTime and CurrentTime of the last statistics line (epoch in field 3 of each).
stat_elapsed() {
    awk -F';' 'END { split($1, a, "\t"); split($3, b, "\t"); printf "%.3f", b[3] - a[3] }' "$1"
}

# Mean of SIPp's response time 1 (first REGISTER to 200) in ms; SIPp writes HH:MM:SS:usec.
stat_rtt_ms() {
    stat_col "$1" 'ResponseTime1(C)' | awk -F':' 'NF == 4 {printf "%.1f", ($1 * 3600 + $2 * 60 + $3) * 1000 + $4 / 1000; next} {print "nan"}'
}

# run_sipp server round phase rate count -> one results line:
#   server round phase rate count ok elapsed_s server_ticks sipp_ticks retrans mean_round_ms
#   unexpected_answer_failures timeout_failures other_load_%_server_core other_load_%_sipp_core
run_sipp() {
    local server=$1 round=$2 phase=$3 rate=$4 n=$5 tag="$1-r$2-$3-$4"
    local limit=$((n / rate * 3 + 15)) t0 t1 sipp_ticks ok retrans elapsed unexp tmo bs0 bs1 bp0 bp1 w0 w1 noise peak
    bs0=$(core_busy "$SERVER_CORE"); bp0=$(core_busy "$SIPP_CORE"); w0=$(date +%s%N)
    t0=$(cpu_ticks "$SRV")
    sampler "$SRV" "$work/$tag.samples" &
    local samp=$!
    # cutime+cstime of this subshell after waiting for timeout (and timeout for SIPp): SIPp's CPU.
    sipp_ticks=$(
        timeout "$limit" "${prio[@]}" taskset -c "$SIPP_CORE" sipp 127.0.0.1:"$PORT" -sf benches/sipp/register_auth.xml \
            -inf "$work/users.csv" -key domain "$REALM" -auth_uri "$REALM" -i 127.0.0.1 -p "$SIPP_PORT" -t u1 \
            -m "$n" -r "$rate" -l 15000 -recv_timeout 5000 -default_behaviors abortunexp -nostdin \
            ${SIPP_BUF:+-buff_size "$SIPP_BUF"} \
            -trace_stat -stf "$work/$tag.csv" -fd 1 -trace_err -error_file "$work/$tag.err" \
            -max_log_size 1000000 >"$work/$tag.out" 2>&1 || true
        awk '{print $16 + $17}' "/proc/$BASHPID/stat"
    )
    t1=$(cpu_ticks "$SRV")
    kill "$samp" 2>/dev/null || true
    wait "$samp" 2>/dev/null || true
    bs1=$(core_busy "$SERVER_CORE"); bp1=$(core_busy "$SIPP_CORE"); w1=$(date +%s%N)
    # Noise: % of each core used by other processes (other engineers' builds) during the run.
    noise=$(awk -v hz="$HZ" -v w=$(( (w1 - w0) / 1000000 )) -v s=$((bs1 - bs0 - (t1 - t0))) -v p=$((bp1 - bp0 - sipp_ticks)) \
        'BEGIN {s = s < 0 ? 0 : s; p = p < 0 ? 0 : p; printf "%.0f %.0f", s / hz / (w / 1000) * 100, p / hz / (w / 1000) * 100}')
    kill -0 "$SRV" 2>/dev/null || die "$server died during $phase at $rate/s (see $work/$server.log)"
    [ -s "$work/$tag.csv" ] || die "SIPp wrote no statistics for $tag (see $work/$tag.out)"
    ok=$(stat_col "$work/$tag.csv" 'SuccessfulCall(C)')
    retrans=$(stat_col "$work/$tag.csv" 'Retransmissions(C)')
    elapsed=$(stat_elapsed "$work/$tag.csv")
    unexp=$(stat_col "$work/$tag.csv" 'FailedUnexpectedMessage(C)')
    tmo=$(( $(stat_col "$work/$tag.csv" 'FailedTimeoutOnRecv(C)') + $(stat_col "$work/$tag.csv" 'FailedMaxUDPRetrans(C)') ))
    peak=$(awk 'BEGIN {r = 0; p = 0} {if ($3 > r) r = $3; if ($4 > p) p = $4} END {print r, p}' "$work/$tag.samples")
    echo "$server $round $phase $rate $n $ok $elapsed $((t1 - t0)) $sipp_ticks $retrans $(stat_rtt_ms "$work/$tag.csv") $unexp $tmo $noise $peak" \
        | tee -a "$work/results"
    [ "$phase" = sustain ] && windows "$server" "$round" "$tag" >> "$work/windows"
    # Keep the first unexpected answers for the report.
    if [ -s "$work/$tag.err" ]; then
        grep -ao "received 'SIP/2.0 [0-9]* [^']*" "$work/$tag.err" | sed 's/\r//' | cut -c10- \
            | sort | uniq -c | sort -rn | head -3 | sed "s/^/  $tag unexpected: /" >> "$work/oddities" || true
    fi
}

session() { # server round
    local server=$1 round=$2 m0 m1 shm0=- shm1=- b=0 i rate n fail
    start_server "$server"
    m0=$(mem_kb "$SRV")
    [ "$server" = kamailio ] && shm0=$(kam_shm_kb)
    echo "# $server round $round: $USERS REGISTERs at $RATE/s"
    run_sipp "$server" "$round" fixed "$RATE" "$USERS" >/dev/null
    for i in $(seq 1 20); do # let podpbx's delayed save run; bounded
        sleep 0.25
        b=$(bindings "$server")
        [ "$b" = "$USERS" ] && break
    done
    m1=$(mem_kb "$SRV")
    [ "$server" = kamailio ] && shm1=$(kam_shm_kb)
    echo "$server $round mem $m0 $m1 $shm0 $shm1 $b" >> "$work/results"
    echo "# $server round $round: load $LOAD_RATE/s x $((LOAD_RATE * LOAD_SECS))"
    run_sipp "$server" "$round" load "$LOAD_RATE" $((LOAD_RATE * LOAD_SECS)) >/dev/null
    for rate in $STEPS; do
        n=$((rate * STEP_SECS))
        echo "# $server round $round: step $rate/s x $n"
        run_sipp "$server" "$round" step "$rate" "$n" >/dev/null
        fail=$(tail -1 "$work/results" | awk '{f = ($5 - $6) * 100 / $5; print (f >= 1 ? 1 : 0)}')
        [ "$fail" = 1 ] && break
    done
    if [ "$SUSTAIN_SECS" -gt 0 ]; then
        echo "# $server round $round: sustained $SUSTAIN_RATE/s x $((SUSTAIN_RATE * SUSTAIN_SECS))"
        run_sipp "$server" "$round" sustain "$SUSTAIN_RATE" $((SUSTAIN_RATE * SUSTAIN_SECS)) >/dev/null
    fi
    if [ "$IDLE_SECS" -gt 0 ]; then
        echo "# $server round $round: idle ${IDLE_SECS}s"
        sleep "$IDLE_SECS"
        m1=$(mem_kb "$SRV")
        [ "$server" = kamailio ] && shm1=$(kam_shm_kb)
        echo "$server $round idle $m1 $shm1" >> "$work/results"
    fi
    stop_pid "$STOP"
    stop_pid "$SRV"
    if [ "$server" = podpbx ]; then
        # Live size of the bindings without transaction state or allocator leftovers: podpbx
        # restarted, restoring them from the bindings.json it saved on SIGTERM.
        b=$(bindings podpbx)
        start_server podpbx keep
        sleep 0.5
        echo "podpbx $round restart $(mem_kb "$SRV") - - $b" >> "$work/results"
        stop_pid "$SRV"
    fi
}

servers=(podpbx kamailio)
[ -n "$ONLY" ] && servers=("$ONLY")

# ---------------------------------------------------------------------------------------------
# CALLGRIND=1: instructions per REGISTER round, then exit
# ---------------------------------------------------------------------------------------------
# cg_sipp n tag: n REGISTER rounds at CG_RATE/s; prints how many ended in 200.
cg_sipp() {
    timeout $((CG_N / CG_RATE * 4 + 60)) taskset -c "$SIPP_CORE" sipp 127.0.0.1:"$PORT" \
        -sf benches/sipp/register_auth.xml -inf "$work/users.csv" -key domain "$REALM" \
        -auth_uri "$REALM" -i 127.0.0.1 -p "$SIPP_PORT" -t u1 -m "$1" -r "$CG_RATE" -l 2000 \
        -recv_timeout 20000 -default_behaviors abortunexp -nostdin -trace_stat -stf "$work/$2.csv" \
        >"$work/$2.out" 2>&1 || true
    stat_col "$work/$2.csv" 'SuccessfulCall(C)'
}
# Sum of the instruction counts in the dumps callgrind_control -d wrote (file.PID.1; each has
# its count twice, as `summary:` and `totals:`).
cg_sum() { cat "$work"/cg-"$1".*.1 2>/dev/null | awk '/^summary:/ {s += $2} END {printf "%d", s}'; }
if [ "$CALLGRIND" = 1 ]; then
    SECONDS=0
    for s in "${servers[@]}"; do
        echo "# $s under callgrind: $CG_N first registrations, then $CG_N counted refreshes at $CG_RATE/s" >&2
        start_server "$s"
        warm=$(cg_sipp "$CG_N" "$s-cg-warm")
        [ "$warm" = "$CG_N" ] || die "$s: $warm of $CG_N warm-up REGISTERs ended in 200"
        for p in $(family "$SRV"); do callgrind_control -z "$p" >/dev/null 2>&1 || true; done
        ok=$(cg_sipp "$CG_N" "$s-cg")
        for p in $(family "$SRV"); do callgrind_control -d "$p" >/dev/null 2>&1 || true; done
        sleep 1
        stop_pid "$STOP"
        # Under valgrind a stall (code seen for the first time is translated) can make podpbx
        # shed a few REGISTERs with 503 for lag: reported, and tolerated up to 3 %.
        [ $((ok * 100)) -ge $((CG_N * 97)) ] || die "$s: $ok of $CG_N counted REGISTERs ended in 200"
        ir=$(cg_sum "$s")
        [ "$ir" -gt 0 ] || die "$s: no callgrind dump"
        echo "$s $CG_N $ir $ok" >>"$work/cg-results"
    done
    echo
    echo "== User-space instructions per authenticated REGISTER round (callgrind; $CG_N refreshes of"
    echo "   $CG_N bindings at $CG_RATE/s, every process of the server; took ${SECONDS}s)"
    awk '{printf "%-9s %10.0f instructions per REGISTER round  (%d rounds, %d ended in 200; %d in all)\n", $1, $3 / $2, $2, $4, $3}' "$work/cg-results"
    awk '{v[$1] = $3 / $2} END {if (v["podpbx"] && v["kamailio"]) printf "ratio podpbx/kamailio: %.2f\n", v["podpbx"] / v["kamailio"]}' "$work/cg-results"
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# AB=1: both servers at once, interleaved chunks at LOAD_RATE/s, then exit
# ---------------------------------------------------------------------------------------------
if [ "$AB" = 1 ]; then
    [ -z "$ONLY" ] || die "AB=1 compares both servers (unset ONLY)"
    [ "$AB_CHUNKS" -ge 2 ] || die "AB_CHUNKS must be at least 2"
    SECONDS=0
    base_port=$PORT
    declare -A ab_port ab_srv ab_stop
    for s in podpbx kamailio; do
        [ "$s" = kamailio ] && PORT=$((base_port + 100))
        start_server "$s"
        ab_port[$s]=$PORT ab_srv[$s]=$SRV ab_stop[$s]=$STOP
        echo "# AB: $s on port $PORT: $USERS first registrations at $RATE/s" >&2
        run_sipp "$s" 0 fixed "$RATE" "$USERS" >/dev/null
    done
    n=$((LOAD_RATE * AB_SECS))
    for c in $(seq 1 "$AB_CHUNKS"); do
        # A B B A A B B A ...: chunk c goes to podpbx when (c mod 4) is 1 or 0.
        case $((c % 4)) in 1 | 0) s=podpbx ;; *) s=kamailio ;; esac
        PORT=${ab_port[$s]} SRV=${ab_srv[$s]}
        echo "# AB: chunk $c/$AB_CHUNKS: $s at $LOAD_RATE/s x $n" >&2
        run_sipp "$s" "$c" ab "$LOAD_RATE" "$n" >/dev/null
    done
    for s in kamailio podpbx; do stop_pid "${ab_stop[$s]}"; stop_pid "${ab_srv[$s]}"; done
    PORT=$base_port
    echo
    echo "== CPU per authenticated REGISTER at $LOAD_RATE/s, both servers running, $AB_CHUNKS interleaved"
    echo "   chunks of $AB_SECS s (A B B A ...), $USERS bindings in place; took ${SECONDS}s (CLK_TCK=$HZ)"
    # results: server chunk ab rate offered ok elapsed server_ticks ... (see run_sipp)
    awk -v hz="$HZ" '$3 == "ab" {
            us = $8 / hz * 1e6 / $6; t[$1] += $8; ok[$1] += $6; off[$1] += $5
            printf "  chunk %-2d %-8s %7.1f us/REGISTER  (%d of %d ended in 200, %d retransmissions)\n", $2, $1, us, $6, $5, $10
            # Pairs: chunks (1,2) (3,4) ...: one podpbx and one Kamailio chunk next to each other.
            pair = int(($2 + 1) / 2); v[pair, $1] = us
        }
        END {
            for (s in t) printf "%-8s pooled %7.1f us/REGISTER, %.2f %% failed\n", s, t[s] / hz * 1e6 / ok[s], (off[s] - ok[s]) * 100 / off[s]
            line = ""
            for (p = 1; (p, "podpbx") in v && (p, "kamailio") in v; p++) line = line sprintf(" %.2f", v[p, "podpbx"] / v[p, "kamailio"])
            if (ok["podpbx"] && ok["kamailio"])
                printf "ratio podpbx/kamailio CPU per REGISTER at %d/s, interleaved: %.2f (goal <= 0.5); per A/B pair:%s\n", \
                    '"$LOAD_RATE"', (t["podpbx"] / ok["podpbx"]) / (t["kamailio"] / ok["kamailio"]), line
        }' "$work/results"
    exit 0
fi

SECONDS=0
for round in $(seq 1 "$ROUNDS"); do
    order=("${servers[@]}")
    if [ $((round % 2)) = 0 ] && [ ${#servers[@]} = 2 ]; then order=(kamailio podpbx); fi
    for s in "${order[@]}"; do session "$s" "$round"; done
done
took=$SECONDS

# ---------------------------------------------------------------------------------------------
# Report: medians over rounds
# ---------------------------------------------------------------------------------------------
median() { sort -g | awk '{a[NR] = $1} END {if (!NR) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
# col server phase rate expr -> median of expr over rounds (fields as in run_sipp's line).
med() {
    awk -v s="$1" -v ph="$2" -v r="$3" -v hz="$HZ" "\$1 == s && \$3 == ph && \$4 == r { print $4 }" "$work/results" | median
}
# The same over the rounds where that run had < 1 % failures (a round disturbed by other load, or
# an overloaded server, retransmits and fails calls, which skews CPU per REGISTER); all rounds
# when none qualifies. valid server phase rate -> "k/n".
medv() {
    if [ "$(valid "$1" "$2" "$3" | cut -d/ -f1)" = 0 ]; then med "$@"; return; fi
    awk -v s="$1" -v ph="$2" -v r="$3" -v hz="$HZ" "\$1 == s && \$3 == ph && \$4 == r && (\$5 - \$6) * 100 / \$5 < 1 { print $4 }" "$work/results" | median
}
valid() {
    awk -v s="$1" -v ph="$2" -v r="$3" '$1 == s && $3 == ph && $4 == r {n++; if (($5 - $6) * 100 / $5 < 1) k++}
        END {printf "%d/%d", k, n}' "$work/results"
}
ACH='$6 / $7'                                  # successful REGISTERs per second
FAIL='($5 - $6) * 100 / $5'                    # % of offered not ending in 200
SCPU='$8 / hz / $7 * 100'                      # server CPU % of one core
PCPU='$9 / hz / $7 * 100'                      # SIPp CPU % of its core
PER10K='$8 / hz / $6 * 10000'                  # server CPU s per 10 000 successful REGISTERs
f() { printf "%${2:-8}.${3:-1}f" "$1"; }

echo
echo "== Authenticated REGISTER (REGISTER -> 401 -> REGISTER+auth -> 200), $USERS users, loopback UDP"
echo "   server on core $SERVER_CORE, SIPp on core $SIPP_CORE; medians of $ROUNDS round(s); took ${took}s"
echo "   podpbx: $("$BIN" --version 2>/dev/null | head -1); reference: $(kamailio -v | head -1 | cut -d' ' -f2-3)" \
    "(htable passwords, usrloc db_mode 0, children=$KAM_CHILDREN$([ "$KAM_TM" = 1 ] && echo ', t_newtran'))"
echo
echo "[1] Rate steps, $STEP_SECS s of REGISTERs each, with $USERS bindings in place. achieved = 200s per second"
echo "    over the step; retr = SIPp retransmissions (an answer later than 500 ms); rtt_ms = mean time of"
echo "    the whole round (REGISTER .. 200); cpu = % of one core"
printf '%-8s | %-51s | %-51s\n' "" "podpbx" "kamailio"
printf '%-8s |%s |%s\n' offered "$(printf ' %8s %6s %6s %7s %8s %8s' achieved fail% retr rtt_ms "srv cpu" "sipp cpu")" \
    "$(printf ' %8s %6s %6s %7s %8s %8s' achieved fail% retr rtt_ms "srv cpu" "sipp cpu")"
for rate in $STEPS; do
    line=$(printf '%-8s |' "$rate/s")
    for s in podpbx kamailio; do
        if ! grep -q "^$s " "$work/results"; then
            line+="$(printf ' %50s |' '(not run)')"
        elif grep -q "^$s [0-9]* step $rate " "$work/results"; then
            line+=" $(f "$(med $s step $rate "$ACH")" 8 0) $(f "$(med $s step $rate "$FAIL")" 6 2)"
            line+=" $(f "$(med $s step $rate '$10')" 6 0) $(f "$(med $s step $rate '$11')" 7 1)"
            line+=" $(f "$(med $s step $rate "$SCPU")" 7 0)% $(f "$(med $s step $rate "$PCPU")" 7 0)% |"
        else
            line+="$(printf ' %50s |' '(not run: the previous step had >= 1 % failures)')"
        fi
    done
    echo "$line"
done
echo
for s in podpbx kamailio; do
    grep -q "^$s " "$work/results" || continue
    # Per round the highest achieved rate among steps with < 1 % failures; then, at the highest
    # step run, the CPU of both sides tells which one saturated.
    ceil=$(awk -v s="$s" '$1 == s && $3 == "step" && ($5 - $6) * 100 / $5 < 1 {a = $6 / $7; if (a > m[$2]) m[$2] = a}
        END {for (r in m) print m[r]}' "$work/results" | median)
    top=$(awk -v s="$s" '$1 == s && $3 == "step" {print $4}' "$work/results" | sort -n | tail -1)
    scpu=$(f "$(med "$s" step "$top" "$SCPU")" 1 0); pcpu=$(f "$(med "$s" step "$top" "$PCPU")" 1 0)
    who="neither side at >= 85 % CPU"
    if [ "$scpu" -ge 85 ] && [ "$scpu" -ge "$pcpu" ]; then who="the server ($scpu % CPU)";
    elif [ "$pcpu" -ge 85 ]; then who="SIPp ($pcpu % CPU)"; fi
    printf '%-8s ceiling (< 1 %% failures): %s REGISTER/s (%s SIP requests/s)\n' "$s" "$(f "$ceil" 1 0)" "$(f "$(echo "$ceil * 2" | bc -l)" 1 0)"
    printf '%-8s   top step %s/s: %s %% failed (%s unexpected answers, %s timeouts), server %s %% CPU, SIPp %s %% -> saturated: %s\n' \
        "" "$top" "$(f "$(med "$s" step "$top" "$FAIL")" 1 2)" "$(f "$(med "$s" step "$top" '$12')" 1 0)" \
        "$(f "$(med "$s" step "$top" '$13')" 1 0)" "$scpu" "$pcpu" "$who"
done
echo
echo "[2] Server CPU seconds per 10 000 authenticated REGISTERs at $RATE/s (medians over the rounds with < 1 % failures)"
echo "    a) first registration of $USERS users (0 -> $USERS bindings)"
for s in podpbx kamailio; do
    grep -q "^$s " "$work/results" || continue
    printf '%-8s %7.3f cpu-s/10k  (%s rounds valid; failures %s %%, retrans %s, rtt %s ms, server %s %% of a core, SIPp %s %%)\n' "$s" \
        "$(medv $s fixed "$RATE" "$PER10K")" "$(valid $s fixed "$RATE")" "$(f "$(med $s fixed "$RATE" "$FAIL")" 1 2)" \
        "$(med $s fixed "$RATE" '$10')" "$(f "$(medv $s fixed "$RATE" '$11')" 1 1)" "$(f "$(medv $s fixed "$RATE" "$SCPU")" 1 0)" \
        "$(f "$(medv $s fixed "$RATE" "$PCPU")" 1 0)"
done
if grep -q " step $RATE " "$work/results"; then
    echo "    b) re-registration with $USERS bindings in place (the $RATE/s step, $((RATE * STEP_SECS)) REGISTERs)"
    for s in podpbx kamailio; do
        grep -q "^$s [0-9]* step $RATE " "$work/results" || continue
        printf '%-8s %7.3f cpu-s/10k  (%s rounds valid; failures %s %%, rtt %s ms, server %s %% of a core)\n' "$s" \
            "$(medv $s step "$RATE" "$PER10K")" "$(valid $s step "$RATE")" "$(f "$(med $s step "$RATE" "$FAIL")" 1 2)" \
            "$(f "$(medv $s step "$RATE" '$11')" 1 1)" "$(f "$(medv $s step "$RATE" "$SCPU")" 1 0)"
    done
fi
if grep -q '^podpbx ' "$work/results" && grep -q '^kamailio ' "$work/results"; then
    for ph in fixed step; do
        grep -q "^podpbx [0-9]* $ph $RATE " "$work/results" && grep -q "^kamailio [0-9]* $ph $RATE " "$work/results" || continue
        a=$(medv podpbx $ph "$RATE" "$PER10K"); b=$(medv kamailio $ph "$RATE" "$PER10K")
        printf 'ratio podpbx/kamailio CPU per REGISTER, %s: %.2f (target <= 1: lower is better); per round: %s\n' \
            "$([ $ph = fixed ] && echo "a) first registration" || echo "b) with $USERS bindings")" "$(echo "$a / $b" | bc -l)" \
            "$(awk -v r="$RATE" -v ph=$ph '$3 == ph && $4 == r {c[$1 " " $2] = $8 / $6}
                END {for (k in c) {split(k, x, " "); if (x[1] == "podpbx" && ("kamailio " x[2]) in c) printf "r%s %.2f  ", x[2], c[k] / c["kamailio " x[2]]}}' "$work/results")"
    done
fi
echo
echo "[2c] At $LOAD_RATE/s for $LOAD_SECS s with $USERS bindings in place: server CPU per REGISTER (us; medians over"
echo "     the rounds with < 1 % failures), failures, peak memory (1 s samples; Kamailio summed over its processes)"
US='$8 / hz / $6 * 1000000'
for s in podpbx kamailio; do
    grep -q "^$s [0-9]* load " "$work/results" || continue
    printf '%-8s %7.1f us/REGISTER  achieved %s/s, failures %s %%, rtt %s ms, server %s %% of a core; peak RSS %.1f MB, peak PSS %.1f MB (%s rounds valid)\n' "$s" \
        "$(medv $s load "$LOAD_RATE" "$US")" "$(f "$(med $s load "$LOAD_RATE" "$ACH")" 1 0)" "$(f "$(med $s load "$LOAD_RATE" "$FAIL")" 1 2)" \
        "$(f "$(med $s load "$LOAD_RATE" '$11')" 1 1)" "$(f "$(med $s load "$LOAD_RATE" "$SCPU")" 1 0)" \
        "$(med $s load "$LOAD_RATE" '$16 / 1024')" "$(med $s load "$LOAD_RATE" '$17 / 1024')" "$(valid $s load "$LOAD_RATE")"
done
if grep -q "^podpbx [0-9]* load " "$work/results" && grep -q "^kamailio [0-9]* load " "$work/results"; then
    printf 'ratio podpbx/kamailio CPU per REGISTER at %s/s: %.2f (goal <= 0.5); per round: %s\n' "$LOAD_RATE" \
        "$(echo "$(medv podpbx load "$LOAD_RATE" "$US") / $(medv kamailio load "$LOAD_RATE" "$US")" | bc -l)" \
        "$(awk '$3 == "load" {c[$1 " " $2] = $8 / $6}
            END {for (k in c) {split(k, x, " "); if (x[1] == "podpbx" && ("kamailio " x[2]) in c) printf "r%s %.2f  ", x[2], c[k] / c["kamailio " x[2]]}}' "$work/results")"
fi
if [ -s "$work/windows" ]; then
    echo
    echo "[2d] Sustained $SUSTAIN_RATE/s for $SUSTAIN_SECS s (bindings in place), per 10 s window: achieved/s, server CPU %,"
    echo "     us per REGISTER, PSS MB; a cost that grows once transactions start expiring shows here"
    for s in podpbx kamailio; do
        grep -q "^$s " "$work/windows" || continue
        awk -v s=$s '$1 == s {printf "%-8s r%s t=%3ss %6s/s %4s%% %7s us %6.1f MB\n", $1, $2, $3, $4, $5, $6, $7 / 1024}' "$work/windows"
    done
    for s in podpbx kamailio; do
        grep -q "^$s [0-9]* sustain " "$work/results" || continue
        printf '%-8s sustained: failures %s %% (%s timeouts, %s unexpected), %.1f us/REGISTER over the run, peak PSS %.1f MB\n' "$s" \
            "$(f "$(med $s sustain "$SUSTAIN_RATE" "$FAIL")" 1 2)" "$(med $s sustain "$SUSTAIN_RATE" '$13')" \
            "$(med $s sustain "$SUSTAIN_RATE" '$12')" "$(med $s sustain "$SUSTAIN_RATE" "$US")" "$(med $s sustain "$SUSTAIN_RATE" '$17 / 1024')"
    done
fi
echo
echo "[3] Memory (MB): before load -> after $USERS bindings"
memcol() { awk -v s="$1" "\$1 == s && \$3 == \"mem\" { print $2 }" "$work/results" | median; }
for s in podpbx kamailio; do
    grep -q "^$s " "$work/results" || continue
    printf '%-8s RSS %6.1f -> %6.1f  HWM %6.1f -> %6.1f  PSS %6.1f -> %6.1f' "$s" \
        "$(memcol $s '$4 / 1024')" "$(memcol $s '$8 / 1024')" "$(memcol $s '$5 / 1024')" "$(memcol $s '$9 / 1024')" \
        "$(memcol $s '$6 / 1024')" "$(memcol $s '$10 / 1024')"
    if [ "$s" = kamailio ]; then
        printf '  shm used %s -> %s  (%s processes: summed RSS counts shared memory in each, an over-estimate)' \
            "$(f "$(memcol $s '($12 == "-" ? "nan" : $12 / 1024)')" 1 1)" "$(f "$(memcol $s '($13 == "-" ? "nan" : $13 / 1024)')" 1 1)" \
            "$(memcol $s '$11')"
    fi
    printf '  bindings %s\n' "$(memcol $s '$14')"
done
if grep -q '^podpbx [0-9]* restart ' "$work/results"; then
    printf '%-8s restarted, %s bindings restored from bindings.json: RSS %.1f  HWM %.1f  PSS %.1f  (%.0f B per binding over the empty start)\n' podpbx \
        "$(awk '$3 == "restart" {print $10}' "$work/results" | median)" \
        "$(awk '$3 == "restart" {print $4 / 1024}' "$work/results" | median)" \
        "$(awk '$3 == "restart" {print $5 / 1024}' "$work/results" | median)" \
        "$(awk '$3 == "restart" {print $6 / 1024}' "$work/results" | median)" \
        "$(awk '$3 == "restart" {r[$2] = $4; b[$2] = $10} $1 == "podpbx" && $3 == "mem" {m[$2] = $4}
            END {for (k in r) if (k in m && b[k] > 0) print (r[k] - m[k]) * 1024 / b[k]}' "$work/results" | median)"
fi
if grep -q ' idle ' "$work/results"; then
    for s in podpbx kamailio; do
        grep -q "^$s [0-9]* idle " "$work/results" || continue
        printf '%-8s after %s s idle (bindings kept, transactions gone): RSS %.1f  HWM %.1f  PSS %.1f  shm %s\n' "$s" "$IDLE_SECS" \
            "$(awk -v s=$s '$1 == s && $3 == "idle" {print $4 / 1024}' "$work/results" | median)" \
            "$(awk -v s=$s '$1 == s && $3 == "idle" {print $5 / 1024}' "$work/results" | median)" \
            "$(awk -v s=$s '$1 == s && $3 == "idle" {print $6 / 1024}' "$work/results" | median)" \
            "$(awk -v s=$s '$1 == s && $3 == "idle" {print ($8 == "-" ? "-" : sprintf("%.1f", $8 / 1024))}' "$work/results" | head -1)"
    done
fi
if grep -q '^podpbx ' "$work/results" && grep -q '^kamailio ' "$work/results"; then
    printf 'RSS growth per binding: podpbx %.0f B; kamailio %.0f B (RSS sum), %.0f B (PSS sum), %.0f B (shm)\n' \
        "$(memcol podpbx '($8 - $4) * 1024 / '"$USERS")" "$(memcol kamailio '($8 - $4) * 1024 / '"$USERS")" \
        "$(memcol kamailio '($10 - $6) * 1024 / '"$USERS")" "$(memcol kamailio '($13 - $12) * 1024 / '"$USERS")"
fi
echo
echo "[4] Noise: other processes' use of the server core / SIPp core during the runs (median, max):"
for s in podpbx kamailio; do
    grep -q "^$s " "$work/results" || continue
    printf '%-8s server core %s %% (max %s %%), SIPp core %s %% (max %s %%)\n' "$s" \
        "$(awk -v s=$s '$1 == s && $3 ~ /^(fixed|load|step|sustain)$/ {print $14}' "$work/results" | median)" \
        "$(awk -v s=$s '$1 == s && $3 ~ /^(fixed|load|step|sustain)$/ {print $14}' "$work/results" | sort -n | tail -1)" \
        "$(awk -v s=$s '$1 == s && $3 ~ /^(fixed|load|step|sustain)$/ {print $15}' "$work/results" | median)" \
        "$(awk -v s=$s '$1 == s && $3 ~ /^(fixed|load|step|sustain)$/ {print $15}' "$work/results" | sort -n | tail -1)"
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "[5] Logs"
for s in podpbx kamailio; do
    [ -f "$work/$s.log" ] || continue
    n=$(grep -acE 'WARN|ERROR|CRITICAL' "$work/$s.log" || true)
    echo "$s: $n warning/error lines"
    { grep -aE 'WARN|ERROR|CRITICAL' "$work/$s.log" || true; } \
        | sed -E 's/\x1b\[[0-9;]*m//g; s/^[0-9T:.Z-]+ +//; s/^ *[0-9]+\([0-9]+\) //' \
        | cut -c1-160 | sort | uniq -c | sort -rn | head -5 | sed 's/^/    /'
done
[ -s "$work/oddities" ] && { echo "SIPp unexpected answers (first lines per run):"; cat "$work/oddities"; }
echo
echo "raw results: server round phase rate offered ok elapsed_s server_ticks sipp_ticks retrans rtt_ms unexpected timeouts"
echo "             other_load_%_server_core other_load_%_sipp_core peak_rss_kb peak_pss_kb (CLK_TCK=$HZ);"
echo "             server round mem rss hwm pss nproc (before) rss hwm pss nproc (after) shm_kb_before shm_kb_after bindings"
echo "             podpbx round restart rss hwm pss nproc - - bindings_restored"
cat "$work/results"
