#!/usr/bin/env bash
# network.sh: overlay networks are cluster-wide objects; VNI and subnet allocation.
#
#   mt-h116 .116          mt-h117 .117          mt-h118 .118
#   agent (founder)       agent                 agent
#   sees every change     network create ...    network create ...
#      |                     |  6 in parallel  +   |  6 in parallel
#  +---+---------------------+---------------------+---+
#  |          mt-br0 in mt-ul, 192.168.100.0/24        |
#  +---------------------------------------------------+
#
#   meshctl (root netns) -> unix socket of each agent; no container traffic here.

. "$(dirname "$0")/lib.sh"
need_bins
testbed_up
start_cluster

seen_on_all() { local id; for id in 116 117 118; do network_seen "$id" "$1" || return 1; done; }
gone_on_all() { local id; for id in 116 117 118; do lacks "$id" "$1" network ls || return 1; done; }
names() { mctl "$1" network ls --format json | jq -c '[.[].name] | sort'; }

# --- create on .117, seen everywhere within 1 s --------------------------------
ID=$(mctl 117 network create n1)
check "network create prints one non-empty line (the ID)" \
    test "$(printf '%s\n' "$ID" | grep -c .)" -eq 1
if wait_until 1 seen_on_all n1; then pass "n1 created on .117 listed on .116 and .118 (${WAITED} s)"
else fail "n1 created on .117 listed on .116 and .118 within 1 s"; fi

inspect_ok() {  # the inspect object has the documented fields and the created ID
    mctl 116 network inspect n1 | jq -e --arg id "$ID" \
        '.id == $id and .name == "n1" and .driver == "overlay" and (.vni | type) == "number"
         and (.subnet | type) == "string" and (.gateway | type) == "string"'
}
check "network inspect n1 on .116: id, name, driver overlay, vni, subnet, gateway" inspect_ok
ls_matches_inspect() {
    [ "$(mctl 118 network ls --format json | jq -cS '.[] | select(.name == "n1")')" = \
      "$(mctl 118 network inspect n1 | jq -cS .)" ]
}
check "network ls entry equals network inspect (on .118)" ls_matches_inspect
check "VNI of n1 is >= 4096" test "$(network_field 116 n1 vni)" -ge 4096

# subnet_is CIDR GATEWAY [/24 in 10/8]: CIDR is a network address and GATEWAY its
# first host; with the third argument, also a /24 inside 10.0.0.0/8.
subnet_is() {
    python3 - "$@" <<'EOF'
import ipaddress, sys
net = ipaddress.ip_network(sys.argv[1])          # strict: no host bits
gw = ipaddress.ip_address(sys.argv[2])
assert gw == net.network_address + 1, f"gateway {gw} is not the first host of {net}"
if len(sys.argv) > 3:
    assert net.prefixlen == 24, f"{net} is not a /24"
    assert net.subnet_of(ipaddress.ip_network("10.0.0.0/8")), f"{net} is not inside 10.0.0.0/8"
EOF
}
check "default subnet of n1 is a /24 inside 10.0.0.0/8, gateway its first host" \
    subnet_is "$(network_field 116 n1 subnet)" "$(network_field 116 n1 gateway)" default

# --- explicit subnet and gateway ----------------------------------------------
check "network create --subnet 10.20.0.0/16 n2" mctl 117 network create --subnet 10.20.0.0/16 n2
n2_is() { mctl 118 network inspect n2 | jq -e '.subnet == "10.20.0.0/16" and .gateway == "10.20.0.1"'; }
check "n2 has subnet 10.20.0.0/16, gateway 10.20.0.1 (seen on .118)" wait_until 1 n2_is
check "network create --subnet 10.30.0.0/24 --gateway 10.30.0.254 n4" \
    mctl 116 network create --subnet 10.30.0.0/24 --gateway 10.30.0.254 n4
# read-your-writes: a scheduler attaches right after it creates, on the same host
check "n4 readable on .116 as soon as create returned there" mctl 116 network inspect n4
n4_gw() { [ "$(network_field 116 n4 gateway)" = 10.30.0.254 ]; }
check "n4 has gateway 10.30.0.254" wait_until 1 n4_gw
three_vnis() { [ "$(mctl 116 network ls --format json | jq '[.[].vni] | unique | length')" -eq 3 ]; }
check "n1, n2, n4 have distinct VNIs" wait_until 1 three_vnis

# --- refusals: one line on stderr, non-zero, nothing left behind ---------------
before=$(names 116)
expect_error "overlapping subnet 10.20.5.0/24 refused" mctl 118 network create --subnet 10.20.5.0/24 n3
expect_error "overlapping supernet 10.0.0.0/8 refused" mctl 116 network create --subnet 10.0.0.0/8 n3
expect_error "duplicate name n1 refused" mctl 118 network create --subnet 10.40.0.0/24 n1
expect_error "bad CIDR 10.300.0.0/16 refused" mctl 116 network create --subnet 10.300.0.0/16 n5
expect_error "bad CIDR 10.50.0.0/33 refused" mctl 116 network create --subnet 10.50.0.0/33 n5
expect_error "bad CIDR 'nonsense' refused" mctl 116 network create --subnet nonsense n5
expect_error "gateway outside the subnet refused" mctl 116 network create --subnet 10.60.0.0/24 --gateway 10.61.0.1 n5
expect_error "a subnet in the hosts' own network (192.168.100.0/26: no host address, but their /24) refused" \
    mctl 117 network create --subnet 192.168.100.0/26 n5
check "  ... saying whose network it overlaps" grep -q "overlaps 192.168.100.0/24, the network of host" "$TMP/err.txt"
sleep 1
check "refused creates left nothing behind (network ls unchanged on all hosts)" \
    test "$(names 116)$(names 117)$(names 118)" = "$before$before$before"

# --- rm ------------------------------------------------------------------------
check "network rm n2 prints the name" test "$(mctl 118 network rm n2)" = n2
if wait_until 1 gone_on_all n2; then pass "n2 removed on .118 gone from .116 and .117 (${WAITED} s)"
else fail "n2 removed on .118 gone from .116 and .117 within 1 s"; fi
expect_error "network rm of an unknown name refused" mctl 116 network rm no-such-net
expect_error "network inspect of an unknown name refused" mctl 116 network inspect no-such-net
check "subnet of a removed network is free again" mctl 116 network create --subnet 10.20.0.0/16 n2b

# --- concurrent creation: 6 on .117 and 6 on .118 at the same moment ------------
# Every create blocks on a FIFO until all are started, then all go at once.
mkfifo "$TMP/go"
creators=()
for host in 117 118; do
    for i in 1 2 3 4 5 6; do
        n=par$host-$i
        { timeout 10 cat "$TMP/go" >/dev/null
          mctl "$host" network create "$n" >"$TMP/$n.out" 2>&1; echo $? >"$TMP/$n.rc"; } &
        creators+=($!); track $!
    done
done
sleep 0.5                                            # all 12 are blocked on the FIFO
timeout 5 bash -c ': >"$1"' _ "$TMP/go"              # go
for pid in "${creators[@]}"; do wait_until 25 gone "$pid"; wait "$pid"; done
PAR=$(for host in 117 118; do for i in 1 2 3 4 5 6; do echo "par$host-$i"; done; done)
failed=$(for n in $PAR; do [ "$(cat "$TMP/$n.rc" 2>/dev/null)" = 0 ] || echo "$n:$(head -c 120 "$TMP/$n.out")"; done)
if [ -z "$failed" ]; then pass "12 parallel creates (6 on .117, 6 on .118) all succeeded"
else fail "12 parallel creates all succeeded; failed: $failed"; fi

all_par_on() { [ "$(mctl "$1" network ls --format json | jq '[.[] | select(.name | startswith("par"))] | length')" -eq 12 ]; }
if wait_until 1 all_par_on 116; then pass "all 12 listed on .116 (${WAITED} s)"
else fail "all 12 listed on .116 within 1 s (got $(mctl 116 network ls --format json | jq '[.[] | select(.name | startswith("par"))] | length'))"; fi

mctl 116 network ls --format json >"$TMP/ls116.json"
distinct_and_disjoint() {
    python3 - "$TMP/ls116.json" <<'EOF'
import ipaddress, itertools, json, sys
nets = json.load(open(sys.argv[1]))
vnis = [n["vni"] for n in nets]
assert len(vnis) == len(set(vnis)), f"VNIs not distinct: {sorted(vnis)}"
assert all(v >= 4096 for v in vnis), f"VNI below 4096: {sorted(vnis)}"
subnets = [(n["name"], ipaddress.ip_network(n["subnet"])) for n in nets]
for (a, x), (b, y) in itertools.combinations(subnets, 2):
    assert not x.overlaps(y), f"{a} {x} overlaps {b} {y}"
print(f"{len(nets)} networks, VNIs {sorted(vnis)}")
EOF
}
check "on .116: all VNIs distinct, no two subnets overlap" distinct_and_disjoint
ids_kept() {  # the ID each create printed is the ID .116 lists for that name
    local n
    for n in $PAR; do
        [ "$(jq -r --arg n "$n" '.[] | select(.name == $n) | .id' "$TMP/ls116.json")" = "$(cat "$TMP/$n.out")" ] ||
            { echo "$n: printed $(cat "$TMP/$n.out")"; return 1; }
    done
}
check "each ID a parallel create printed is the ID listed on .116" ids_kept
view() { mctl "$1" network ls --format json | jq -cS 'sort_by(.name)'; }
same_views() { [ "$(view 116)" = "$(view 117)" ] && [ "$(view 116)" = "$(view 118)" ]; }
check "all three hosts list the same networks, VNIs and subnets" wait_until 2 same_views

# --- special ranges, and a subnet that is a host's own LAN ---------------------------
expect_error "a loopback subnet is refused" mctl 116 network create lo1 --subnet 127.5.0.0/16
expect_error "a link-local subnet is refused" mctl 116 network create ll1 --subnet 169.254.9.0/24
# .116 has an address in 10.77.0.0/24 on another NIC (here: a second one on
# eth0): an overlay there must not take that LAN from .116, while hosts
# without such an address route it to their TUN as usual.
ip -n mt-h116 addr add 10.77.0.5/24 dev eth0 || die "setup: 10.77.0.5 on .116"
mctl 116 network create lan --subnet 10.77.0.0/24 >/dev/null || die "setup: network create lan"
routed() { ip -n "mt-h$1" rule list | grep -q 'to 10.77.0.0/24 lookup 4789000'; }
not_routed() { local r; r=$(ip -n "mt-h$1" rule list) && ! grep -q 'to 10.77.0.0/24 lookup 4789000' <<<"$r"; }
check ".117 routes the lan subnet to its TUN" wait_until 3 routed 117
check "  ... .116, whose own address is in it, does not" not_routed 116
check "  ... and .116 still has its route to 10.77.0.0/24 on eth0" \
    bash -c "ip -n mt-h116 route get 10.77.0.9 | grep -q 'dev eth0'"

finish
