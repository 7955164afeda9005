#!/usr/bin/env bash
# scripts/demo.sh: the Docker Swarm walkthrough (shared/seeds/000) replayed with mesh
# on the netns test bed, printing each command and its output.
#
#   mt-c1, mt-client              mt-c2, mt-db1, mt-who1        mt-web1, mt-who2
#      | TAP                         | TAP                         | TAP    network demo
#   mt-h116 .116 (founder)        mt-h117 .117 (join)           mt-h118 .118 (join)
#   mesh-agent                    mesh-agent                    mesh-agent
#      |                             |                             |
#  +---+-----------------------------+-----------------------------+---+
#  |            mt-br0 in mt-ul, 192.168.100.0/24                      |
#  +---+---------------------------------------------------------------+
#      |
#   mt-out .10: the outside client ([out]$ below)
#
# Scenes: 1 cluster; 2 service; 3 overlay network demo, db and web services, web
# published on port 80 of every host (curl from outside to each host); 4 VIP and DNS
# (whoami published on 8000); 5 routing mesh (from a host with no whoami task,
# curl 127.0.0.1:8000 and the outside client alternate between the tasks).
# Installs what it needs (scripts/setup.sh), then builds with `cargo build --release`
# (unless MESH_BIN names other binaries).

. "$(dirname "$0")/../netns-tests/lib.sh"

bash "$REPO/scripts/setup.sh" || die "set-up failed (see above)"
if [ -z "${MESH_BIN:-}" ]; then
    (cd "$REPO" && PATH="$HOME/.cargo/bin:$PATH" cargo build --release) || die "cargo build --release"
fi
need_bins

scene() { echo; echo "=== scene $1: $2"; echo; }

# show HOST TEXT: print the prompt line "[hHOST]$ TEXT" ("[out]$ TEXT" for out).
show() { if [ "$1" = out ]; then echo "[out]\$ $2"; else echo "[h$1]\$ $2"; fi; }

# on ID CMD...: print the command as typed on host .ID (or on the outside client
# for ID out), run it there, print its output; the demo stops if it fails.
# `meshctl` talks to that host's agent.
on() {
    local id=$1; shift
    show "$id" "$*"
    local out rc ns=mt-h$id
    [ "$id" = out ] && ns=mt-out
    if [ "$1" = meshctl ]; then out=$(mctl "$id" "${@:2}" 2>&1); rc=$?
    else out=$(ip netns exec "$ns" "$@" 2>&1); rc=$?; fi
    [ -n "$out" ] && printf '%s\n' "$out"
    [ "$rc" -eq 0 ] || die "demo: '$*' on $ns exited $rc"
    LAST=$out
}

# The demo's servers, one small Python program: `serve db PORT GREETING` greets
# every connection (mysql-like); `serve web NAME IP` answers HTTP on :80 with
# what db says, reached by name (wordpress-like); `serve whoami NAME IP` answers
# HTTP on :8000 with its name. Both HTTP servers tell the client address they saw.
cat >"$TMP/serve.py" <<'EOF'
import http.server, socket, socketserver, sys

def http_server(port, answer):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = (answer(self.client_address[0]) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    http.server.ThreadingHTTPServer.allow_reuse_address = True
    http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()

def ask_db():
    try:
        data = b""
        with socket.create_connection(("db", 3306), timeout=3) as s:
            while True:
                chunk = s.recv(512)
                if not chunk:
                    break
                data += chunk
        return "db says '%s'" % data.decode().strip()
    except OSError as e:
        return "db unreachable: %s" % e

kind = sys.argv[1]
if kind == "db":
    greeting = sys.argv[3].encode() + b"\n"
    class Greet(socketserver.StreamRequestHandler):
        def handle(self):
            self.wfile.write(greeting)
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer(("0.0.0.0", int(sys.argv[2])), Greet).serve_forever()
elif kind == "web":
    name, ip = sys.argv[2], sys.argv[3]
    http_server(80, lambda client: "%s (wordpress-like, %s): %s; you came from %s" % (name, ip, ask_db(), client))
elif kind == "whoami":
    name, ip = sys.argv[2], sys.argv[3]
    http_server(8000, lambda client: "I am %s (%s); you came from %s" % (name, ip, client))
EOF

# serve NS PORT ARGS...: run `serve.py ARGS...` in netns NS (bounded lifetime),
# wait until it listens on PORT.
serve() {
    local ns=$1 port=$2; shift 2
    ip netns exec "$ns" timeout 120 python3 "$TMP/serve.py" "$@" >"$TMP/serve-$ns.log" 2>&1 </dev/null &
    track $!
    wait_until 5 listening "$ns" "$port" || die "demo: server $* in $ns does not listen on :$port"
}

# answers OUTPUT: the task names in a run of whoami answers, counted
# ("whoami.1 x2, whoami.2 x2").
answers() { awk '/^I am / { print $3 }' <<<"$1" | sort | uniq -c | awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }'; }

testbed_up

scene 1 "a 3-host cluster: found on .116, two joins, node ls"
show 116 "mesh-agent --advertise-addr $UNDERLAY.116 &"
start_agent 116
on 116 meshctl cluster join-token
TOKEN=$LAST
for id in 117 118; do
    show "$id" "mesh-agent --advertise-addr $UNDERLAY.$id --join $UNDERLAY.116 --join-token $TOKEN &"
    start_agent "$id" --join "$UNDERLAY.116" --join-token "$TOKEN"
done
wait_until 10 ready_count 116 3 || die "demo: 3 nodes not Ready on .116 within 10 s"
on 116 meshctl node ls

scene 2 "a service: create, ps, scale to 5 (tasks attached across hosts), ls, rm"
on 116 meshctl network create demo
wait_until 2 network_seen 117 demo
on 117 meshctl network ls
on 116 meshctl service create --name svc --network demo
for i in 1 2 3 4 5; do
    id=$((116 + (i - 1) % 3))
    mk_container "svc$i"
    show "$id" "ip netns add mt-svc$i"
    on "$id" meshctl container attach --netns "mt-svc$i" --network demo --service svc --name "svc.$i"
    [ "$i" -eq 1 ] && on 116 meshctl service ps svc
done
replicas() { [ "$(mctl "$1" service ls --format json | jq -r '.[] | select(.name == "svc") | .replicas')" = "$2" ]; }
wait_until 2 replicas 118 5 || die "demo: svc does not show 5 replicas on .118"
on 118 meshctl service ls
on 117 meshctl service ps svc
for i in 1 2 3 4 5; do
    id=$((116 + (i - 1) % 3))
    on "$id" meshctl container detach --netns "mt-svc$i" --network demo
done
on 116 meshctl service rm svc

scene 3 "an overlay network demo: containers on two hosts; db and web, web published on port 80"
declare -A IP
for name in c1 c2; do
    id=$([ "$name" = c1 ] && echo 116 || echo 117)
    mk_container "$name"
    show "$id" "ip netns add mt-$name"
    on "$id" meshctl container attach --netns "mt-$name" --network demo --name "$name"
    IP[$name]=$LAST
done
wait_until 2 container_count 118 2
on 118 meshctl container ls
show 116 "ip netns exec mt-c1 ping -c 3 ${IP[c2]}"
ip netns exec mt-c1 ping -n -c 3 -i 0.3 -W 2 "${IP[c2]}" || die "demo: c1 cannot ping c2"
show 117 "ip netns exec mt-c2 ping -c 3 ${IP[c1]}"
ip netns exec mt-c2 ping -n -c 3 -i 0.3 -W 2 "${IP[c1]}" || die "demo: c2 cannot ping c1"
echo
echo "--- the db and web services on demo: web reaches db by name, web published on port 80"
on 116 meshctl service create --name db --network demo
on 116 meshctl service create --name web --network demo --publish 80:80
mk_container db1; mk_container web1
on 117 meshctl container attach --netns mt-db1 --network demo --service db --name db.1
DB_IP=$LAST
on 118 meshctl container attach --netns mt-web1 --network demo --service web --name web.1
WEB_IP=$LAST
show 117 "# db.1 ($DB_IP) runs a mysql-like server on :3306"
serve mt-db1 3306 db 3306 "mysql-like db says hello"
db_task_seen() { [ "$(mctl 118 service ls --format json | jq -r '.[] | select(.name == "db") | .replicas')" = 1 ]; }
wait_until 2 db_task_seen || die "demo: .118 does not see db's task"
show 118 "ip netns exec mt-web1 getent hosts db"
wait_until 2 ip netns exec mt-web1 getent hosts db || die "demo: web cannot resolve db"
ip netns exec mt-web1 getent hosts db
show 118 "ip netns exec mt-web1 nc -w 3 db 3306"
ip netns exec mt-web1 timeout 5 nc -w 3 db 3306 </dev/null || die "demo: web cannot reach db by name"
show 118 "# web.1 ($WEB_IP) runs a wordpress-like HTTP server on :80 that asks db, by name"
serve mt-web1 80 web web.1 "$WEB_IP"
on 116 meshctl service ls
echo
echo "--- web is published on port 80 of every host: the outside client reaches it through each"
web_up() { ip netns exec mt-out curl -sf -m 3 -o /dev/null "http://$UNDERLAY.$1/"; }
for id in 116 117 118; do
    wait_until 5 web_up "$id" || die "demo: web is not published on .$id:80 within 5 s"
    on out curl -s -m 3 "http://$UNDERLAY.$id/"
done

scene 4 "a whoami service and a client: names, tasks.whoami"
on 116 meshctl service create --name whoami --network demo --publish 8000:8000
mk_container client; mk_container who1; mk_container who2
on 116 meshctl container attach --netns mt-client --network demo --name client
on 117 meshctl container attach --netns mt-who1 --network demo --service whoami --name whoami.1
declare -A WHO_IP=([who1]=$LAST)
show 116 "ip netns exec mt-client dig +short whoami"
wait_until 2 ip netns exec mt-client dig +short +time=2 +tries=1 whoami
ip netns exec mt-client dig +short +time=2 +tries=1 whoami
show 116 "# scale whoami to 2"
on 118 meshctl container attach --netns mt-who2 --network demo --service whoami --name whoami.2
WHO_IP[who2]=$LAST
tasks2() { [ "$(ip netns exec mt-client dig +short +time=2 +tries=1 tasks.whoami | grep -c .)" -eq 2 ]; }
wait_until 2 tasks2 || die "demo: tasks.whoami does not list 2 tasks"
show 116 "ip netns exec mt-client dig +short tasks.whoami"
ip netns exec mt-client dig +short +time=2 +tries=1 tasks.whoami
on 116 meshctl service ps whoami
for w in who1 who2; do serve "mt-$w" 8000 whoami "whoami.${w#who}" "${WHO_IP[$w]}"; done
show 116 "ip netns exec mt-client ping -c 2 whoami"
ip netns exec mt-client ping -n -c 2 -i 0.3 -W 2 whoami || die "demo: ping of the whoami VIP"
for i in 1 2 3 4; do
    show 116 "ip netns exec mt-client curl -s whoami:8000"
    ip netns exec mt-client curl -s -m 3 whoami:8000 || die "demo: curl whoami:8000"
done

scene 5 "the routing mesh: whoami's port 8000 answers on every host, also where no task runs"
on 116 meshctl service ls
on 116 meshctl service ps whoami
task_hosts=$(mctl 116 service ps whoami --format json | jq -r '.[] | .address // .node') ||
    die "demo: service ps whoami --format json"
free=
for id in 116 117 118; do grep -qxF "$UNDERLAY.$id" <<<"$task_hosts" || { free=$id; break; }; done
[ -n "$free" ] || die "demo: every host runs a whoami task"
echo
echo "--- .$free runs no whoami task: curl 127.0.0.1:8000 there"
who_up() { ip netns exec "mt-h$free" curl -sf -m 3 -o /dev/null http://127.0.0.1:8000/; }
wait_until 5 who_up || die "demo: whoami is not published on .$free:8000 within 5 s"
out=
for i in 1 2 3 4; do on "$free" curl -s -m 3 127.0.0.1:8000; out+=$LAST$'\n'; done
echo "(4 answers: $(answers "$out"); from the host itself the task sees the host's ingress address)"
echo
echo "--- and from the outside client to .$free:8000: the tasks see its real address, $UNDERLAY.10"
out=
for i in 1 2 3 4; do on out curl -s -m 3 "http://$UNDERLAY.$free:8000/"; out+=$LAST$'\n'; done
echo "(4 answers: $(answers "$out"))"
echo
echo "demo done"
