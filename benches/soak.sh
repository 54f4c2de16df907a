#!/usr/bin/env bash
# Soak test (not CI): N concurrent calls with media through the real podpbx binary for a set
# time, on loopback only. An IPv4 SIPp caller (101, digest via 407) streams PCMU with
# `rtp_stream` to an IPv6 SIPp phone (102, registered, `-rtp_echo`), so every call crosses the
# relay IPv4 <-> IPv6 both ways. Reports calls completed/failed, RTP loss (from the CDRs' per-leg
# relay counters), relay drops, media ports leaked (UDP sockets of podpbx in the media range
# before vs after: must be 0), and RSS at start and end.
#
#   usage: benches/soak.sh [-n CONCURRENT] [-t SECONDS] [-d CALL_MS]
#     -n  concurrent calls (default 20)
#     -t  how long new calls are started (default 120 s; hard stop at +90 s)
#     -d  call duration in ms (default 10000); n new calls start every d ms
#
# Bounded: SIPp stops starting calls after -t seconds (and -m total calls), every process runs
# under `timeout`, and everything started here is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

N=20
T=120
D=10000
while getopts "n:t:d:" o; do
    case $o in
        n) N=$OPTARG ;;
        t) T=$OPTARG ;;
        d) D=$OPTARG ;;
        *) sed -n '2,16p' "$0"; exit 2 ;;
    esac
done
command -v sipp >/dev/null || { echo "sipp not found (apt-get install sip-tester)"; exit 2; }
command -v ss >/dev/null || { echo "ss not found (apt-get install iproute2)"; exit 2; }

free_port() {
    python3 -c 'import socket
s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
PORT=$(free_port)
ADMIN=$(free_port)
UAS_PORT=$(free_port)
UAC_PORT=$(free_port)
MEDIA_MIN=42000
MEDIA_MAX=43999

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then echo "work dir kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

cargo build --release -q -p podpbx
BIN=target/release/podpbx

cat > "$work/podpbx.toml" <<CFG
[sip]
ipv6 = "::1"
ipv4 = "127.0.0.1"
port = $PORT
transports = ["udp"]

[log]
level = "warn"

[admin]
listen = "127.0.0.1:$ADMIN"

[storage]
data_dir = "$work/data"

[media]
port_min = $MEDIA_MIN
port_max = $MEDIA_MAX

[[users]]
name = "101"
password = "soak-101"

[[users]]
name = "102"
password = "soak-102"

[[dialplan]]
name = "ext"
match = { pattern = "_1XX", from = "local" }
action = "local"
timeout_secs = 10
CFG

# 8 kHz mu-law WAV (format 7), 2 s of a quiet pattern, looped by rtp_stream.
python3 - "$work/soak.wav" <<'PY'
import struct, sys
data = bytes((0xff if (i // 40) % 2 else 0xfe) for i in range(16000))
fmt = struct.pack("<HHIIHH", 7, 1, 8000, 8000, 1, 8)
riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
open(sys.argv[1], "wb").write(b"RIFF" + struct.pack("<I", len(riff)) + riff)
PY

"$BIN" run --config "$work/podpbx.toml" 2>"$work/podpbx.log" &
PBX=$!
pids+=("$PBX")
for _ in $(seq 1 300); do
    grep -q "podpbx ready" "$work/podpbx.log" 2>/dev/null && break
    curl -s "http://127.0.0.1:$ADMIN/healthz" >/dev/null 2>&1 && break
    sleep 0.05
done

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$PBX/status"; }
# UDP sockets podpbx holds in the media port range.
media_sockets() {
    ss -Huanp 2>/dev/null | grep "pid=$PBX," | awk '{print $4}' | sed 's/.*://' |
        awk -v lo="$MEDIA_MIN" -v hi="$MEDIA_MAX" '$1 >= lo && $1 <= hi' | wc -l
}
metric() { curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v k="$1" '$1 == k {print $2}'; }

sleep 0.5
RSS0=$(rss)
PORTS0=$(media_sockets)

# The phone: register 102 from [::1]:UAS_PORT, then answer calls on the same port, echoing RTP.
timeout 30 sipp "[::1]:$PORT" -sf tests/sipp/register_once.xml -i ::1 -p "$UAS_PORT" -t u1 -m 1 \
    -s 102 -au 102 -ap soak-102 -key expires 3600 -nostdin -timeout 20s >"$work/register.log" 2>&1 ||
    { echo "phone registration failed:"; cat "$work/register.log"; exit 1; }
timeout $((T + 180)) sipp "[::1]:$PORT" -sf benches/sipp/soak_uas.xml -i ::1 -mi ::1 -p "$UAS_PORT" -t u1 \
    -rtp_echo -nostdin -trace_err >"$work/uas.log" 2>&1 &
UAS=$!
pids+=("$UAS")
sleep 0.5

# The caller: N concurrent calls of D ms, started for T seconds.
# N new calls every D ms (-r N -rp D): N calls up at any time once the first ones end.
TOTAL=$(( N * T * 1000 / D ))
[ "$TOTAL" -ge 1 ] || TOTAL=1
echo "soak: $N concurrent calls of $D ms for $T s ($TOTAL calls), IPv4 caller -> IPv6 phone"
# Peak media sockets while calls run (proves the leak count below sees the relay's sockets).
( peak=0; end=$(( $(date +%s) + T + 90 ))
  while [ "$(date +%s)" -lt "$end" ] && kill -0 "$PBX" 2>/dev/null; do
      n=$(media_sockets); [ "$n" -gt "$peak" ] && peak=$n && echo "$peak" >"$work/peak"; sleep 1
  done ) &
SAMPLER=$!
pids+=("$SAMPLER")
set +e
sed "s|@RTP_FILE@|$work/soak.wav|" benches/sipp/soak_uac.xml >"$work/soak_uac.xml"
timeout $((T + 90)) sipp "127.0.0.1:$PORT" -sf "$work/soak_uac.xml" -i 127.0.0.1 -mi 127.0.0.1 \
    -p "$UAC_PORT" -t u1 -s 102 -au 101 -ap soak-101 -key caller 101 \
    -l "$N" -r "$N" -rp "$D" -m "$TOTAL" -d "$D" -nostdin -trace_stat -stf "$work/uac.csv" -fd 5 \
    -trace_err -error_file "$work/uac_err.log" >"$work/uac.log" 2>&1
UAC_RC=$?
set -e
kill "$SAMPLER" 2>/dev/null || true

# Let the last BYEs and the relay's session teardown settle.
sleep 3
ACTIVE=$(metric podpbx_calls_active)
for _ in $(seq 1 50); do
    [ "${ACTIVE:-0}" = 0 ] && break
    sleep 0.2
    ACTIVE=$(metric podpbx_calls_active)
done
sleep 1
RSS1=$(rss)
PORTS1=$(media_sockets)

col() { # header name -> value in the last line of the SIPp stat CSV
    [ -f "$work/uac.csv" ] || { echo "?"; return; }
    awk -F';' -v n="$1" 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == n) c = i} END {print $c}' "$work/uac.csv"
}
OK=$(col "SuccessfulCall(C)")
FAIL=$(col "FailedCall(C)")

python3 - "$work/data" <<'PY'
import glob, json, sys
rtp = lost = 0
disp = {}
for f in glob.glob(sys.argv[1] + "/**/*.jsonl", recursive=True):
    for line in open(f):
        try:
            c = json.loads(line)
        except ValueError:
            continue
        disp[c.get("disposition")] = disp.get(c.get("disposition"), 0) + 1
        for leg in c.get("legs", []):
            m = leg.get("media") or {}
            rtp += int(m.get("rtp_packets", 0) or 0)
            lost += max(0, int(m.get("lost_packets", 0) or 0))
loss = 100.0 * lost / (rtp + lost) if rtp + lost else 0.0
print(f"CDRs: {disp}")
print(f"RTP through the relay: {rtp} packets received on call legs, {lost} lost ({loss:.3f} %)")
PY
echo "relay: forwarded $(metric podpbx_relay_packets_total) packets; drops:"
curl -s "http://127.0.0.1:$ADMIN/metrics" | grep '^podpbx_relay_dropped_packets_total' || true
echo "calls: $OK completed, $FAIL failed (SIPp exit $UAC_RC); podpbx_calls_active after: ${ACTIVE:-?}"
echo "media ports: $PORTS0 sockets before, peak $(cat "$work/peak" 2>/dev/null || echo 0) during, $PORTS1 after: leaked $((PORTS1 - PORTS0))"
echo "RSS: start ${RSS0} kB, end ${RSS1} kB"
if ! kill -0 "$PBX" 2>/dev/null; then
    echo "podpbx died:"; tail -50 "$work/podpbx.log"; exit 1
fi
status=0
[ "$((PORTS1 - PORTS0))" = 0 ] || { echo "FAIL: media ports leaked"; status=1; }
[ "${FAIL:-1}" = 0 ] || { echo "FAIL: calls failed (see $work/uac_err.log; KEEP=1 keeps it)"; head -40 "$work/uac_err.log" 2>/dev/null; status=1; }
[ "${ACTIVE:-1}" = 0 ] || { echo "FAIL: calls still active after the soak"; status=1; }
exit $status
