#!/usr/bin/env bash
# netns-tests/ingress.sh: the routing mesh (issue 6). A published port answers
# on every host, and the task sees the real client.
#
#   mt-out (.10): the outside client; also an HTTP server for egress
#      |  curl 192.168.100.116:8000        (.116 runs no whoami task)
#   mt-h116 ------------- mt-h117 ------------- mt-h118
#   (no task)             w1: whoami            w2: whoami
#   mesh-ingress TUN      (HTTP :80 answering   (same)
#   + ip rules            "NAME CLIENT_IP")
#
# Host traffic for a published port is steered by policy routing into the
# agent's TUN, balanced there over the tasks on any host, and only the
# destination is rewritten: each task sees 192.168.100.10 as the client. The
# replies go back through the host the client reached. Containers reach the
# outside through their own host (masqueraded to its address).
. "$(dirname "$0")/lib.sh"

testbed_up
# .116, the host the outside client reaches, filters by reverse path strictly
# for all interfaces, as some distributions set it (the kernel takes the
# stricter of 'all' and the interface's own value).
ip netns exec mt-h116 sysctl -qw net.ipv4.conf.all.rp_filter=1 || die "setup: rp_filter on .116"
# Forwarding off on .116 and .117 before any agent (a new namespace copies
# the machine's value), so that putting it back at stop can be seen.
for h in 116 117; do ip netns exec "mt-h$h" sysctl -qw net.ipv4.ip_forward=0 || die "setup: forwarding off on .$h"; done
FORWARD_BEFORE=$(ip netns exec mt-h117 cat /proc/sys/net/ipv4/ip_forward)   # the host's own, before any agent
start_cluster
mctl 116 network create web >/dev/null || die "setup: network create"
mctl 116 service create --name whoami --network web --publish 8000:80 --publish 9001:9000/udp \
    --publish 7001:7000 --publish 9002:9999/udp >/dev/null || die "setup: service create"

# task NAME HOST: a whoami task: HTTP on :80 answering "NAME CLIENT_IP:PORT"
# (and 100 kB more for /big),
# UDP on :9000 answering "NAME CLIENT_IP" (padded with as many bytes as it
# got, when that is more than one frame holds), TCP lines on :7000 echoed as NAME.
task() {
    local name=$1 id=$2
    mk_container "$name"
    attach "$id" "$name" web --service whoami >/dev/null || die "setup: attach $name"
    ip netns exec "mt-$name" timeout 300 python3 -c '
import socket, socketserver, sys, threading, http.server
name = sys.argv[1]
class Who(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s %s:%d\n" % (name, self.client_address[0], self.client_address[1])).encode()
        if self.path == "/big": body += b"x" * 100000 + b"\n"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class Lines(socketserver.StreamRequestHandler):
    def handle(self):
        for _ in self.rfile:
            self.wfile.write(name.encode() + b"\n")
for cls, port, h in ((http.server.ThreadingHTTPServer, 80, Who), (socketserver.ThreadingTCPServer, 7000, Lines)):
    cls.allow_reuse_address = True
    threading.Thread(target=cls(("0.0.0.0", port), h).serve_forever, daemon=True).start()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 9000))
while True:
    d, a = s.recvfrom(65535); r = ("%s %s" % (name, a[0])).encode()
    s.sendto(r + b" " + b"y" * len(d) if len(d) > 1400 else r, a)' "$name" >/dev/null 2>&1 &
    track $!
    wait_until 5 listening "mt-$name" 80 || die "setup: $name HTTP server"
}
task w1 117; task w2 118
# The outside client's own HTTP server (for egress), on port 8000 too.
mkdir -p "$TMP/outside"; echo outside >"$TMP/outside/index.html"
ip netns exec mt-out timeout 300 python3 -m http.server 8000 --bind "$UNDERLAY.10" --directory "$TMP/outside" \
    >"$TMP/outside.log" 2>&1 &
track $!
wait_until 5 listening mt-out 8000 || die "setup: outside HTTP server"

replicas() { [ "$(mctl "$1" service ls --format json | jq -r '.[] | select(.name == "whoami") | .replicas')" = "$2" ]; }
check "whoami has 2 tasks on .116" wait_until 3 replicas 116 2

# get NS URL: one request, bounded.
get() { ip netns exec "$1" curl -s -m 3 "$2"; }

# ---- the outside client reaches a host without a task -------------------------
check "curl .116:8000 from the outside client answers" wait_until 5 get mt-out "http://$UNDERLAY.116:8000/"
out=$(for _ in 1 2 3 4; do get mt-out "http://$UNDERLAY.116:8000/"; done)
note "4 requests to .116:8000: $(echo "$out" | tr '\n' ' ')"
alternates() { [ "$(echo "$out" | awk '{print $1}' | sort | uniq -c | awk '{print $1}' | tr '\n' ' ')" = "2 2 " ]; }
check "the requests alternate between w1 and w2 (2 each)" alternates
real_client() { [ "$(echo "$out" | awk '{print $2}' | cut -d: -f1 | sort -u)" = "$UNDERLAY.10" ]; }
check "each task sees the real client 192.168.100.10 as the source" real_client
reserved() { ip netns exec "mt-h$1" cat /proc/sys/net/ipv4/ip_local_reserved_ports; }
check "published ports are kept off the hosts' own ephemeral ports" test "$(reserved 116)" = "7001,8000,9001-9002"
TASK_IP=$(containers 117 w1 | jq -r .ip)
lan_reaches_task() {
    ip -n mt-out route replace 10.0.0.0/8 via "$UNDERLAY.116"
    local rc=0; ip netns exec mt-out curl -s -m 2 "http://$TASK_IP:80/" >/dev/null || rc=1
    ip -n mt-out route del 10.0.0.0/8 via "$UNDERLAY.116"
    return $rc
}
check_not "the LAN cannot reach a task's address through a host, only published ports" lan_reaches_task
check "requests to .117 (a task host) and .118 answer too" \
    bash -c "ip netns exec mt-out curl -sf -m 3 http://$UNDERLAY.117:8000/ && ip netns exec mt-out curl -sf -m 3 http://$UNDERLAY.118:8000/"

# ---- from the host itself --------------------------------------------------
out=$(for _ in 1 2 3 4; do get mt-h116 "http://127.0.0.1:8000/"; done)
note "4 requests to 127.0.0.1:8000 on .116: $(echo "$out" | tr '\n' ' ')"
check "curl 127.0.0.1:8000 on .116 alternates between w1 and w2" alternates
out=$(for _ in 1 2; do get mt-h116 "http://$UNDERLAY.116:8000/"; done)
check "curl ADVERTISE_ADDR:8000 on .116 answers" grep -q "^w[12] " <<<"$out"
check "the host's own connections to port 8000 elsewhere are not captured" \
    bash -c "ip netns exec mt-h116 curl -sf -m 3 http://$UNDERLAY.10:8000/ | grep -qx outside"
# The host's own traffic to a container at its overlay address comes from
# the host's TUN address (169.254.X.Y); the answers come back to its stack,
# also from a task on another host, and for ping (which no flow notes).
host_curls_task() { get "mt-h$1" "http://$TASK_IP:80/" | grep -q "^w1 169.254.100.$1:"; }
check "the host .116 reaches w1 on .117 at $TASK_IP (curl; w1 sees .116's TUN address)" host_curls_task 116
check "... and its ping to $TASK_IP is answered" ip netns exec mt-h116 ping -n -c 2 -i 0.2 -W 2 "$TASK_IP"
check "the host .117 reaches its own task w1 likewise" host_curls_task 117
# A door lets in answers only: a container opens nothing on a host's stack
# through one (the hosts answer pings on these addresses).
check_not "w1 (on .117) cannot ping .116's stack at its door 169.254.100.116" \
    ip netns exec mt-w1 ping -n -c 1 -W 1 169.254.100.116
check_not "  ... nor its own host's, at 169.254.100.117" \
    ip netns exec mt-w1 ping -n -c 1 -W 1 169.254.100.117

# ---- every address of the host ---------------------------------------------
# As Swarm publishes on 0.0.0.0: an address given to .116 later serves the
# published ports within a few seconds (the agent looks every second), and
# one taken away loses its rules.
SECOND="$UNDERLAY.216"
ip -n mt-h116 addr add "$SECOND/24" dev eth0
second_ok() { get mt-out "http://$SECOND:8000/" | grep -q "^w[12] $UNDERLAY.10:"; }
check "an address added to .116 later serves the published port, and the task sees the real client" \
    wait_until 4 second_ok
second_rules() { ip -n mt-h116 rule list | grep -c "to $SECOND "; }
ip -n mt-h116 addr del "$SECOND/24" dev eth0
no_second_rules() { [ "$(second_rules)" = 0 ]; }
check "the address removed, its rules go too" wait_until 4 no_second_rules
check "and ADVERTISE_ADDR and 127.0.0.1 keep theirs" \
    bash -c "ip -n mt-h116 rule list | grep -q 'to $UNDERLAY.116 ipproto tcp dport 8000' && ip -n mt-h116 rule list | grep -q 'to 127.0.0.1 ipproto tcp dport 8000'"

# ---- a narrower path on the client's side ------------------------------------
#   mt-far 10.79.0.2 --(1500)-- mt-mid --(MTU 1280)-- mt-out (router) -- .116
# The task's full-size segments cannot pass mt-out: it says so to .116 (ICMP
# fragmentation needed, about .116:8000 -> 10.79.0.2). The agent sends that
# on to the task, translated, so its TCP lowers the path MTU; else the reply
# is resent at full size until the client gives up.
mk_container mid; mk_container far
ip -n mt-out link add to-mid mtu 1280 type veth peer name to-out netns mt-mid mtu 1280
ip -n mt-mid link add to-far type veth peer name eth0 netns mt-far
ip -n mt-out addr add 10.78.0.1/24 dev to-mid; ip -n mt-out link set to-mid up
ip -n mt-mid addr add 10.78.0.2/24 dev to-out; ip -n mt-mid link set to-out up
ip -n mt-mid addr add 10.79.0.1/24 dev to-far; ip -n mt-mid link set to-far up
ip -n mt-far addr add 10.79.0.2/24 dev eth0; ip -n mt-far link set eth0 up
ip -n mt-far route add default via 10.79.0.1
ip -n mt-mid route add default via 10.78.0.1
ip -n mt-out route add 10.79.0.0/24 via 10.78.0.2
ip netns exec mt-out sysctl -qw net.ipv4.ip_forward=1
ip netns exec mt-mid sysctl -qw net.ipv4.ip_forward=1
ip -n mt-h116 route add 10.79.0.0/24 via "$UNDERLAY.10"
big_ok() {
    local n; n=$(ip netns exec mt-far curl -s -m 6 "http://$UNDERLAY.116:8000/big" | wc -c)
    [ "$n" -gt 100000 ]
}
# Other software marks packets too (kube-proxy, Cilium, wg-quick): a table of
# "theirs" sets bit 0x1 on ICMP errors before the agent's chain, and counts
# after it those that carry both it and the agent's bit (0x200000): the
# agent only adds its own.
ip netns exec mt-h116 nft -f - <<'NFT'
table ip mt_theirs {
  chain before { type filter hook prerouting priority mangle - 10; icmp type destination-unreachable meta mark set 0x1; }
  chain after { type filter hook prerouting priority mangle + 10; icmp type destination-unreachable meta mark & 0x200001 == 0x200001 counter; }
}
NFT
check "a client behind a 1280-byte link gets a 100 kB answer through .116 (the path MTU error reaches the task)" \
    wait_until 30 big_ok
theirs_kept() {
    ip netns exec mt-h116 nft list chain ip mt_theirs after | grep -Eq 'counter packets [1-9]'
}
check "the error kept the mark bit another table gave it (the agent's is OR'd in)" theirs_kept
ip netns exec mt-h116 nft delete table ip mt_theirs

# ---- UDP --------------------------------------------------------------------
udp() { echo ping | ip netns exec mt-out timeout 3 nc -u -w 1 "$UNDERLAY.116" 9001; }
check "a UDP published port answers from a host without a task" wait_until 5 bash -c "udp() { echo ping | ip netns exec mt-out timeout 3 nc -u -w 1 $UNDERLAY.116 9001; }; udp | grep -q '^w[12] $UNDERLAY.10\$'"
note "UDP answer: $(udp)"
# A datagram bigger than any MTU on the way arrives in fragments, and so does
# the answer: the fragments after the first carry no port, and follow it.
big_udp() {
    ip netns exec mt-out timeout 5 python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(b"x" * 3000, (sys.argv[1], 9001))
d, _ = s.recvfrom(65535)
w = d.split()
print(len(d), w[0].decode(), w[1].decode())' "$UNDERLAY.116" 2>/dev/null
}
big_ok() { big_udp | awk -v c="$UNDERLAY.10" '$1 > 3000 && $2 ~ /^w[12]$/ && $3 == c { ok = 1 } END { exit !ok }'; }
check "a 3000-byte UDP datagram to a published port is answered in full (fragments both ways)" wait_until 5 big_ok
note "big UDP answer: $(big_udp)"
# No task listens on 9999: the task's port unreachable reaches the client
# translated (from .116, about .116:9002), so its socket sees the refusal.
check "UDP to a published port no task listens on is refused at once (the ICMP error is translated)" \
    udp_refused mt-out "$UNDERLAY.116" 9002

# ---- a long connection survives scaling -------------------------------------
fifo="$TMP/lines.in"; mkfifo "$fifo"
ip netns exec mt-out timeout 60 nc -n "$UNDERLAY.116" 7001 <"$fifo" >"$TMP/lines.out" 2>/dev/null &
ncpid=$!; track $ncpid
exec 7>"$fifo"
echo a >&7
first_line() { [ -s "$TMP/lines.out" ]; }
check "a long-lived TCP connection through .116:7001 is answered" wait_until 5 first_line
first=$(head -n1 "$TMP/lines.out")
task w3 116
check "whoami has 3 tasks after a scale-up" wait_until 3 replicas 116 3
for i in 1 2 3; do echo "b$i" >&7; sleep 0.2; done
four_lines() { [ "$(wc -l <"$TMP/lines.out")" -ge 4 ]; }
check "the connection keeps working across the scale-up" wait_until 5 four_lines
same_task() { [ "$(sort -u "$TMP/lines.out")" = "$first" ]; }
check "and keeps its task ($first)" same_task
exec 7>&-
stop_pid "$ncpid"     # its connection would hold a later drain for the full timeout
out=$(for _ in 1 2 3 4 5 6; do get mt-out "http://$UNDERLAY.116:8000/"; done)
three() { [ "$(echo "$out" | awk '{print $1}' | sort -u | wc -l)" -eq 3 ]; }
check "new requests reach the new task too (6 over 3)" three
check "the task on .116 itself also sees the real client" bash -c "echo '$out' | grep -q '^w3 $UNDERLAY.10:'"
hairpin() {
    for _ in 1 2 3; do ip netns exec "mt-$1" curl -sf -m 3 "http://$UNDERLAY.$2:8000/" | grep -q '^w[123] ' || return 1; done
}
check "a task calling its own host's published port (.116 from w3) gets answers" hairpin w3 116
check "so does a container calling another host's published port (.118 from w1)" hairpin w1 118

# ---- publishing reaches every host within a second ---------------------------------
mctl 116 service create --name later --network web --publish 8095:80 >/dev/null || fail "service create later"
steered() { ip -n mt-h118 rule | grep -q 'dport 8095'; }
check "a new published port is steered on .118 within 1 s of service create on .116" wait_until 1 steered
note "took ${WAITED}s"
refused_now() { ip netns exec mt-out curl -s -m 2 "http://$UNDERLAY.118:8095/" >/dev/null; [ $? -eq 7 ]; }
check "... and, with no task yet, a connection to it is refused at once (not left hanging)" refused_now
mctl 116 service rm later >/dev/null || fail "service rm later"

# ---- port conflicts and reserved ports -----------------------------------------
expect_error "a port already published is refused" mctl 117 service create --name other --network web --publish 8000:80
expect_error "the VXLAN port cannot be published" mctl 117 service create --name vx --network web --publish 4789:80/udp
none_created() { lacks 116 other service ls && lacks 116 vx service ls; }
check "nothing was created for either" none_created
# A host process already listening on a port that then gets published: the
# agent says it will no longer get that port's traffic.
ip netns exec mt-h117 timeout 20 nc -l 127.0.0.1 8123 >/dev/null 2>&1 &
track $!
wait_until 3 listening mt-h117 8123 || die "setup: a host listener on .117:8123"
mctl 116 service create --name shadow --network web --publish 8123:80 >/dev/null || fail "service create shadow"
check "publishing a port a host process listens on: .117's agent warns" \
    wait_until 3 grep -q 'a process of this host listens on a published port.*port=8123' "$TMP/h117.log"
mctl 116 service rm shadow >/dev/null || fail "service rm shadow"

# ---- egress -----------------------------------------------------------------
# (The outside server listens on 8000, a port the cluster publishes: only
# traffic to the hosts' own addresses is steered.)
check "a container reaches an HTTP server outside the overlay" \
    wait_until 5 bash -c "ip netns exec mt-w1 curl -sf -m 3 http://$UNDERLAY.10:8000/ | grep -qx outside"
check "the outside server sees the container's host (.117) as the source" grep -q "^$UNDERLAY.117 " "$TMP/outside.log"
check "a container on .116 reaches it too, as .116" \
    bash -c "ip netns exec mt-w3 curl -sf -m 3 http://$UNDERLAY.10:8000/ >/dev/null && grep -q '^$UNDERLAY.116 ' $TMP/outside.log"

# ---- the wordpress scene: web reaches db by name, web published on every host ----
mctl 116 network create wp >/dev/null || die "setup: network create wp"
mctl 116 service create --name db --network wp >/dev/null || die "setup: service create db"
mctl 117 service create --name wordpress --network wp --publish 8080:80 >/dev/null ||
    die "setup: service create wordpress"
mk_container db
attach 118 db wp --service db >/dev/null || die "setup: attach db"
ip netns exec mt-db timeout 300 python3 -c '
import socketserver
class Db(socketserver.StreamRequestHandler):
    def handle(self):
        for _ in self.rfile:
            self.wfile.write(b"rows-from-db\n")
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("0.0.0.0", 3306), Db).serve_forever()' >/dev/null 2>&1 &
track $!
wait_until 5 listening mt-db 3306 || die "setup: db server"
mk_container wp
attach 117 wp wp --service wordpress >/dev/null || die "setup: attach wordpress"
ip netns exec mt-wp timeout 300 python3 -c '
import socket, http.server
class Web(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with socket.create_connection(("db", 3306), timeout=2) as s:
            s.sendall(b"SELECT\n"); rows = s.makefile().readline().strip()
        body = ("wordpress: %s, for %s\n" % (rows, self.client_address[0])).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 80), Web).serve_forever()' >/dev/null 2>&1 &
track $!
wait_until 5 listening mt-wp 80 || die "setup: wordpress server"
wp_ok() { get mt-out "http://$UNDERLAY.$1:8080/" | grep -qx "wordpress: rows-from-db, for $UNDERLAY.10"; }
for id in 116 117 118; do
    check "wordpress on .$id:8080 answers with rows from db (reached by name), for the real client" \
        wait_until 5 wp_ok "$id"
done

# ---- a service on two networks: its published port reaches every task -----------
# m1 is on web only, m2 on wp only, m3 on both (one task: counted once). m3
# is attached to wp first: its default route goes out eth0 (wp), while the
# balancer picks it by its web address (eth1), so its replies leave eth0
# from eth1's address, which is its own all the same (not spoofed).
mctl 116 service create --name multi --network web --network wp --publish 8090:80 >/dev/null ||
    die "setup: service create multi"
for m in m1:117:web m2:118:wp m3:117:wp; do
    IFS=: read -r name id net <<<"$m"
    mk_container "$name"
    attach "$id" "$name" "$net" --service multi >/dev/null || die "setup: attach $name to $net"
done
attach 117 m3 web --service multi --ifname eth1 >/dev/null || die "setup: attach m3 to web too"
for name in m1 m2 m3; do
    ip netns exec "mt-$name" timeout 300 python3 -c '
import sys, http.server
class Who(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s %s\n" % (sys.argv[1], self.client_address[0])).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 80), Who).serve_forever()' "$name" >/dev/null 2>&1 &
    track $!
    wait_until 5 listening "mt-$name" 80 || die "setup: $name HTTP server"
done
# multi_spread: 6 new connections to .116:8090 (no task there), counted by task.
multi_spread() {
    local i
    for ((i = 0; i < 6; i++)); do get mt-out "http://$UNDERLAY.116:8090/" || echo failed; done |
        awk '{ print $1 }' | sort | uniq -c | awk '{ print $2 ":" $1 }' | tr '\n' ' '
}
all_three() { [ "$(multi_spread)" = "m1:2 m2:2 m3:2 " ]; }
check "a port published by a service on two networks reaches the tasks of both, each task once (rr 2/2/2)" \
    wait_until 5 all_three
multi_replicas() { [ "$(mctl 116 service ls --format json | jq -r '.[] | select(.name == "multi") | .replicas')" = 3 ]; }
check "service ls counts m3, attached on both networks, as one of 3 replicas" multi_replicas
check "the task on the second network sees the real client" \
    bash -c "for i in 1 2 3; do ip netns exec mt-out curl -s -m 3 http://$UNDERLAY.116:8090/; done | grep -qx 'm2 $UNDERLAY.10'"

# ---- something else removes the host's rules (a network manager restarting) -----
# As systemd-networkd does with rules it did not make: .116's steering rules
# and the moved local rule go. Without the local rule the host delivers
# nothing to itself; the agent puts all of it back.
ip -n mt-h116 rule del pref 1000 lookup local || die "setup: no local rule at 1000 on .116"
for _ in $(seq 64); do ip -n mt-h116 rule del table 4789000 2>/dev/null || break; done
rules_back() { ip -n mt-h116 rule show | grep -q 'lookup local' && ip -n mt-h116 rule show | grep -q 'lookup 4789000'; }
check "rules removed behind .116's back: the local rule and the steering rules back within 3 s" \
    wait_until 3 rules_back
check "  ... port 8000 on .116 answers the outside client again" \
    wait_until 5 sh -c "ip netns exec mt-out curl -s -m 1 http://$UNDERLAY.116:8000/ | grep -q '^w[123] $UNDERLAY.10:'"
check "  ... .116's own address answers it again (ping from outside)" \
    ip netns exec mt-out ping -n -c 1 -W 2 "$UNDERLAY.116"

# ---- a task host going Down -----------------------------------------------------
kill_agent 118
only_up() {
    local r; for _ in 1 2 3 4 5 6; do r=$(get mt-out "http://$UNDERLAY.116:8000/") || return 1
        case $r in w1*|w3*) ;; *) return 1 ;; esac; done
}
check "within 10 s of .118 dying, .116 sends requests only to live tasks" wait_until 10 only_up
note "took ${WAITED}s"

# ---- service rm stops publishing, and a stopped agent leaves nothing behind ------
for n in w1 w3; do
    id=117; [ "$n" = w3 ] && id=116
    mctl "$id" container detach --netns "mt-$n" --network web >/dev/null || fail "detach $n"
done
mctl 116 service rm whoami >/dev/null || fail "service rm whoami"
rules_gone() { ! ip -n mt-h117 rule | grep -q 'dport 8000'; }
check "after service rm, .117 steers port 8000 no more" wait_until 3 rules_gone
check_not "and .116:8000 no longer answers" get mt-out "http://$UNDERLAY.116:8000/"
# A crash first (the other services still publish ports here: reserved
# ports and forwarding are changed), then a restart: the next agent must put
# back the host's own values when it stops, not the crashed one's.
forward() { ip netns exec mt-h117 cat /proc/sys/net/ipv4/ip_forward; }
check "before the crash, .117 reserves the published ports and forwards" \
    bash -c "[ -n \"\$(ip netns exec mt-h117 cat /proc/sys/net/ipv4/ip_local_reserved_ports)\" ] && [ \"\$(ip netns exec mt-h117 cat /proc/sys/net/ipv4/ip_forward)\" = 1 ]"
check "wp's namespace has the DNS settings .117's agent wrote" test -e /etc/netns/mt-wp/resolv.conf
kill_agent 117 KILL
start_agent 117 --join "$UNDERLAY.116" --join-token "$TOKEN"
steers_again() { ip -n mt-h117 rule | grep -q 'dport 8080'; }
check "the restarted .117 steers the published ports again" wait_until 10 steers_again
check "  ... and removed the DNS settings the crashed agent left in wp's namespace" \
    test ! -e /etc/netns/mt-wp/resolv.conf
# Someone else reserves a port meanwhile: the agent must leave it there.
ip netns exec mt-h117 sh -c 'f=/proc/sys/net/ipv4/ip_local_reserved_ports; echo "$(cat $f),5555" >$f' ||
    die "setup: reserve 5555 on .117"
kill_agent 117 TERM
clean() {
    ! ip -n mt-h117 rule | grep -q 4789000 &&
        ip -n mt-h117 rule | grep -q '^0:.*lookup local' &&
        ! ip -n mt-h117 link show mesh-ingress >/dev/null 2>&1 &&
        ! ip netns exec mt-h117 nft list table ip mesh >/dev/null 2>&1 &&
        [ "$(reserved 117)" = 5555 ] && [ "$(forward)" = "$FORWARD_BEFORE" ]
}
check "a stopped agent (after a crash and a restart) leaves no rule, no TUN, no nftables table, no reserved port of its own (5555, reserved by someone else meanwhile, stays), forwarding as it was; local rule back at 0" \
    wait_until 5 clean

# Docker (or libvirt, Podman) started on .116 after the agent: it found
# forwarding on, and NATs its containers' traffic. The agent must not turn
# forwarding off under it when it stops.
printf 'table ip mt_docker {\n chain postrouting {\n  type nat hook postrouting priority srcnat;\n  ip saddr 172.17.0.0/16 oifname != "docker0" masquerade\n }\n}\n' |
    ip netns exec mt-h116 nft -f - || die "setup: a Docker-like NAT table on .116"
kill_agent 116 TERM
check "a stopped agent leaves forwarding on (it was 0) when another table NATs forwarded traffic" \
    bash -c "[ \"\$(ip netns exec mt-h116 cat /proc/sys/net/ipv4/ip_forward)\" = 1 ] && grep -q 'left forwarding on' '$TMP/h116.log'"
check "  ... and removed its own nftables table all the same" \
    bash -c "! ip netns exec mt-h116 nft list table ip mesh >/dev/null 2>&1"

finish
