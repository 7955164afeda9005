#!/usr/bin/env bash
# overlay.sh: containers on three hosts share one L2 overlay; networks are isolated.
#
#   mt-c1 eth0          mt-c2 eth0          mt-c3 eth0       network demo
#                       mt-c4 eth0          mt-c5 eth0       network demo2 (c4: --ip)
#      | TAP               | TAP               | TAP
#   mt-h116 .116        mt-h117 .117        mt-h118 .118
#   mesh-agent          mesh-agent          mesh-agent
#      |  eth0             |  eth0             |  eth0     VXLAN UDP 4789, VNI per network
#  +---+-------------------+-------------------+---+
#  |       mt-br0 in mt-ul, 192.168.100.0/24       |
#  +-----------------------------------------------+

. "$(dirname "$0")/lib.sh"
need_bins
testbed_up
start_cluster

declare -A IP HOST=([c1]=116 [c2]=117 [c3]=118 [c4]=117 [c5]=118)

mctl 116 network create demo >/dev/null || die "setup: network create demo"
wait_until 1 network_seen 118 demo || die "setup: demo not seen on .118"
GW=$(network_field 116 demo gateway)
PREFIX=$(network_field 116 demo subnet | cut -d/ -f2)

for c in c1 c2 c3; do
    mk_container "$c"
    IP[$c]=$(attach "${HOST[$c]}" "$c" demo) || die "setup: attach $c on .${HOST[$c]}"
    pass "attach $c on .${HOST[$c]}: ${IP[$c]}"
done
for id in 116 117 118; do
    if wait_until 1 container_count "$id" 3; then pass "container ls on .$id lists c1 c2 c3 (${WAITED} s)"
    else fail "container ls on .$id lists c1 c2 c3 within 1 s"; fi
done

# --- what attach set up in each container -------------------------------------
mtu_is()   { [ "$(ip -n "$1" -j link show eth0 | jq '.[0].mtu')" -eq "$2" ]; }
addr_is()  { ip -n "$1" -j addr show eth0 | jq -e --arg a "$2" --argjson p "$3" \
                 'any(.[0].addr_info[]; .family == "inet" and .local == $a and .prefixlen == $p)'; }
route_is() { ip -n "$1" -j route show default | jq -e --arg g "$2" '.[0].gateway == $g and .[0].dev == "eth0"'; }
lo_up()    { ip -n "$1" -j link show lo | jq -e '.[0].flags | index("UP")'; }
mac_is_listed() {  # eth0's MAC is the one container ls (on .116) gives for NAME
    [ "$(ip -n "mt-$1" -j link show eth0 | jq -r '.[0].address')" = "$(containers 116 "$1" | jq -r .mac)" ]
}
listed_as() {      # container ls on .116: NAME with network demo, its IP and host address
    containers 116 "$1" | jq -e --arg ns "mt-$1" --arg ip "$2" --arg a "$3" \
        '.netns == $ns and .network == "demo" and .ip == $ip and .address == $a and (.mac | test("^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"))'
}
for c in c1 c2 c3; do
    check "$c: eth0 MTU 1450" mtu_is "mt-$c" 1450
    check "$c: eth0 has ${IP[$c]}/$PREFIX" addr_is "mt-$c" "${IP[$c]}" "$PREFIX"
    check "$c: default route via gateway $GW on eth0" route_is "mt-$c" "$GW"
    check "$c: lo is up" lo_up "mt-$c"
    check "$c: eth0 MAC matches container ls" mac_is_listed "$c"
    check "$c: container ls entry (netns, network, ip, address .${HOST[$c]})" \
        listed_as "$c" "${IP[$c]}" "$UNDERLAY.${HOST[$c]}"
done
check "c1 c2 c3 have distinct IPs" test "$(printf '%s\n' "${IP[c1]}" "${IP[c2]}" "${IP[c3]}" | sort -u | wc -l)" -eq 3

# --- reachability: every ordered pair, ICMP and TCP ----------------------------
for a in c1 c2 c3; do
    for b in c1 c2 c3; do
        [ "$a" = "$b" ] && continue
        check "ping $a (.${HOST[$a]}) -> $b (.${HOST[$b]})" ping_ok "mt-$a" "${IP[$b]}"
    done
done
for a in c1 c2 c3; do
    for b in c1 c2 c3; do
        [ "$a" = "$b" ] && continue
        check "tcp $a -> $b" tcp_ok "mt-$a" "mt-$b" "${IP[$b]}"
    done
done

# bulk_ok SRC DST: 4 MB over TCP arrive intact (full-size segments through VXLAN).
bulk_ok() {
    local port=$((20000 + RANDOM % 20000)) lpid
    head -c 4000000 /dev/urandom >"$TMP/bulk.in"
    ip netns exec "mt-$2" timeout 20 nc -n -l "${IP[$2]}" "$port" >"$TMP/bulk.out" </dev/null &
    lpid=$!; track "$lpid"
    wait_until 3 listening "mt-$2" "$port" || return 1
    ip netns exec "mt-$1" timeout 15 nc -n -N -w 5 "${IP[$2]}" "$port" <"$TMP/bulk.in" >/dev/null
    wait_until 5 gone "$lpid"; stop_pid "$lpid"
    cmp "$TMP/bulk.in" "$TMP/bulk.out"
}
check "4 MB over TCP c1 -> c3 arrive intact" bulk_ok c1 c3

# A peer that asks for a small MSS: c1's super-frames then hold ~350 segments,
# more than one batch of headers; they must go out whole, in several sends,
# not be dropped (which TCP would only show as retransmissions).
retrans() { ip netns exec "mt-$1" awk '$1 == "Tcp:" && $13 ~ /^[0-9]+$/ { print $13 }' /proc/net/snmp; }
no_headroom() {   # no_headroom ID: the agent's count of frames dropped for want of header room
    curl -sf --max-time 5 --unix-socket "$TMP/h$1.sock" http://agent/v1/stats | jq -e .no_headroom
}
small_mss_ok() {
    local before after drops0 drops1
    ip netns exec mt-c3 ip route add "${IP[c1]}/32" dev eth0 advmss 200 || return 1
    before=$(retrans c1); drops0=$(no_headroom "${HOST[c1]}") || return 1
    bulk_ok c1 c3 || { ip netns exec mt-c3 ip route del "${IP[c1]}/32"; return 1; }
    after=$(retrans c1); drops1=$(no_headroom "${HOST[c1]}") || return 1
    ip netns exec mt-c3 ip route del "${IP[c1]}/32"
    echo "c1 retransmitted $((after - before)) segments at MSS 200; no_headroom drops $drops0 -> $drops1"
    # 4 MB at MSS 200 is ~21000 segments; a dropped super-frame costs ~350.
    [ $((after - before)) -lt 300 ] && [ "$drops1" = "$drops0" ]
}
check "4 MB c1 -> c3 at a peer MSS of 200: intact, no super-frame dropped, under 300 retransmissions" \
    small_mss_ok
note "$(cat "$TMP/check.out")"

# --- a container sends from its own address only ------------------------------
# c1 takes c2's address too and pings c3 from it: with its own MAC, c2's IP
# (a forged reply or RST in another task's name). The agent drops it, counted.
spoof_dropped() {
    local before after
    before=$(agent_stat "${HOST[c1]}" spoofed) || return 1
    ip -n mt-c1 addr add "${IP[c2]}/32" dev eth0 || return 1
    ip netns exec mt-c1 ping -n -c 3 -i 0.2 -W 1 -I "${IP[c2]}" "${IP[c3]}"
    local rc=$?
    ip -n mt-c1 addr del "${IP[c2]}/32" dev eth0
    after=$(agent_stat "${HOST[c1]}" spoofed) || return 1
    echo "ping from c2's address: rc $rc; spoofed drops on .${HOST[c1]}: $before -> $after"
    [ "$rc" -ne 0 ] && [ "$after" -ge $((before + 3)) ]
}
check "c1 sending from c2's address reaches no one (dropped as spoofed)" spoof_dropped
note "$(tail -1 "$TMP/check.out")"
check "  ... and from its own, c1 -> c3 still answers" nsx mt-c1 ping -n -c 1 -W 2 "${IP[c3]}"

# --- MTU: 1422 + 28 = 1450 fits with DF set, 1423 does not ---------------------
check "ping -M do -s 1422 c1 -> c3 passes" nsx mt-c1 ping -n -c 1 -W 2 -M "do" -s 1422 "${IP[c3]}"
check_not "ping -M do -s 1423 c1 -> c3 fails" nsx mt-c1 ping -n -c 1 -W 2 -M "do" -s 1423 "${IP[c3]}"

# --- isolation: demo2 is a separate L2 segment ---------------------------------
# Overlapping subnets are refused (network.sh), so the same IP cannot live in two
# networks here; c4 takes demo2's address with c1's host part, given with --ip.
mctl 117 network create demo2 >/dev/null || die "setup: network create demo2"
wait_until 1 network_seen 118 demo2 || die "setup: demo2 not seen on .118"
IP[c4]=$(python3 -c 'import ipaddress, sys
demo, demo2 = ipaddress.ip_network(sys.argv[1]), ipaddress.ip_network(sys.argv[2])
print(demo2.network_address + (int(ipaddress.ip_address(sys.argv[3])) - int(demo.network_address)))' \
    "$(network_field 116 demo subnet)" "$(network_field 116 demo2 subnet)" "${IP[c1]}")
mk_container c4
check "attach c4 on .117 to demo2 with --ip ${IP[c4]}" \
    test "$(attach 117 c4 demo2 --ip "${IP[c4]}")" = "${IP[c4]}"
mk_container c5
IP[c5]=$(attach 118 c5 demo2) || die "setup: attach c5 on .118 to demo2"
pass "attach c5 on .118 to demo2: ${IP[c5]}"
check "demo2 gateway is c4's default route" route_is mt-c4 "$(network_field 117 demo2 gateway)"
wait_until 1 container_count 118 5
check "ping c5 (.118) -> c4 (.117) in demo2" ping_ok mt-c5 "${IP[c4]}"
check "tcp c4 -> c5 in demo2" tcp_ok mt-c4 mt-c5 "${IP[c5]}"
check "ping c4 -> c2 (demo) fails" ping_fails mt-c4 "${IP[c2]}"
check "ping c4 -> c3 (demo) fails" ping_fails mt-c4 "${IP[c3]}"
check "ping c1 -> c4 (demo2) fails" ping_fails mt-c1 "${IP[c4]}"
check "ping c2 -> c4 (demo2) fails" ping_fails mt-c2 "${IP[c4]}"
check "ping c2 -> c5 (demo2) fails" ping_fails mt-c2 "${IP[c5]}"
check "demo still works after demo2: ping c2 -> c1" ping_ok mt-c2 "${IP[c1]}"

# --- an underlay that holds its packets does not stall the host's own traffic --
# .116's eth0 lets 1 Mbit/s through and queues the rest (tbf, 10 MB); c1 floods
# c3 over it, which fills the agent's socket buffer. Meanwhile l1 and l2, two more containers on .116,
# ping each other: the dataplane thread that switches them must not be stuck
# in a send (it waits 20 ms at most for room, then drops and counts).
for c in l1 l2; do
    mk_container "$c"
    IP[$c]=$(attach 116 "$c" demo) || die "setup: attach $c on .116"
done
wait_until 5 ping_ok mt-l1 "${IP[l2]}" || die "setup: l1 -> l2 does not ping"
tc -n mt-h116 qdisc add dev eth0 root tbf rate 1mbit burst 32kbit limit 10000000 ||
    die "setup: a 1 Mbit/s queue on .116's eth0"
ip netns exec mt-c1 timeout 5 python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); end = time.time() + 4; b = bytes(1400)
while time.time() < end:
    try: s.sendto(b, (sys.argv[1], 9))
    except OSError: pass' "${IP[c3]}" &
FLOOD=$!; track "$FLOOD"
sleep 0.5
held_ok() {
    local out; out=$(ip netns exec mt-l1 ping -n -c 10 -i 0.2 -W 1 "${IP[l2]}" 2>&1)
    echo "$out" | tail -2
    echo "$out" | grep -q ' 0% packet loss' || return 1
    # rtt min/avg/max/mdev = a/b/c/d ms: the worst under 300 ms
    awk -F'/' '/^rtt/ { exit !($6 + 0 < 300) }' <<<"$out"
}
check "while .116's underlay holds its packets, l1 -> l2 on .116 still answer at once (no loss, under 300 ms)" held_ok
note "$(tail -1 "$TMP/check.out")"
wait "$FLOOD" 2>/dev/null
tc -n mt-h116 qdisc del dev eth0 root
check "  ... and once the underlay lets go, c1 -> c3 answers again" wait_until 10 ping_ok mt-c1 "${IP[c3]}"

finish
