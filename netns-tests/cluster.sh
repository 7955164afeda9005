#!/usr/bin/env bash
# cluster.sh: found, join, membership, failure detection, token checks.
#
#   mt-h116 .116       mt-h117 .117       mt-h118 .118       mt-h119 .119
#   agent (founder)    agent --join .116  agent --join .116  agent --join .116
#                                         (killed: Down)     wrong / no token
#      |                  |                  |                  |
#  +---+------------------+------------------+------------------+---+
#  |                 mt-br0 in mt-ul, 192.168.100.0/24              |
#  +----------------------------------------------------------------+
#
#   meshctl (root netns) -> unix socket of each agent

. "$(dirname "$0")/lib.sh"
need_bins
# Agents start with a soft limit on open files below the hard one, as is
# usual (1024), to see that they raise it.
ulimit -Sn 1024 || die "setup: ulimit -Sn 1024"
[ "$(ulimit -Hn)" != 1024 ] || die "setup: the hard limit on open files is 1024 already"
testbed_up 116 117 118 119
HOSTS=(116 117 118)

# --- found and join: all Ready within 5 s, as every host sees it -------------
start_agent 116
TOKEN=$(mctl 116 cluster join-token)
check "join-token prints one non-empty line" \
    test "$(printf '%s\n' "$TOKEN" | grep -c .)" -eq 1
start_agent 117 --join "$UNDERLAY.116" --join-token "$TOKEN"
start_agent 118 --join "$UNDERLAY.116" --join-token "$TOKEN"
for id in "${HOSTS[@]}"; do
    if wait_until 5 ready_count "$id" 3; then pass "node ls on .$id: 3 nodes Ready (${WAITED} s)"
    else fail "node ls on .$id: 3 nodes Ready within 5 s: $(node_statuses "$id" | tr '\n' ' ')"; fi
done

# The agent raises its open files limit to the hard one (each container costs
# descriptors: TAP, DNS sockets, connections).
nofile_raised() {
    awk '/^Max open files/ { print "soft", $4, "hard", $5; exit !($4 == $5) }' "/proc/${AGENT_PID[116]}/limits"
}
check "the agent's soft limit on open files is its hard limit" nofile_raised

# self_is ID: node ls on .ID marks exactly one node self, the one with .ID's address.
self_is() {
    mctl "$1" node ls --format json |
        jq -e --arg a "$UNDERLAY.$1" '[.[] | select(.self)] | length == 1 and .[0].address == $a'
}
for id in "${HOSTS[@]}"; do check "node ls on .$id marks .$id (only) as self" self_is "$id"; done

# addresses_are ID: node ls on .ID lists exactly the three advertise addresses.
addresses_are() {
    [ "$(mctl "$1" node ls --format json | jq -c '[.[].address] | sort')" = \
      '["192.168.100.116","192.168.100.117","192.168.100.118"]' ]
}
check "node ls lists the three advertise addresses" addresses_are 116
ids_distinct() { mctl 116 node ls --format json | jq -e '[.[].id | strings | select(length > 0)] | unique | length == 3'; }
check "node ids are distinct and non-empty" ids_distinct

# --- text output: header, '*' on self -----------------------------------------
mctl 116 node ls >"$TMP/node-ls.txt" 2>&1
header_ok() { head -n 1 "$TMP/node-ls.txt" | grep -Eq '^ID[[:space:]]+HOSTNAME[[:space:]]+ADDRESS[[:space:]]+STATUS[[:space:]]*$'; }
check "text node ls header is ID HOSTNAME ADDRESS STATUS" header_ok
star_ok() { [ "$(tail -n +2 "$TMP/node-ls.txt" | grep -F '*' | grep -c "$UNDERLAY.116")" -eq 1 ] &&
            [ "$(tail -n +2 "$TMP/node-ls.txt" | grep -cF '*')" -eq 1 ]; }
check "text node ls: '*' on the .116 row only" star_ok
check "text node ls: 3 rows, all Ready" \
    test "$(tail -n +2 "$TMP/node-ls.txt" | grep -cw Ready)" -eq 3
sed 's/^/#   /' "$TMP/node-ls.txt"

# --- failure detection: kill .118, Down on .116 within 10 s -------------------
status_of() {  # status_of ID ADDR STATUS: node ls on .ID shows ADDR with STATUS
    mctl "$1" node ls --format json | jq -e --arg a "$2" --arg s "$3" 'any(.[]; .address == $a and .status == $s)'
}
kill_agent 118
if wait_until 10 status_of 116 "$UNDERLAY.118" Down; then pass ".118 killed: Down on .116 (${WAITED} s)"
else fail ".118 killed: Down on .116 within 10 s: $(node_statuses 116 | tr '\n' ' ')"; fi
check ".118 killed: Down on .117 too" wait_until 2 status_of 117 "$UNDERLAY.118" Down
others_ready() {
    mctl 116 node ls --format json |
        jq -e '[.[] | select(.status == "Ready") | .address] | sort == ["192.168.100.116", "192.168.100.117"]'
}
check ".116 and .117 stay Ready" others_ready

# --- a second agent on a host, or on a state directory, is refused first ------
# second_refused MSG NS STATE [ARGS...]: an agent in NS with state dir STATE
# exits non-zero within 10 s with one line on stderr naming another agent.
second_refused() {
    local msg=$1 ns=$2 state=$3 rc; shift 3
    RUST_LOG=off timeout 10 ip netns exec "$ns" "$BIN/mesh-agent" "$@" --state-dir "$state" \
        >/dev/null 2>"$TMP/second.err" </dev/null
    rc=$?
    if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ]; then fail "$msg: exit $rc"
    elif [ "$(grep -c . "$TMP/second.err")" -ne 1 ] || ! grep -q 'another mesh-agent' "$TMP/second.err"; then
        fail "$msg: $(head -c 300 "$TMP/second.err")"
    else pass "$msg: $(cat "$TMP/second.err")"; fi
}
ATT116=$(cat "$TMP/h116/attachments.json" 2>/dev/null)
IDS_BEFORE=$(mctl 116 node ls --format json | jq -c '[.[].id] | sort')
second_refused "a second agent on .116 (own --api, --state-dir and ports) refused" mt-h116 "$TMP/h116b" \
    --advertise-addr "$UNDERLAY.116" --api "$TMP/h116b.sock" --gossip-port 7950 --vxlan-port 4790 \
    --join "$UNDERLAY.117" --join-token "$TOKEN"
second_refused "an agent on .119 with .116's --state-dir refused" mt-h119 "$TMP/h116" \
    --advertise-addr "$UNDERLAY.119" --api "$TMP/h119b.sock" --join "$UNDERLAY.117" --join-token "$TOKEN"
check "  ... node ls unchanged, and .116's saved attachments untouched" \
    test "$(mctl 116 node ls --format json | jq -c '[.[].id] | sort')" = "$IDS_BEFORE" -a \
    "$(cat "$TMP/h116/attachments.json" 2>/dev/null)" = "$ATT116"

# --- flags the agent would take and then misbehave with: refused first -------------
# flag_refused MSG WORD ARGS...: an agent on .119 with ARGS exits non-zero at
# once, with one line on stderr that mentions WORD.
flag_refused() {
    local msg=$1 word=$2 rc; shift 2
    RUST_LOG=off timeout 10 ip netns exec mt-h119 "$BIN/mesh-agent" --state-dir "$TMP/h119f" "$@" \
        >/dev/null 2>"$TMP/flag.err" </dev/null
    rc=$?
    if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ]; then fail "$msg: exit $rc"
    elif [ "$(grep -c . "$TMP/flag.err")" -ne 1 ] || ! grep -q -- "$word" "$TMP/flag.err"; then
        fail "$msg: $(head -c 300 "$TMP/flag.err")"
    else pass "$msg: $(cat "$TMP/flag.err")"; fi
}
A119=(--advertise-addr "$UNDERLAY.119" --api "$TMP/h119f.sock" --join "$UNDERLAY.117" --join-token "$TOKEN")
flag_refused "--vxlan-port 0 refused" --vxlan-port "${A119[@]}" --vxlan-port 0
flag_refused "--gossip-port equal to --vxlan-port refused" --gossip-port "${A119[@]}" --gossip-port 4789
flag_refused "--conntrack-tcp-timeout 0 refused" --conntrack-tcp-timeout "${A119[@]}" --conntrack-tcp-timeout 0
flag_refused "--drain-timeout 10^19 refused" --drain-timeout "${A119[@]}" --drain-timeout 10000000000000000000
flag_refused "--busy-poll over 1 s refused" --busy-poll "${A119[@]}" --busy-poll 1000001
flag_refused "--dns-upstream 1.2.3 refused" --dns-upstream "${A119[@]}" --dns-upstream 1.2.3
flag_refused "--advertise-addr 127.0.0.1 refused" --advertise-addr --advertise-addr 127.0.0.1 --api "$TMP/h119f.sock"
flag_refused "no --advertise-addr: one line" advertise-addr --api "$TMP/h119f.sock"
echo precious >"$TMP/not-a-socket"
flag_refused "--api naming a file that is not a socket refused" "not a socket" \
    --advertise-addr "$UNDERLAY.119" --api "$TMP/not-a-socket"
check "  ... and that file is left as it was" test "$(cat "$TMP/not-a-socket")" = precious
check "  ... node ls unchanged: none of them joined" \
    test "$(mctl 116 node ls --format json | jq -c '[.[].id] | sort')" = "$IDS_BEFORE"

# --- joins that must be refused ------------------------------------------------
# join_refused MSG [ARGS...]: an agent on .119 with ARGS exits non-zero within
# 10 s, printing exactly one line on stderr (RUST_LOG=off: only the fatal error).
join_refused() {
    local msg=$1 rc lines; shift
    rm -rf "$TMP/h119"; mkdir -p "$TMP/h119"
    RUST_LOG=off timeout 10 ip netns exec mt-h119 "$BIN/mesh-agent" --advertise-addr "$UNDERLAY.119" \
        --api "$TMP/h119.sock" --state-dir "$TMP/h119" "$@" >/dev/null 2>"$TMP/h119.err" </dev/null
    rc=$?
    lines=$(grep -c . "$TMP/h119.err")
    if [ "$rc" -eq 124 ]; then fail "$msg: still running after 10 s"
    elif [ "$rc" -eq 0 ]; then fail "$msg: exited 0"
    elif [ "$lines" -ne 1 ]; then fail "$msg: exit $rc but $lines stderr lines"; sed -n '1,8s/^/    /p' "$TMP/h119.err"
    elif ! grep -qi token "$TMP/h119.err"; then fail "$msg: error does not mention the token: $(cat "$TMP/h119.err")"
    else pass "$msg (exit $rc): $(head -c 200 "$TMP/h119.err")"; fi
}
# the real token with its last character changed: well-formed, wrong secret
WRONG=${TOKEN%?}$([ "${TOKEN: -1}" = a ] && echo b || echo a)
join_refused "join with a wrong token refused" --join "$UNDERLAY.116" --join-token "$WRONG"
join_refused "join with a malformed token refused" --join "$UNDERLAY.116" --join-token "SWMTKN-wrong-$RANDOM"
join_refused "join with no token refused" --join "$UNDERLAY.116"
only_two() { [ "$(mctl 116 node ls --format json | jq '[.[] | select(.address == "192.168.100.119")] | length')" -eq 0 ]; }
check "refused .119 never appears in node ls" only_two

# --- a joiner does not decide before it has caught up -------------------------
# .119 joins with the lowest node ID (so it leads once it has caught up) and
# its own gossip port, while UDP gossip to and from it is dropped: the join
# (TCP) succeeds, but it hears from no one. A network created on it meanwhile
# must wait for the cluster, not be decided against an empty view (the first
# VNI and subnet again). Then changes asked on .116 reach it on its port.
check "create network demo on .116" mctl 116 network create demo
rm -rf "$TMP/h119"; mkdir -p "$TMP/h119"
echo 0000000000000000000000000 >"$TMP/h119/node-id"
nsx mt-h119 nft -f - <<'NFT' || die "setup: nft in mt-h119"
table inet mt_block {
    chain in { type filter hook input priority 0; udp dport 7950 drop; }
    chain out { type filter hook output priority 0; udp dport 7946 drop; }
}
table ip filter {
    chain FORWARD { type filter hook forward priority 0; policy drop; }
}
NFT
start_agent 119 --join "$UNDERLAY.116:7946" --join-token "$TOKEN" --gossip-port 7950
timeout 25 "$BIN/meshctl" --api "$TMP/h119.sock" network create other >"$TMP/other.out" 2>&1 &
OTHER=$!; track "$OTHER"
sleep 2
check ".119 cut off from gossip: network create there still waits after 2 s" \
    test -z "$(gone "$OTHER" && echo done)"
nsx mt-h119 nft delete table inet mt_block
if wait_until 20 gone "$OTHER" && wait "$OTHER"; then pass "network create on .119 done once it caught up: $(cat "$TMP/other.out")"
else fail "network create on .119 after gossip came back: $(cat "$TMP/other.out")"; fi
vnis_distinct() {
    local ls; ls=$(mctl 116 network ls --format json) || return 1
    jq -e '[.[] | select(.name == "demo" or .name == "other")] | length == 2' <<<"$ls" >/dev/null &&
        [ "$(network_field 116 demo vni)" != "$(network_field 116 other vni)" ] &&
        [ "$(network_field 116 demo subnet)" != "$(network_field 116 other subnet)" ]
}
check "demo and other have distinct VNIs and subnets (as .116 sees them)" wait_until 5 vnis_distinct
check ".116 sees .119 Ready" wait_until 10 status_of 116 "$UNDERLAY.119" Ready
check ".119's agent warned that chain ip filter FORWARD (policy drop, as Docker's) blocks its forwarding" \
    grep -q 'chain ip filter FORWARD drops forwarded packets' "$TMP/h119.log"
check "network create on .116 goes to leader .119 on its own gossip port" \
    mctl 116 network create third
check "... and .119 decided it" grep -q 'cluster change decided.*third' "$TMP/h119.log"

# --- HUP (the terminal that started it went away) stops an agent cleanly -------
HPID=${AGENT_PID[117]}
kill -HUP "$HPID"
check "HUP: .117's agent exits" wait_until 10 gone "$HPID"
check "  ... after taking its host rules down" grep -q 'ingress rules removed' "$TMP/h117.log"
no_table_rule() { local r; r=$(ip -n mt-h117 rule show) && ! grep -q 4789000 <<<"$r"; }
check "  ... and leaves no rule pointing at its table" no_table_rule

finish
