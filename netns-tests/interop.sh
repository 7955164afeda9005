#!/usr/bin/env bash
# interop.sh: a plain Linux VXLAN host talks to mesh containers on the same VNI.
#
#   mt-c1 eth0          mt-c2 eth0                             mt-kc eth0 (.200, MTU 1450)
#      | TAP               | TAP                                  | veth
#   mt-h116 .116        mt-h117 .117        mt-h118 .118        mt-h120 .120
#   mesh-agent          mesh-agent          mesh-agent          mt-br0 -- mt-vx0 (kernel
#      |                   |                   |                   |     vxlan, VNI of demo,
#      |                   |                   |                   |     dstport 4789,
#      |                   |                   |                   |     nolearning, static
#      |                   |                   |                   |     fdb; tcpdump here)
#  +---+-------------------+-------------------+-------------------+---+
#  |              mt-br0 in mt-ul, 192.168.100.0/24                    |
#  +-------------------------------------------------------------------+
#
#   meshctl endpoint add --network demo --ip <kc> --mac <kc mac> --vtep .120
#
#   The agents here run with --busy-poll 0 (their dataplanes sleep as soon as
#   they run out of work; every other suite runs the default poll), so that
#   way of waiting carries the same traffic checks.

. "$(dirname "$0")/lib.sh"
need_bins
testbed_up 116 117 118 120
AGENT_ARGS="--busy-poll 0"
start_cluster
# polls_none ID...: each of these hosts' agents was started with --busy-poll 0.
polls_none() {
    local id
    for id in "$@"; do
        tr '\0' ' ' <"/proc/${AGENT_PID[$id]}/cmdline" | grep -q -- '--busy-poll 0 ' || return 1
    done
}
check "the agents run with --busy-poll 0" polls_none 116 117 118

mctl 116 network create demo >/dev/null || die "setup: network create demo"
wait_until 1 network_seen 117 demo || die "setup: demo not seen on .117"
VNI=$(network_field 116 demo vni)
SUBNET=$(network_field 116 demo subnet)
GW=$(network_field 116 demo gateway)
KC=$(python3 -c 'import ipaddress, sys; print(ipaddress.ip_network(sys.argv[1]).network_address + 200)' "$SUBNET")
note "demo: VNI $VNI, subnet $SUBNET, kernel container at $KC"

mk_container c1
mk_container c2
C1=$(attach 116 c1 demo) || die "setup: attach c1 on .116"
C2=$(attach 117 c2 demo) || die "setup: attach c2 on .117"
wait_until 1 container_count 116 2 || die "setup: .116 does not list c1 and c2"

# --- the kernel side: vxlan + bridge in mt-h120, container mt-kc -----------------
ip -n mt-h120 link add mt-vx0 type vxlan id "$VNI" dstport 4789 local "$UNDERLAY.120" dev eth0 nolearning
ip -n mt-h120 link add mt-br0 type bridge
ip -n mt-h120 link set mt-vx0 master mt-br0 up
ip -n mt-h120 link set mt-br0 up
mk_ns mt-kc
ip -n mt-h120 link add mt-kc mtu 1450 type veth peer name eth0 netns mt-kc mtu 1450
ip -n mt-h120 link set mt-kc master mt-br0 up
ip -n mt-kc addr add "$KC/${SUBNET#*/}" dev eth0
ip -n mt-kc link set eth0 up
# veth keeps a TCP checksum "to be filled in by the NIC" through vxlan and across
# namespaces, so the agent's UDP socket would get inner segments with no checksum.
# A real NIC fills it in; here the kernel container computes it itself.
nsx mt-kc ethtool -K eth0 tx off >/dev/null
ip -n mt-kc route add default via "$GW"
KCMAC=$(ip -n mt-kc -j link show eth0 | jq -r '.[0].address')

# Static fdb: every mesh container's MAC behind its host, and all-zeros (broadcast,
# i.e. ARP) to .116, whose agent answers ARP from its tables.
while read -r mac addr; do
    bridge -n mt-h120 fdb append "$mac" dev mt-vx0 dst "$addr"
done < <(containers 116 | jq -r '.[] | select(.network == "demo") | "\(.mac) \(.address)"')
bridge -n mt-h120 fdb append 00:00:00:00:00:00 dev mt-vx0 dst "$UNDERLAY.116"
note "fdb of mt-vx0 in mt-h120:"; bridge -n mt-h120 fdb show dev mt-vx0 | grep dst | sed 's/^/#   /'

check "endpoint add --network demo --ip $KC --mac $KCMAC --vtep $UNDERLAY.120" \
    mctl 116 endpoint add --network demo --ip "$KC" --mac "$KCMAC" --vtep "$UNDERLAY.120"

# --- traffic both ways, ICMP and TCP ------------------------------------------
check "ping kc -> c1 (.116)" wait_until 5 ping_ok mt-kc "$C1"
check "ping kc -> c2 (.117)" ping_ok mt-kc "$C2"
check "ping c1 -> kc" ping_ok mt-c1 "$KC"
check "ping c2 -> kc (endpoint added on .116, used from .117)" wait_until 2 ping_ok mt-c2 "$KC"
check "tcp kc -> c1" tcp_ok mt-kc mt-c1 "$C1"
check "tcp c1 -> kc" tcp_ok mt-c1 mt-kc "$KC"
check "tcp kc -> c2" tcp_ok mt-kc mt-c2 "$C2"
check "tcp c2 -> kc" tcp_ok mt-c2 mt-kc "$KC"

# --- on the wire: VNI and inner ICMP as Wireshark decodes them --------------------
nsx mt-h120 timeout 15 tcpdump -i eth0 -n -U -c 8 -w "$TMP/vxlan.pcap" udp port 4789 2>"$TMP/tcpdump.err" &
TCPDUMP=$!; track "$TCPDUMP"
wait_until 5 grep -q "listening on" "$TMP/tcpdump.err" || fail "tcpdump did not start: $(cat "$TMP/tcpdump.err")"
nsx mt-kc ping -n -q -c 4 -i 0.2 -W 1 "$C1" >/dev/null
wait_until 5 gone "$TCPDUMP"; stop_pid "$TCPDUMP"
tshark -r "$TMP/vxlan.pcap" -d udp.port==4789,vxlan -T fields -e vxlan.vni -e icmp.type \
    >"$TMP/tshark.txt" 2>/dev/null
sed 's/^/#   vni, icmp.type: /' "$TMP/tshark.txt"
check "pcap holds VXLAN packets" test -s "$TMP/tshark.txt"
check "every VXLAN packet carries demo's VNI $VNI" \
    test "$(cut -f1 "$TMP/tshark.txt" | sort -u)" = "$VNI"
check "inner ICMP echo request (type 8) on the wire" grep -qP "^$VNI\t8$" "$TMP/tshark.txt"
check "inner ICMP echo reply (type 0) on the wire" grep -qP "^$VNI\t0$" "$TMP/tshark.txt"

# --- endpoint rm: the kernel container is unreachable again ----------------------
check "endpoint rm --network demo --ip $KC" mctl 116 endpoint rm --network demo --ip "$KC"
check "ping c1 -> kc fails after endpoint rm" wait_until 3 ping_fails mt-c1 "$KC"

finish
