#!/usr/bin/env bash
# scripts/bench-vip.sh: HTTP through a service VIP, mesh vs nftables DNAT over kernel VXLAN, in one run.
#
#   mesh:    mt-client (.116) --wrk--> VIP of service web:80 (from `service inspect web`)
#            the agent on .116 picks a task (rr) per new connection, DNATs it and
#            sends it over its VXLAN (UDP 4789) to the task's host
#   kernel:  mt-kclient (.116, 10.199.0.1) --wrk--> 10.199.0.100:80, an nftables
#            rule in mt-kclient (kube-proxy style, conntrack + NAT in the kernel):
#              ip daddr 10.199.0.100 tcp dport 80
#                dnat to numgen inc mod N map { 0 : 10.199.0.11, 1 : 10.199.0.12, ... }
#            then veth -> mt-kbr -- mt-kvx (kernel vxlan, VNI 100, UDP 4790) to the task
#
#   mt-client   mt-kclient          mt-w1   mt-kt1 (10.199.0.11)   mt-w2   mt-kt2 (.12)
#      | TAP      | veth               | TAP    | veth                | TAP    | veth
#      |        mt-kbr -- mt-kvx       |      mt-kbr -- mt-kvx        |      mt-kbr -- mt-kvx
#   mesh-agent                      mesh-agent                     mesh-agent
#   mt-h116 .116 eth0 ------------- mt-h117 .117 eth0 ------------ mt-h118 .118 eth0
#            (all on mt-br0 in mt-ul, 192.168.100.0/24; + mt-out .10, unused)
#
#   Every task, mesh wN and kernel ktN alike, is the same nginx (one worker, no
#   access log, keep-alive without a request limit) answering its own name to
#   GET /. Task N runs on .117 for odd N, .118 for even N; the clients on .116.
#   Before measuring, 2 x TASKS curls (one new connection each) through each VIP
#   must be answered by every task exactly twice (rr / numgen inc).
#
#   Two cases, `wrk -t1 -c16 -d DURATION` per run:
#     vip-keepalive  16 keep-alive connections: requests/s
#     vip-close      -H "Connection: close": every request a new connection
#                    through the balancer (new connections/s)
#   Each case runs ROUNDS rounds of one kernel run and one mesh run, the kernel
#   first in odd rounds and the mesh first in even ones (lib.sh: in_rounds), so
#   a slow phase of this shared machine weighs on both sides alike.
#   Shown: the median requests/s of each side, the median of the rounds'
#   ratios mesh / kernel (higher is better) and each round's, wrk's errors
#   (socket errors + non-2xx; more than 1 % of one run's requests is a FAIL),
#   and the CPU seconds (utime + stime from /proc/PID/stat) the three mesh
#   agents used per mesh run. The last lines are machine-readable:
#     RESULT case=vip-keepalive kernel=RPS mesh=RPS ratio=R rounds=R,R,R
#     RESULT case=vip-close kernel=RPS mesh=RPS ratio=R rounds=R,R,R
#
# Usage: scripts/bench-vip.sh [--smoke]
#   DURATION=10 (seconds per wrk run), ROUNDS=3; --smoke: 2 s runs, 2 rounds,
#   to keep the script working.
#   TASKS=2 (tasks of service web, 1..8).
#   Needs wrk, nginx (Debian nginx-light), nft (nftables), curl, jq.

. "$(dirname "$0")/../netns-tests/lib.sh"

TASKS=${TASKS:-2}
bench_duration "$@"
if ! [[ $TASKS =~ ^[1-8]$ ]]; then echo "$0: TASKS must be 1..8, not '$TASKS'" >&2; exit 2; fi
need_bins
for b in wrk nginx nft curl jq; do
    command -v "$b" >/dev/null || die "setup: $b not found (apt-get install wrk nginx-light nftables curl jq)"
done

KVIP=10.199.0.100                             # the kernel side's virtual IP
LIFE=$((4 * ROUNDS * (DURATION + 20) + 300))  # upper bound for every server we start

# task_host N: the host id of task N (odd on .117, even on .118).
task_host() { echo $((117 + ($1 + 1) % 2)); }

# spread NS IP N: N curls to http://IP/ from NS, one new connection each; the
# answers counted, e.g. "w1:2 w2:2 " (a curl that fails counts as "failed").
spread() {
    local i
    for ((i = 0; i < $3; i++)); do ip netns exec "$1" curl -s -m 3 "http://$2/" || echo failed; done |
        sort | uniq -c | awk '{ print $2 ":" $1 }' | tr '\n' ' '
}

# expect_spread LABEL NS IP PREFIX: every task PREFIX1..PREFIXN answers exactly
# twice in 2 x TASKS curls, else stop here (the numbers would mean nothing).
expect_spread() {
    local label=$1 ns=$2 ip=$3 prefix=$4 want='' i got
    for ((i = 1; i <= TASKS; i++)); do want+="$prefix$i:2 "; done
    got=$(spread "$ns" "$ip" $((2 * TASKS)))
    if [ "$got" = "$want" ]; then pass "$label: $((2 * TASKS)) new connections spread evenly: $got"
    else die "$label: $((2 * TASKS)) new connections: got '$got', want '$want'"; fi
}

# --- kernel: VXLAN + bridge on every host, VNI 100 on UDP 4790 ---------------------
testbed_up 116 117 118
kernel_overlay_up 116 117 118

kport mt-kclient 116 10.199.0.1
KMAP=
for ((n = 1; n <= TASKS; n++)); do
    kport "mt-kt$n" "$(task_host $n)" "10.199.0.$((10 + n))"
    nginx_task "mt-kt$n" "kt$n"
    KMAP+="${KMAP:+, }$((n - 1)) : 10.199.0.$((10 + n))"
    wait_until 5 ping_ok mt-kclient "10.199.0.$((10 + n))" || die "setup: kernel vxlan: kclient -> kt$n does not ping"
done
ip netns exec mt-kclient nft -f - <<EOF || die "setup: nftables DNAT rule in mt-kclient"
table ip mt_vip {
    chain output {
        type nat hook output priority -100; policy accept;
        ip daddr $KVIP tcp dport 80 dnat to numgen inc mod $TASKS map { $KMAP }
    }
}
EOF
note "kernel: $KVIP:80 -> numgen inc mod $TASKS map { $KMAP } (nftables, in mt-kclient)"

# --- mesh: three agents, network demo, service web ----------------------------------
start_cluster 116 117 118
mctl 116 network create demo >/dev/null || die "setup: network create demo"
mctl 116 service create --name web --network demo >/dev/null || die "setup: service create web"
for ((n = 1; n <= TASKS; n++)); do
    mk_container "w$n"
    attach "$(task_host $n)" "w$n" demo --service web >/dev/null || die "setup: attach w$n on .$(task_host $n)"
    nginx_task "mt-w$n" "w$n"
done
mk_container client
attach 116 client demo >/dev/null || die "setup: attach client on .116"
VIP=$(mctl 116 service inspect web | jq -er '.networks[0].vip') || die "setup: no VIP for web"
note "mesh: web VIP $VIP:80 -> $TASKS tasks (rr, mesh-agent on .116)"
replicas() { [ "$(mctl 116 service ls --format json | jq -r '.[] | select(.name == "web") | .replicas')" = "$TASKS" ]; }
wait_until 5 replicas || die "setup: web does not have $TASKS tasks on .116"

# wrk closes as soon as it has a response; whether its close or the task's
# FIN comes first is a race, and the mesh's agent hops make the client close
# first more often (about a quarter of the connections end in TIME_WAIT at
# the client, against a few per cent over the kernel path). Without reuse a
# client address runs out of connect ports (connect uses half the ephemeral
# range) after some 50k connections and connect() itself becomes what is
# measured: seen as 300 conn/s from the second mesh round on. Load
# generators allow TIME_WAIT reuse; both clients do here.
for ns in mt-client mt-kclient; do
    nsx "$ns" sysctl -qw net.ipv4.tcp_tw_reuse=1 || die "setup: tcp_tw_reuse in $ns"
done

# --- the balancers really spread -----------------------------------------------------
get_ok() { ip netns exec "$1" curl -s -m 3 -o /dev/null "http://$2/"; }
wait_until 5 get_ok mt-kclient "$KVIP" || die "setup: curl $KVIP from mt-kclient"
wait_until 5 get_ok mt-client "$VIP" || die "setup: curl $VIP from mt-client"
# The cluster view names every task a moment before the client's host has
# them in its tables: wait until TASKS new connections in a row reach TASKS tasks.
all_serve() {
    [ "$(for ((i = 0; i < TASKS; i++)); do ip netns exec mt-client curl -s -m 3 "http://$VIP/"; echo; done |
        sort -u | grep -c .)" = "$TASKS" ]
}
wait_until 5 all_serve || die "setup: not every task answers through $VIP (mesh)"
expect_spread "kernel $KVIP" mt-kclient "$KVIP" kt
expect_spread "mesh $VIP" mt-client "$VIP" w

# --- measure --------------------------------------------------------------------------

mesh_pids 116 117 118

CASES=(vip-keepalive vip-close)
declare -A CASE_ARGS=([vip-keepalive]="" [vip-close]="Connection: close")
declare -A CASE_LABEL=([vip-keepalive]="keep-alive         req/s" [vip-close]="Connection: close  conn/s")
declare -A KVALS=() MVALS=() RATIOS=()

# measure_side kernel|mesh CASE ROUND (for in_rounds): wrk's requests/s (for
# the mesh, with the agents' CPU: lib.sh ticked).
measure_side() {
    local side=$1 c=$2 r=$3 args=()
    [ -z "${CASE_ARGS[$c]}" ] || args=(-H "${CASE_ARGS[$c]}")
    if [ "$side" = kernel ]; then
        wrk_rps "$TMP/wrk-kernel-$c-$r.txt" mt-kclient "http://$KVIP:80/" "${args[@]}"
    else
        ticked "$c" wrk_rps "$TMP/wrk-mesh-$c-$r.txt" mt-client "http://$VIP:80/" "${args[@]}"
    fi
}

for c in "${CASES[@]}"; do in_rounds "$c"; done

row() { printf '  %-26s %-9s %-9s %-7s %-20s %-12s %s\n' "$@"; }
echo
echo "HTTP GET / through a VIP to $TASKS nginx tasks on other hosts: wrk -t1 -c16 -d${DURATION}s,"
echo "$ROUNDS rounds per case, kernel and mesh interleaved (kernel first in odd rounds)"
echo "kernel = nftables DNAT (numgen inc) + kernel vxlan; mesh = mesh-agent VIP"
echo "kernel, mesh: medians of the rounds; ratio: median of the rounds' mesh / kernel"
row case kernel mesh ratio "rounds' ratios" "errors k/m" "mesh agents CPU s/run"
declare -A RES=()
for c in "${CASES[@]}"; do
    RES[$c]=$(round_result "$c")
    read -r k m r <<<"${RES[$c]}"
    row "${CASE_LABEL[$c]}" "$k" "$m" "$r" "${RATIOS[$c]// /,}" \
        "$(wrk_errors_sum "$TMP/wrk-kernel-$c-")/$(wrk_errors_sum "$TMP/wrk-mesh-$c-")" "$(cpu_per_run "$c")"
done
echo
for c in "${CASES[@]}"; do
    read -r k m r <<<"${RES[$c]}"
    echo "RESULT case=$c kernel=$k mesh=$m ratio=$r rounds=${RATIOS[$c]// /,}"
done
finish
