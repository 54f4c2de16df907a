#!/usr/bin/env bash
# The container image, built and run as in production, on a machine without a container
# registry (issue #12):
#
#  1. docker/build-static.sh builds the static release binary (the same script the Dockerfile's
#     build stage runs);
#  2. buildah (vfs storage, chroot isolation) builds docker/Dockerfile's final stage, FROM
#     scratch, from that output: the image users get from `docker build`;
#  3. podman/crun runs it in a network namespace this script creates, as Kubernetes would
#     (k8s/base): uid 65532 from the image, read-only root, no capabilities, no new privileges,
#     config and secrets mounted read-only, a writable data volume;
#  4. checks: uid/gid 65532, read-only root and no capabilities (from /proc), SIPp OPTIONS
#     answered on the pinned addresses 2001:db8:e8b1::1:1 and 198.51.100.10 over UDP and TCP
#     from another namespace, the trunk's name resolved through /etc/resolv.conf (no NSS in the
#     image) and registered from the pinned IPv6, /readyz 200, the k8s exec probes
#     (`podpbx ctl --admin 127.0.0.1:9061 health|ready`) inside the container, SIGTERM -> exit 0.
#
# Measures and prints (not asserted): image size, start-to-ready (direct exec and podman start).
# Everything (images, containers, storage, namespaces) lives in a temporary directory and is
# removed at exit. Needs root, buildah, podman, crun, sipp, python3, iproute2 (.ci/run installs
# them). Ends with `image: N passed, N failed`.
#
#   bash tests/image.sh
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2
t_start=$(date +%s.%N)
passed=0 failed=0
pass() { passed=$((passed + 1)); printf 'ok    %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAIL  %s\n' "$1"; [ $# -gt 1 ] && printf '%s\n' "$2" | sed 's/^/      /' | tail -n 40; :; }
check() { local name=$1; shift; local out; if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$out"; fi; }
finish() {
    printf '\nimage: %d passed, %d failed\n' "$passed" "$failed"
    [ "$failed" -eq 0 ]
    exit
}
since() { python3 -c "import sys; print(f'{(float(sys.argv[2]) - float(sys.argv[1])):.1f}')" "$1" "$(date +%s.%N)"; }

if [ "$(id -u)" != 0 ]; then
    fail "tests/image.sh needs root (network namespaces, podman as root); CI runs as root"
    finish
fi
missing=()
for tool in buildah podman crun conmon sipp python3 ip readelf; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    fail "missing tools: ${missing[*]} (apt-get install buildah podman crun sip-tester python3 iproute2 binutils; .ci/run does)"
    finish
fi

PINNED6=2001:db8:e8b1::1:1
PINNED4=198.51.100.10
POD6=2001:db8:100::1 LAN6=2001:db8:100::2
POD4=203.0.113.1 LAN4=203.0.113.2
TRUNK_NAME=provider.image.test
work=$(mktemp -d "${TMPDIR:-/tmp}/podpbx-image.XXXXXX")
ns_pod=podpbx-img-pod-$$ ns_lan=podpbx-img-lan-$$
tag=localhost/podpbx:image-test-$$
ctr=podpbx-image-test-$$
peer_pid='' direct_pid=''
# containers/image keeps a blob-info cache at this fixed path for root (no option moves it):
# removed at the end unless it was there before.
blob_cache=/var/lib/containers/cache/blob-info-cache-v1.boltdb
keep_blob_cache=0 keep_containers_dir=0
[ -e "$blob_cache" ] && keep_blob_cache=1
[ -e /var/lib/containers ] && keep_containers_dir=1

# podman and buildah see only this test's storage and configuration: nothing in /var/lib or
# /etc/containers is read or changed, no systemd, no registry.
mkdir -p "$work"/{storage,runroot,tmp,net,volumes,conf}
cat >"$work/conf/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$work/storage"
runroot = "$work/runroot"
EOF
cat >"$work/conf/containers.conf" <<EOF
[containers]
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$work/tmp/events.log"
runtime = "crun"
tmp_dir = "$work/tmp"
volume_path = "$work/volumes"
EOF
printf 'unqualified-search-registries = []\n' >"$work/conf/registries.conf"
printf '{"default": [{"type": "reject"}], "transports": {"docker-daemon": {"": [{"type": "reject"}]}}}\n' >"$work/conf/policy.json"
export CONTAINERS_STORAGE_CONF=$work/conf/storage.conf
export CONTAINERS_CONF=$work/conf/containers.conf
export CONTAINERS_REGISTRIES_CONF=$work/conf/registries.conf
# Wrappers with every storage and engine option spelled out, usable from `bash -c` too.
mkdir -p "$work/bin"
store="--root $work/storage --runroot $work/runroot --storage-driver vfs"
# crun refuses a hybrid cgroup layout (v1 controllers plus a cgroup2 at /sys/fs/cgroup/unified,
# as on these machines) even with --cgroups disabled; so podman runs in a private mount namespace
# of its own where /sys/fs/cgroup is the cgroup2 tree. Nothing podman does here needs a mount
# on the host side (vfs layers are plain directories, --ipc private), so each call may have its
# own namespace.
cat >"$work/bin/pm" <<EOF
#!/bin/sh
if [ "\$(stat -f -c %T /sys/fs/cgroup)" = tmpfs ] && [ -d /sys/fs/cgroup/unified ]; then
    exec unshare --mount --propagation private sh -c 'mount --bind /sys/fs/cgroup/unified /sys/fs/cgroup && exec "\$0" "\$@"' \\
        podman $store --tmpdir $work/tmp --cgroup-manager cgroupfs --events-backend file --runtime crun --network-config-dir $work/net --volumepath $work/volumes "\$@"
fi
exec podman $store --tmpdir $work/tmp --cgroup-manager cgroupfs --events-backend file --runtime crun --network-config-dir $work/net --volumepath $work/volumes "\$@"
EOF
printf '#!/bin/sh\nexec buildah %s "$@"\n' "$store" >"$work/bin/bh"
chmod +x "$work/bin/pm" "$work/bin/bh"
pm=$work/bin/pm
pm() { "$pm" "$@"; }
bh() { "$work/bin/bh" "$@"; }

cleanup() {
    [ -n "$peer_pid" ] && kill "$peer_pid" 2>/dev/null && wait "$peer_pid" 2>/dev/null
    [ -n "$direct_pid" ] && kill -9 "$direct_pid" 2>/dev/null
    pm rm -f -t 0 "$ctr" >/dev/null 2>&1
    pm rmi -f "$tag" >/dev/null 2>&1
    bh rm --all >/dev/null 2>&1
    # Anything still mounted below the work directory (container shm, layers) comes off first.
    awk -v w="$work" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null; done
    ip netns del "$ns_pod" 2>/dev/null
    ip netns del "$ns_lan" 2>/dev/null
    rm -rf "/etc/netns/$ns_pod"
    [ "$keep_blob_cache" = 1 ] || rm -f "$blob_cache"
    [ "$keep_containers_dir" = 1 ] || rm -rf /var/lib/containers
    rm -rf "$work"
}
trap cleanup EXIT

# --- 1. the static binary --------------------------------------------------------------------
t0=$(date +%s.%N)
if ! bash docker/build-static.sh "$work/out" >"$work/build.log" 2>&1; then
    fail "docker/build-static.sh" "$(tail -n 30 "$work/build.log")"
    finish
fi
pass "static release binary built by docker/build-static.sh ($(since "$t0") s)"
bin=$work/out/rootfs/usr/local/bin/podpbx
check "the binary is static (no interpreter, no shared libraries)" \
    bash -c "! readelf -l '$bin' | grep -q INTERP && ! readelf -d '$bin' | grep -q NEEDED"

# --- 2. the image: docker/Dockerfile's final stage, built by buildah ---------------------------
# The lines after the last FROM, with `--from=build /out/` read from build-static.sh's output.
awk '/^FROM /{buf=""} {buf = buf $0 "\n"} END {printf "%s", buf}' docker/Dockerfile |
    sed -e 's#--from=build ##' -e 's# /out/# #' >"$work/out/Containerfile"
check "docker/Dockerfile's final stage is FROM scratch and builds with build-static.sh" \
    bash -c "head -n 1 '$work/out/Containerfile' | grep -qx 'FROM scratch' &&
             ! grep -q -- '--from=' '$work/out/Containerfile' &&
             grep -q 'docker/build-static.sh /out' docker/Dockerfile"
t0=$(date +%s.%N)
if out=$(bh build --isolation chroot --pull=never --signature-policy "$work/conf/policy.json" \
    -f "$work/out/Containerfile" -t "$tag" "$work/out" 2>&1); then
    pass "buildah build from scratch ($(since "$t0") s)"
else
    fail "buildah build" "$out"
    finish
fi
size=$(pm image inspect --format '{{.Size}}' "$tag")
gz=$(pm save --format docker-archive "$tag" 2>/dev/null | gzip -6 | wc -c)
printf 'info  image size: %s bytes (%.2f MiB) uncompressed, %s bytes (%.2f MiB) gzip-compressed\n' \
    "$size" "$(python3 -c "print($size / 1048576)")" "$gz" "$(python3 -c "print($gz / 1048576)")"
check "image config: user 65532, entrypoint and cmd" bash -c \
    "[ \"\$($pm image inspect --format '{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Cmd}}' '$tag')\" = \
      '65532:65532 [\"/usr/local/bin/podpbx\"] [\"run\",\"--config\",\"/etc/podpbx/podpbx.toml\"]' ]"

# --- 3. namespaces: the pod (pinned addresses on lo, as Calico gives them) and a LAN ----------
ip netns add "$ns_pod" && ip netns add "$ns_lan" || { fail "ip netns add"; finish; }
setup_net() {
    set -e
    ip -n "$ns_pod" link set lo up
    ip -n "$ns_lan" link set lo up
    ip link add pod0 netns "$ns_pod" type veth peer name lan0 netns "$ns_lan"
    ip -n "$ns_pod" link set pod0 up
    ip -n "$ns_lan" link set lan0 up
    ip -n "$ns_pod" addr add "$PINNED6/128" dev lo nodad
    ip -n "$ns_pod" addr add "$PINNED4/32" dev lo
    ip -n "$ns_pod" addr add "$POD6/64" dev pod0 nodad
    ip -n "$ns_lan" addr add "$LAN6/64" dev lan0 nodad
    ip -n "$ns_pod" addr add "$POD4/24" dev pod0
    ip -n "$ns_lan" addr add "$LAN4/24" dev lan0
    ip -n "$ns_lan" -6 route add "$PINNED6/128" via "$POD6"
    ip -n "$ns_lan" route add "$PINNED4/32" via "$POD4"
    ip -n "$ns_pod" -6 route add default via "$LAN6"
    ip -n "$ns_pod" route add default via "$LAN4"
    # Permanent neighbour entries: no first-packet delay from neighbour discovery in a fresh
    # namespace (it would show up in the start-to-ready times).
    local pod_mac lan_mac
    pod_mac=$(ip -n "$ns_pod" -o link show pod0 | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2)
    lan_mac=$(ip -n "$ns_lan" -o link show lan0 | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2)
    ip -n "$ns_pod" neigh replace "$LAN6" lladdr "$lan_mac" dev pod0 nud permanent
    ip -n "$ns_pod" neigh replace "$LAN4" lladdr "$lan_mac" dev pod0 nud permanent
    ip -n "$ns_lan" neigh replace "$POD6" lladdr "$pod_mac" dev lan0 nud permanent
    ip -n "$ns_lan" neigh replace "$POD4" lladdr "$pod_mac" dev lan0 nud permanent
}
check "namespaces $ns_pod and $ns_lan with the pinned addresses" setup_net

# The provider: DNS for $TRUNK_NAME (AAAA $LAN6) and a registrar on [$LAN6]:5060.
ip netns exec "$ns_lan" python3 tests/image_peer.py "$LAN4" "$TRUNK_NAME" "$LAN6" "$LAN6" 300 \
    >"$work/peer.log" 2>&1 &
peer_pid=$!
for _ in $(seq 100); do grep -q '^peer up' "$work/peer.log" 2>/dev/null && break; sleep 0.05; done
grep -q '^peer up' "$work/peer.log" || { fail "provider (DNS, registrar) in $ns_lan" "$(cat "$work/peer.log")"; finish; }

# --- 4. configuration, as k8s/base mounts it ----------------------------------------------------
mkdir -p "$work/etc" "$work/secrets" "$work/data" "$work/direct-data"
write_config() { # DATA_DIR SECRETS_DIR [notrunk]
    cat <<EOF
[sip]
ipv6 = "$PINNED6"
ipv4 = "$PINNED4"
port = 5060
transports = ["udp", "tcp"]
domain = "pbx.image.test"

[admin]
listen = "127.0.0.1:9060"
health_listen = "127.0.0.1:9061"

[storage]
data_dir = "$1"

[[users]]
name = "201"
password_file = "$2/201"
EOF
    [ "${3:-}" = notrunk ] && return
    cat <<EOF

[[trunks]]
name = "provider"
host = "$TRUNK_NAME"
port = 5060
transport = "udp"
family = "ipv6"
username = "12025550140"
password_file = "$2/trunk"
register = true
EOF
}
write_config /var/lib/podpbx /run/secrets/podpbx >"$work/etc/podpbx.toml"
write_config "$work/direct-data" "$work/secrets" >"$work/direct.toml"
write_config "$work/direct-data" "$work/secrets" notrunk >"$work/direct-notrunk.toml"
printf 'image-test-201\n' >"$work/secrets/201"
printf 'image-test-trunk\n' >"$work/secrets/trunk"
chmod 0755 "$work/etc" && chmod 0644 "$work/etc/podpbx.toml"
chown -R 0:65532 "$work/secrets" && chmod 0750 "$work/secrets" && chmod 0440 "$work/secrets"/*
chown 65532:65532 "$work/data" && chmod 0750 "$work/data"
# The direct run below resolves through the namespace's resolv.conf (ip netns exec mounts it).
mkdir -p "/etc/netns/$ns_pod" && printf 'nameserver %s\n' "$LAN4" >"/etc/netns/$ns_pod/resolv.conf"

# --- 5. start-to-ready ----------------------------------------------------------------------------
# a) process exec -> /readyz 200: the same static binary, no container, in the pod namespace;
#    three times without a trunk (podpbx's own start: config, sockets, listeners), three times
#    with the registering trunk (plus its DNS lookup and REGISTER round trip).
direct_ms=()
for i in 1 2 3 4 5 6; do
    cfg=$work/direct.toml
    [ "$i" -le 3 ] && cfg=$work/direct-notrunk.toml
    out=$(ip netns exec "$ns_pod" python3 tests/image_probe.py 127.0.0.1 9061 10 "$work/direct-$i.log" \
        "$bin" run --config "$cfg" 2>&1)
    direct_pid=$(sed -n 's/^pid=//p' <<<"$out")
    ms=$(sed -n 's/^ready_ms=//p' <<<"$out")
    if [ -z "$ms" ] || [ -z "$direct_pid" ]; then
        fail "direct start $i: /readyz 200" "$out
$(tail -n 20 "$work/direct-$i.log")"
        finish
    fi
    direct_ms+=("$ms")
    kill -TERM "$direct_pid"
    for _ in $(seq 100); do kill -0 "$direct_pid" 2>/dev/null || break; sleep 0.05; done
    kill -0 "$direct_pid" 2>/dev/null && { fail "direct start $i: SIGTERM stop"; finish; }
    direct_pid=''
done
pass "static binary: exec -> /readyz 200 (ms): ${direct_ms[*]:0:3} without a trunk, ${direct_ms[*]:3:3} with it"

# b) the container: created first, then `podman start` -> /readyz 200. The limits are the
# machine's own (podman's defaults would raise them, which needs CAP_SYS_RESOURCE). No cgroups:
# nothing to create or leave behind.
if ! out=$(pm create --name "$ctr" \
    --network "ns:/run/netns/$ns_pod" --dns "$LAN4" \
    --read-only --read-only-tmpfs=false \
    --cap-drop all --security-opt no-new-privileges \
    --cgroups disabled --pids-limit 0 --ipc private \
    --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=4096:4096" \
    -v "$work/etc:/etc/podpbx:ro" \
    -v "$work/secrets:/run/secrets/podpbx:ro" \
    -v "$work/data:/var/lib/podpbx" \
    --stop-timeout 15 \
    "$tag" 2>&1); then
    fail "podman create" "$out"
    finish
fi
out=$(python3 tests/image_probe.py --netns "/run/netns/$ns_pod" 127.0.0.1 9061 30 "$work/start.log" \
    "$pm" start "$ctr" 2>&1)
container_ms=$(sed -n 's/^ready_ms=//p' <<<"$out")
if [ -n "$container_ms" ]; then
    pass "container: podman start -> /readyz 200 in $container_ms ms"
else
    fail "container: /readyz 200 after podman start" "$out
$(cat "$work/start.log")
$(pm logs "$ctr" 2>&1 | tail -n 20)"
    finish
fi

# --- 6. what runs, and how --------------------------------------------------------------------
pid=$(pm inspect --format '{{.State.Pid}}' "$ctr")
status=/proc/$pid/status
check "runs as uid 65532 and gid 65532" bash -c \
    "grep -qx 'Uid:[[:space:]]65532[[:space:]]65532[[:space:]]65532[[:space:]]65532' '$status' &&
     grep -qx 'Gid:[[:space:]]65532[[:space:]]65532[[:space:]]65532[[:space:]]65532' '$status'"
check "no capabilities, no new privileges" bash -c \
    "grep -qx 'CapEff:[[:space:]]0000000000000000' '$status' && grep -qx 'NoNewPrivs:[[:space:]]1' '$status'"
check "root filesystem is read-only" bash -c \
    "awk '\$5 == \"/\" {print \$6}' /proc/$pid/mountinfo | tail -n 1 | grep -qE '(^|,)ro(,|$)' &&
     [ \"\$($pm inspect --format '{{.HostConfig.ReadonlyRootfs}}' '$ctr')\" = true ]"
image_files() {
    local dir
    dir=$(pm image mount "$tag") || return 1
    (cd "$dir" && find . -mindepth 1 \( -type f -o -type l -o -type d -empty \) -printf '%p %m %U:%G\n' | sort)
    pm image unmount "$tag" >/dev/null
}
files=$(image_files 2>&1)
if [ "$files" = "./usr/local/bin/podpbx 755 0:0
./var/lib/podpbx 755 65532:65532" ]; then
    pass "the image holds the binary and an empty data directory owned by 65532, nothing else"
else
    fail "the image holds the binary and an empty data directory owned by 65532, nothing else" "$files"
fi

# --- 7. SIP on the pinned addresses, from the LAN (SIPp) ----------------------------------------
for t in "[$PINNED6]:5060 $LAN6 u1" "[$PINNED6]:5060 $LAN6 t1" "$PINNED4:5060 $LAN4 u1" "$PINNED4:5060 $LAN4 t1"; do
    read -r target local transport <<<"$t"
    check "SIPp OPTIONS over $transport to $target answered 200" bash -c \
        "cd '$work' && ip netns exec '$ns_lan' sipp '$target' -sf '$root/tests/sipp/options.xml' -i '$local' \
            -p 5070 -t '$transport' -m 1 -nostdin -timeout 10s -timeout_error >'$work/sipp.log' 2>&1 ||
         { cat '$work/sipp.log'; exit 1; }"
done
check "trunk name resolved by DNS in the scratch image and registered from $PINNED6" bash -c \
    "grep -q '^dns AAAA $TRUNK_NAME' '$work/peer.log' && grep -q '^REGISTER from $PINNED6 expires [1-9]' '$work/peer.log' ||
     { cat '$work/peer.log'; exit 1; }"

# Idle memory of the running container (registered trunk, no calls), from the host's /proc: RSS,
# its anonymous and file-backed parts (the binary's touched pages), and PSS.
idle_mem=$(awk '/^(VmRSS|RssAnon|RssFile):/ {printf "%s %d KB, ", $1, $2}' "/proc/$pid/status")
idle_mem+=$(awk '/^Pss:/ {printf "Pss: %d KB", $2}' "/proc/$pid/smaps_rollup")

# --- 8. probes: HTTP, and the Kubernetes exec probes inside the container ----------------------
check "GET /readyz on the health listener: 200 ready" bash -c \
    "ip netns exec '$ns_pod' python3 -c \"
import socket
s = socket.create_connection(('127.0.0.1', 9061), timeout=3)
s.sendall(b'GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n')
d = b''
while True:
    c = s.recv(4096)
    if not c: break
    d += c
assert d.startswith(b'HTTP/1.1 200 ') and d.endswith(b'ready\n'), d
\""
for probe in health ready; do
    check "exec probe: podpbx ctl --admin 127.0.0.1:9061 $probe" \
        pm exec "$ctr" /usr/local/bin/podpbx ctl --admin 127.0.0.1:9061 "$probe"
done
check "the API answers podpbx ctl on loopback inside the pod" \
    pm exec "$ctr" /usr/local/bin/podpbx ctl --config /etc/podpbx/podpbx.toml status

# --- 9. SIGTERM: graceful stop, exit 0 ----------------------------------------------------------
t0=$(date +%s.%N)
pm stop -t 15 "$ctr" >/dev/null 2>&1
stop_s=$(since "$t0")
code=$(pm inspect --format '{{.State.ExitCode}}' "$ctr")
check "SIGTERM: exit code 0 (${stop_s} s, un-REGISTER included)" bash -c \
    "[ '$code' = 0 ] && $pm logs '$ctr' 2>&1 | grep -q 'podpbx stopped' ||
     { echo 'exit code $code'; $pm logs '$ctr' 2>&1 | tail -n 20; exit 1; }"
check "trunk un-registered on the way out" grep -q "^REGISTER from $PINNED6 expires 0" "$work/peer.log"

printf 'info  start-to-ready (ms): exec -> /readyz 200: %s without a trunk, %s with the registering trunk;\n' \
    "${direct_ms[*]:0:3}" "${direct_ms[*]:3:3}"
printf 'info  podman start -> /readyz 200 (with the trunk): %s; load average: %s\n' "$container_ms" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'info  idle memory of the container after start and trunk registration: %s\n' "$idle_mem"
printf 'info  tests/image.sh took %s s in all\n' "$(since "$t_start")"
finish
