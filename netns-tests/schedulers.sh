#!/usr/bin/env bash
# netns-tests/schedulers.sh: each VIP scheduler's distribution seen by real
# clients, and scaling 1 -> 5 -> 2 under a live iperf3 stream (issue 5).
#
#   mt-client (.116)                 tasks: NAME answers its name on HTTP :8000
#      |  curl SERVICE:8000          and on TCP :7000 (one line per line),
#      |                             iperf3 -s on :5201 (service "bulk")
#   mt-h116 ---------------- mt-h117 ---------------- mt-h118
#            VXLAN over mt-br0 in mt-ul, 192.168.100.0/24
#
# rr spreads evenly; wrr follows --weight; lc puts held connections on the
# least loaded task; sh keeps a client on one task; mh (Maglev) gives the
# same flow the same task from any host. Scaling: a long-lived TCP stream
# keeps moving data while tasks come and go, new tasks get new connections
# within a second, drained ones get none.
. "$(dirname "$0")/lib.sh"

testbed_up
start_cluster
mctl 116 network create demo >/dev/null || die "setup: network create"

# task SERVICE NAME HOST [ARGS...]: a container attached as a task of
# SERVICE, serving its name on HTTP :8000 and TCP :7000.
task() {
    local svc=$1 name=$2 id=$3; shift 3
    mk_container "$name"
    attach "$id" "$name" demo --service "$svc" "$@" >/dev/null || die "setup: attach $name"
    ip netns exec "mt-$name" timeout 300 python3 -c '
import socketserver, sys, threading, http.server
name = sys.argv[1]
class Who(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (name + "\n").encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class Lines(socketserver.StreamRequestHandler):
    def handle(self):
        for _ in self.rfile:
            self.wfile.write(name.encode() + b"\n")
socketserver.ThreadingTCPServer.allow_reuse_address = True
threading.Thread(target=socketserver.ThreadingTCPServer(("0.0.0.0", 7000), Lines).serve_forever, daemon=True).start()
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), Who).serve_forever()' "$name" >/dev/null 2>&1 &
    track $!
    wait_until 5 listening "mt-$name" 8000 || die "setup: $name HTTP server"
    wait_until 5 listening "mt-$name" 7000 || die "setup: $name line server"
}

# spread SERVICE N [CURL ARGS...]: N requests from the client; prints
# "NAME:COUNT" sorted by name.
spread() {
    local svc=$1 n=$2; shift 2
    for _ in $(seq "$n"); do ip netns exec mt-client curl -s -m 3 "$@" "http://$svc:8000/" || echo failed; done |
        sort | uniq -c | awk '{print $2 ":" $1}' | tr '\n' ' '
}

mk_container client
attach 116 client demo >/dev/null || die "setup: attach client"

for s in rr wrr lc sh mh; do
    mctl 116 service create --name "s-$s" --network demo --scheduler "$s" >/dev/null || die "setup: service s-$s"
done
task s-rr rr1 116; task s-rr rr2 117; task s-rr rr3 118
task s-wrr wa 116 --weight 1; task s-wrr wb 117 --weight 2; task s-wrr wc 118 --weight 3
task s-lc lc1 116; task s-lc lc2 117; task s-lc lc3 118
task s-sh sh1 116; task s-sh sh2 117; task s-sh sh3 118
task s-mh mh1 116; task s-mh mh2 117; task s-mh mh3 118
tasks_seen() { [ "$(mctl 116 service ls --format json | jq '[.[] | select(.name | startswith("s-")) | .replicas] | add')" = 15 ]; }
check "15 tasks over 5 services seen on .116" wait_until 5 tasks_seen
wait_until 5 bash -c "ip netns exec mt-client curl -sf -m 2 http://s-rr:8000/" || die "setup: s-rr does not answer"
# The control plane shows the tasks a moment before .116's balancer has them
# all: wait until one round reaches every task (rr: 3 requests, wrr 1:2:3: 6).
all_tasks() { [ "$(spread "$1" "$2" | tr ' ' '\n' | grep -v failed | grep -c .)" = 3 ]; }
wait_until 5 all_tasks s-rr 3 || die "setup: s-rr does not reach its 3 tasks"
wait_until 5 all_tasks s-wrr 6 || die "setup: s-wrr does not reach its 3 tasks"

got=$(spread s-rr 12); note "rr, 12 requests: $got"
check "rr: 12 new connections over 3 tasks are 4 each" test "$got" = "rr1:4 rr2:4 rr3:4 "

got=$(spread s-wrr 12); note "wrr (weights 1 2 3), 12 requests: $got"
check "wrr: 12 new connections follow the weights 1:2:3" test "$got" = "wa:2 wb:4 wc:6 "

# lc: six connections held open at once land 2 per task.
held=$(ip netns exec mt-client timeout 20 python3 -c '
import socket
socks = []
for _ in range(6):
    s = socket.create_connection(("s-lc", 7000), timeout=3)
    s.sendall(b"x\n"); socks.append(s)
    print(s.makefile().readline().strip())
' | sort | uniq -c | awk '{print $2 ":" $1}' | tr '\n' ' ')
note "lc, 6 held connections: $held"
check "lc: six held connections are spread 2 per task" test "$held" = "lc1:2 lc2:2 lc3:2 "
# Four held connections (one task gets two); close those two; the next two
# new connections go to that task, now the least loaded (rr would not).
lc_refill=$(ip netns exec mt-client timeout 20 python3 -c '
import socket, time, collections
def conn():
    s = socket.create_connection(("s-lc", 7000), timeout=3)
    s.sendall(b"x\n"); return s, s.makefile().readline().strip()
held = [conn() for _ in range(4)]
busiest = collections.Counter(n for _, n in held).most_common(1)[0][0]
for s, n in held:
    if n == busiest: s.close()
time.sleep(1)
print(busiest, *[conn()[1] for _ in range(2)])
')
note "lc: closed the two connections of the busiest task, then two new ones went to: $lc_refill"
check "lc: new connections go to the task with the fewest open ones" \
    bash -c "set -- $lc_refill; [ \$# -eq 3 ] && [ \$2 = \$1 ] && [ \$3 = \$1 ]"

got=$(spread s-sh 6); note "sh, 6 requests from one client: $got"
check "sh: one client stays on one task" grep -Eq '^sh[123]:6 $' <<<"$got"

got=$(spread s-mh 12); note "mh, 12 requests: $got"
check "mh: new flows are spread over more than one task" bash -c "[ \$(wc -w <<<'$got') -ge 2 ] && ! grep -q failed <<<'$got'"
# Six flows with fixed source ports, from .116 and then from .117.
# (The server closes first, so the client keeps no TIME_WAIT that would
# stop the same ports from connecting again.)
mh_flows() {
    ip netns exec mt-client timeout 20 python3 -c '
import socket
for port in range(61101, 61107):  # outside the ephemeral range
    try:
        s = socket.socket(); s.settimeout(3)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", port)); s.connect(("s-mh", 8000))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096): data += chunk
        s.close()
        print(data.split(b"\r\n\r\n", 1)[1].decode().strip(), end=" ")
    except OSError as e:
        print("failed:%s" % type(e).__name__, end=" ")
'
}
one=$(mh_flows); note "mh, six flows from .116: $one"
check "mh: the six flows were all answered by a task" bash -c "[[ '$one' =~ ^(mh[123]\ ){6}\$ ]]"
CIP=$(containers 116 client | jq -r .ip)
mctl 116 container detach --netns mt-client --network demo >/dev/null || die "detach client"
out=$(attach 117 client demo --ip "$CIP" 2>&1) || die "setup: re-attach the client on .117: $out"
wait_until 5 bash -c "ip netns exec mt-client curl -sf -m 2 http://s-rr:8000/" || die "setup: client on .117 does not answer"
again=$(mh_flows); note "mh, the same six flows from .117: $again"
check "mh: each flow picks the same task from another host" test "$again" = "$one"

# ---- 1 -> 5 -> 2 under a live stream ----------------------------------------------
mctl 116 service create --name bulk --network demo >/dev/null || die "setup: service bulk"
task bulk b1 117
ip netns exec mt-b1 timeout 120 iperf3 -s -p 5201 >/dev/null 2>&1 &
track $!
wait_until 5 listening mt-b1 5201 || die "setup: iperf3 server"
ip netns exec mt-client timeout 60 iperf3 -c bulk -p 5201 -t 14 -i 1 -b 200M --json >"$TMP/iperf.json" 2>&1 &
ipid=$!; track $ipid
sleep 2
task bulk b2 116; task bulk b3 118; task bulk b4 117; task bulk b5 118
five() { [ "$(spread bulk 5 | grep -Eo 'b[1-5]:' | sort -u | wc -l)" -eq 5 ]; }
check "scaled to 5: five new connections reach five tasks (within 1 s)" wait_until 1 five
for n in b3 b4 b5; do
    id=118; [ "$n" = b4 ] && id=117
    mctl "$id" container detach --netns "mt-$n" --network demo >/dev/null || fail "detach $n"
done
got=$(spread bulk 6); note "scaled to 2, 6 requests: $got"
check "scaled to 2: new connections reach only b1 and b2" test "$got" = "b1:3 b2:3 "
wait_until 30 gone "$ipid"
stream_ok() {
    jq -e '(.error | not) and ([.intervals[].sum.bytes] | length >= 12 and all(. > 0))' "$TMP/iperf.json"
}
check "the iperf3 stream through the VIP moved data every second, 1 -> 5 -> 2, no error" stream_ok
note "iperf3: $(jq -r '"\(.end.sum_received.bytes) bytes received, \(.end.sum_sent.retransmits) retransmits"' "$TMP/iperf.json" 2>/dev/null)"

finish
