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
#   (a) bare underlay   iperf3 .116 -> .117, one stream
#   (b) kernel vxlan    iperf3 kc1 <-> kc2,  ping kc1 -> kc2
#   (c) mesh            iperf3 c1 <-> c2,    ping c1 -> c2
#
#   (b) and (c) each run four iperf3 cases and the ping:
#     1x-fwd  one stream, 1 -> 2          4x-fwd  -P 4, 1 -> 2
#     1x-rev  one stream, 2 -> 1 (-R)     4x-rev  -P 4, 2 -> 1 (-R)
#     rtt     20 echoes 50 ms apart, the average
#   Each case runs ROUNDS rounds of one kernel run and one mesh run, the kernel
#   first in odd rounds and the mesh first in even ones (lib.sh: in_rounds), so
#   a slow phase of this shared machine weighs on both sides alike. Shown: each
#   side's median, the median of the rounds' ratios mesh / kernel vxlan
#   (throughput: higher is better; RTT: lower is better) and each round's.
#   Throughput is the receiver's sum (iperf3 -J end.sum_received). Next to it,
#   the CPU seconds (utime + stime from /proc/PID/stat, / CLK_TCK) both mesh-agent
#   processes used per mesh run. The last lines are machine-readable, one per case:
#     RESULT case=1x-fwd kernel=GBPS mesh=GBPS ratio=R cpu=S rounds=R,R,R
#     RESULT case=rtt kernel=MS mesh=MS ratio=R rounds=R,R,R
#
# Usage: scripts/bench-overlay.sh [--smoke] [--kernel-only] [--busy-poll US]
#   DURATION=10 (seconds per iperf3 run), ROUNDS=3; --smoke: 2 s runs, 2 rounds,
#   to keep the script working;
#   --kernel-only: (a) and (b) only, no mesh binaries needed (mesh columns n/a);
#   --busy-poll US: the agents run with `--busy-poll US` (default: the agent's own,
#   200 us), to see what polling longer buys in RTT and costs in CPU (the ping
#   row's CPU column: both agents' CPU seconds during the 1 s of pings).

. "$(dirname "$0")/../netns-tests/lib.sh"

DURATION=${DURATION:-10}
MESH=1
BUSY_POLL=default
usage() { echo "usage: $0 [--smoke] [--kernel-only] [--busy-poll US]" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) DURATION=2 ROUNDS=${ROUNDS:-2} ;;
        --kernel-only) MESH= ;;
        --busy-poll) [[ ${2:-} =~ ^[0-9]+$ ]] || usage; BUSY_POLL=$2; AGENT_ARGS="--busy-poll $2"; shift ;;
        *) usage ;;
    esac
    shift
done
bench_rounds
[ -n "$MESH" ] && need_bins

testbed_up 116 117

# iperf_gbps SERVER_NS SERVER_IP CLIENT_NS [IPERF3_ARGS...]: TCP for DURATION s
# (one stream unless -P N; client -> server unless -R); the receiver's sum in
# Gbit/s. On failure iperf3's own error goes to stderr.
iperf_gbps() {
    local srv=$1 ip=$2 cli=$3 spid; shift 3
    ip netns exec "$srv" timeout $((DURATION + 20)) iperf3 -s -1 -B "$ip" >/dev/null 2>&1 </dev/null &
    spid=$!; track "$spid"
    wait_until 5 listening "$srv" 5201 || { stop_pid "$spid"; return 1; }
    ip netns exec "$cli" timeout $((DURATION + 15)) iperf3 -c "$ip" -t "$DURATION" -J "$@" \
        >"$TMP/iperf.json" 2>&1 </dev/null
    wait_until 5 gone "$spid"; stop_pid "$spid"
    jq -e '.end.sum_received.bits_per_second / 1e9' "$TMP/iperf.json" 2>/dev/null |
        awk '$1 > 0 { printf "%.2f\n", $1; ok = 1 } END { exit !ok }' && return 0
    local err; err=$(jq -r '.error // empty' "$TMP/iperf.json" 2>/dev/null) || err=$(cat "$TMP/iperf.json")
    echo "    iperf3 -c $ip $*: ${err:0:200}" >&2
    return 1
}

# rtt_ms NS IP: average RTT of 20 echoes 50 ms apart.
rtt_ms() {
    ip netns exec "$1" ping -n -q -c 20 -i 0.05 -W 1 "$2" 2>/dev/null |
        awk -F/ '/^rtt/ { print $5; ok = 1 } END { exit !ok }'
}

# measure VAR LABEL CMD...: VAR=$(CMD), or a FAIL line and VAR=0.
measure() {
    local var=$1 label=$2 out; shift 2
    if out=$("$@"); then printf -v "$var" %s "$out"; else printf -v "$var" 0; fail "$label: no result"; fi
}

# --- (b) kernel VXLAN + bridge, its own VNI 100 on UDP 4790 ---------------------
kernel_overlay_up 116 117
kport mt-kc1 116 10.199.0.1
kport mt-kc2 117 10.199.0.2
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
    mesh_pids 116 117
fi

# --- measure --------------------------------------------------------------------
# Each case in ROUNDS rounds, kernel vxlan and mesh interleaved (lib.sh: in_rounds).
CASES=(1x-fwd 1x-rev 4x-fwd 4x-rev rtt)
declare -A CASE_ARGS=([1x-fwd]="" [1x-rev]="-R" [4x-fwd]="-P 4" [4x-rev]="-P 4 -R")
declare -A CASE_LABEL=([1x-fwd]="1 stream   c1->c2" [1x-rev]="1 stream   c2->c1 (-R)"
                       [4x-fwd]="4 streams  c1->c2" [4x-rev]="4 streams  c2->c1 (-R)"
                       [rtt]="ping RTT   c1->c2")
declare -A KVALS=() MVALS=() RATIOS=()

# measure_side kernel|mesh CASE ROUND (for in_rounds): Gbit/s, or the RTT in ms
# for rtt (for the mesh, with the agents' CPU: lib.sh ticked). Without mesh
# binaries the mesh is n/a.
measure_side() {
    local side=$1 c=$2 args
    read -ra args <<<"${CASE_ARGS[$c]:-}"
    if [ "$side" = kernel ]; then
        if [ "$c" = rtt ]; then rtt_ms mt-kc1 10.199.0.2
        else iperf_gbps mt-kc2 10.199.0.2 mt-kc1 "${args[@]}"; fi
    elif [ -z "$MESH" ]; then echo n/a
    elif [ "$c" = rtt ]; then ticked "$c" rtt_ms mt-c1 "$C2"
    else ticked "$c" iperf_gbps mt-c2 "$C2" mt-c1 "${args[@]}"; fi
}

measure BARE "bare underlay iperf3" iperf_gbps mt-h117 "$UNDERLAY.117" mt-h116
for c in "${CASES[@]}"; do in_rounds "$c"; done

# with_unit VALUE UNIT: "VALUE UNIT", or n/a as is.
with_unit() { if [ "$1" = n/a ]; then echo n/a; else echo "$1 $2"; fi; }
row() { printf '  %-24s %-13s %-13s %-6s %-20s %s\n' "$@"; }

echo
echo "overlay across two hosts: iperf3 TCP -t $DURATION (receiver sum), ping RTT (average"
echo "of 20 echoes 50 ms apart); $ROUNDS rounds per case, kernel vxlan and mesh interleaved"
echo "(kernel first in odd rounds); kernel, mesh: medians of the rounds; ratio: median of"
echo "the rounds' mesh / kernel vxlan; agents' --busy-poll: $BUSY_POLL"
printf '  %-24s %s\n' "bare underlay .116->.117" "$(with_unit "$BARE" Gbit/s)   (1 stream, no overlay)"
row case "kernel vxlan" mesh ratio "rounds' ratios" "mesh agents CPU s/run"
declare -A RES=()
for c in "${CASES[@]}"; do
    if [ "$c" = rtt ]; then RES[$c]=$(round_result "$c" %.3f) unit=ms
    else RES[$c]=$(round_result "$c" %.2f) unit=Gbit/s; fi
    read -r k m r <<<"${RES[$c]}"
    row "${CASE_LABEL[$c]}" "$(with_unit "$k" $unit)" "$(with_unit "$m" $unit)" "$r" \
        "${RATIOS[$c]// /,}" "$(cpu_per_run "$c")"
done
echo
for c in "${CASES[@]}"; do
    read -r k m r <<<"${RES[$c]}"
    if [ "$c" = rtt ]; then
        echo "RESULT case=rtt kernel=$k mesh=$m ratio=$r rounds=${RATIOS[$c]// /,}"
    else
        echo "RESULT case=$c kernel=$k mesh=$m ratio=$r cpu=$(cpu_per_run "$c") rounds=${RATIOS[$c]// /,}"
    fi
done
finish
