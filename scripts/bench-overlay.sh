#!/usr/bin/env bash
# scripts/bench-overlay.sh: overlay throughput and latency, mesh vs Linux in one run.
#
#   mt-c1 / mt-kc1 (10.199.0.1)                   mt-c2 / mt-kc2 (10.199.0.2)
#      | TAP     | veth                              | TAP     | veth
#      |      mt-kbr -- mt-kvx (kernel vxlan,        |      mt-kbr -- mt-kvx
#      |                VNI 100, UDP 4790)           |
#   mesh-agent (VXLAN UDP 4789)                   mesh-agent
#   mt-h116 .116 eth0                             mt-h117 .117 eth0
#      |                                             |
#  +---+---------------------------------------------+---+
#  |        mt-br0 in mt-ul, 192.168.100.0/24            |
#  +-----------------------------------------------------+
#
#   (a) bare underlay   iperf3 .116 -> .117
#   (b) kernel vxlan    iperf3 kc1 -> kc2, ping kc1 -> kc2
#   (c) mesh            iperf3 c1 -> c2,   ping c1 -> c2
#
# Usage: scripts/bench-overlay.sh [--smoke] [--kernel-only]
#   DURATION=10 (seconds per iperf3 run); --smoke: 2 s runs, to keep the script working;
#   --kernel-only: (a) and (b) only, no mesh binaries needed.

. "$(dirname "$0")/../netns-tests/lib.sh"

DURATION=${DURATION:-10}
MESH=1
for arg in "$@"; do
    case $arg in
        --smoke) DURATION=2 ;;
        --kernel-only) MESH= ;;
        *) echo "usage: $0 [--smoke] [--kernel-only]" >&2; exit 2 ;;
    esac
done
[ -n "$MESH" ] && need_bins

testbed_up 116 117

# iperf_gbps SERVER_NS SERVER_IP CLIENT_NS: one TCP stream for DURATION s; Gbit/s.
iperf_gbps() {
    local srv=$1 ip=$2 cli=$3 spid
    ip netns exec "$srv" timeout $((DURATION + 20)) iperf3 -s -1 -B "$ip" >/dev/null 2>&1 </dev/null &
    spid=$!; track "$spid"
    wait_until 5 listening "$srv" 5201 || { stop_pid "$spid"; return 1; }
    ip netns exec "$cli" timeout $((DURATION + 15)) iperf3 -c "$ip" -t "$DURATION" -J >"$TMP/iperf.json" 2>&1
    wait_until 5 gone "$spid"; stop_pid "$spid"
    jq -e '.end.sum_received.bits_per_second / 1e9' "$TMP/iperf.json" 2>/dev/null |
        awk '$1 > 0 { printf "%.2f\n", $1; ok = 1 } END { exit !ok }'
}

# rtt_ms NS IP: average RTT of 20 echoes 50 ms apart.
rtt_ms() {
    ip netns exec "$1" ping -n -q -c 20 -i 0.05 -W 1 "$2" 2>/dev/null |
        awk -F/ '/^rtt/ { print $5; ok = 1 } END { exit !ok }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f\n", a / b; else print "n/a" }'; }

# measure VAR LABEL CMD...: VAR=$(CMD), or a FAIL line and VAR=0.
measure() {
    local var=$1 label=$2 out; shift 2
    if out=$("$@"); then printf -v "$var" %s "$out"; else printf -v "$var" 0; fail "$label: no result"; fi
}

# --- (b) kernel VXLAN + bridge, its own VNI 100 on UDP 4790 ---------------------
i=1
for id in 116 117; do
    peer=$([ "$id" = 116 ] && echo 117 || echo 116)
    h=mt-h$id
    ip -n "$h" link add mt-kvx type vxlan id 100 dstport 4790 local "$UNDERLAY.$id" dev eth0
    ip -n "$h" link add mt-kbr type bridge
    ip -n "$h" link set mt-kvx master mt-kbr up
    ip -n "$h" link set mt-kbr up
    bridge -n "$h" fdb append 00:00:00:00:00:00 dev mt-kvx dst "$UNDERLAY.$peer"
    mk_ns "mt-kc$i"
    ip -n "$h" link add "mt-kc$i" mtu 1450 type veth peer name eth0 netns "mt-kc$i" mtu 1450
    ip -n "$h" link set "mt-kc$i" master mt-kbr up
    ip -n "mt-kc$i" addr add "10.199.0.$i/24" dev eth0
    ip -n "mt-kc$i" link set eth0 up
    i=$((i + 1))
done
wait_until 5 ping_ok mt-kc1 10.199.0.2 || die "setup: kernel vxlan kc1 -> kc2 does not ping"

# --- (c) mesh: two agents, network bench, c1 on .116 and c2 on .117 ---------------
if [ -n "$MESH" ]; then
    start_cluster 116 117
    mctl 116 network create bench >/dev/null || die "setup: network create bench"
    wait_until 1 network_seen 117 bench || die "setup: bench not seen on .117"
    mk_container c1
    mk_container c2
    attach 116 c1 bench >/dev/null || die "setup: attach c1 on .116"
    C2=$(attach 117 c2 bench) || die "setup: attach c2 on .117"
    wait_until 5 ping_ok mt-c1 "$C2" || die "setup: mesh c1 -> c2 does not ping"
fi

# --- measure --------------------------------------------------------------------
measure BARE "bare underlay iperf3" iperf_gbps mt-h117 "$UNDERLAY.117" mt-h116
measure KVX "kernel vxlan iperf3" iperf_gbps mt-kc2 10.199.0.2 mt-kc1
measure KVX_RTT "kernel vxlan ping" rtt_ms mt-kc1 10.199.0.2
if [ -n "$MESH" ]; then
    measure MESH_GBPS "mesh iperf3" iperf_gbps mt-c2 "$C2" mt-c1
    measure MESH_RTT "mesh ping" rtt_ms mt-c1 "$C2"
fi

echo
echo "overlay throughput: iperf3 -t $DURATION, one TCP stream, across two hosts"
printf '  %-34s %8s Gbit/s\n' "bare underlay   .116 -> .117" "$BARE" \
                              "kernel vxlan    kc1 -> kc2" "$KVX"
[ -n "$MESH" ] && printf '  %-34s %8s Gbit/s\n  %-34s %8s\n' \
                              "mesh            c1 -> c2" "$MESH_GBPS" \
                              "mesh / kernel vxlan" "$(ratio "$MESH_GBPS" "$KVX")"
echo "ping RTT, average of 20 echoes 50 ms apart"
printf '  %-34s %8s ms\n' "kernel vxlan    kc1 -> kc2" "$KVX_RTT"
[ -n "$MESH" ] && printf '  %-34s %8s ms\n  %-34s %8s\n' \
                              "mesh            c1 -> c2" "$MESH_RTT" \
                              "mesh / kernel vxlan" "$(ratio "$MESH_RTT" "$KVX_RTT")"
echo
finish
