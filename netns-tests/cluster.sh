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

finish
