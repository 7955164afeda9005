# shellcheck shell=bash disable=SC2034  # globals here are read by the scenarios
# netns-tests/lib.sh: the test bed that every scenario sources.
#
#   mt-out        mt-h116          mt-h117          mt-h118        (mt-h119, mt-h120
#   .10           .116             .117             .118            when a scenario
#   eth0          eth0             eth0             eth0            adds them)
#    |             |  mesh-agent    |  mesh-agent    |  mesh-agent
#    |             |                |                |
#  +-+-------------+----------------+----------------+-----------------+
#  | mt-br0: bridge in netns mt-ul, 192.168.100.0/24, veth ends mt-h*  |
#  +-------------------------------------------------------------------+
#
#   containers: netns mt-NAME (mk_container NAME); the agent on a host gives
#   them eth0 on `meshctl container attach`; VXLAN/4789 runs between hosts.
#
# Nothing here touches the root netns except the unix sockets meshctl uses.
# Every namespace is prefixed mt-, every process is tracked by pid, every wait
# is bounded, and the EXIT trap removes all of it, also on failure.

set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${MESH_BIN:-$REPO/target/release}
export RUST_LOG=${RUST_LOG:-info} NO_COLOR=1      # logs go to files: no ANSI colours
UNDERLAY=192.168.100
SCENARIO=$(basename "$0" .sh)
TMP=$(mktemp -d "/tmp/mt-$SCENARIO.XXXXXX")

PASSES=0 FAILS=0
NAMESPACES=() PIDS=()
declare -A AGENT_PID=()

# ---- results ----------------------------------------------------------------

pass() { PASSES=$((PASSES + 1)); echo "PASS: $*"; }
fail() { FAILS=$((FAILS + 1)); echo "FAIL: $*"; }
die() { fail "$*"; exit 1; }                  # setup went wrong: stop here
note() { echo "# $*"; }

# check MSG CMD...: PASS if CMD succeeds; on failure print its output indented.
check() {
    local msg=$1; shift
    if "$@" >"$TMP/check.out" 2>&1; then pass "$msg"; else
        fail "$msg"; sed -n '1,8s/^/    /p' "$TMP/check.out"; fi
}

# check_not MSG CMD...: PASS if CMD fails.
check_not() {
    local msg=$1; shift
    if "$@" >"$TMP/check.out" 2>&1; then
        fail "$msg"; sed -n '1,8s/^/    /p' "$TMP/check.out"; else pass "$msg"; fi
}

# expect_error MSG CMD...: PASS if CMD exits non-zero with exactly one non-empty
# line on stderr (the CLI's error contract). The line is shown either way.
expect_error() {
    local msg=$1 rc; shift
    "$@" >"$TMP/err.out" 2>"$TMP/err.txt"; rc=$?
    local lines; lines=$(grep -c . "$TMP/err.txt")
    if [ "$rc" -ne 0 ] && [ "$lines" -eq 1 ]; then pass "$msg: $(head -c 200 "$TMP/err.txt")"
    else fail "$msg (exit $rc, $lines stderr lines)"; sed -n '1,8s/^/    /p' "$TMP/err.txt"; fi
}

# wait_until TIMEOUT_S CMD...: retry CMD every 0.1 s until it succeeds (0) or
# TIMEOUT_S (may be fractional) has passed (1). Sets WAITED to the seconds taken.
WAITED=0
wait_until() {
    local limit_ms start rc elapsed; limit_ms=$(awk -v t="$1" 'BEGIN { print int(t * 1000) }'); shift
    start=$(date +%s%3N)
    while :; do
        "$@" >/dev/null 2>&1; rc=$?
        elapsed=$(($(date +%s%3N) - start))
        if [ "$rc" -eq 0 ] || [ "$elapsed" -ge "$limit_ms" ]; then
            WAITED=$(awk -v d="$elapsed" 'BEGIN { printf "%.2f", d / 1000 }')
            return $((rc != 0))
        fi
        sleep 0.1
    done
}

# ---- cleanup ----------------------------------------------------------------

track() { PIDS+=("$@"); }                     # track PID...: stopped on exit

# gone PID: the process has exited (a zombie counts as gone).
gone() { ! grep -qs '^State:[[:space:]]*[^Z]' "/proc/$1/status"; }

# stop_pid PID [SIG]: SIG (default TERM), up to 10 s to go (3 after KILL), then
# KILL, then reap.
# Only ever pids this script started.
stop_pid() {
    local pid=$1 sig=${2:-TERM} grace=10
    [ "$sig" = KILL ] && grace=3
    gone "$pid" || kill "-$sig" "$pid" 2>/dev/null
    # A TERM'd agent removes its rules, nftables table and listeners first:
    # on a loaded machine that can take seconds, and a KILL would skip it.
    wait_until "$grace" gone "$pid" || kill -KILL "$pid" 2>/dev/null
    wait "$pid"
    return 0
} 2>/dev/null                                 # also bash's "Killed" job notice

cleanup() {
    local rc=$? pid ns log
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    for ns in "${NAMESPACES[@]}"; do           # stragglers inside our own namespaces
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    done
    if [ "$rc" -ne 0 ] || [ "$FAILS" -gt 0 ]; then
        for log in "$TMP"/*.log; do
            [ -s "$log" ] || continue
            echo "# ---- tail of $(basename "$log") ----"; tail -n 25 "$log" | sed 's/^/#   /'
        done
    fi
    for ns in "${NAMESPACES[@]}"; do
        ip netns del "$ns" 2>/dev/null
        rm -rf "/etc/netns/$ns"               # resolv.conf an agent may have left
        rm -f "/etc/netns/.mesh-saved/$ns"    # ... and the namespace's own it set aside
    done
    if [ -n "${MT_KEEP_TMP:-}" ]; then echo "# kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# finish: last line of a scenario; exit status says whether anything failed.
finish() {
    echo "# $SCENARIO: $PASSES passed, $FAILS failed"
    [ "$FAILS" -eq 0 ]
    exit $?
}

# ---- namespaces and the underlay ---------------------------------------------

# mk_ns NAME [noipv6]: a fresh netns with lo up (IPv6 off with noipv6, to keep
# the underlay quiet).
mk_ns() {
    local ns=$1
    ip netns add "$ns" || die "setup: ip netns add $ns (left over? ip netns del $ns)"
    NAMESPACES+=("$ns")
    if [ "${2:-}" = noipv6 ]; then
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    fi
    ip -n "$ns" link set lo up
}

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }   # nsx NS CMD...

# underlay_up: netns mt-ul with the bridge mt-br0 all hosts plug into.
underlay_up() {
    mk_ns mt-ul noipv6
    ip -n mt-ul link add mt-br0 type bridge
    ip -n mt-ul link set mt-br0 up
}

# add_host NS ADDR [MTU]: netns NS with eth0 = ADDR/24, plugged into the underlay.
# The veth is created inside mt-ul with its peer straight in NS: no link ever
# lives in the root netns.
add_host() {
    local ns=$1 addr=$2 mtu=${3:-1500}
    mk_ns "$ns" noipv6
    ip -n mt-ul link add "$ns" mtu "$mtu" type veth peer name eth0 netns "$ns" mtu "$mtu" ||
        die "setup: veth for $ns"
    ip -n mt-ul link set "$ns" master mt-br0 up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
}

# testbed_up [IDS...]: the underlay, hosts mt-hID at .ID (default 116 117 118)
# and the outside client mt-out at .10.
testbed_up() {
    local ids=("$@") id
    [ $# -gt 0 ] || ids=(116 117 118)
    underlay_up
    for id in "${ids[@]}"; do add_host "mt-h$id" "$UNDERLAY.$id"; done
    add_host mt-out "$UNDERLAY.10"
}

# ---- agents -----------------------------------------------------------------

need_bins() {
    local b
    for b in mesh-agent meshctl; do
        [ -x "$BIN/$b" ] || die "setup: $BIN/$b not found (cargo build --release, or set MESH_BIN)"
    done
}

# mctl ID ARGS...: meshctl against the agent of host .ID (bounded to 10 s).
mctl() { local id=$1; shift; timeout 10 "$BIN/meshctl" --api "$TMP/h$id.sock" "$@"; }

api_up() { mctl "$1" node ls >/dev/null 2>&1; }

# start_agent ID [ARGS...]: mesh-agent in mt-hID, log in $TMP/hID.log; waits
# (10 s at most) until its API answers. AGENT_ARGS (words) go to every agent
# after ARGS (a script sets it to run all its agents so, e.g. --busy-poll 0).
AGENT_ARGS=${AGENT_ARGS:-}
start_agent() {
    local id=$1 extra; shift
    need_bins
    read -ra extra <<<"$AGENT_ARGS"
    mkdir -p "$TMP/h$id"
    ip netns exec "mt-h$id" "$BIN/mesh-agent" --advertise-addr "$UNDERLAY.$id" \
        --api "$TMP/h$id.sock" --state-dir "$TMP/h$id" "$@" "${extra[@]}" 2>>"$TMP/h$id.log" </dev/null &
    AGENT_PID[$id]=$!; track $!
    wait_until 10 api_up "$id" || die "setup: agent on .$id: API not up within 10 s"
}

# agent_stat ID NAME: the dataplane counter NAME of host .ID's agent (fails
# when the agent does not answer or has no such counter).
agent_stat() { curl -sf --max-time 5 --unix-socket "$TMP/h$1.sock" http://agent/v1/stats | jq -e ".$2"; }

# kill_agent ID [SIG]: stop the agent of host .ID (default KILL: a crash).
kill_agent() { stop_pid "${AGENT_PID[$1]}" "${2:-KILL}"; unset "AGENT_PID[$1]"; }

# node_statuses ID: "ADDRESS STATUS" lines from node ls on .ID, sorted.
node_statuses() { mctl "$1" node ls --format json | jq -r '.[] | "\(.address) \(.status)"' | sort; }

# ready_count ID N: node ls on .ID shows exactly N nodes, all Ready.
ready_count() {
    local s; s=$(mctl "$1" node ls --format json) || return 1
    [ "$(jq '[.[] | select(.status == "Ready")] | length' <<<"$s")" -eq "$2" ] &&
        [ "$(jq length <<<"$s")" -eq "$2" ]
}

# start_cluster [IDS...]: found on the first (default .116), join the rest with
# its token, wait (15 s at most) until every host sees all of them Ready.
TOKEN=
start_cluster() {
    local ids=("$@") founder id
    [ $# -gt 0 ] || ids=(116 117 118)
    founder=${ids[0]}
    start_agent "$founder"
    TOKEN=$(mctl "$founder" cluster join-token) || die "setup: cluster join-token"
    for id in "${ids[@]:1}"; do
        start_agent "$id" --join "$UNDERLAY.$founder" --join-token "$TOKEN"
    done
    for id in "${ids[@]}"; do
        wait_until 15 ready_count "$id" "${#ids[@]}" ||
            die "setup: .$id does not see ${#ids[@]} Ready nodes: $(node_statuses "$id" | tr '\n' ' ')"
    done
}

# network_field ID NET FIELD: one field of `network inspect NET` on .ID.
network_field() { mctl "$1" network inspect "$2" | jq -er ".$3"; }

# lacks ID NAME MCTL-ARGS...: `meshctl ARGS --format json` on .ID answers with a
# list, and nothing in it is named NAME (an agent that does not answer, or a
# listing that fails, is not taken for an empty list).
lacks() {
    local id=$1 name=$2 out; shift 2
    out=$(mctl "$id" "$@" --format json) || return 1
    jq -e --arg n "$name" 'type == "array" and all(.[]; .name != $n)' <<<"$out" >/dev/null
}

# network_seen ID NET: network ls on .ID lists NET.
network_seen() { mctl "$1" network ls --format json | jq -e --arg n "$2" 'any(.[]; .name == $n)' >/dev/null; }

# ---- containers -------------------------------------------------------------

# mk_container NAME: an empty netns mt-NAME (lo left down: attach brings it up).
mk_container() { ip netns add "mt-$1" || die "setup: ip netns add mt-$1"; NAMESPACES+=("mt-$1"); }

# attach ID NAME NET [ARGS...]: attach mt-NAME to NET through the agent on .ID;
# prints the IP it got.
attach() {
    local id=$1 name=$2 net=$3; shift 3
    mctl "$id" container attach --netns "mt-$name" --network "$net" --name "$name" "$@"
}

# containers ID [NAME]: container ls on .ID as JSON (one NAME's object with NAME).
containers() {
    if [ $# -eq 1 ]; then mctl "$1" container ls --format json
    else mctl "$1" container ls --format json | jq -e --arg n "$2" '.[] | select(.name == $n)'; fi
}

# container_count ID N: container ls on .ID shows N containers.
container_count() { [ "$(mctl "$1" container ls --format json | jq length)" -eq "$2" ]; }

has_eth0() { ip -n "$1" link show eth0 >/dev/null 2>&1; }   # has_eth0 NS
# no_eth0 NS: the namespace is there (its lo is) and has no eth0.
no_eth0() { ip -n "$1" link show lo >/dev/null 2>&1 && ! has_eth0 "$1"; }

# ---- traffic (only ever inside our own namespaces) ---------------------------

# ping_ok NS IP: one echo answered, up to 3 tries (the first may wait on ARP).
ping_ok() {
    for _ in 1 2 3; do ip netns exec "$1" ping -n -q -c 1 -W 2 "$2" >/dev/null 2>&1 && return 0; done
    return 1
}

# ping_fails NS IP: none of 3 echoes answered.
ping_fails() { ! ip netns exec "$1" ping -n -q -c 3 -i 0.2 -W 1 "$2" >/dev/null 2>&1; }

# listening NS PORT: a TCP listener on PORT in NS.
listening() { ip netns exec "$1" ss -Hltn "sport = :$2" | grep -q .; }

# tcp_ok SRC_NS DST_NS DST_IP: a line sent with nc from SRC arrives at an nc
# listener on DST_IP in DST (Debian netcat-openbsd: `nc -l ADDR PORT`, -N to
# send FIN at EOF). Everything bounded by timeout.
tcp_ok() {
    local src=$1 dst=$2 ip=$3 port=$((20000 + RANDOM % 20000)) lpid
    local out="$TMP/nc.$port" msg="mesh $src to $dst $RANDOM"
    ip netns exec "$dst" timeout 10 nc -n -l "$ip" "$port" >"$out" 2>/dev/null </dev/null &
    lpid=$!; track "$lpid"
    if ! wait_until 3 listening "$dst" "$port"; then stop_pid "$lpid"; echo "no listener"; return 1; fi
    echo "$msg" | ip netns exec "$src" timeout 8 nc -n -N -w 3 "$ip" "$port" >/dev/null
    wait_until 5 gone "$lpid"
    stop_pid "$lpid"
    grep -qxF "$msg" "$out" || { echo "payload did not arrive: got '$(head -c 100 "$out")'"; return 1; }
}

# udp_refused NS IP PORT: a datagram from NS to IP:PORT is refused within 2 s
# (an ICMP port unreachable the sending socket matches).
udp_refused() {
    ip netns exec "$1" timeout 5 python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.connect((sys.argv[1], int(sys.argv[2]))); s.send(b"x")
try:
    s.recv(100)
except ConnectionRefusedError:
    print("refused")' "$2" "$3" | grep -qx refused
}

# ---- benchmarks ---------------------------------------------------------------

# agent_pid ID: the mesh-agent process of host .ID (ip netns exec execs it, so
# normally the tracked pid itself; else its mesh-agent child).
agent_pid() {
    local pid=${AGENT_PID[$1]} c
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = mesh-agent ] && { echo "$pid"; return 0; }
    for c in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
        [ "$(cat "/proc/$c/comm" 2>/dev/null)" = mesh-agent ] && { echo "$c"; return 0; }
    done
    return 1
}

# cpu_ticks PID...: utime + stime (clock ticks, all threads) of the processes,
# summed; fails if one is gone. /proc/PID/stat: after "(comm) " come state,
# ppid, ..., utime (12th) and stime (13th).
cpu_ticks() {
    local pid stat f t=0
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
        read -ra f <<<"${stat##*) }"
        t=$((t + f[11] + f[12]))
    done
    echo "$t"
}

# mesh_pids IDS...: MESH_PIDS = the mesh-agent processes of hosts .IDS (stops
# here if one is missing).
mesh_pids() {
    local id pid
    MESH_PIDS=()
    for id in "$@"; do
        pid=$(agent_pid "$id") || die "setup: no mesh-agent process for .$id"
        MESH_PIDS+=("$pid")
    done
}

# ticked CASE CMD...: runs CMD (which prints one value) and prints its value;
# the CPU ticks the mesh agents (MESH_PIDS) used meanwhile go to a line of
# $TMP/ticks-CASE (a file: in_rounds measures in a subshell). Fails if CMD does.
ticked() {
    local c=$1 t0 t1 out; shift
    t0=$(cpu_ticks "${MESH_PIDS[@]}") || t0=
    out=$("$@") || return 1
    t1=$(cpu_ticks "${MESH_PIDS[@]}") || t1=
    [ -z "$t0" ] || [ -z "$t1" ] || echo $((t1 - t0)) >>"$TMP/ticks-$c"
    echo "$out"
}

# cpu_per_run CASE: the mesh agents' CPU seconds per `ticked` run of CASE
# (the mean over its rounds), or n/a.
cpu_per_run() {
    [ -s "$TMP/ticks-$1" ] || { echo n/a; return; }
    awk -v hz="$(getconf CLK_TCK)" '{ t += $1; n++ } END { printf "%.2f", t / n / hz }' "$TMP/ticks-$1"
}

# ratio A B: A / B, or n/a unless both are positive numbers.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { n = "^[0-9]*[.]?[0-9]+$"
        if (a ~ n && b ~ n && a + 0 > 0 && b + 0 > 0) printf "%.2f\n", a / b; else print "n/a" }'
}

# wrk_rps OUT NS URL [WRK_ARGS...]: wrk -t1 -c16 for DURATION s from NS, its
# output in OUT; prints requests/s. Fails (wrk's output on stderr) without a
# result or with errors (socket errors + non-2xx) on more than 1 % of requests.
wrk_rps() {
    local out=$1 ns=$2 url=$3; shift 3
    ip netns exec "$ns" timeout $((DURATION + 15)) wrk -t1 -c16 -d"${DURATION}s" "$@" "$url" \
        >"$out" 2>&1 </dev/null
    if awk -v e="$(wrk_errors "$out")" '
            / requests in / { n = $1 } /^Requests\/sec:/ { r = $2 }
            END { if (r > 0 && e <= n / 100) { printf "%.0f\n", r; exit 0 } exit 1 }' "$out"; then return 0; fi
    sed 's/^/    /' "$out" >&2
    return 1
}

# wrk_errors OUT: socket errors + non-2xx/3xx responses in wrk's output OUT.
wrk_errors() {
    awk '/Socket errors:/ { gsub(/,/, ""); e += $4 + $6 + $8 + $10 }
         /Non-2xx or 3xx responses:/ { e += $NF } END { print e + 0 }' "$1" 2>/dev/null || echo n/a
}

# wrk_errors_sum PREFIX: wrk's errors (wrk_errors) summed over the files
# PREFIX*.txt, one per run.
wrk_errors_sum() {
    local f e=0
    for f in "$1"*.txt; do e=$((e + $(wrk_errors "$f"))); done
    echo "$e"
}

# median V...: the median of numbers (the mean of the middle two for an even
# count); n/a if there is none or one is not a number.
median() {
    printf '%s\n' "$@" | sort -g | awk '{ if ($1 !~ /^[0-9]*[.]?[0-9]+$/) bad = 1; v[NR] = $1 }
        END { if (bad || NR == 0) { print "n/a"; exit }
              if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# in_rounds CASE: measures CASE ROUNDS times on both sides, interleaved, so
# that a machine that slows down or speeds up halfway (a shared VM's
# neighbours: minutes-long phases that moved one baseline 2-4x) weighs on
# both sides of a round alike. Round R calls `measure_side kernel CASE R` and
# `measure_side mesh CASE R` (defined by the benchmark; each prints one
# value, or fails), the kernel first in odd rounds and the mesh first in even
# ones. Sets KVALS[CASE] and MVALS[CASE] (the values in round order, 0 for a
# failed measurement, with a FAIL line) and RATIOS[CASE] (mesh / kernel per
# round); round_result sums them up.
in_rounds() {
    local c=$1 r side v k m
    KVALS[$c]='' MVALS[$c]='' RATIOS[$c]=''
    for ((r = 1; r <= ROUNDS; r++)); do
        local order=(kernel mesh)
        [ $((r % 2)) -eq 1 ] || order=(mesh kernel)
        for side in "${order[@]}"; do
            if v=$(measure_side "$side" "$c" "$r"); then :; else v=0; fail "$side $c round $r: no result"; fi
            if [ "$side" = kernel ]; then k=$v; else m=$v; fi
        done
        KVALS[$c]+="${KVALS[$c]:+ }$k" MVALS[$c]+="${MVALS[$c]:+ }$m"
        RATIOS[$c]+="${RATIOS[$c]:+ }$(ratio "$m" "$k")"
    done
}

# round_result CASE [FORMAT]: "KERNEL MESH RATIO": the medians of CASE's
# kernel values and mesh values (printf FORMAT, default %.0f) and of its
# rounds' ratios (%.2f). A failed round's n/a ratio makes the ratio n/a: a bar
# is not judged on the rounds that happened to work.
round_result() {
    local f=${2:-%.0f} k m r
    # shellcheck disable=SC2086 # the value lists split on purpose
    k=$(median ${KVALS[$1]}) m=$(median ${MVALS[$1]}) r=$(median ${RATIOS[$1]})
    [ "$k" = n/a ] || k=$(printf "$f" "$k")
    [ "$m" = n/a ] || m=$(printf "$f" "$m")
    [ "$r" = n/a ] || r=$(printf %.2f "$r")
    echo "$k $m $r"
}

# bench_rounds: ROUNDS from the environment (default 3; --smoke makes it 2
# unless set), checked to be 1 to 20.
bench_rounds() {
    ROUNDS=${ROUNDS:-3}
    if ! [[ $ROUNDS =~ ^[0-9]+$ ]] || [ "$ROUNDS" -lt 1 ] || [ "$ROUNDS" -gt 20 ]; then
        echo "$0: ROUNDS must be 1 to 20, not '$ROUNDS'" >&2; exit 2; fi
}

# bench_duration ARGS...: DURATION from the environment (default 10 s;
# --smoke: 2 s), checked to be a positive integer; any other argument is a
# usage error.
bench_duration() {
    DURATION=${DURATION:-10}
    local arg
    for arg in "$@"; do
        case $arg in
            --smoke) DURATION=2 ROUNDS=${ROUNDS:-2} ;;
            *) echo "usage: $0 [--smoke]" >&2; exit 2 ;;
        esac
    done
    if ! [[ $DURATION =~ ^[0-9]+$ ]] || [ "$DURATION" -lt 1 ]; then
        echo "$0: DURATION must be a positive integer, not '$DURATION'" >&2; exit 2; fi
    bench_rounds
}

# kernel_overlay_up IDS...: the kernel's own overlay, for baselines: on each
# host mt-hID a vxlan device mt-kvx (VNI 100, UDP 4790) with flood entries
# to the others, in a bridge mt-kbr.
kernel_overlay_up() {
    local id h peer
    for id in "$@"; do
        h=mt-h$id
        ip -n "$h" link add mt-kvx type vxlan id 100 dstport 4790 local "$UNDERLAY.$id" dev eth0 ||
            die "setup: kernel vxlan on .$id"
        ip -n "$h" link add mt-kbr type bridge
        ip -n "$h" link set mt-kvx master mt-kbr up
        ip -n "$h" link set mt-kbr up
        for peer in "$@"; do
            [ "$peer" = "$id" ] || bridge -n "$h" fdb append 00:00:00:00:00:00 dev mt-kvx dst "$UNDERLAY.$peer"
        done
    done
}
# kport NS ID IP: netns NS with eth0 = IP/24 on the kernel bridge of host .ID.
kport() {
    local ns=$1 id=$2 ip=$3
    mk_ns "$ns" noipv6
    ip -n "mt-h$id" link add "$ns" mtu 1450 type veth peer name eth0 netns "$ns" mtu 1450 ||
        die "setup: veth for $ns"
    ip -n "mt-h$id" link set "$ns" master mt-kbr up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
}

# nginx_task NS NAME: nginx in NS on :80 answering NAME (config, pid and temp files in
# $TMP/nginx-NAME, its logs in $TMP/nginx-NAME*.log; requests to /client logged
# in $TMP/NAME.access as "$remote_addr $request_uri"); waits until it listens.
# NGINX_PID[NAME] is its pid; it lives at most LIFE seconds.
declare -A NGINX_PID=()
nginx_task() {
    local ns=$1 name=$2 dir="$TMP/nginx-$2"
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $TMP/nginx-$name.log;
events { worker_connections 4096; }
http {
    log_format client '\$remote_addr \$request_uri';
    map \$request_uri \$client_probe { /client 1; default 0; }
    access_log $TMP/$name.access client if=\$client_probe;
    keepalive_requests 100000000;
    keepalive_timeout 60s;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen 80 backlog=4096;
        default_type text/plain;
        location / { return 200 "$name\n"; }
    }
}
EOF
    ip netns exec "$ns" timeout "$LIFE" nginx -p "$dir" -e "$TMP/nginx-$name.log" -c "$dir/nginx.conf" \
        >"$TMP/nginx-$name.out.log" 2>&1 </dev/null &
    NGINX_PID[$name]=$!; track $!
    wait_until 5 listening "$ns" 80 || die "setup: nginx $name in $ns does not listen on :80"
}
