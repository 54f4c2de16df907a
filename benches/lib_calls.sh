# Helpers shared by the call benches (benches/call_rate.sh, benches/overload.sh): processes
# stopped by PID, CPU and memory from /proc, podpbx's metrics, SIPp's statistics files, and the
# start of a server (podpbx or Kamailio) and of the registered SIPp callee. Sourced, not run:
#
#   . benches/lib_calls.sh      (from the repository root, after the script's settings)
#
# The sourcing script provides: die (its own message and log tails), select_server NAME (sets
# SRV_NAME, PORT, UAC_PORT, UAS_PORT, UAS_MEDIA and optionally HELD_PORT), and the variables
# work, pids (array), failed, KEEP, SRV_IP, UAC_IP, ADMIN, SERVER_CORE, SIPP_CORE, KAM_CHILDREN,
# KAM_SHM, MEDIA_MIN, MEDIA_MAX, HZ (CLK_TCK), BIN (empty: need_bin builds it), prio (array: a
# command prefix for servers and SIPp, may be empty). Sourcing sets the EXIT trap (cleanup:
# everything in pids stopped by PID, the work directory removed unless KEEP=1 or the run failed).

trap cleanup EXIT
trap 'exit 130' INT TERM

# The server, its stopper and its callee per server name (both run at once in call_rate.sh's
# fixed-rate phase).
declare -A SRV_OF STOP_OF UAS_OF
SRV=""; STOP=""; UAS=""

# The process and all its descendants (Kamailio -DD: a "creator" waiting for the main process,
# which forks the workers).
family() {
    local c
    echo "$1"
    for c in $(pgrep -P "$1" || true); do family "$c"; done
}
# Stops a process by PID: SIGTERM, up to 5 s; then SIGTERM again to whatever is left of it and of
# its descendants (each by PID), up to 5 s (podpbx: a second signal ends its remaining calls at
# once); then SIGKILL. STOP_NOTE says how it went when a second signal was needed.
stop_pid() {
    local p=$1 fam q i left sig
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
        STOP_NOTE="stopped on the second SIGTERM (not within 5 s of the first)"
        [ "$sig" = KILL ] && STOP_NOTE="needed SIGKILL (not stopped 5 s after a second SIGTERM)"
        for q in $left; do kill -"$sig" "$q" 2>/dev/null || true; done
        for i in $(seq 1 50); do
            left=""
            for q in $fam; do kill -0 "$q" 2>/dev/null && left+=" $q"; done
            [ -z "$left" ] && break
            sleep 0.1
        done
    done
    wait "$p" 2>/dev/null || true
}
# The EXIT trap: everything started, last first; the work directory unless kept.
cleanup() {
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[i]}"; done
    if [ "$KEEP" = 1 ] || [ "$failed" = 1 ]; then
        echo "work directory kept: $work" >&2
    else
        rm -rf "$work"
    fi
}
# BIN, or a fresh release build when it is not set.
need_bin() {
    if [ -z "${BIN:-}" ]; then
        cargo build --release -q -p podpbx
        BIN=target/release/podpbx
    fi
    [ -x "$BIN" ] || die "no podpbx binary at $BIN"
}
# podpbx's configuration for the call benches, on stdout: UDP on SRV_IP:PORT, the admin listener
# (ADMIN), relay ports MEDIA_MIN..MEDIA_MAX, no concurrent-call limit; the callee 102 registers
# with a password, the caller 201 is identified by its address (UAC_IP), a dialplan rule rings
# 102. $1: more [media] lines, $2: more [calls] lines (each may be empty).
podpbx_config() {
    cat <<CFG
[sip]
ipv4 = "$SRV_IP"
port = $PORT
transports = ["udp"]
[log]
level = "warn"
[admin]
listen = "$ADMIN"
[storage]
data_dir = "$work/pbxdata"
[security]
trusted_networks = ["127.0.0.0/8"]
[media]
port_min = $MEDIA_MIN
port_max = $MEDIA_MAX
$1
[calls]
max_concurrent = 0
$2

# The callee: a phone that registers once before the load.
[[users]]
name = "102"
password = "bench-102"

# The caller, identified by its source address (no digest round; Kamailio authenticates
# nobody either).
[[users]]
name = "201"
identify_by_source = true
allow_from = ["$UAC_IP/32"]

[[dialplan]]
name = "bench"
match = { number = "102", from = "local" }
action = "ring"
targets = ["102"]
timeout_secs = 10
CFG
}
# The directory of Kamailio's modules (where tm.so is).
kamailio_modules() { dirname "$(find /usr/lib /usr/local/lib -name tm.so -path '*kamailio*' 2>/dev/null | head -1)"; }

# CPU ticks (utime + stime, all threads) of a process and its descendants.
cpu_ticks() {
    local total=0 p
    for p in $(family "$1"); do
        [ -r "/proc/$p/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
# Busy ticks (user + nice + system + steal) of one CPU.
# (irq/softirq left out: loopback packet delivery is softirq work done on behalf of the senders.)
core_busy() { awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $9}' /proc/stat; }
# Other processes' share (%) of the server core and of the SIPp core over a window:
#   other_load window_ms server_core_busy_ticks server_ticks sipp_core_busy_ticks sipp_ticks
other_load() {
    awk -v hz="$HZ" -v w="$1" -v s=$(($2 - $3)) -v p=$(($4 - $5)) \
        'BEGIN {s = s < 0 ? 0 : s; p = p < 0 ? 0 : p; printf "%.0f %.0f", s / hz / (w / 1000) * 100, p / hz / (w / 1000) * 100}'
}
# UDP sockets of podpbx in its media port range (two pairs per call).
media_sockets() {
    ss -Huanp 2>/dev/null | awk -v p="pid=$1," -v lo="$MEDIA_MIN" -v hi="$MEDIA_MAX" 'index($0, p) {
        n = split($4, a, ":"); port = a[n] + 0; if (port >= lo && port <= hi) c++ } END {print c + 0}'
}
metrics() { curl -s --max-time 2 "http://$ADMIN/metrics" || true; }
# One of podpbx's metrics ("-": not there, or podpbx did not answer).
metric() { metrics | awk -v k="$1" '$1 == k {print $2; f = 1} END {if (!f) print "-"}'; }
port_busy() { ss -Hlun "sport = :$1" 2>/dev/null | grep -q . ; }

# The value of column $2 (by header name) in the last line of SIPp's statistics file $1.
stat_col() {
    awk -F';' -v col="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i }
        END { v = $c; if (v == "") v = 0; print v }' "$1"
}
# Seconds between StartTime and CurrentTime of the last statistics line.
stat_elapsed() { awk -F';' 'END { split($1, a, "\t"); split($3, b, "\t"); printf "%.3f", b[3] - a[3] }' "$1"; }
# The most frequent unexpected answers in SIPp's error file $1 (up to 3), as lines
# "  LABEL: count answer" in $work/oddities; with a third argument `aborts`, SIPp's aborted calls
# too (the lines then keep the word "received").
sipp_oddities() {
    [ -s "$1" ] || return 0
    if [ "${3:-}" = aborts ]; then
        grep -ao "received '[^']*\|Aborting call[^.]*" "$1" | sed 's/\r//' | cut -c1-60
    else
        grep -ao "received '[^']*" "$1" | sed 's/\r//' | cut -c11-60
    fi | sort | uniq -c | sort -rn | head -3 | sed "s/^/  $2: /" >> "$work/oddities" || true
}

# Starts a server pinned to SERVER_CORE from $work/podpbx.toml or $work/kamailio.cfg; sets SRV
# (its PID) and STOP (the PID to stop it by); answers OPTIONS before it returns.
start_server() {
    local name=$1 i
    select_server "$name"
    for i in "$PORT" "$UAC_PORT" ${HELD_PORT:+"$HELD_PORT"} "$UAS_PORT"; do
        port_busy "$i" && die "UDP port $i is already in use (another run? set PORT=...)"
    done
    if [ "$name" = podpbx ]; then
        rm -rf "$work/pbxdata"
        "${prio[@]}" taskset -c "$SERVER_CORE" "$BIN" run --config "$work/podpbx.toml" 2>>"$work/podpbx.log" &
    else
        rm -f "$work/kamailio.ctl"
        "${prio[@]}" taskset -c "$SERVER_CORE" kamailio -f "$work/kamailio.cfg" -DD -E -l "udp:$SRV_IP:$PORT" \
            -n "$KAM_CHILDREN" -m "$KAM_SHM" -M 16 >>"$work/kamailio.log" 2>&1 &
    fi
    SRV=$!
    pids+=("$SRV")
    STOP=$SRV
    for i in $(seq 1 20); do
        kill -0 "$SRV" 2>/dev/null || die "$name exited at start-up (see $work/$name.log)"
        if timeout 2 sipp "$SRV_IP:$PORT" -sf benches/sipp/options_ping.xml -i "$SRV_IP" -p "$UAC_PORT" \
            -t u1 -m 1 -nostdin -timeout 1s -timeout_error >/dev/null 2>&1; then
            if [ "$name" = kamailio ]; then
                # SIGTERM to the creator (-DD) kills only it; its child, the main process, stops all.
                STOP=$(pgrep -P "$SRV" | head -1)
                [ -n "$STOP" ] || die "Kamailio main process not found under PID $SRV"
                pids+=("$STOP")
            fi
            SRV_OF[$name]=$SRV; STOP_OF[$name]=$STOP
            return 0
        fi
        sleep 0.5
    done
    die "$name did not answer OPTIONS on $SRV_IP:$PORT within 10 s"
}

# Starts the SIPp callee (for podpbx: registered first as 102); sets UAS. Extra args: SIPp options.
start_uas() {
    local server=$1 tag=$2
    shift 2
    if [ "$server" = podpbx ]; then
        timeout 15 taskset -c "$SIPP_CORE" sipp "$SRV_IP:$PORT" -sf tests/sipp/register_once.xml -i "$SRV_IP" \
            -p "$UAS_PORT" -t u1 -m 1 -s 102 -au 102 -ap bench-102 -key expires 3600 -nostdin -timeout 10s \
            >"$work/$tag-register.out" 2>&1 || die "the callee's REGISTER failed (see $work/$tag-register.out)"
    fi
    # Bounded: every bench is far shorter than this.
    timeout 900 "${prio[@]}" taskset -c "$SIPP_CORE" sipp "$SRV_IP:$PORT" -sf benches/sipp/call_uas.xml -i "$SRV_IP" \
        -p "$UAS_PORT" -mi "$SRV_IP" -mp "$UAS_MEDIA" -t u1 -nostdin -timeout 880s \
        ${SIPP_BUF:+-buff_size "$SIPP_BUF"} \
        -trace_err -error_file "$work/$tag-uas.err" -max_log_size 1000000 "$@" >"$work/$tag-uas.out" 2>&1 &
    UAS=$!
    UAS_OF[$server]=$UAS
    pids+=("$UAS")
    sleep 0.3
    kill -0 "$UAS" 2>/dev/null || die "the SIPp callee did not start (see $work/$tag-uas.out)"
}
