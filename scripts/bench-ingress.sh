#!/usr/bin/env bash
# scripts/bench-ingress.sh: HTTP from an outside client to a published port on a host
# without tasks, mesh routing mesh vs a Swarm-like kernel routing mesh, in one run.
#
#   both:    mt-out (.10) --wrk--> .116 (a host that runs no task)
#   kernel:  http://192.168.100.116:8001/, nftables on .116 (conntrack + NAT in the
#            kernel, as Swarm's ingress does):
#              ip daddr 192.168.100.116 tcp dport 8001
#                dnat to numgen inc mod 2 map { 0 : 10.199.0.11, 1 : 10.199.0.12 } : 80
#              oifname "mt-kbr" ct status dnat masquerade      (source -> 10.199.0.1)
#            then mt-kbr -- mt-kvx (kernel vxlan, VNI 100, UDP 4790) to the task
#   mesh:    http://192.168.100.116:8000/, the agents, service web published with
#            `--publish 8000:80`: ip rules on .116 steer the port into the agent's
#            TUN, the agent picks a task (rr) per new connection, rewrites only the
#            destination and sends it over its VXLAN (UDP 4789); the task's host
#            sends the replies back through .116
#
#   mt-out .10: wrk
#      |
#      |   mt-h116 .116 (no task)      mt-h117 .117                 mt-h118 .118
#      |   kernel: nftables DNAT +     kernel: mt-kt1 10.199.0.11   kernel: mt-kt2 10.199.0.12
#      |     masquerade, mt-kbr          (veth) on mt-kbr             (veth) on mt-kbr
#      |     10.199.0.1 + mt-kvx         + mt-kvx                     + mt-kvx
#      |   mesh: mesh-agent,           mesh: mesh-agent,            mesh: mesh-agent,
#      |     TUN mesh-ingress            mt-w1 (TAP)                  mt-w2 (TAP)
#  +---+---------+---------------------------+----------------------------+----+
#  |                 mt-br0 in mt-ul, 192.168.100.0/24, eth0 of each             |
#  +-----------------------------------------------------------------------------+
#
#   The two systems share the hosts, each on its own port, so that their runs can
#   interleave: a slow phase of this shared machine then weighs on both alike.
#   (While the kernel's runs go, the idle agents sleep; .116's kernel also passes
#   the agent's ip rules and its prerouting chain for ICMP errors.) Every task,
#   kernel ktN and mesh wN alike, is the same nginx (one worker, keep-alive
#   without a request limit) answering its own name to GET /; task 1 runs on
#   .117, task 2 on .118. Before measuring, 4 curls to /client (one new
#   connection each) through each system must be answered by each of its tasks
#   exactly twice; nginx logs only those requests (access_log if=, so logging
#   does not weigh on the measurement), in the format "$remote_addr
#   $request_uri", and the address there is the client address the task saw:
#   the mesh must keep 192.168.100.10 (else FAIL); the kernel shows .116's
#   overlay-side address.
#
#   Two cases, `wrk -t1 -c16 -d DURATION` per run:
#     ingress-keepalive  16 keep-alive connections: requests/s
#     ingress-close      -H "Connection: close": every request a new connection
#                        through the routing mesh (new connections/s)
#   Each case runs ROUNDS rounds of one kernel run and one mesh run, the kernel
#   first in odd rounds and the mesh first in even ones (lib.sh: in_rounds).
#   Shown: the median requests/s of each side, the median of the rounds' ratios
#   mesh / kernel (higher is better) and each round's, wrk's errors (socket
#   errors + non-2xx; more than 1 % of one run's requests is a FAIL), and the
#   CPU seconds (utime + stime from /proc/PID/stat) the three mesh agents used
#   per mesh run. The last lines are machine-readable:
#     RESULT case=ingress-keepalive kernel=RPS mesh=RPS ratio=R rounds=R,R,R
#     RESULT case=ingress-close kernel=RPS mesh=RPS ratio=R rounds=R,R,R
#     RESULT client-address kernel=IP mesh=IP kept=yes|no
#
# Usage: scripts/bench-ingress.sh [--smoke]
#   DURATION=10 (seconds per wrk run), ROUNDS=3; --smoke: 2 s runs, 2 rounds,
#   to keep the script working.
#   Needs wrk, nginx (Debian nginx-light), nft (nftables), curl, jq.

. "$(dirname "$0")/../netns-tests/lib.sh"

bench_duration "$@"
need_bins
for b in wrk nginx nft curl jq; do
    command -v "$b" >/dev/null || die "setup: $b not found (apt-get install wrk nginx-light nftables curl jq)"
done

TASKS=2
PUB=8000                                      # the mesh's published port
KPUB=8001                                     # the kernel routing mesh's port
ENTRY=$UNDERLAY.116                           # the host wrk connects to (no task)
CLIENT=$UNDERLAY.10                           # mt-out
KGW=10.199.0.1                                # .116's address on the kernel overlay
LIFE=$((4 * ROUNDS * (DURATION + 20) + 300))  # upper bound for every server we start

# task_host N: the host id of task N (1 on .117, 2 on .118).
task_host() { echo $((116 + $1)); }

# spread NS URL N: N curls to URL from NS, one new connection each; the answers
# counted, e.g. "w1:2 w2:2 " (a curl that fails counts as "failed").
spread() {
    local i
    for ((i = 0; i < $3; i++)); do ip netns exec "$1" curl -s -m 3 "$2" || echo failed; done |
        sort | uniq -c | awk '{ print $2 ":" $1 }' | tr '\n' ' '
}

# expect_spread LABEL PREFIX PORT: every task PREFIX1..PREFIXN answers exactly
# twice in 2 x TASKS curls from mt-out to /client on .116:PORT, else stop here
# (the numbers would mean nothing).
expect_spread() {
    local label=$1 prefix=$2 port=$3 want='' i got
    for ((i = 1; i <= TASKS; i++)); do want+="$prefix$i:2 "; done
    got=$(spread mt-out "http://$ENTRY:$port/client" $((2 * TASKS)))
    if [ "$got" = "$want" ]; then pass "$label: $((2 * TASKS)) new connections spread evenly: $got"
    else die "$label: $((2 * TASKS)) new connections: got '$got', want '$want'"; fi
}

# seen_by PREFIX: the client addresses the tasks PREFIX1..PREFIXN logged for
# /client, sorted and joined by commas (e.g. "192.168.100.10").
seen_by() {
    local i files=()
    for ((i = 1; i <= TASKS; i++)); do files+=("$TMP/$1$i.access"); done
    awk '{ print $1 }' "${files[@]}" 2>/dev/null | sort -u | paste -sd, -
}

# logged PREFIX: each task PREFIX1..PREFIXN has logged 2 requests to /client.
logged() {
    local i
    for ((i = 1; i <= TASKS; i++)); do
        [ "$(grep -c ' /client$' "$TMP/$1$i.access" 2>/dev/null)" -ge 2 ] || return 1
    done
}

# get_ok PORT: GET / on .116:PORT from mt-out is answered.
get_ok() { ip netns exec mt-out curl -s -m 3 -o /dev/null "http://$ENTRY:$1/"; }

CASES=(ingress-keepalive ingress-close)
declare -A CASE_ARGS=([ingress-keepalive]="" [ingress-close]="Connection: close")
declare -A CASE_LABEL=([ingress-keepalive]="keep-alive         req/s" [ingress-close]="Connection: close  conn/s")
declare -A KVALS=() MVALS=() RATIOS=()

# measure_side kernel|mesh CASE ROUND (for in_rounds): wrk's requests/s from
# mt-out to .116 (kernel: KPUB; mesh: PUB, with the agents' CPU: lib.sh ticked).
measure_side() {
    local side=$1 c=$2 r=$3 args=()
    [ -z "${CASE_ARGS[$c]}" ] || args=(-H "${CASE_ARGS[$c]}")
    if [ "$side" = kernel ]; then
        wrk_rps "$TMP/wrk-kernel-$c-$r.txt" mt-out "http://$ENTRY:$KPUB/" "${args[@]}"
    else
        ticked "$c" wrk_rps "$TMP/wrk-mesh-$c-$r.txt" mt-out "http://$ENTRY:$PUB/" "${args[@]}"
    fi
}

# --- kernel: VXLAN + bridge on every host, VNI 100 on UDP 4790 -----------------------
testbed_up 116 117 118
# The client reuses TIME_WAIT ports, as load generators do (bench-vip.sh says why).
nsx mt-out sysctl -qw net.ipv4.tcp_tw_reuse=1 || die "setup: tcp_tw_reuse in mt-out"
kernel_overlay_up 116 117 118
ip -n mt-h116 addr add "$KGW/24" dev mt-kbr
nsx mt-h116 sysctl -qw net.ipv4.ip_forward=1

KMAP=
for ((n = 1; n <= TASKS; n++)); do
    kport "mt-kt$n" "$(task_host $n)" "10.199.0.$((10 + n))"
    nginx_task "mt-kt$n" "kt$n"
    KMAP+="${KMAP:+, }$((n - 1)) : 10.199.0.$((10 + n))"
    wait_until 5 ping_ok mt-h116 "10.199.0.$((10 + n))" || die "setup: kernel vxlan: .116 -> kt$n does not ping"
done
nsx mt-h116 nft -f - <<EOF || die "setup: nftables DNAT + masquerade on .116"
table ip mt_ingress {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr $ENTRY tcp dport $KPUB dnat to numgen inc mod $TASKS map { $KMAP } : 80
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "mt-kbr" ct status dnat masquerade
    }
}
EOF
note "kernel: $ENTRY:$KPUB -> numgen inc mod $TASKS map { $KMAP } :80, masquerade to $KGW (nftables on .116)"

wait_until 5 get_ok "$KPUB" || die "setup: curl $ENTRY:$KPUB from mt-out (kernel)"
expect_spread "kernel $ENTRY:$KPUB" kt "$KPUB"
wait_until 3 logged kt || die "kernel: the tasks did not log the /client requests"
KSEEN=$(seen_by kt)
note "kernel: the tasks saw the client as $KSEEN"

# --- mesh: three agents, network web, service web published on 8000 -----------------------
start_cluster 116 117 118
mctl 116 network create web >/dev/null || die "setup: network create web"
mctl 116 service create --name web --network web --publish "$PUB:80" >/dev/null ||
    die "setup: service create web --publish $PUB:80"
for ((n = 1; n <= TASKS; n++)); do
    mk_container "w$n"
    attach "$(task_host $n)" "w$n" web --service web >/dev/null || die "setup: attach w$n on .$(task_host $n)"
    nginx_task "mt-w$n" "w$n"
done
replicas() { [ "$(mctl 116 service ls --format json | jq -r '.[] | select(.name == "web") | .replicas')" = "$TASKS" ]; }
wait_until 5 replicas || die "setup: web does not have $TASKS tasks on .116"
note "mesh: $ENTRY:$PUB -> web:80, $TASKS tasks (rr, mesh-agent on .116)"

mesh_pids 116 117 118

wait_until 5 get_ok "$PUB" || die "setup: curl $ENTRY:$PUB from mt-out (mesh)"
# The cluster view names every task a moment before .116's dataplane tables
# have them: wait until TASKS new connections in a row reach TASKS tasks.
all_serve() {
    [ "$(for ((i = 0; i < TASKS; i++)); do ip netns exec mt-out curl -s -m 3 "http://$ENTRY:$PUB/"; echo; done |
        sort -u | grep -c .)" = "$TASKS" ]
}
wait_until 5 all_serve || die "setup: not every task answers through $ENTRY:$PUB (mesh)"
expect_spread "mesh $ENTRY:$PUB" w "$PUB"
wait_until 3 logged w || die "mesh: the tasks did not log the /client requests"
MSEEN=$(seen_by w)
note "mesh: the tasks saw the client as $MSEEN"
if [ "$MSEEN" = "$CLIENT" ]; then pass "mesh: every task logged the real client $CLIENT"
else fail "mesh: the tasks logged '$MSEEN', not the real client $CLIENT"; fi
# Both systems still answer with the other one set up.
wait_until 3 get_ok "$KPUB" || die "setup: curl $ENTRY:$KPUB from mt-out (kernel) stopped working once the mesh ran"

# --- measure ---------------------------------------------------------------------------------
for c in "${CASES[@]}"; do in_rounds "$c"; done


# --- report ----------------------------------------------------------------------------------
row() { printf '  %-26s %-9s %-9s %-7s %-20s %-12s %s\n' "$@"; }
echo
echo "HTTP GET / from the outside client $CLIENT to $ENTRY (a host with no task),"
echo "$TASKS nginx tasks on .117 and .118: wrk -t1 -c16 -d${DURATION}s, $ROUNDS rounds per case,"
echo "kernel and mesh interleaved (kernel first in odd rounds)"
echo "kernel = nftables DNAT (numgen inc) + masquerade on .116 + kernel vxlan (port $KPUB);"
echo "mesh = mesh-agent routing mesh (--publish $PUB:80)"
echo "kernel, mesh: medians of the rounds; ratio: median of the rounds' mesh / kernel"
row case kernel mesh ratio "rounds' ratios" "errors k/m" "mesh agents CPU s/run"
declare -A RES=()
for c in "${CASES[@]}"; do
    RES[$c]=$(round_result "$c")
    read -r k m r <<<"${RES[$c]}"
    row "${CASE_LABEL[$c]}" "$k" "$m" "$r" "${RATIOS[$c]// /,}" \
        "$(wrk_errors_sum "$TMP/wrk-kernel-$c-")/$(wrk_errors_sum "$TMP/wrk-mesh-$c-")" "$(cpu_per_run "$c")"
done
# kept SEEN: what became of the client address, as the tasks logged it.
kept() { if [ "$1" = "$CLIENT" ]; then echo kept; elif [ "$1" = "$KGW" ]; then echo "lost: .116's overlay address"
         else echo lost; fi; }
KEPT=no; [ "$MSEEN" = "$CLIENT" ] && KEPT=yes
echo "client address seen by the tasks: kernel ${KSEEN:-none} ($(kept "$KSEEN")), mesh ${MSEEN:-none} ($(kept "$MSEEN"))"
echo
for c in "${CASES[@]}"; do
    read -r k m r <<<"${RES[$c]}"
    echo "RESULT case=$c kernel=$k mesh=$m ratio=$r rounds=${RATIOS[$c]// /,}"
done
echo "RESULT client-address kernel=${KSEEN:-none} mesh=${MSEEN:-none} kept=$KEPT"
finish
