#!/usr/bin/env bash
# Call rate and call capacity: podpbx (release binary, a B2BUA that anchors media) vs Kamailio 5.6
# as a stateful record-routing proxy (benches/kamailio/proxy.cfg), on loopback, the server pinned
# to one core (taskset), the SIPp caller and callee on the other.
#
# A call: SIPp caller (benches/sipp/call_uac.xml, 127.0.0.2) -> server (127.0.0.1) -> SIPp callee
# (benches/sipp/call_uas.xml, 127.0.0.1): INVITE with SDP / 100 / 180 / 200 / ACK, no pause,
# BYE / 200. Both servers take in the same 6 messages and send the same 7 per call.
#   * podpbx: the callee REGISTERs once (digest, 1 h) before the load; the caller is a user with
#     identify_by_source (allow_from = 127.0.0.2/32): no digest round on the INVITE. podpbx
#     answers the caller itself, places a second call to the callee, allocates (binds) two relay
#     port pairs per call and releases them at the BYE, writes a CDR line per call.
#   * Kamailio: no authentication either; record_route, the Request-URI rewritten to the callee
#     (a static contact, standing in for a location lookup), t_relay; ACK/BYE by loose_route.
#
# Per round (the server order alternates between rounds):
#   1. fixed rates (each of FIXED_RATES: 200 and 2 000 calls/s), both servers running at once, each
#      with its own SIPp caller and callee:
#      after a warm-up (2 s at the rate each, not reported), the rate for FIXED_SECS s per server
#      in CHUNKS chunks, alternating A B B A A B B A, so that other work on the shared host falls
#      on both alike. Server CPU (utime+stime, all threads and child processes) over the whole
#      window per 1 000 calls completed; the podpbx/Kamailio ratio;
#   2. rate steps (STEPS, STEP_SECS s each, each on a fresh server; a step that failed while
#      other processes took >= NOISY % of a core is run once more; after a failed step the steps
#      stop): achieved calls/s, failures (< 1 % passes), server and SIPp CPU;
#   3. podpbx only (MEDIA=1): CONC concurrent calls with RTP (benches/sipp/call_uac_rtp.xml),
#      PCMU 20 ms: the caller streams a looped WAV (rtp_stream, 50 packets/s), the callee echoes
#      it (-rtp_echo), so the relay takes in and forwards 2 x 50 packets/s per call. Ramp at RAMP
#      calls/s, hold HOLD_SECS s, hang up. podpbx CPU % (all threads) over the hold, RSS idle / at
#      CONC calls / after teardown, relay sockets in the media range idle / at CONC / after
#      teardown, RTP loss and jitter per leg and forwarded packets (from the CDRs), kernel
#      receive-buffer drops (/proc/net/udp) on podpbx's media sockets and on SIPp's echo socket,
#      and podpbx_relay_ssrc_flaps_total: SIPp 3.6 sends every call's RTP from one socket, so in
#      the shared layout one leg gets them all (crossed calls); the report says when that
#      happened, and PORT_LAYOUT=per-call is the forwarding measure with SIPp.
# Round 1 also runs (SUSTAIN_SECS > 0) SUSTAIN_SERVERS fresh at SUSTAIN_RATE calls/s for
# SUSTAIN_SECS s: much longer than the 32 s (64*T1) a transaction may linger (Timers J, L, M), so
# the transaction state reaches its steady size, which the short steps never do; RSS and CPU are
# sampled every second and reported per 10 s window (flat RSS, no cliff).
# Round 1 also counts system calls (SYSCALLS=1): each server fresh, strace -c -f attached to all
# its processes and threads for SYSCALL_CALLS calls at RATE calls/s: system calls per call, by
# name. PERF=1: a perf profile of podpbx (perf record -g, all threads) during PERF_SECS s at
# PERF_RATE calls/s, summarised by symbol (self time).
# The report gives medians over ROUNDS rounds.
#
#   usage: benches/call_rate.sh [rounds]           (3 rounds: about 12 minutes)
#   env:   FIXED_RATES="200 2000" FIXED_SECS=20 CHUNKS=4 STEPS="2500 4000 5500 7000" STEP_SECS=3 NOISY=25
#          MEDIA=1 CONC=500 RAMP=100 HOLD_SECS=20
#          SUSTAIN_RATE=1500 SUSTAIN_SECS=120 (0: skip) SUSTAIN_SERVERS=podpbx ("podpbx kamailio")
#          SYSCALLS=1 SYSCALL_CALLS=2000 RATE=200 (rate of the syscall count)
#          PERF=0 PERF_RATE=2000 PERF_SECS=10
#          BIN=target/release/podpbx (another binary: before/after runs) PRIO=1 (servers and SIPp at
#          nice -10: less disturbed by other work on a shared host)
#          SIPP_BUF=8388608 (the SIPp caller's and callee's socket buffers, -buff_size; empty: SIPp's
#          default, which a server answering a batch at once can overflow: see register_rate.sh)
#          PORT=15100 (podpbx; Kamailio PORT+50; their SIPp +10..+40; podpbx's admin PORT+99)
#          SERVER_CORE=0 SIPP_CORE=1 KAM_CHILDREN=1 (UDP workers) KAM_SHM=1024 (MB of shm)
#          ONLY=podpbx|kamailio KEEP=1 (keep the work directory and logs)
#          MEDIA_MIN=40000 MEDIA_MAX=55999 (podpbx's RTP port range: 4 000 calls with per-call ports)
#          PORT_LAYOUT=shared|per-call (podpbx's media.port_layout)
# Bounded: every SIPp run has a call count, a SIPp -timeout and a `timeout`; everything started
# here is stopped by PID (SIGTERM, then SIGKILL) on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-${ROUNDS:-3}}
RATE=${RATE:-200}
FIXED_RATES=${FIXED_RATES:-"200 2000"}
FIXED_SECS=${FIXED_SECS:-20}
CHUNKS=${CHUNKS:-4}
NOISY=${NOISY:-25}
STEPS=${STEPS:-"2500 4000 5500 7000"}
STEP_SECS=${STEP_SECS:-3}
MEDIA=${MEDIA:-1}
CONC=${CONC:-500}
RAMP=${RAMP:-100}
HOLD_SECS=${HOLD_SECS:-20}
PORT_LAYOUT=${PORT_LAYOUT:-shared}
SUSTAIN_RATE=${SUSTAIN_RATE:-1500}
SUSTAIN_SECS=${SUSTAIN_SECS:-120}
SYSCALLS=${SYSCALLS:-1}
SYSCALL_CALLS=${SYSCALL_CALLS:-2000}
PERF=${PERF:-0}
PERF_RATE=${PERF_RATE:-2000}
PERF_SECS=${PERF_SECS:-10}
PRIO=${PRIO:-0}
SIPP_BUF=${SIPP_BUF-8388608}
prio=()
[ "$PRIO" = 1 ] && prio=(nice -n -10)
SUSTAIN_SERVERS=${SUSTAIN_SERVERS:-podpbx}
BASE=${PORT:-15100}
SERVER_CORE=${SERVER_CORE:-0}
SIPP_CORE=${SIPP_CORE:-1}
KAM_CHILDREN=${KAM_CHILDREN:-1}
KAM_SHM=${KAM_SHM:-1024}
ONLY=${ONLY:-}
KEEP=${KEEP:-0}
MEDIA_MIN=${MEDIA_MIN:-40000}
MEDIA_MAX=${MEDIA_MAX:-55999}
UAC_IP=127.0.0.2             # the caller; podpbx identifies it by this address
SRV_IP=127.0.0.1
ADMIN=$SRV_IP:$((BASE + 99))  # podpbx's admin listener (/metrics)
HZ=$(getconf CLK_TCK)
# Each server has its own ports (both run at once in the fixed-rate phase): podpbx from BASE,
# Kamailio from BASE+50; +10 the caller, +20 the callee, +30 the callee's RTP (echo) port, +40
# the caller's SDP port in the rate runs (nothing is sent there).
select_server() {
    SRV_NAME=$1
    local b=$BASE
    [ "$1" = kamailio ] && b=$((BASE + 50))
    PORT=$b; UAC_PORT=$((b + 10)); UAS_PORT=$((b + 20)); UAS_MEDIA=$((b + 30)); UAC_MEDIA=$((b + 40))
    SRV=${SRV_OF[$1]:-}; STOP=${STOP_OF[$1]:-}; UAS=${UAS_OF[$1]:-}
}

for tool in sipp kamailio taskset timeout awk ss curl python3; do
    command -v "$tool" >/dev/null || { echo "call_rate: $tool not found" >&2; exit 1; }
done

work=$(mktemp -d /tmp/call_rate.XXXXXX)
pids=()
failed=0

. benches/lib_calls.sh

# Stops the server of a session; for podpbx notes its calls still active and how it stopped.
stop_server() {
    local what=$1 active=""
    [ "$SRV_NAME" = podpbx ] && active=$(metric podpbx_calls_active)
    STOP_NOTE="stopped on SIGTERM"
    stop_pid "$STOP"
    stop_pid "$SRV"
    if [ "$SRV_NAME" = podpbx ] && { [ "$active" != 0 ] || [ "$STOP_NOTE" != "stopped on SIGTERM" ]; }; then
        echo "  podpbx after the $what: $active calls still active when stopped; $STOP_NOTE" >> "$work/stops"
    fi
}
die() {
    failed=1
    echo "call_rate: $*" >&2
    local f
    for f in "$work"/*.log; do
        [ -s "$f" ] && { echo "--- tail of $f" >&2; tail -5 "$f" >&2; }
    done
    exit 1
}

need_bin

# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
select_server podpbx
podpbx_config "port_layout = \"$PORT_LAYOUT\"" "" > "$work/podpbx.toml"
"$BIN" check --config "$work/podpbx.toml" >/dev/null || die "podpbx rejects the generated config"

mpath=$(kamailio_modules)
[ -f "$mpath/rr.so" ] || die "Kamailio modules (tm.so, rr.so) not found"
select_server kamailio
sed -e "s#@MPATH@#$mpath/#" -e "s#@CALLEE@#$SRV_IP:$UAS_PORT#" benches/kamailio/proxy.cfg > "$work/kamailio.cfg"
kamailio -f "$work/kamailio.cfg" -c >"$work/kamcheck.out" 2>&1 \
    || { cat "$work/kamcheck.out" >&2; die "Kamailio rejects benches/kamailio/proxy.cfg"; }

# 8 kHz mu-law WAV (format 7), 2 s of a quiet pattern, looped by rtp_stream (160-byte payloads
# every 20 ms). SIPp does not expand keywords in rtp_stream: the caller scenario gets the path.
python3 - "$work/tone.wav" <<'PY'
import struct, sys
data = bytes((0xff if (i // 40) % 2 else 0xfe) for i in range(16000))
fmt = struct.pack("<HHIIHH", 7, 1, 8000, 8000, 1, 8)
body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
open(sys.argv[1], "wb").write(b"RIFF" + struct.pack("<I", len(body)) + body)
PY
sed "s|@RTP_FILE@|$work/tone.wav|" benches/sipp/call_uac_rtp.xml > "$work/call_uac_rtp.xml"

# ---------------------------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------------------------
# "rss_kb hwm_kb" of one process.
mem_kb() { awk '/^VmRSS:/ {r = $2} /^VmHWM:/ {h = $2} END {print r + 0, h + 0}' "/proc/$1/status"; }
# Kernel receive drops (/proc/net/udp "drops") summed over local ports lo..hi on 127.0.0.0/8.
udp_drops() {
    awk -v lo="$1" -v hi="$2" 'function hex(h,  i, n) { n = 0; for (i = 1; i <= length(h); i++)
            n = n * 16 + index("0123456789ABCDEF", toupper(substr(h, i, 1))) - 1; return n }
        NR > 1 { split($2, a, ":"); port = hex(a[2]);
        if (port >= lo && port <= hi) d += $NF } END {print d + 0}' /proc/net/udp
}
metric_num() { local v; v=$(metric "$1"); [[ "$v" =~ ^[0-9]+$ ]] && echo "$v" || echo 0; }
# Mean of SIPp's response time 1 (INVITE sent .. 200 received) in ms (HH:MM:SS:usec).
stat_rtt_ms() {
    stat_col "$1" 'ResponseTime1(C)' | awk -F':' 'NF == 4 {printf "%.2f", ($1 * 3600 + $2 * 60 + $3) * 1000 + $4 / 1000; next} {print "nan"}'
}
# Seconds from the start to the first statistics period with a failed call ("-": none).
stat_first_fail() {
    awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "FailedCall(P)") c = i; next }
        $c > 0 { split($1, a, "\t"); split($3, b, "\t"); printf "%.0f", b[3] - a[3]; f = 1; exit }
        END { if (!f) print "-" }' "$1"
}
# Every second until stopped: "epoch_s cpu_ticks rss_kb" of the server (all processes).
sampler() { # pid file
    local p rss
    while kill -0 "$1" 2>/dev/null; do
        rss=0
        for p in $(family "$1"); do
            rss=$((rss + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
        done
        echo "$(date +%s.%N) $(cpu_ticks "$1") $rss"
        sleep 1
    done > "$2"
}
# 10 s windows of a run from its samples and SIPp's per-second statistics, one line per window:
# "W server round window_start_s calls_per_s failed_in_window cpu_% ms_cpu_per_1k_calls rss_kb".
windows() { # server round tag
    awk -v s="$1" -v r="$2" -v hz="$HZ" -F'[ ;\t]+' '
        FNR == 1 && NR != 1 { csv = 1 }
        !csv { t[++n] = $1; c[n] = $2; m_[n] = $3; next }
        # each time stamp of a data row is 3 fields (date, time, epoch), one in the header
        FNR == 1 { for (i = 1; i <= NF; i++) { if ($i == "SuccessfulCall(C)") col = i + 6; if ($i == "FailedCall(C)") fc = i + 6 }; next }
        { e[++m] = $9; ok[m] = $col; bad[m] = $fc }
        END {
            j = 0
            for (i = 1; i <= n; i++) { while (j < m && e[j + 1] <= t[i]) j++; done[i] = j ? ok[j] : 0; f[i] = j ? bad[j] : 0 }
            for (i = 1; i + 10 <= n; i += 10) {
                w = t[i + 10] - t[i]; calls = done[i + 10] - done[i]; cpu = (c[i + 10] - c[i]) / hz
                printf "W %s %s %d %.0f %d %.0f %.3f %d\n", s, r, t[i] - t[1], calls / w, f[i + 10] - f[i], cpu / w * 100,
                    (calls > 0 ? cpu / calls * 1000 : 0), m_[i + 10]
            }
        }' "$work/$3.samples" "$work/$3.csv"
}



# run_calls server round phase rate count -> a results line:
#   R server round phase rate offered ok elapsed_s server_ticks sipp_ticks retrans rtt_ms
#     failed_unexpected failed_timeouts other_load_%_server_core other_load_%_sipp_core
#     first_failure_s (seconds into the run of the first failed call, "-": none)
run_calls() {
    RUN_NO=$((${RUN_NO:-0} + 1))
    local server=$1 round=$2 phase=$3 rate=$4 n=$5 tag="$1-r$2-$3-$4-$RUN_NO"
    select_server "$server"
    local limit=$((n / rate + 25)) t0 t1 u0 u1 uac_ticks ok elapsed bs0 bs1 bp0 bp1 w0 w1 noise tmo
    bs0=$(core_busy "$SERVER_CORE"); bp0=$(core_busy "$SIPP_CORE"); w0=$(date +%s%N)
    t0=$(cpu_ticks "$SRV"); u0=$(cpu_ticks "$UAS")
    local samp=""
    if [ "$phase" = sustain ]; then
        sampler "$SRV" "$work/$tag.samples" &
        samp=$!
    fi
    # cutime+cstime of this subshell once timeout (and SIPp) ended: the caller's CPU.
    uac_ticks=$(
        timeout "$limit" "${prio[@]}" taskset -c "$SIPP_CORE" sipp "$SRV_IP:$PORT" -sf benches/sipp/call_uac.xml \
            -i "$UAC_IP" -mi "$UAC_IP" -mp "$UAC_MEDIA" -p "$UAC_PORT" -t u1 -s 102 -key caller 201 \
            -m "$n" -r "$rate" -l 20000 -recv_timeout 5000 -timeout "$((limit - 3))s" -nostdin \
            ${SIPP_BUF:+-buff_size "$SIPP_BUF"} \
            -trace_stat -stf "$work/$tag.csv" -fd 1 -trace_err -error_file "$work/$tag.err" \
            -max_log_size 1000000 >"$work/$tag.out" 2>&1 || true
        awk '{print $16 + $17}' "/proc/$BASHPID/stat"
    )
    t1=$(cpu_ticks "$SRV"); u1=$(cpu_ticks "$UAS")
    if [ -n "$samp" ]; then
        kill "$samp" 2>/dev/null || true
        wait "$samp" 2>/dev/null || true
        windows "$server" "$round" "$tag" >> "$work/windows"
    fi
    bs1=$(core_busy "$SERVER_CORE"); bp1=$(core_busy "$SIPP_CORE"); w1=$(date +%s%N)
    noise=$(other_load $(( (w1 - w0) / 1000000 )) $((bs1 - bs0)) $((t1 - t0)) $((bp1 - bp0)) $((uac_ticks + u1 - u0)))
    kill -0 "$SRV" 2>/dev/null || die "$server died during $phase at $rate/s (see $work/$server.log)"
    kill -0 "$UAS" 2>/dev/null || die "the SIPp callee died during $phase at $rate/s (see $work/*-uas.out)"
    [ -s "$work/$tag.csv" ] || die "SIPp wrote no statistics for $tag (see $work/$tag.out)"
    ok=$(stat_col "$work/$tag.csv" 'SuccessfulCall(C)')
    elapsed=$(stat_elapsed "$work/$tag.csv")
    tmo=$(( $(stat_col "$work/$tag.csv" 'FailedTimeoutOnRecv(C)') + $(stat_col "$work/$tag.csv" 'FailedMaxUDPRetrans(C)') ))
    echo "R $server $round $phase $rate $n $ok $elapsed $((t1 - t0)) $((uac_ticks + u1 - u0))" \
        "$(stat_col "$work/$tag.csv" 'Retransmissions(C)') $(stat_rtt_ms "$work/$tag.csv")" \
        "$(stat_col "$work/$tag.csv" 'FailedUnexpectedMessage(C)') $tmo $noise $(stat_first_fail "$work/$tag.csv")" >> "$work/results"
    sipp_oddities "$work/$tag.err" "$tag caller"
}

# Ends a rate session: podpbx's counters (calls still active 1 s after the load, dispositions),
# the callee's complaints, then stops the callee and the server.
end_session() {
    local server=$1 round=$2 tag=$3 what=$4
    select_server "$server"
    if [ "$server" = podpbx ]; then
        sleep 1
        echo "P $round $what: calls_active=$(metric podpbx_calls_active) $(curl -s --max-time 2 "http://$ADMIN/metrics" | awk '/^podpbx_calls_total/ && $2 > 0 {
            sub(/podpbx_calls_total/, ""); printf "%s=%s ", $1, $2 }
            /^podpbx_sip_(send_errors|stray_responses|dropped_malformed)_total / && $2 > 0 {printf "%s=%s ", $1, $2}')" >> "$work/results"
    fi
    sipp_oddities "$work/$tag-uas.err" "$tag callee" aborts
    stop_pid "$UAS"
    stop_server "$what"
}

# Fixed rate, both servers at once (each idle while the other has load; idle, each uses
# < 0.1 % of a core): RATE calls/s in CHUNKS chunks per server, alternating A B B A A B ..., so
# that other work on the host (the noise) falls on both alike. Each server's CPU is counted over
# the whole interleaved window (so work it defers, e.g. timers, is counted), per call completed.
#   -> F server round ok_calls server_ticks window_s other_load_%_server_core rate
fixed_session() {
    local round=$1 rate=$2 a=$3 b=${4:-} s c i order t0 t1 bs0 bs1 w0 w1 n
    local -A T0
    for s in $a $b; do
        start_server "$s"
        start_uas "$s" "$s-r$round-fixed-$rate"
        # Warm-up (not reported): first-call allocations, page faults, caches.
        run_calls "$s" "$round" warmup "$rate" $((rate * 2))
    done
    echo "# round $round: $rate calls/s for $FIXED_SECS s each: $a${b:+ and $b} interleaved" >&2
    for s in $a $b; do select_server "$s"; T0[$s]=$(cpu_ticks "$SRV"); done
    bs0=$(core_busy "$SERVER_CORE"); w0=$(date +%s%N)
    n=$((rate * FIXED_SECS / CHUNKS))
    for c in $(seq 1 "$CHUNKS"); do
        order="$a $b"
        [ $((c % 4)) = 2 ] || [ $((c % 4)) = 3 ] && order="$b $a"
        for s in $order; do run_calls "$s" "$round" chunk "$rate" "$n"; done
    done
    sleep 0.5
    bs1=$(core_busy "$SERVER_CORE"); w1=$(date +%s%N)
    t1=0
    for s in $a $b; do select_server "$s"; i=$(cpu_ticks "$SRV"); t1=$((t1 + i - T0[$s])); T0[$s]=$((i - T0[$s])); done
    for s in $a $b; do
        echo "F $s $round $(awk -v s="$s" -v r="$round" -v rate="$rate" '$1 == "R" && $2 == s && $3 == r && $4 == "chunk" && $5 == rate {k += $7} END {print k + 0}' "$work/results")" \
            "${T0[$s]} $(awk -v a="$w0" -v b="$w1" 'BEGIN {printf "%.3f", (b - a) / 1e9}')" \
            "$(awk -v hz="$HZ" -v w=$(( (w1 - w0) / 1000000 )) -v o=$((bs1 - bs0 - t1)) 'BEGIN {o = o < 0 ? 0 : o; printf "%.0f", o / hz / (w / 1000) * 100}') $rate" >> "$work/results"
    done
    for s in $a $b; do end_session "$s" "$round" "$s-r$round-fixed-$rate" "round $round fixed rate $rate"; done
}

# Rate steps: each step on a fresh server, so that every step starts with an empty transaction
# table (podpbx keeps a transaction per call for 32 s and refuses new ones beyond 50 000:
# back-to-back steps would measure that, not the rate; the sustained run does). A step that failed
# while other processes used >= NOISY % of a core is run once more (the host is shared); after a
# failed step the steps stop.
rate_session() {
    local server=$1 round=$2 rate fail tag try
    for rate in $STEPS; do
        for try in 1 2; do
            tag="$server-r$round-step-$rate-$try"
            echo "# round $round $server: step $rate calls/s$([ "$try" = 2 ] && echo ' (again)')" >&2
            start_server "$server"
            start_uas "$server" "$tag"
            run_calls "$server" "$round" step "$rate" $((rate * STEP_SECS))
            # fail: >= 1 % failed; noisy: other processes took >= NOISY % of either core meanwhile.
            read -r fail noisy < <(grep '^R ' "$work/results" | tail -1 | awk -v n="$NOISY" \
                '{print (($6 - $7) * 100 / $6 >= 1) ? 1 : 0, ($15 >= n || $16 >= n) ? 1 : 0}')
            end_session "$server" "$round" "$tag" "round $round step $rate (try $try)"
            [ "$fail" = 1 ] && [ "$noisy" = 1 ] || break
            # Keep the failed first try in the raw results as "stepfail"; the retry counts.
            if [ "$try" = 1 ]; then
                awk -v k="R $server $round step $rate " 'index($0, k) == 1 {n = NR} {l[NR] = $0}
                    END {for (i = 1; i <= NR; i++) {if (i == n) sub(/ step /, " stepfail ", l[i]); print l[i]}}' \
                    "$work/results" > "$work/results.tmp" && mv "$work/results.tmp" "$work/results"
            fi
        done
        [ "$fail" = 1 ] && break
    done
    return 0
}

# A fresh server at SUSTAIN_RATE calls/s for SUSTAIN_SECS s: longer than the transactions'
# lifetime (podpbx keeps INVITE and BYE transactions 64*T1 = 32 s, RFC 6026 / Timer J), so the
# server's transaction state reaches its steady size, which the short steps never do.
sustain_session() {
    local server=$1 round=$2
    start_server "$server"
    start_uas "$server" "$server-r$round-sustain"
    echo "# round $round $server: sustained $SUSTAIN_RATE calls/s for $SUSTAIN_SECS s" >&2
    run_calls "$server" "$round" sustain "$SUSTAIN_RATE" $((SUSTAIN_RATE * SUSTAIN_SECS))
    end_session "$server" "$round" "$server-r$round-sustain" "sustained run"
}

# CONC concurrent calls with RTP through a fresh podpbx -> a results line:
#   M round conc ok failed window_s server_ticks rss0 hwm0 rss1 rss2 hwm2 ports0 ports1 ports2
#     active1 active2 fwd_packets(metric) relay_drops(metric) kdrops_relay kdrops_callee lossA% lossB%
#     rtpA rtpB fwd_pps_per_call(CDRs) jitter_mean_ms jitter_max_ms other_load_%_server_core
#     uas_ticks(hold) uac_ticks(whole run) uac_ms
media_session() {
    local round=$1 tag="podpbx-r$1-media" ramp dur limit rss0 hwm0 rss1 hwm1 rss2 hwm2 p0 p1 p2
    local a1 a2 t0 t1 w0 w1 f0 f1 d0 d1 k0 k1 e0 e1 bs0 bs1 ok fail i noise loss uac_ticks u0 u1
    start_server podpbx
    start_uas podpbx "$tag" -rtp_echo
    sleep 1
    read -r rss0 hwm0 < <(mem_kb "$SRV"); p0=$(media_sockets "$SRV")
    ramp=$(( (CONC + RAMP - 1) / RAMP ))
    dur=$(( (ramp + HOLD_SECS) * 1000 ))
    limit=$((ramp * 2 + HOLD_SECS + 40))
    echo "# round $round podpbx: $CONC concurrent calls with RTP (ramp ${ramp}s, hold ${HOLD_SECS}s)" >&2
    (
        s0=$(date +%s%N)
        timeout "$limit" taskset -c "$SIPP_CORE" sipp "$SRV_IP:$PORT" -sf "$work/call_uac_rtp.xml" \
            -i "$UAC_IP" -mi "$UAC_IP" -p "$UAC_PORT" -t u1 -s 102 -key caller 201 \
            -m "$CONC" -l "$CONC" -r "$RAMP" -d "$dur" -recv_timeout 10000 -timeout "$((limit - 3))s" -nostdin \
            -trace_stat -stf "$work/$tag.csv" -fd 1 -trace_err -error_file "$work/$tag.err" \
            -max_log_size 1000000 >"$work/$tag.out" 2>&1 || true
        # cutime+cstime of this subshell (expanded here, not in a command substitution).
        awk -v ms=$(( ($(date +%s%N) - s0) / 1000000 )) '{print $16 + $17, ms}' "/proc/$BASHPID/stat" > "$work/$tag.uac_ticks"
    ) &
    local UAC=$!
    pids+=("$UAC")
    # Steady state: from 2 s after the ramp to 2 s before the first hang-up.
    sleep $((ramp + 2))
    a1=$(metric podpbx_calls_active)
    t0=$(cpu_ticks "$SRV"); u0=$(cpu_ticks "$UAS"); f0=$(metric_num podpbx_relay_packets_total)
    x0=$(metric_num podpbx_relay_ssrc_flaps_total)
    k0=$(udp_drops "$MEDIA_MIN" "$MEDIA_MAX"); e0=$(udp_drops "$UAS_MEDIA" "$UAS_MEDIA")
    d0=$(curl -s --max-time 2 "http://$ADMIN/metrics" | awk '/^podpbx_relay_dropped_packets_total/ {s += $2} END {print s + 0}')
    bs0=$(core_busy "$SERVER_CORE"); w0=$(date +%s%N)
    sleep $((HOLD_SECS - 4))
    t1=$(cpu_ticks "$SRV"); u1=$(cpu_ticks "$UAS"); f1=$(metric_num podpbx_relay_packets_total)
    x1=$(metric_num podpbx_relay_ssrc_flaps_total)
    bs1=$(core_busy "$SERVER_CORE"); w1=$(date +%s%N)
    k1=$(udp_drops "$MEDIA_MIN" "$MEDIA_MAX"); e1=$(udp_drops "$UAS_MEDIA" "$UAS_MEDIA")
    d1=$(curl -s --max-time 2 "http://$ADMIN/metrics" | awk '/^podpbx_relay_dropped_packets_total/ {s += $2} END {print s + 0}')
    read -r rss1 hwm1 < <(mem_kb "$SRV"); p1=$(media_sockets "$SRV")
    # Per-thread CPU over the whole session so far, by thread name.
    for i in /proc/"$SRV"/task/*; do
        awk '{gsub(/[()]/, "", $2); print $2, $14 + $15}' "$i/stat" 2>/dev/null || true
    done | awk '{sub(/-[0-9]+$/, "-N", $1); c[$1] += $2} END {for (k in c) printf "%s=%d ", k, c[k]}' > "$work/$tag.threads"
    wait "$UAC" 2>/dev/null || true
    # Teardown: wait (bounded) until podpbx has no call left, then a little for the relay.
    for i in $(seq 1 40); do
        a2=$(metric podpbx_calls_active)
        [ "$a2" = 0 ] && break
        sleep 0.25
    done
    sleep 1
    read -r rss2 hwm2 < <(mem_kb "$SRV"); p2=$(media_sockets "$SRV")
    kill -0 "$SRV" 2>/dev/null || die "podpbx died during the media run (see $work/podpbx.log)"
    uac_ticks=$(cat "$work/$tag.uac_ticks" 2>/dev/null || echo "0 1")
    ok=$(stat_col "$work/$tag.csv" 'SuccessfulCall(C)'); fail=$((CONC - ok))
    noise=$(other_load $(( (w1 - w0) / 1000000 )) $((bs1 - bs0)) $((t1 - t0)) 0 0); noise=${noise% *}
    # RTP loss per leg from the CDRs (sequence gaps seen by the relay): leg A = what the caller
    # sent, leg B = the callee's echo of what podpbx forwarded to it (round trip).
    for i in $(seq 1 20); do
        [ "$(grep -c . "$work/pbxdata/cdr.jsonl" 2>/dev/null || echo 0)" -ge "$ok" ] && break
        sleep 0.25
    done
    loss=$(python3 - "$work/pbxdata/cdr.jsonl" <<'PY'
import json, sys
rtp = [0, 0]; lost = [0, 0]; fwd = 0; billsec = 0.0; jitter = []
try:
    lines = open(sys.argv[1]).read().splitlines()
except OSError:
    lines = []
for line in lines:
    try:
        cdr = json.loads(line)
    except ValueError:
        continue
    billsec += float(cdr.get("billsec", 0) or 0)
    for i, leg in enumerate(cdr.get("legs", [])[:2]):
        m = leg.get("media") or {}
        rtp[i] += int(m.get("rtp_packets", 0) or 0)
        lost[i] += max(0, int(m.get("lost_packets", 0) or 0))
        fwd += int(m.get("forwarded_packets", 0) or 0)
        jitter.append(int(m.get("jitter_ms", 0) or 0))
pct = [100.0 * l / (r + l) if r + l else 0.0 for r, l in zip(rtp, lost)]
# Packets the relay forwarded per second of answered call (both directions; expected 100).
pps = fwd / billsec if billsec else 0.0
jit = sum(jitter) / len(jitter) if jitter else 0.0
print(f"{pct[0]:.3f} {pct[1]:.3f} {rtp[0]} {rtp[1]} {pps:.1f} {jit:.1f} {max(jitter, default=0)}")
PY
)
    echo "M $round $CONC $ok $fail $(awk -v a="$w0" -v b="$w1" 'BEGIN {printf "%.3f", (b - a) / 1e9}') $((t1 - t0))" \
        "$rss0 $hwm0 $rss1 $rss2 $hwm2 $p0 $p1 $p2 $a1 $a2 $((f1 - f0)) $((d1 - d0)) $((k1 - k0)) $((e1 - e0)) $loss" \
        "$noise $((u1 - u0)) $uac_ticks $((x1 - x0))" >> "$work/results"
    echo "T $round $(cat "$work/$tag.threads")" >> "$work/results"
    sipp_oddities "$work/$tag.err" "$tag caller" aborts
    stop_pid "$UAS"
    stop_server "round $round media run"
}

# System calls per call: a fresh server, strace -c -f attached to every process and thread of it
# for SYSCALL_CALLS calls at RATE calls/s (strace slows the server: the rate stays low).
#   -> S server round calls_completed total_syscalls name:count ...
syscall_session() {
    local server=$1 round=$2 tag="$1-r$2-syscalls" args=() p st
    command -v strace >/dev/null || { echo "  (strace not installed: no syscall count)" >> "$work/oddities"; return 0; }
    start_server "$server"
    start_uas "$server" "$tag"
    run_calls "$server" "$round" warmup "$RATE" $((RATE * 2))
    for p in $(family "$SRV"); do
        for t in /proc/"$p"/task/*; do args+=(-p "${t##*/}"); done
    done
    strace -c -f -o "$work/$tag.strace" "${args[@]}" 2>/dev/null &
    st=$!
    sleep 1
    echo "# round $round $server: system calls over $SYSCALL_CALLS calls at $RATE calls/s" >&2
    run_calls "$server" "$round" syscalls "$RATE" "$SYSCALL_CALLS"
    sleep 1
    kill -INT "$st" 2>/dev/null || true
    wait "$st" 2>/dev/null || true
    echo "S $server $round $(grep "^R $server $round syscalls " "$work/results" | tail -1 | awk '{print $7}')" \
        "$(awk '$NF == "total" {print $4}' "$work/$tag.strace")" \
        "$(awk 'NF >= 5 && $1 ~ /^[0-9.]+$/ && $NF != "total" {print $NF ":" $4}' "$work/$tag.strace" | sort -t: -k2 -rn | head -12 | tr '\n' ' ')" >> "$work/results"
    end_session "$server" "$round" "$tag" "syscall count"
}

# A perf profile of podpbx at PERF_RATE calls/s (all threads), by symbol, self time.
perf_session() {
    local round=$1 tag="podpbx-r$1-perf" pf
    command -v perf >/dev/null || { echo "  (perf not installed: no profile)" >> "$work/oddities"; return 0; }
    start_server podpbx
    start_uas podpbx "$tag"
    run_calls podpbx "$round" warmup "$PERF_RATE" $((PERF_RATE * 2))
    perf record -q -g -F 999 -o "$work/$tag.data" -p "$SRV" -- sleep $((PERF_SECS + 2)) >/dev/null 2>&1 &
    pf=$!
    sleep 1
    echo "# round $round podpbx: perf profile at $PERF_RATE calls/s for $PERF_SECS s" >&2
    run_calls podpbx "$round" perf "$PERF_RATE" $((PERF_RATE * PERF_SECS))
    wait "$pf" 2>/dev/null || true
    perf report -i "$work/$tag.data" --no-children -g none --sort dso,symbol --percent-limit 1 --stdio 2>/dev/null \
        | grep -E '^ +[0-9.]+%' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//' | head -30 > "$work/perf.summary" || true
    rm -f "$work/$tag.data"
    end_session podpbx "$round" "$tag" "perf profile"
}

servers=(podpbx kamailio)
[ -n "$ONLY" ] && servers=("$ONLY")
SECONDS=0
for round in $(seq 1 "$ROUNDS"); do
    order=("${servers[@]}")
    if [ $((round % 2)) = 0 ] && [ ${#servers[@]} = 2 ]; then order=(kamailio podpbx); fi
    for rate in $FIXED_RATES; do fixed_session "$round" "$rate" "${order[@]}"; done
    if [ "$round" = 1 ] && [ "$SYSCALLS" = 1 ]; then
        for s in "${order[@]}"; do syscall_session "$s" "$round"; done
    fi
    if [ "$round" = 1 ] && [ "$PERF" = 1 ] && [[ " ${servers[*]} " == *" podpbx "* ]]; then perf_session "$round"; fi
    for s in "${order[@]}"; do rate_session "$s" "$round"; done
    if [ "$MEDIA" = 1 ] && [[ " ${servers[*]} " == *" podpbx "* ]]; then media_session "$round"; fi
    if [ "$round" = 1 ] && [ "$SUSTAIN_SECS" -gt 0 ]; then
        for s in $SUSTAIN_SERVERS; do
            [[ " ${servers[*]} " == *" $s "* ]] && sustain_session "$s" "$round"
        done
    fi
done
took=$SECONDS

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
median() { sort -g | awk '{a[NR] = $1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
# med server phase rate EXPR: median of EXPR over the rounds' R lines.
med() { awk -v s="$1" -v ph="$2" -v r="$3" -v hz="$HZ" "\$1 == \"R\" && \$2 == s && \$4 == ph && \$5 == r { print $4 }" "$work/results" | median; }
# The same, over the runs with < 1 % failed calls only.
medv() { awk -v s="$1" -v ph="$2" -v r="$3" -v hz="$HZ" "\$1 == \"R\" && \$2 == s && \$4 == ph && \$5 == r && (\$6 - \$7) * 100 / \$6 < 1 { print $4 }" "$work/results" | median; }
valid() { awk -v s="$1" -v ph="$2" -v r="$3" '$1 == "R" && $2 == s && $4 == ph && $5 == r {n++; if (($6 - $7) * 100 / $6 < 1) k++} END {printf "%d/%d", k, n}' "$work/results"; }
mmed() { awk -v hz="$HZ" "\$1 == \"M\" { print $1 }" "$work/results" | median; }
f() { printf "%${2:-8}.${3:-1}f" "$1"; }
ACH='$7 / $8'                       # completed calls per second
FAIL='($6 - $7) * 100 / $6'         # % of offered calls not completed
SCPU='$9 / hz / $8 * 100'           # server CPU, % of one core
PCPU='$10 / hz / $8 * 100'          # SIPp caller + callee CPU, % of one core
PER1K='$9 / hz / $7 * 1000'         # server CPU seconds per 1 000 completed calls
have() { grep -q "^R $1 " "$work/results"; }

echo
echo "== Calls through the server: INVITE/100/180/200/ACK, BYE/200 at once, SDP (no RTP), loopback UDP"
echo "   server on core $SERVER_CORE, SIPp caller + callee on core $SIPP_CORE; medians of $ROUNDS round(s); took ${took}s"
echo "   podpbx $("$BIN" --version 2>/dev/null | head -1 | awk '{print $NF}') (B2BUA, relay ports per call, CDRs);" \
    "kamailio $(kamailio -v | head -1 | awk '{print $3}') (tm + rr proxy, $KAM_CHILDREN UDP worker)"
echo
echo "[1] Rate steps ($STEP_SECS s each; a server's steps stop after the first with >= 1 % failed calls)."
echo "    achieved = completed calls/s; rtt = mean INVITE..200 ms (SIPp counts whole ms); cpu = % of one core;"
echo "    sipp = caller + callee; each step on a fresh server (empty transaction table)"
printf '%-8s | %-51s | %-51s\n' "" "podpbx" "kamailio"
hdr=$(printf ' %8s %6s %6s %7s %8s %8s' achieved fail% retr rtt_ms "srv cpu" "sipp cpu")
printf '%-8s |%s |%s\n' offered "$hdr" "$hdr"
for rate in $STEPS; do
    line=$(printf '%-8s |' "$rate/s")
    for s in podpbx kamailio; do
        if ! have "$s"; then
            line+="$(printf ' %50s |' '(not run)')"
        elif grep -q "^R $s [0-9]* step $rate " "$work/results"; then
            line+=" $(f "$(med $s step "$rate" "$ACH")" 8 0) $(f "$(med $s step "$rate" "$FAIL")" 6 2)"
            line+=" $(f "$(med $s step "$rate" '$11')" 6 0) $(f "$(med $s step "$rate" '$12')" 7 1)"
            line+=" $(f "$(med $s step "$rate" "$SCPU")" 7 0)% $(f "$(med $s step "$rate" "$PCPU")" 7 0)% |"
        else
            line+="$(printf ' %50s |' '(not run: an earlier step failed)')"
        fi
    done
    echo "$line"
done
echo
declare -A CEIL
for s in podpbx kamailio; do
    have "$s" || continue
    # Per round: the highest achieved rate among the steps with < 1 % failures (the fixed run
    # counts too); the median over the rounds.
    CEIL[$s]=$(awk -v s="$s" '$1 == "R" && $2 == s && $4 == "step" && ($6 - $7) * 100 / $6 < 1 {a = $7 / $8; if (a > m[$3]) m[$3] = a}
        END {for (r in m) print m[r]}' "$work/results" | median)
    top=$(awk -v s="$s" '$1 == "R" && $2 == s && $4 == "step" {print $5}' "$work/results" | sort -n | tail -1)
    scpu=$(f "$(med "$s" step "$top" "$SCPU")" 1 0); pcpu=$(f "$(med "$s" step "$top" "$PCPU")" 1 0)
    who="neither side at >= 85 % CPU (latency or loss, not CPU)"
    if [ "$scpu" -ge 85 ] && [ "$scpu" -ge "$pcpu" ]; then who="the server ($scpu % CPU)";
    elif [ "$pcpu" -ge 85 ]; then who="SIPp ($pcpu % CPU: the load generator, not the server)"; fi
    printf '%-8s max rate with < 1 %% failed calls: %s calls/s\n' "$s" "$(f "${CEIL[$s]}" 1 0)"
    printf '%-8s   top step %s/s: %s %% failed (%s unexpected answers, %s timeouts), server %s %% CPU, SIPp %s %% -> saturated: %s\n' \
        "" "$top" "$(f "$(med "$s" step "$top" "$FAIL")" 1 2)" "$(f "$(med "$s" step "$top" '$13')" 1 0)" \
        "$(f "$(med "$s" step "$top" '$14')" 1 0)" "$scpu" "$pcpu" "$who"
done
if grep -q '^R [a-z]* [0-9]* sustain ' "$work/results"; then
    echo
    echo "[1b] Sustained load, round 1 only: $SUSTAIN_RATE calls/s for $SUSTAIN_SECS s on a fresh server (longer than the"
    echo "     32 s podpbx keeps a transaction of each call (Timer J); the $STEP_SECS s steps above never reach that state)"
    for s in podpbx kamailio; do
        grep -q "^R $s [0-9]* sustain " "$work/results" || continue
        awk -v s="$s" -v hz="$HZ" '$1 == "R" && $2 == s && $4 == "sustain" {
            printf "%-8s offered %d, completed %d, failed %.2f %% (first failure after %s s), %d unexpected answers, achieved %.0f calls/s, server %.0f %% CPU\n",
                s, $6, $7, ($6 - $7) * 100 / $6, $17, $13, $7 / $8, $9 / hz / $8 * 100 }' "$work/results"
    done
fi
echo
echo "[2] Server CPU seconds per 1 000 calls at fixed rates: $FIXED_SECS s per server in $CHUNKS chunks, the two servers"
echo "    interleaved (A B B A ...) so that other work on the host weighs on both alike; CPU over the whole window"
fmed() { awk -v s="$1" -v r="$2" -v hz="$HZ" "\$1 == \"F\" && \$2 == s && \$8 == r { print $3 }" "$work/results" | median; }
FPER1K='$5 / hz / $4 * 1000'
declare -A RATIO
for rate in $FIXED_RATES; do
    for s in podpbx kamailio; do
        grep -q "^F $s .* $rate\$" "$work/results" || continue
        printf '%-8s %6s/s %7.3f cpu-s/1k calls  (per round: %s; completed %s of %s per round; server %s %% of a core while loaded)\n' "$s" "$rate" \
            "$(fmed "$s" "$rate" "$FPER1K")" "$(awk -v s="$s" -v r="$rate" -v hz="$HZ" '$1 == "F" && $2 == s && $8 == r {printf "%.3f ", $5 / hz / $4 * 1000}' "$work/results")" \
            "$(fmed "$s" "$rate" '$4')" $((rate * FIXED_SECS / CHUNKS * CHUNKS)) \
            "$(f "$(awk -v s="$s" -v r="$rate" -v hz="$HZ" '$1 == "R" && $2 == s && $4 == "chunk" && $5 == r {print $9 / hz / $8 * 100}' "$work/results" | median)" 1 1)"
    done
    RATIO[$rate]=nan
    if grep -q "^F podpbx .* $rate\$" "$work/results" && grep -q "^F kamailio .* $rate\$" "$work/results"; then
        RATIO[$rate]=$(awk -v a="$(fmed podpbx "$rate" "$FPER1K")" -v b="$(fmed kamailio "$rate" "$FPER1K")" 'BEGIN {printf "%.2f", a / b}')
        printf 'ratio podpbx/kamailio CPU per call at %s/s: %s (goal <= 1.0); per round: %s\n' "$rate" \
            "${RATIO[$rate]}" "$(awk -v r="$rate" '$1 == "F" && $8 == r {c[$2 " " $3] = $5 / $4; o[$3] = $7}
                END {for (k in c) {split(k, x, " "); if (x[1] == "podpbx" && ("kamailio " x[2]) in c) printf "r%s %.2f (other load %s %%)  ", x[2], c[k] / c["kamailio " x[2]], o[x[2]]}}' "$work/results")"
    fi
done
if grep -q '^S ' "$work/results"; then
    echo
    echo "[2b] System calls per call (strace -c -f on every process and thread, $SYSCALL_CALLS calls at $RATE calls/s, round 1)"
    awk '$1 == "S" && $4 > 0 {printf "%-8s %6.1f per call (%d calls, %d system calls); per call by name:", $2, $5 / $4, $4, $5;
        for (i = 6; i <= NF; i++) {split($i, a, ":"); printf " %s %.1f", a[1], a[2] / $4}; print ""}' "$work/results"
fi
if [ -s "$work/perf.summary" ]; then
    echo
    echo "[2c] perf profile of podpbx at $PERF_RATE calls/s for $PERF_SECS s (self time by symbol, >= 1 %):"
    sed 's/^/    /' "$work/perf.summary"
fi
if [ -s "$work/windows" ]; then
    echo
    echo "[2d] Sustained $SUSTAIN_RATE calls/s, per 10 s window: completed calls/s, failed calls, server CPU %, CPU ms per"
    echo "     1 000 calls, RSS MB (flat RSS and flat cost: no cliff when transactions start to expire)"
    awk '$1 == "W" {printf "%-8s r%s t=%4ss %6s/s failed %5s %4s%% %8.3f s/1k %7.1f MB\n", $2, $3, $4, $5, $6, $7, $8, $9 / 1024}' "$work/windows"
fi
if grep -q '^M ' "$work/results"; then
    echo
    echo "[3] podpbx with $CONC concurrent calls with RTP (PCMU 20 ms, 50 packets/s each way per leg: the relay takes in and forwards 2 x 50 packets/s per call), hold $HOLD_SECS s"
    printf '    calls completed %s, failed %s; podpbx_calls_active during the hold %s, after teardown %s\n' \
        "$(mmed '$4')" "$(mmed '$5')" "$(mmed '$16')" "$(mmed '$17')"
    printf '    podpbx CPU over the hold: %s %% of one core (all threads)\n' "$(f "$(mmed '$7 / hz / $6 * 100')" 1 1)"
    printf '    relay forwarded %s packets/s per answered call (CDRs; expected 100: 50 each way), %s packets/s in all;\n' \
        "$(f "$(mmed '$26')" 1 1)" "$(f "$(mmed '$26 * $3')" 1 0)"
    printf '      podpbx_relay_packets_total rose by %s over the hold, relay drop counters by %s\n' "$(mmed '$18')" "$(mmed '$19')"
    printf '    podpbx_relay_ssrc_flaps_total rose by %s over the hold%s\n' "$(mmed '$33')" \
        "$(awk '$1 == "M" && $33 > 0 {n++} END {if (n) print ": SIPp sent several calls'"'"' RTP from one socket, so in the shared layout their audio crossed (one leg got it all) and the forwarding and loss figures here do not measure the relay; PORT_LAYOUT=per-call does"}' "$work/results")"
    printf '    SIPp: caller %s %% of a core (whole run), callee echo %s %% (hold)\n' \
        "$(f "$(mmed '$31 / hz / ($32 / 1000) * 100')" 1 0)" "$(f "$(mmed '$30 / hz / $6 * 100')" 1 0)"
    printf '    RSS MB: idle %s, at %s calls %s, after teardown %s (peak VmHWM %s)\n' \
        "$(f "$(mmed '$8 / 1024')" 1 1)" "$CONC" "$(f "$(mmed '$10 / 1024')" 1 1)" "$(f "$(mmed '$11 / 1024')" 1 1)" "$(f "$(mmed '$12 / 1024')" 1 1)"
    printf '    relay sockets in the media range: idle %s, at %s calls %s, after teardown %s -> back to idle: %s\n' \
        "$(mmed '$13')" "$CONC" "$(mmed '$14')" "$(mmed '$15')" \
        "$(awk '$1 == "M" {n++; if ($15 == $13) k++} END {printf "%s (%d/%d rounds)", (k == n ? "yes" : "NO"), k, n}' "$work/results")"
    printf '    RTP loss (CDR sequence gaps): caller -> podpbx %s %%, podpbx -> callee echo -> podpbx %s %% (%s / %s packets);\n' \
        "$(mmed '$22')" "$(mmed '$23')" "$(mmed '$24')" "$(mmed '$25')"
    printf '      jitter mean %s ms, max %s ms\n' "$(mmed '$27')" "$(mmed '$28')"
    printf '    kernel receive-buffer drops over the hold: podpbx media sockets %s, the callee (SIPp) echo socket %s\n' \
        "$(mmed '$20')" "$(mmed '$21')"
    printf '    other load on the server core during the hold: %s %%\n' "$(mmed '$29')"
    printf '    podpbx CPU ticks by thread, whole media session, round 1: %s\n' \
        "$(awk '$1 == "T" {$1 = ""; $2 = ""; print}' "$work/results" | head -1)"
fi
echo
echo "[4] Noise: other processes' share of the server core / SIPp core during the rate runs (median, max)"
for s in podpbx kamailio; do
    have "$s" || continue
    printf '%-8s server core %s %% (max %s %%), SIPp core %s %% (max %s %%)\n' "$s" \
        "$(awk -v s=$s '$1 == "R" && $2 == s {print $15}' "$work/results" | median)" \
        "$(awk -v s=$s '$1 == "R" && $2 == s {print $15}' "$work/results" | sort -n | tail -1)" \
        "$(awk -v s=$s '$1 == "R" && $2 == s {print $16}' "$work/results" | median)" \
        "$(awk -v s=$s '$1 == "R" && $2 == s {print $16}' "$work/results" | sort -n | tail -1)"
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "[5] Logs and oddities"
if grep -q '^P ' "$work/results"; then
    echo "podpbx sessions 1 s after the load (calls still active, calls by disposition); only those not clean:"
    awk '$1 == "P" {n++; if ($0 !~ /calls_active=0 / || $0 ~ /disposition="[^a]/) {$1 = ""; $2 = ""; print "   " $0; k++}}
        END {printf "    (%d of %d sessions: all calls answered, none left active)\n", n - k, n}' "$work/results"
fi
[ -s "$work/stops" ] && cat "$work/stops"
for s in podpbx kamailio; do
    [ -f "$work/$s.log" ] || continue
    n=$(grep -acE 'WARN|ERROR|CRITICAL' "$work/$s.log" || true)
    echo "$s: $n warning/error lines"
    { grep -aE 'WARN|ERROR|CRITICAL' "$work/$s.log" || true; } \
        | sed -E 's/\x1b\[[0-9;]*m//g; s/^[0-9T:.Z-]+ +//; s/^ *[0-9]+\([0-9]+\) //; s/[0-9a-f]{16}/<id>/g; s/[0-9]+-[0-9]+@[0-9.]+/<call-id>/g; s/(call|calls|total)=[0-9]+/\1=N/g' \
        | cut -c1-160 | sort | uniq -c | sort -rn | head -6 | sed 's/^/    /'
done
[ -s "$work/oddities" ] && { echo "SIPp: unexpected answers / aborted calls (first lines per run):"; cat "$work/oddities"; }
echo
echo "== Summary (medians of $ROUNDS round(s))"
printf '%-50s %16s %16s %10s\n' "" podpbx kamailio ratio
if have podpbx || have kamailio; then
    pc=${CEIL[podpbx]:-nan}; kc=${CEIL[kamailio]:-nan}
    printf '%-50s %16s %16s %10s\n' "max calls/s, < 1 % failed (${STEP_SECS} s steps)" "$(f "$pc" 1 0)" "$(f "$kc" 1 0)" \
        "$(awk -v a="$pc" -v b="$kc" 'BEGIN {if (b + 0 > 0) printf "%.2f", a / b; else print "-"}')"
    sus() { awk -v s="$1" '$1 == "R" && $2 == s && $4 == "sustain" {printf "%.2f %% failed", ($6 - $7) * 100 / $6; f = 1} END {if (!f) print "-"}' "$work/results"; }
    grep -q ' sustain ' "$work/results" && printf '%-50s %16s %16s\n' "sustained $SUSTAIN_RATE calls/s for $SUSTAIN_SECS s (round 1)" "$(sus podpbx)" "$(sus kamailio)"
    for rate in $FIXED_RATES; do
        printf '%-50s %16s %16s %10s\n' "server CPU s per 1 000 calls at $rate calls/s" \
            "$(grep -q "^F podpbx .* $rate\$" "$work/results" && f "$(fmed podpbx "$rate" "$FPER1K")" 1 3 || echo -)" \
            "$(grep -q "^F kamailio .* $rate\$" "$work/results" && f "$(fmed kamailio "$rate" "$FPER1K")" 1 3 || echo -)" "${RATIO[$rate]:-nan}"
    done
    grep -q '^S ' "$work/results" && printf '%-50s %16s %16s\n' "system calls per call (strace, $RATE calls/s)" \
        "$(awk '$1 == "S" && $2 == "podpbx" && $4 > 0 {printf "%.1f", $5 / $4}' "$work/results")" \
        "$(awk '$1 == "S" && $2 == "kamailio" && $4 > 0 {printf "%.1f", $5 / $4}' "$work/results")"
fi
if grep -q '^M ' "$work/results"; then
    printf '%-50s %16s\n' "podpbx CPU % of a core, $CONC calls with RTP" "$(f "$(mmed '$7 / hz / $6 * 100')" 1 1)"
    printf '%-50s %16s\n' "podpbx RSS MB idle / $CONC calls / after" "$(f "$(mmed '$8 / 1024')" 1 1) / $(f "$(mmed '$10 / 1024')" 1 1) / $(f "$(mmed '$11 / 1024')" 1 1)"
    printf '%-50s %16s\n' "relay sockets idle / $CONC calls / after" "$(mmed '$13') / $(mmed '$14') / $(mmed '$15')"
    printf '%-50s %16s\n' "RTP loss caller leg / callee echo leg (%)" "$(mmed '$22') / $(mmed '$23')"
fi
echo
echo "raw: R server round phase rate offered ok elapsed_s server_ticks sipp_ticks retrans rtt_ms unexpected timeouts"
echo "       other_load_%_server_core other_load_%_sipp_core first_failure_s (CLK_TCK=$HZ)"
echo "     F server round ok_calls server_ticks window_s other_load_%_server_core rate (fixed rate, interleaved)"
echo "     S server round calls syscalls name:count... (strace -c)"
echo "     M round conc ok failed window_s server_ticks rss0 hwm0 rss1 rss2 hwm2 ports0 ports1 ports2 active1 active2"
echo "       fwd_packets relay_drops kdrops_podpbx kdrops_callee lossA% lossB% rtpA rtpB fwd_pps_per_call jitter_mean_ms"
echo "       jitter_max_ms other_load_% uas_ticks uac_ticks uac_ms"
cat "$work/results"
