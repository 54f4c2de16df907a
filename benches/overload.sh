#!/usr/bin/env bash
# Overload: goodput vs offered load past the maximum call rate, podpbx vs Kamailio 5.6 (the same
# reference as benches/call_rate.sh: a stateful record-routing proxy, benches/kamailio/proxy.cfg),
# on loopback, the server pinned to one core, the SIPp callers and the callee on the other.
#
# A call is call_rate.sh's (SIPp caller from 127.0.0.2 -> server -> registered SIPp callee:
# INVITE with SDP / 100 / 180 / 200 / ACK, BYE at once / 200), with the caller scenario
# benches/sipp/call_uac_overload.xml, which also takes a 503 (counted, acknowledged).
#
#   1. MAX_RATE: from the environment, or measured (default): podpbx rate steps (SEARCH_STEPS,
#      SEARCH_SECS s each, each on a fresh server) up to the first with >= 1 % of calls not
#      completed; MAX_RATE = the highest achieved rate of the passing steps. Both servers are
#      then offered the same loads (multiples of podpbx's maximum).
#   2. Per server (SERVERS, each fresh): HELD long calls (benches/sipp/call_uac.xml with a pause,
#      their own SIPp caller) are set up before the load and hang up by BYE after it;
#   3. the curve: for each factor of FACTORS, factor x MAX_RATE calls/s offered for SECS s
#      (TOP_SECS for the largest factor: 20 s at 2x), then SETTLE s of quiet. Per point: achieved
#      offer, goodput (calls completed, i.e. 200 + BYE 200, per second of the offer window),
#      refused (503), failed (timeouts, unexpected answers, other), unfinished, server CPU (all
#      threads and child processes), SIPp CPU (caller + callee), server RSS (sum over its
#      processes, 1 s samples, peak), podpbx_sip_overload_refused_total{reason}, other processes'
#      share of each core; after the settle, calls still up (podpbx: podpbx_calls_active, which
#      should be HELD; Kamailio: tm transactions);
#   4. after the held calls' BYEs and SETTLE+2 s, and again once drained (up to DRAIN s): nothing left (podpbx: podpbx_calls_active, /api/calls,
#      podpbx_sip_transactions, relay sockets in the media range; Kamailio: tm.stats current
#      transactions via kamcmd, ctl module added to a copy of proxy.cfg), held calls' outcome.
#
#   usage: benches/overload.sh                        (about 7 minutes)
#   env:   MAX_RATE= (empty: measured; e.g. MAX_RATE=5500 skips the search)
#          SEARCH_STEPS="3000 4000 5000 6000 7000" SEARCH_SECS=3
#          FACTORS="0.5 1 1.5 2" SECS=8 TOP_SECS=20 SETTLE=5 LIMIT=20000 (SIPp's open-call limit)
#          DRAIN=60 (after the held calls' BYEs: wait up to this long for nothing to be left)
#          HELD=100 HELD_RATE=50 SERVERS="podpbx kamailio"
#          BIN=target/release/podpbx PORT=15200 (Kamailio PORT+50; SIPp +10..+41; podpbx admin +99)
#          SERVER_CORE=0 SIPP_CORE=1 KAM_CHILDREN=1 KAM_SHM=4096 (MB) MEDIA_MIN=40000 MEDIA_MAX=55999
#          MAX_SETUP= (podpbx [calls] max_setup; empty: its default)
#          KEEP=1 (keep the work directory: SIPp statistics and error files, server logs)
# Bounded: every SIPp run has a call count, a SIPp -timeout and a `timeout`; everything started
# here is stopped by PID (SIGTERM, then SIGKILL) on exit. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_RATE=${MAX_RATE:-}
MAX_SETUP=${MAX_SETUP:-}
SEARCH_STEPS=${SEARCH_STEPS:-"3000 4000 5000 6000 7000"}
SEARCH_SECS=${SEARCH_SECS:-3}
FACTORS=${FACTORS:-"0.5 1 1.5 2"}
SECS=${SECS:-8}
TOP_SECS=${TOP_SECS:-20}
SETTLE=${SETTLE:-5}
DRAIN=${DRAIN:-60}
LIMIT=${LIMIT:-20000}
HELD=${HELD:-100}
HELD_RATE=${HELD_RATE:-50}
SERVERS=${SERVERS:-"podpbx kamailio"}
BASE=${PORT:-15200}
SERVER_CORE=${SERVER_CORE:-0}
SIPP_CORE=${SIPP_CORE:-1}
KAM_CHILDREN=${KAM_CHILDREN:-1}
# 4 GB: with call_rate.sh's 1 GB, tm ran out of shared memory at 1x (7 000 calls/s for 8 s: each
# transaction ~8 KB, kept 5 s after it completes), so the reference failed for want of memory.
KAM_SHM=${KAM_SHM:-4096}
MEDIA_MIN=${MEDIA_MIN:-40000}
MEDIA_MAX=${MEDIA_MAX:-55999}
KEEP=${KEEP:-0}
UAC_IP=127.0.0.2
SRV_IP=127.0.0.1
ADMIN=$SRV_IP:$((BASE + 99))
HZ=$(getconf CLK_TCK)
TOP=$(echo "$FACTORS" | tr ' ' '\n' | sort -g | tail -1)

select_server() {
    SRV_NAME=$1
    local b=$BASE
    [ "$1" = kamailio ] && b=$((BASE + 50))
    PORT=$b; UAC_PORT=$((b + 10)); HELD_PORT=$((b + 11)); UAS_PORT=$((b + 20)); UAS_MEDIA=$((b + 30))
    UAC_MEDIA=$((b + 40)); HELD_MEDIA=$((b + 41))
}

for tool in sipp kamailio kamcmd taskset timeout awk ss curl; do
    command -v "$tool" >/dev/null || { echo "overload: $tool not found" >&2; exit 1; }
done

work=$(mktemp -d /tmp/overload.XXXXXX)
pids=()
failed=0
prio=()
. benches/lib_calls.sh

die() {
    failed=1
    echo "overload: $*" >&2
    exit 1
}

need_bin

# --- Inputs: call_rate.sh's podpbx configuration with the admin listener; proxy.cfg plus ctl.
select_server podpbx
# The held calls carry no RTP: no media timeout (30 s by default), which would end them; and a
# call leaked by the load then stays up to be counted, instead of ending 30 s later.
podpbx_config "timeout_secs = 0" "$([ -n "$MAX_SETUP" ] && echo "max_setup = $MAX_SETUP")" > "$work/podpbx.toml"
"$BIN" check --config "$work/podpbx.toml" >/dev/null || die "podpbx rejects the generated config"

mpath=$(kamailio_modules)
[ -f "$mpath/ctl.so" ] || die "Kamailio modules (tm.so, ctl.so) not found"
select_server kamailio
KAMCTL="unix:$work/kamailio.ctl"
sed -e "s#@MPATH@#$mpath/#" -e "s#@CALLEE@#$SRV_IP:$UAS_PORT#" \
    -e "s#^loadmodule \"siputils.so\"#&\nloadmodule \"ctl.so\"\nmodparam(\"ctl\", \"binrpc\", \"$KAMCTL\")#" \
    benches/kamailio/proxy.cfg > "$work/kamailio.cfg"
kamailio -f "$work/kamailio.cfg" -c >"$work/kamcheck.out" 2>&1 \
    || { cat "$work/kamcheck.out" >&2; die "Kamailio rejects the generated configuration"; }

# --- Measurement helpers (as in call_rate.sh)
rss_kb() {
    local p rss=0
    for p in $(family "$1"); do rss=$((rss + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done
    echo "$rss"
}
# PSS: shared pages divided between the processes sharing them (Kamailio's shm counts once).
pss_kb() {
    local p pss=0
    for p in $(family "$1"); do pss=$((pss + $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0))); done
    echo "$pss"
}
sampler() { while kill -0 "$1" 2>/dev/null; do echo "$(rss_kb "$1") $(pss_kb "$1")"; sleep 1; done > "$2"; }
# podpbx refusals by reason: "lag transactions calls media setup".
refused_by_reason() {
    metrics | awk '/^podpbx_sip_overload_refused_total/ {for (r in w) if (index($1, "\"" r "\"")) v[r] = $2}
        BEGIN {split("lag transactions calls media setup", o, " "); for (i in o) w[o[i]] = 1}
        END {printf "%d %d %d %d %d\n", v["lag"], v["transactions"], v["calls"], v["media"], v["setup"]}'
}
api_calls() { curl -s --max-time 2 "http://$ADMIN/api/calls" | python3 -c 'import json, sys
d = json.load(sys.stdin)
d = d.get("items", d) if isinstance(d, dict) else d
print(len(d))' 2>/dev/null || echo "-"; }
kam_tm() { kamcmd -s "$KAMCTL" tm.stats 2>/dev/null | awk -v k="$1" '$1 == k ":" {print $2; f = 1} END {if (!f) print "-"}'; }
# Calls (podpbx) or transactions (Kamailio) in the server now.
in_server() { if [ "$SRV_NAME" = podpbx ]; then metric podpbx_calls_active; else kam_tm current; fi; }
# Seconds from the start until SIPp had created $2 calls (the offer window; whole run if never).
stat_offer_secs() {
    awk -F';' -v n="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "OutgoingCall(C)") c = i; next }
        { split($1, a, "\t"); split($3, b, "\t"); t = b[3] - a[3] } $c >= n && !f { w = t; f = 1 }
        END { printf "%.3f", f ? w : t }' "$1"
}
stop_session() { stop_pid "$UAS"; STOP_NOTE="stopped on SIGTERM"; stop_pid "$STOP"; stop_pid "$SRV"; }

# offer server phase factor rate secs -> a results line:
#   O server phase factor rate n created ok refused failed timeouts unexpected unfinished offer_s
#     run_s server_ticks sipp_ticks peak_rss_kb peak_pss_kb rss_after_kb other_%_server_core other_%_sipp_core
#     shed_lag shed_transactions shed_calls shed_media retransmissions in_server_after_settle shed_setup
offer() {
    local server=$1 phase=$2 factor=$3 rate=$4 secs=$5 tag="$1-$2-$3-$4" n limit t0 t1 u0 u1 bs0 bs1 bp0 bp1 w0 w1
    local uac samp csv r0 r1 noise peak after i
    n=$((rate * secs)); limit=$((secs * 3 + 30)); csv="$work/$tag.csv"
    r0=$(refused_by_reason 2>/dev/null || echo "0 0 0 0 0")
    bs0=$(core_busy "$SERVER_CORE"); bp0=$(core_busy "$SIPP_CORE"); w0=$(date +%s%N)
    t0=$(cpu_ticks "$SRV"); u0=$(cpu_ticks "$UAS")
    sampler "$SRV" "$work/$tag.rss" &
    samp=$!
    echo "# $server: $phase $factor x = $rate calls/s for $secs s" >&2
    # cutime+cstime of this subshell once timeout (and SIPp) ended: the caller's CPU.
    uac=$(
        timeout "$limit" taskset -c "$SIPP_CORE" sipp "$SRV_IP:$PORT" -sf benches/sipp/call_uac_overload.xml \
            -i "$UAC_IP" -mi "$UAC_IP" -mp "$UAC_MEDIA" -p "$UAC_PORT" -t u1 -s 102 -key caller 201 \
            -m "$n" -r "$rate" -l "$LIMIT" -recv_timeout 5000 -timeout "$((limit - 3))s" -nostdin \
            -trace_stat -stf "$csv" -fd 1 -trace_err -error_file "$work/$tag.err" \
            -max_log_size 1000000 >"$work/$tag.out" 2>&1 || true
        awk '{print $16 + $17}' "/proc/$BASHPID/stat"
    )
    t1=$(cpu_ticks "$SRV"); u1=$(cpu_ticks "$UAS")
    bs1=$(core_busy "$SERVER_CORE"); bp1=$(core_busy "$SIPP_CORE"); w1=$(date +%s%N)
    kill "$samp" 2>/dev/null || true; wait "$samp" 2>/dev/null || true
    r1=$(refused_by_reason 2>/dev/null || echo "0 0 0 0 0")
    kill -0 "$SRV" 2>/dev/null || die "$server died at $rate calls/s (see $work/$server.log)"
    kill -0 "$UAS" 2>/dev/null || die "the SIPp callee died at $rate calls/s (see $work/$tag-uas.out)"
    [ -s "$csv" ] || die "SIPp wrote no statistics for $tag (see $work/$tag.out)"
    noise=$(other_load $(( (w1 - w0) / 1000000 )) $((bs1 - bs0)) $((t1 - t0)) $((bp1 - bp0)) $((uac + u1 - u0)))
    peak=$(awk '$1 > r {r = $1} $2 > p {p = $2} END {print r + 0, p + 0}' "$work/$tag.rss")
    # Settle: up to SETTLE s until only the held calls are left (podpbx), then what is left.
    after="-"
    if [ "$phase" = curve ]; then
        for i in $(seq 1 $((SETTLE * 4))); do
            after=$(in_server)
            [ "$server" = podpbx ] && [ "$after" = "$HELD_UP" ] && break
            sleep 0.25
        done
        after=$(in_server)
    fi
    local created ok refused fail tmo unexp
    created=$(stat_col "$csv" 'OutgoingCall(C)'); refused=$(stat_col "$csv" 'refused(C)')
    ok=$(( $(stat_col "$csv" 'SuccessfulCall(C)') - refused )); fail=$(stat_col "$csv" 'FailedCall(C)')
    tmo=$(( $(stat_col "$csv" 'FailedTimeoutOnRecv(C)') + $(stat_col "$csv" 'FailedMaxUDPRetrans(C)') ))
    unexp=$(stat_col "$csv" 'FailedUnexpectedMessage(C)')
    echo "O $server $phase $factor $rate $n $created $ok $refused $fail $tmo $unexp $((created - ok - refused - fail))" \
        "$(stat_offer_secs "$csv" "$n") $(stat_elapsed "$csv") $((t1 - t0)) $((uac + u1 - u0)) $peak $(rss_kb "$SRV") $noise" \
        "$(awk -v a="$r0" -v b="$r1" 'BEGIN {split(a, x); split(b, y); printf "%d %d %d %d", y[1] - x[1], y[2] - x[2], y[3] - x[3], y[4] - x[4]}')" \
        "$(stat_col "$csv" 'Retransmissions(C)') $after" \
        "$(awk -v a="$r0" -v b="$r1" 'BEGIN {split(a, x); split(b, y); printf "%d", y[5] - x[5]}')" >> "$work/results"
    sipp_oddities "$work/$tag.err" "$tag caller"
}

# --- 1. MAX_RATE
SECONDS=0
max_note="given (MAX_RATE=$MAX_RATE)"
if [ -z "$MAX_RATE" ]; then
    for rate in $SEARCH_STEPS; do
        start_server podpbx
        start_uas podpbx "podpbx-search-$rate"
        HELD_UP=0
        offer podpbx search 1 "$rate" "$SEARCH_SECS"
        stop_session
        bad=$(awk -v r="$rate" '$1 == "O" && $3 == "search" && $5 == r {print ((($6 - $8) * 100 / $6 >= 1) ? 1 : 0)}' "$work/results")
        [ "$bad" = 1 ] && break
    done
    MAX_RATE=$(awk '$1 == "O" && $3 == "search" && ($6 - $8) * 100 / $6 < 1 {a = $8 / ($14 > 0 ? $14 : 1); if (a > m) m = a}
        END {printf "%d", m / 100 + 0.5}' "$work/results")
    MAX_RATE=$((MAX_RATE * 100))
    [ "$MAX_RATE" -gt 0 ] || die "no search step passed (< 1 % calls not completed): set MAX_RATE"
    max_note="measured: podpbx's highest achieved rate with < 1 % of calls not completed ($SEARCH_SECS s steps $SEARCH_STEPS), rounded to 100"
    [ "$bad" = 1 ] || max_note+="; the top step passed: a lower bound"
fi
echo "# MAX_RATE $MAX_RATE calls/s ($max_note)" >&2

# --- 2-4. Per server: held calls, the curve, the leftovers
total_secs=0
for fac in $FACTORS; do
    s=$SECS; [ "$fac" = "$TOP" ] && s=$TOP_SECS
    total_secs=$((total_secs + s + 8 + SETTLE))
done
HOLD_MS=$(( (total_secs + 10) * 1000 ))
for server in $SERVERS; do
    start_server "$server"
    start_uas "$server" "$server-curve"
    sleep 1
    idle_rss=$(rss_kb "$SRV"); idle_pss=$(pss_kb "$SRV"); base_in=$(in_server)
    idle_sock=0; [ "$server" = podpbx ] && idle_sock=$(media_sockets "$SRV")
    # Held calls: their own SIPp caller (port HELD_PORT), ACK then a pause of HOLD_MS, BYE.
    timeout $((HOLD_MS / 1000 + 120)) taskset -c "$SIPP_CORE" sipp "$SRV_IP:$PORT" -sf benches/sipp/call_uac.xml \
        -i "$UAC_IP" -mi "$UAC_IP" -mp "$HELD_MEDIA" -p "$HELD_PORT" -t u1 -s 102 -key caller 201 \
        -m "$HELD" -r "$HELD_RATE" -l "$HELD" -d "$HOLD_MS" -recv_timeout 10000 -timeout "$((HOLD_MS / 1000 + 100))s" \
        -nostdin -trace_stat -stf "$work/$server-held.csv" -fd 1 -trace_err -error_file "$work/$server-held.err" \
        >"$work/$server-held.out" 2>&1 &
    held=$!
    pids+=("$held")
    sleep $((HELD / HELD_RATE + 3))
    HELD_UP=$(in_server)
    [ "$server" = podpbx ] || HELD_UP=-
    echo "# $server: $HELD_UP calls up before the load (podpbx_calls_active; expected $HELD)" >&2
    for fac in $FACTORS; do
        s=$SECS; [ "$fac" = "$TOP" ] && s=$TOP_SECS
        offer "$server" curve "$fac" "$(awk -v f="$fac" -v m="$MAX_RATE" 'BEGIN {printf "%d", f * m}')" "$s"
    done
    echo "# $server: waiting for the held calls to hang up" >&2
    before_bye=$(in_server)
    wait "$held" 2>/dev/null || true
    # (Kamailio keeps a completed transaction 5 s: wt_timer)
    sleep $((SETTLE + 2))
    hcsv="$work/$server-held.csv"
    left_calls=$(in_server); left_api="-"; left_tx="-"; left_sock="-"; shm="-"
    # /api/calls at the same moment as the gauge (it was read after the drain loop, up to DRAIN s
    # later: 2399 vs 75 in the first report was the drain, not a disagreement).
    [ "$server" = podpbx ] && left_api=$(api_calls)
    # Then up to DRAIN s (bounded) until nothing is left: how long what the load left behind takes
    # to go (e.g. calls answered whose ACK never came end 64*T1 = 32 s after the 200).
    drained="-"
    for i in $(seq 1 "$DRAIN"); do
        v=$(in_server)
        if [ "$v" = 0 ]; then drained=$((i - 1 + SETTLE + 2)); break; fi
        sleep 1
    done
    [ "$drained" = - ] && drained="never(${v}_left)"
    if [ "$server" = podpbx ] && [ "$v" != 0 ]; then
        # What the calls left are doing (phase per /api/calls), for the report.
        curl -s --max-time 2 "http://$ADMIN/api/calls" | python3 -c 'import collections, json, sys
d = json.load(sys.stdin).get("items", [])
print("  podpbx calls left after the drain by state:", dict(collections.Counter(c.get("state") for c in d)))' \
            >> "$work/oddities" 2>/dev/null || true
    fi
    if [ "$server" = podpbx ]; then
        left_tx=$(metric podpbx_sip_transactions); left_sock=$(media_sockets "$SRV")
    else
        shm=$(kamcmd -s "$KAMCTL" core.shmmem 2>/dev/null | awk '$1 == "real_used:" {printf "%.1f", $2 / 1048576}')
        left_tx=$(kam_tm waiting)
    fi
    echo "H $server $HELD $HELD_UP $(stat_col "$hcsv" 'SuccessfulCall(C)') $(stat_col "$hcsv" 'FailedCall(C)')" \
        "$(stat_col "$hcsv" 'FailedUnexpectedMessage(C)') $(stat_col "$hcsv" 'FailedTimeoutOnRecv(C)') $before_bye" \
        "$left_calls $left_api $left_tx $idle_sock $left_sock $idle_rss $(rss_kb "$SRV") $base_in ${shm:--} $idle_pss $(pss_kb "$SRV") $drained $(rss_kb "$SRV")" >> "$work/results"
    sipp_oddities "$work/$server-held.err" "$server held caller" aborts
    stop_session
    echo "X $server $STOP_NOTE" >> "$work/results"
done
took=$SECONDS

# --- 5. Report
echo
echo "== Overload: goodput vs offered load, podpbx $("$BIN" --version 2>/dev/null | head -1 | awk '{print $NF}')" \
    "vs kamailio $(kamailio -v | head -1 | awk '{print $3}') (tm + rr proxy, $KAM_CHILDREN UDP worker); took ${took}s"
echo "   server on core $SERVER_CORE, SIPp callers + callee on core $SIPP_CORE; MAX_RATE $MAX_RATE calls/s ($max_note)"
if grep -q '^O podpbx search' "$work/results"; then
    echo "   search steps (podpbx): $(awk '$1 == "O" && $3 == "search" {printf "%s/s -> %.0f/s (%.2f %% not completed, %d refused)  ", $5, $8 / $14, ($6 - $8) * 100 / $6, $9}' "$work/results")"
fi
echo "   goodput = calls completed (200, BYE 200) per second of the offer window (until SIPp had created all calls);"
echo "   offered = calls SIPp created per second of that window (below the target: SIPp, not the server, was the limit);"
echo "   refused = 503; failed = timeouts / unexpected answers / other; unfinished = still open when SIPp gave up;"
echo "   CPU in % of one core (server: all threads and processes; SIPp: load caller + callee); RSS and PSS summed"
echo "   over the server's processes, peaks of 1 s samples (Kamailio's RSS counts its shared memory once per"
echo "   process; PSS divides it)"
echo
for server in $SERVERS; do
    grep -q "^O $server curve" "$work/results" || continue
    echo "[$server] (held calls: $HELD)"
    printf '  %6s %7s %8s %8s %8s %8s %7s %7s %7s %8s %8s %10s %10s  %s\n' factor target offered goodput refused% failed% tmo unexp unfin "srv cpu" "sipp cpu" "peak RSS" "peak PSS" \
        "after settle / other load srv,sipp core % / podpbx 503s by reason lag,transactions,calls,media,setup"
    awk -v s="$server" -v hz="$HZ" '$1 == "O" && $2 == s && $3 == "curve" {
        w = $14 > 0 ? $14 : 1; c = $7 > 0 ? $7 : 1
        printf "  %5sx %7d %8.0f %8.0f %7.2f%% %7.2f%% %7d %7d %7d %7.0f%% %7.0f%% %7.1f MB %7.1f MB  %s / %s,%s / %s\n",
            $4, $5, $7 / w, $8 / w, $9 * 100 / c, ($7 - $8 - $9) * 100 / c, $11, $12, $13,
            $16 / hz / $15 * 100, $17 / hz / $15 * 100, $18 / 1024, $19 / 1024, $28, $21, $22,
            (s == "podpbx" ? $23 "," $24 "," $25 "," $26 "," ($29 == "" ? 0 : $29) : "-") }' "$work/results"
done
if grep -q '^O podpbx curve' "$work/results" && grep -q '^O kamailio curve' "$work/results"; then
    echo
    line="goodput ratio podpbx/kamailio per point:"
    for fac in $FACTORS; do
        line+=" $(awk -v f="$fac" '$1 == "O" && $3 == "curve" && $4 == f {g[$2] = $8 / ($14 > 0 ? $14 : 1)}
            END {printf "%sx %s", f, (g["kamailio"] > 0 ? sprintf("%.2f", g["podpbx"] / g["kamailio"]) : "-")}' "$work/results");"
    done
    echo "$line"
fi
echo
echo "Held calls and leftovers (after the held calls' BYEs and $((SETTLE + 2)) s; then polled each second up to $DRAIN s):"
awk -v d="$DRAIN" '$1 == "H" {
    printf "  %-8s held %d: %s up before the load, %s %s after the curve (before their BYE); completed normally (BYE 200) %d, failed %d (unexpected %d, timeouts %d)\n",
        $2, $3, $4, $9, ($2 == "podpbx" ? "calls up" : "tm transactions"), $5, $6, $7, $8
    if ($2 == "podpbx")
        printf "  %-8s left: calls_active %s, /api/calls %s, live transactions %s, relay sockets %s (idle %s); RSS idle %.1f MB, after %.1f MB; PSS idle %.1f, after %.1f MB\n",
            "", $10, $11, $12, $14, $13, $15 / 1024, $16 / 1024, $19 / 1024, $20 / 1024
    else
        printf "  %-8s left: tm transactions current %s, of them waiting (completed, kept 5 s) %s (before the load %s); shm used %s MB; RSS idle %.1f MB, after %.1f MB; PSS idle %.1f, after %.1f MB\n",
            "", $10, $12, $17, $18, $15 / 1024, $16 / 1024, $19 / 1024, $20 / 1024
    what = ($2 == "podpbx" ? "podpbx_calls_active" : "tm transactions current")
    if ($21 ~ /^never/) { n = $21; gsub(/[^0-9]/, "", n); printf "  %-8s NOT drained: %s still %s %d s after the held calls ended", "", what, n, d + 7 }
    else printf "  %-8s drained (%s 0) %s s after the held calls ended", "", what, $21
    printf "; RSS then %.1f MB\n", $22 / 1024 }' "$work/results"
awk '$1 == "X" {s = $2; $1 = $2 = ""; printf "  %-8s at the end:%s\n", s, $0}' "$work/results"
echo
echo "Ceiling per point (a process >= 85 % of a core; a core >= 90 % busy counting other processes' share):"
awk -v hz="$HZ" '$1 == "O" && $3 == "curve" {
    sc = $16 / hz / $15 * 100; pc = $17 / hz / $15 * 100; w = $14 > 0 ? $14 : 1; who = "neither"
    if (sc >= 85 && sc >= pc) who = "the server"; else if (pc >= 85) who = "SIPp (the load generator)"
    else if (sc + $21 >= 90) who = sprintf("the server core, shared with other work (%.0f %% + %d %%)", sc, $21)
    if (who !~ /SIPp/ && pc + $22 >= 90) who = who sprintf("; the SIPp core is full too (SIPp %.0f %% + other work %d %%)", pc, $22)
    short = ($7 / w < 0.95 * $5) ? sprintf("; SIPp offered only %.0f of %d/s", $7 / w, $5) : ""
    printf "  %-8s %4sx: %s (server %.0f %%, SIPp %.0f %%)%s\n", $2, $4, who, sc, pc, short }' "$work/results"
[ -s "$work/oddities" ] && { echo; echo "SIPp: unexpected answers (first lines per run):"; cat "$work/oddities"; }
for s in $SERVERS; do
    [ -f "$work/$s.log" ] || continue
    n=$(grep -acE 'WARN|ERROR|CRITICAL' "$work/$s.log" || true)
    echo "$s: $n warning/error lines"
    { grep -aE 'WARN|ERROR|CRITICAL' "$work/$s.log" || true; } \
        | sed -E 's/\x1b\[[0-9;]*m//g; s/^[0-9T:.Z-]+ +//; s/^ *[0-9]+\([0-9]+\) //; s/[0-9a-f]{16}/<id>/g; s/(call|calls|total)=[0-9]+/\1=N/g' \
        | cut -c1-140 | sort | uniq -c | sort -rn | head -4 | sed 's/^/    /'
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "raw: O server phase factor rate n created ok refused failed timeouts unexpected unfinished offer_s run_s"
echo "       server_ticks sipp_ticks peak_rss_kb peak_pss_kb rss_after_kb other_%_srv_core other_%_sipp_core shed_lag shed_tx"
echo "       shed_calls shed_media retransmissions in_server_after_settle shed_setup (CLK_TCK=$HZ)"
echo "     H server held up_before ok failed unexpected timeouts up_before_bye left left_api left_tx sock_idle"
echo "       sock_left rss_idle_kb rss_left_kb in_server_idle kam_shm_used_mb pss_idle_kb pss_left_kb drained_s rss_drained_kb"
cat "$work/results"
