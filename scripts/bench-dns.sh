#!/usr/bin/env bash
# scripts/bench-dns.sh: the embedded DNS at 127.0.0.11, mesh vs dnsmasq in one run.
#
#   mt-client (client)      mt-t1..tN (web.1..web.N)      mt-dnsq (plain netns, lo only)
#   dnsperf -> 127.0.0.11   tasks of service web          dnsperf -> 127.0.0.11:53
#      | TAP                   | TAP                      dnsmasq -k --listen-address=127.0.0.11
#   mesh-agent in mt-h116 .116 (network demo; serves        --no-resolv --no-hosts
#   127.0.0.11:53 inside every container it attached)        --addn-hosts=(the same names)
#      |
#  +---+-----------------------------------+
#  | mt-br0 in mt-ul, 192.168.100.0/24     |    (+ mt-out .10: the agent's DNS upstream,
#  +---------------------------------------+     where nothing listens: see below)
#
#   Both servers answer the same local names with the same addresses: the
#   dnsmasq hosts file is generated from `meshctl service inspect web` and
#   `container ls` (every container NAME and NAME.demo, web -> its VIP,
#   tasks.web -> every task IP). Before measuring, every name of the query file
#   is looked up with dig in both namespaces and must give the same A records.
#
#   The query file: web A, tasks.web A, web.1 A, client A, repeated. dnsperf
#   runs the same way against both (UDP, -c CLIENTS, -l DURATION, at most 100
#   outstanding, -Q MAX_QPS if set), dnsmasq first, then mesh. Shown: queries
#   per second, queries lost, average latency, and the CPU seconds (utime +
#   stime from /proc/PID/stat) the server process used meanwhile; every answer
#   must be NOERROR, and the agent must have forwarded nothing (its
#   dns_forwarded counter). ratio = mesh / dnsmasq QPS (higher is better).
#   The last line is machine-readable:
#     RESULT case=dns-local mesh=QPS dnsmasq=QPS ratio=R mesh_lost=N dnsmasq_lost=N
#
#   The agent's upstream is mt-out .10:53, on the test bed and with nothing
#   listening, so a name that is not local could never leave the test bed;
#   dnsmasq has no upstream at all (--no-resolv). All queries stay on lo.
#
# Usage: scripts/bench-dns.sh [--smoke]
#   DURATION=10 (seconds per dnsperf run); --smoke: 2 s runs, to keep the script working.
#   CLIENTS=4 (dnsperf -c), MAX_QPS= (dnsperf -Q; empty: as fast as the server goes),
#   TASKS=3 (tasks of service web).
#   Needs dnsperf, dnsmasq (Debian dnsmasq-base: the binary, no system service), dig, jq.

. "$(dirname "$0")/../netns-tests/lib.sh"

CLIENTS=${CLIENTS:-4}
MAX_QPS=${MAX_QPS:-}
TASKS=${TASKS:-3}
CLK_TCK=$(getconf CLK_TCK)
bench_duration "$@"
int_ok() {  # int_ok VAR VALUE: VALUE is a positive integer, else usage error
    if ! [[ $2 =~ ^[0-9]+$ ]] || [ "$2" -lt 1 ]; then echo "$0: $1 must be a positive integer, not '$2'" >&2; exit 2; fi
}
int_ok CLIENTS "$CLIENTS"
int_ok TASKS "$TASKS"
[ -z "$MAX_QPS" ] || int_ok MAX_QPS "$MAX_QPS"
need_bins
for tool in dnsperf dnsmasq dig jq; do
    command -v "$tool" >/dev/null || die "setup: $tool not found (apt-get install dnsperf dnsmasq-base dnsutils jq)"
done

NAMES=(web tasks.web web.1 client)              # what the query file asks, all type A
DIG=(dig +time=2 +tries=1 @127.0.0.11)

# --- mesh: one host, network demo, service web with TASKS tasks, client ------------
testbed_up 116
start_agent 116 --dns-upstream "$UNDERLAY.10:53"
mctl 116 network create demo >/dev/null || die "setup: network create demo"
mctl 116 service create --name web --network demo >/dev/null || die "setup: service create web"
for n in $(seq 1 "$TASKS"); do
    mk_container "t$n"
    mctl 116 container attach --netns "mt-t$n" --network demo --service web --name "web.$n" >/dev/null ||
        die "setup: attach mt-t$n as web.$n"
done
mk_container client
attach 116 client demo >/dev/null || die "setup: attach client"

MESH_PID=$(agent_pid 116) || die "setup: no mesh-agent process for .116"

# a_of NS NAME: the A records NS's 127.0.0.11 gives for NAME, sorted, on one line.
a_of() { ip netns exec "$1" "${DIG[@]}" +noall +answer "$2" A | awk '$4 == "A" { print $5 }' | sort | paste -sd' '; }
tasks_seen() { [ "$(a_of mt-client tasks.web | wc -w)" -eq "$TASKS" ]; }
wait_until 5 tasks_seen || die "setup: tasks.web from mt-client does not give $TASKS addresses: '$(a_of mt-client tasks.web)'"

# --- dnsmasq: the same names from a hosts file, in plain netns mt-dnsq ---------------
SVC=$(mctl 116 service inspect web) || die "setup: service inspect web"
CTRS=$(mctl 116 container ls --format json) || die "setup: container ls"
{
    jq -r '.networks[] | select(.network == "demo") | "\(.vip) web"' <<<"$SVC"
    jq -r '.tasks[] | select(.network == "demo") | "\(.ip) tasks.web"' <<<"$SVC"
    jq -r '.[] | select(.network == "demo") | "\(.ip) \(.name) \(.name).demo"' <<<"$CTRS"
} >"$TMP/hosts" || die "setup: hosts file"
HOSTS_LINES=$(paste -sd'|' "$TMP/hosts")
note "dnsmasq hosts file: ${HOSTS_LINES//|/, }"

mk_ns mt-dnsq
# -k: foreground (tracked, stopped on exit); no config file, no upstream, no
# /etc/hosts, no pid file; root so it reads $TMP (mode 0700) like everything here.
ip netns exec mt-dnsq dnsmasq -k --conf-file=/dev/null --pid-file= --user=root --group=root \
    --listen-address=127.0.0.11 --port=53 --bind-interfaces --no-resolv --no-hosts \
    --addn-hosts="$TMP/hosts" --cache-size=1000 --local-ttl=2 \
    --log-facility="$TMP/dnsmasq.log" 2>>"$TMP/dnsmasq.log" </dev/null &
DNSMASQ_PID=$!; track "$DNSMASQ_PID"
dnsmasq_up() { [ -n "$(a_of mt-dnsq web)" ]; }
wait_until 5 dnsmasq_up || die "setup: dnsmasq in mt-dnsq does not answer web"
[ "$(cat "/proc/$DNSMASQ_PID/comm" 2>/dev/null)" = dnsmasq ] || die "setup: pid $DNSMASQ_PID is not dnsmasq"

# --- correctness pre-check: same A records from both --------------------------------
short() { ip netns exec "$1" "${DIG[@]}" +short "$2" A | sort | paste -sd' '; }
same_answer() {  # same_answer NAME [DIGFN]: mesh and dnsmasq agree, and the answer is not empty
    local m d; m=$(${2:-a_of} mt-client "$1") d=$(${2:-a_of} mt-dnsq "$1")
    echo "mesh '$m', dnsmasq '$d'"
    [ -n "$m" ] && [ "$m" = "$d" ]
}
check "dig @127.0.0.11 web +short: same in mt-client and mt-dnsq ($(short mt-client web))" same_answer web short
for name in "${NAMES[@]}"; do
    check "$name A: same records from mesh and dnsmasq ($(a_of mt-client "$name"))" same_answer "$name"
done
[ "$FAILS" -eq 0 ] || die "mesh and dnsmasq disagree: not measuring"

# --- measure ---------------------------------------------------------------------
for _ in $(seq 1 25); do printf '%s A\n' "${NAMES[@]}"; done >"$TMP/queries.txt"

# ticks PID: CPU clock ticks PID has used (lib.sh: cpu_ticks).
ticks() { cpu_ticks "$1"; }
forwarded() { curl -s --max-time 5 --unix-socket "$TMP/h116.sock" http://x/v1/stats | jq -er .dns_forwarded; }

# run_dnsperf LABEL NS SERVER_PID: dnsperf from NS against its 127.0.0.11 for
# DURATION s; sets QPS/LOST/LAT (ms)/CPU [LABEL] (0 / n/a and a FAIL line on failure).
declare -A QPS=() LOST=() LAT=() CPU=()
run_dnsperf() {
    local label=$1 ns=$2 pid=$3 out="$TMP/dnsperf-$1.txt" t0 t1 codes
    local args=(-s 127.0.0.11 -d "$TMP/queries.txt" -l "$DURATION" -c "$CLIENTS" -t 2)
    [ -z "$MAX_QPS" ] || args+=(-Q "$MAX_QPS")
    QPS[$label]=0 LOST[$label]=n/a LAT[$label]=n/a CPU[$label]=n/a
    t0=$(ticks "$pid")
    ip netns exec "$ns" timeout $((DURATION + 15)) dnsperf "${args[@]}" >"$out" 2>&1 </dev/null
    t1=$(ticks "$pid")
    if [ -n "$t0" ] && [ -n "$t1" ]; then
        CPU[$label]=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", d / hz }')
    fi
    local q l a
    q=$(awk '/Queries per second:/ { print $4 }' "$out")
    l=$(awk '/Queries lost:/ { print $3 }' "$out")
    a=$(awk '/Average Latency \(s\):/ { printf "%.3f", $4 * 1000 }' "$out")
    if ! [[ $q =~ ^[0-9]+([.][0-9]+)?$ ]] || ! [[ $l =~ ^[0-9]+$ ]]; then
        fail "$label: dnsperf gave no result"; sed -n '1,12s/^/    /p' "$out"; return 1
    fi
    QPS[$label]=$(awk -v q="$q" 'BEGIN { printf "%.0f", q }') LOST[$label]=$l LAT[$label]=${a:-n/a}
    codes=$(awk '/Response codes:/ { sub(/.*Response codes:[ \t]*/, ""); print }' "$out")
    if [ -n "$codes" ] && ! grep -qE '[A-Z]' <<<"${codes//NOERROR/}"; then
        pass "$label: ${QPS[$label]} qps, ${LOST[$label]} lost, all answers NOERROR"
    else fail "$label: answers other than NOERROR: '${codes:-none}'"; fi
}

note "dnsperf -s 127.0.0.11 -c $CLIENTS -l $DURATION${MAX_QPS:+ -Q $MAX_QPS}: dnsmasq, then mesh"
FWD0=$(forwarded) || FWD0=
run_dnsperf dnsmasq mt-dnsq "$DNSMASQ_PID"
run_dnsperf mesh mt-client "$MESH_PID"
FWD1=$(forwarded) || FWD1=
if [ -n "$FWD0" ] && [ -n "$FWD1" ]; then
    check "mesh forwarded nothing upstream during the run ($((FWD1 - FWD0)) forwarded)" test "$FWD1" -eq "$FWD0"
else fail "mesh: cannot read dns_forwarded from /v1/stats"; fi

RATIO=$(ratio "${QPS[mesh]}" "${QPS[dnsmasq]}")
row() { printf '  %-9s %12s %8s %16s %14s\n' "$@"; }

echo
LIST=${NAMES[*]}
echo "embedded DNS at 127.0.0.11, local names (${LIST// /, }; A; $TASKS tasks):"
echo "dnsperf UDP -c $CLIENTS -l $DURATION${MAX_QPS:+ -Q $MAX_QPS}, up to 100 outstanding; ratio = mesh / dnsmasq QPS"
row server "queries/s" lost "avg latency ms" "server CPU s"
for s in dnsmasq mesh; do row "$s" "${QPS[$s]}" "${LOST[$s]}" "${LAT[$s]}" "${CPU[$s]}"; done
echo "  ratio     $RATIO"
echo
echo "RESULT case=dns-local mesh=${QPS[mesh]} dnsmasq=${QPS[dnsmasq]} ratio=$RATIO mesh_lost=${LOST[mesh]} dnsmasq_lost=${LOST[dnsmasq]}"
finish
