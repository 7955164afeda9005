#!/usr/bin/env bash
# netns-tests/vip.sh: service VIPs balanced by the agents (issue 5, first cut).
#
#   mt-client (.116)        mt-w1 (.116)   mt-w2 (.117)   mt-w3 (.118)
#      |  curl whoami:8000     whoami tasks: python3 HTTP servers answering
#      |                       their own name on :8000, and UDP on :9000
#   mt-h116 ---------------- mt-h117 ---------------- mt-h118   (+ mt-out)
#            VXLAN over mt-br0 in mt-ul, 192.168.100.0/24
#
# The client resolves whoami to its VIP; the agent on the client's host picks
# a task (rr) per new connection, rewrites the destination, and the reply
# comes back from the VIP. ICMP echo to the VIP is answered; a VIP with no
# task refuses at once.
. "$(dirname "$0")/lib.sh"

testbed_up
start_cluster
mctl 116 network create demo >/dev/null || die "setup: network create"
mctl 116 service create --name whoami --network demo >/dev/null || die "setup: service create"
mctl 116 service create --name empty --network demo >/dev/null || die "setup: service create empty"

# task NAME HOST: a container that is a whoami task serving its name on TCP
# 8000 (HTTP) and UDP 9000.
task() {
    local name=$1 id=$2 dir="$TMP/www-$1"
    mk_container "$name"
    attach "$id" "$name" demo --service whoami >/dev/null || die "setup: attach $name"
    mkdir -p "$dir"; echo "$name" >"$dir/index.html"
    ip netns exec "mt-$name" timeout 120 python3 -m http.server 8000 --bind 0.0.0.0 --directory "$dir" >/dev/null 2>&1 &
    track $!
    ip netns exec "mt-$name" timeout 120 python3 -c '
import socket, socketserver, sys, threading
name = sys.argv[1].encode()
class Lines(socketserver.StreamRequestHandler):
    def handle(self):
        for _ in self.rfile:
            self.wfile.write(name + b"\n")
socketserver.ThreadingTCPServer.allow_reuse_address = True
tcp = socketserver.ThreadingTCPServer(("0.0.0.0", 7000), Lines)
threading.Thread(target=tcp.serve_forever, daemon=True).start()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 9000))
while True:
    d, a = s.recvfrom(2048); s.sendto(name, a)' "$name" >/dev/null 2>&1 &
    track $!
    wait_until 5 listening "mt-$name" 7000 || die "setup: $name line server"
    wait_until 5 listening "mt-$name" 8000 || die "setup: $name HTTP server"
}
task w1 116; task w2 117; task w3 118
mk_container client
attach 116 client demo >/dev/null || die "setup: attach client"
VIP=$(mctl 116 service inspect whoami | jq -r '.networks[0].vip')
note "whoami VIP $VIP"

replicas3() { [ "$(mctl "$1" service ls --format json | jq -r '.[] | select(.name == "whoami") | .replicas')" = 3 ]; }
check "whoami has 3 tasks on .116" wait_until 3 replicas3 116

get() { ip netns exec mt-client curl -s -m 3 "http://$1:8000/"; }
check "curl whoami:8000 answers through the VIP" wait_until 5 get whoami
seen=$(for i in 1 2 3 4 5 6; do get whoami; done | sort | uniq -c | awk '{print $2 ":" $1}' | tr '\n' ' ')
note "6 requests: $seen"
check "6 new connections spread 2/2/2 over 3 tasks (rr): $seen" test "$seen" = "w1:2 w2:2 w3:2 "

conns() { mctl 116 service inspect whoami | jq -r '.networks[0].counters.connections // 0'; }
task_conns() { mctl 116 service inspect whoami | jq -r '[.tasks[].counters.connections // 0] | map(tostring) | join(" ")'; }
check "service inspect on .116 counts the 7+ connections through the VIP ($(conns))" test "$(conns)" -ge 7
check "... and 2+ per task, 3 tasks ($(task_conns))" sh -c "set -- $(task_conns); [ \$# -eq 3 ] || exit 1; for n; do [ \$n -ge 2 ] || exit 1; done"

src_ok() { ip netns exec mt-client curl -s -m 3 -o /dev/null -w '%{remote_ip}' "http://$VIP:8000/" | grep -qx "$VIP"; }
check "the reply comes from the VIP" src_ok

# A task reaching its own service: never handed back to itself (its kernel
# would drop it), so every request is answered, by another task.
own=$(for i in 1 2 3 4; do ip netns exec mt-w1 curl -s -m 3 "http://whoami:8000/"; echo; done)
note "4 requests from w1 to whoami: $(echo $own)"
check "a task's 4 requests to its own service's VIP are all answered, by the other tasks" \
    test "$(grep -c '^w[23]$' <<<"$own")" = 4

udp_ok() { echo hi | ip netns exec mt-client timeout 3 nc -u -w 1 "$VIP" 9000 2>/dev/null | grep -q '^w[123]$'; }
check "UDP to VIP:9000 reaches a task, the answer comes back" wait_until 5 udp_ok
# No task listens on UDP 9999: the task's port unreachable comes back from
# the VIP, about the VIP, so the client's socket sees the refusal.
check "UDP to a VIP port no task listens on is refused at once (the task's ICMP error is translated)" \
    udp_refused mt-client "$VIP" 9999

check "ping whoami (the VIP) is answered" ip netns exec mt-client ping -n -c 2 -i 0.2 -W 2 whoami
big_ping() { ip netns exec mt-client ping -n -c 2 -i 0.2 -W 2 -s 3000 whoami | grep -q ' 0% packet loss'; }
check "a 3000-byte ping to the VIP (three fragments each way) is answered in full, every time" big_ping
# A datagram whose last fragment is sent before its first (as paths that
# spread packets deliver them): the agent keeps the early one until the
# first has picked a task, then sends it the same way. The task reassembles
# the datagram and answers.
reversed_udp() {
    ip netns exec mt-client timeout 5 python3 -c '
import random, socket, struct, sys
vip = sys.argv[1]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
u.connect((vip, 9000))
src, sport = u.getsockname()
data = b"y" * 2000
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
n = 8 + len(data)
a, b = socket.inet_aton(src), socket.inet_aton(vip)
c = csum(a + b + struct.pack("!BBH", 0, 17, n) + struct.pack("!HHHH", sport, 9000, n, 0) + data) or 0xffff
payload = struct.pack("!HHHH", sport, 9000, n, c) + data
ident = random.randrange(1, 65535)
def frag(off, more):
    chunk = payload[off:off + 1024]
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(chunk), ident,
                       (0x2000 if more else 0) | off // 8, 64, 17, 0, a, b) + chunk
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
r.sendto(frag(1024, False), (vip, 0))
r.sendto(frag(0, True), (vip, 0))
print(u.recv(65535).decode())' "$VIP" 2>/dev/null | grep -q '^w[123]$'
}
kept_before=$(agent_stat 116 fragments_parked)
check "a UDP datagram to the VIP whose last fragment comes first reaches a task, answered" \
    wait_until 5 reversed_udp
kept_after=$(agent_stat 116 fragments_parked)
check "... the early fragment was kept for its first (.116 kept ${kept_before:-?} -> ${kept_after:-?})" \
    test "${kept_after:-0}" -gt "${kept_before:-0}"

# Timed by curl itself (name lookup and connect), not by the wall clock
# around it: starting curl in a namespace is no part of the answer.
refused_fast() {
    local t rc
    t=$(ip netns exec mt-client curl -s -m 5 -o /dev/null -w '%{time_total}' "http://empty:8000/" 2>/dev/null)
    rc=$?
    [ "$rc" -eq 7 ] && awk -v t="$t" 'BEGIN { exit !(t + 0 < 1.0) }'
}
check "a VIP without tasks refuses TCP at once (connection refused, < 1 s)" refused_fast

# A long-lived connection keeps its task, and keeps moving data, while the
# service scales up under it.
ip netns exec mt-client timeout 30 python3 - "$VIP" >"$TMP/long.txt" 2>&1 <<'PY' &
import socket, sys, time
s = socket.create_connection((sys.argv[1], 7000), timeout=5)
f = s.makefile("rwb")
for i in range(10):
    f.write(b"hello\n"); f.flush()
    print(f.readline().decode().strip())
    time.sleep(0.3)
PY
lpid=$!; track $lpid
task w4 117
wait_until 10 gone $lpid
check "a long-lived connection answered 10 times across a scale-up" test "$(grep -c '^w[123]$' "$TMP/long.txt")" = 10
check "... always by the same task" test "$(sort -u "$TMP/long.txt" | wc -l)" = 1

# A host that goes Down takes its task out of DNS and out of every balancer.
W3=$(containers 116 w3 | jq -r .ip)
kill_agent 118
# (dig must answer, with the other tasks still there: a timeout is not "w3 gone")
no_w3_dns() {
    local out; out=$(ip netns exec mt-client dig +short +time=1 +tries=1 tasks.whoami) || return 1
    [ -n "$W3" ] && [ "$(grep -c . <<<"$out")" -ge 2 ] && ! grep -qx "$W3" <<<"$out"
}
check "after .118 dies, tasks.whoami drops w3 ($W3) within 10 s" wait_until 10 no_w3_dns
note "w3 left DNS after ${WAITED} s"
seen=$(for i in 1 2 3 4 5 6; do get whoami || echo failed; done | sort | uniq -c | awk '{print $2 ":" $1}' | tr '\n' ' ')
check "6 new connections all answered, none by the dead host's task: $seen" sh -c "! echo '$seen' | grep -Eq 'w3|failed'"

# Drain: detaching a task stops new connections to it at once, while its
# open connection finishes (10 answers over 3 s), then its interface goes.
declare -A HOST_OF=([w1]=116 [w2]=117 [w4]=117)
ip netns exec mt-client timeout 30 python3 - "$VIP" >"$TMP/drain.txt" 2>&1 <<'PY' &
import socket, sys, time
s = socket.create_connection((sys.argv[1], 7000), timeout=5)
f = s.makefile("rwb")
for i in range(10):
    f.write(b"hello\n"); f.flush()
    print(f.readline().decode().strip(), flush=True)
    # Idle for 2 s midway, as a keep-alive connection is: still open.
    time.sleep(2.0 if i == 4 else 0.3)
PY
dpid=$!; track $dpid
wait_until 5 grep -q . "$TMP/drain.txt" || die "drain: the session did not start"
T=$(head -1 "$TMP/drain.txt")
note "the session is on $T; detaching it"
( mctl "${HOST_OF[$T]}" container detach --netns "mt-$T" --network demo >/dev/null 2>&1; rc=$?
  date +%s%3N >"$TMP/detached.at"; echo "$rc" >"$TMP/detached" ) &
track $!
sleep 0.5
others=$(for i in 1 2 3 4; do get whoami || echo failed; done | sort -u | tr '\n' ' ')
check "new connections during the drain avoid $T: $others" sh -c "! echo '$others' | grep -Eq '$T|failed'"
wait_until 10 gone $dpid
session_end=$(date +%s%3N)
check "the draining task's open connection finished: 10 answers from $T" test "$(grep -cx "$T" "$TMP/drain.txt")" = 10
check "the detach completed after the drain" wait_until 10 test -s "$TMP/detached"
check "the idle pause did not end the drain: detached after the session closed" \
    sh -c "[ \$(cat $TMP/detached.at) -ge $((session_end - 300)) ]"
check "... and $T's eth0 is gone" sh -c "! ip -n mt-$T link show eth0 >/dev/null 2>&1"

# A detach whose meshctl goes away mid-drain (interrupted, or timed out)
# still finishes: the agent drains the task, then removes it.
for R in w1 w2 w4; do [ "$R" != "$T" ] && break; done
RIP=$(containers "${HOST_OF[$R]}" "$R" | jq -r .ip)
ip netns exec mt-client timeout 20 python3 - "$RIP" >"$TMP/held.txt" 2>&1 <<'PY' &
import socket, sys, time
s = socket.create_connection((sys.argv[1], 7000), timeout=5)
s.sendall(b"hello\n"); print(s.makefile().readline().strip(), flush=True)
time.sleep(4)
PY
hpid=$!; track $hpid
wait_until 5 grep -q . "$TMP/held.txt" || die "drain: the held connection to $R did not start"
timeout 1 "$BIN/meshctl" --api "$TMP/h${HOST_OF[$R]}.sock" container detach --netns "mt-$R" --network demo \
    >/dev/null 2>&1
check "meshctl detach of $R was cut off by its 1 s timeout (exit 124)" test $? = 124
check "... $R still drains while its client's connection is open" ip -n "mt-$R" link show eth0
wait_until 10 gone $hpid
r_gone() { ! ip -n "mt-$R" link show eth0 >/dev/null 2>&1 && [ "$(containers "${HOST_OF[$R]}" "$R")" = "" ]; }
check "... and once that connection closed, the agent finished the detach: $R's eth0 and endpoint are gone" \
    wait_until 5 r_gone

# An agent told to stop (TERM) takes no new request, but finishes the detach
# it is draining before it goes: the task's open connection ends its
# exchange, and meshctl gets its answer.
for S in w1 w2 w4; do [ "$S" != "$T" ] && [ "$S" != "$R" ] && break; done
SH=${HOST_OF[$S]}
SIP=$(containers "$SH" "$S" | jq -r .ip)
ip netns exec mt-client timeout 20 python3 - "$SIP" >"$TMP/held2.txt" 2>&1 <<'PY' &
import socket, sys, time
s = socket.create_connection((sys.argv[1], 7000), timeout=5)
f = s.makefile("rwb")
f.write(b"hello\n"); f.flush(); print(f.readline().decode().strip(), flush=True)
time.sleep(4)
f.write(b"again\n"); f.flush(); print(f.readline().decode().strip(), flush=True)
PY
hpid=$!; track $hpid
wait_until 5 grep -q . "$TMP/held2.txt" || die "stop: the held connection to $S did not start"
timeout 30 "$BIN/meshctl" --api "$TMP/h$SH.sock" container detach --netns "mt-$S" --network demo \
    >"$TMP/stop-detach.out" 2>&1 &
mpid=$!; track $mpid
s_draining() {
    mctl "$SH" service inspect whoami |
        jq -e --arg s "$S" 'any(.tasks[]; .name == $s and .state == "draining")' >/dev/null
}
check "service inspect shows $S draining" wait_until 5 s_draining
APID=${AGENT_PID[$SH]}
kill -TERM "$APID"
sleep 0.5
expect_error "a request to .$SH's agent while it stops is refused" mctl "$SH" node ls
wait_until 20 gone "$mpid"; wait "$mpid"; RC=$?
check "the detach of $S in flight when .$SH's agent was told to stop finished (exit $RC): $(head -c 120 "$TMP/stop-detach.out")" \
    test "$RC" = 0
wait_until 10 gone "$hpid"
check "... and $S's open connection ended its exchange first: $(tr '\n' ' ' <"$TMP/held2.txt")" \
    test "$(grep -cx "$S" "$TMP/held2.txt")" = 2
check "... then the agent exited" wait_until 10 gone "$APID"

finish
