#!/usr/bin/env bash
# scripts/demo.sh: the Docker Swarm walkthrough (shared/seeds/000) replayed with mesh
# on the netns test bed, printing each command and its output.
#
#   mt-c1 eth0                    mt-c2 eth0                    network demo
#      | TAP                         | TAP
#   mt-h116 .116 (founder)        mt-h117 .117 (join)           mt-h118 .118 (join)
#   mesh-agent                    mesh-agent                    mesh-agent
#      |                             |                             |
#  +---+-----------------------------+-----------------------------+---+
#  |            mt-br0 in mt-ul, 192.168.100.0/24  (mt-out .10)        |
#  +-------------------------------------------------------------------+
#
# Scenes: 1 cluster; 2 service; 3 overlay network demo (+ db/web services);
# 4 VIP and DNS; 5 routing mesh. Scenes whose issues have not landed are skipped.
# Builds with `cargo build --release` if the binaries are missing (and MESH_BIN unset).

. "$(dirname "$0")/../netns-tests/lib.sh"

if [ -z "${MESH_BIN:-}" ] && ! { [ -x "$BIN/mesh-agent" ] && [ -x "$BIN/meshctl" ]; }; then
    (cd "$REPO" && cargo build --release) || die "cargo build --release"
fi
need_bins

scene() { echo; echo "=== scene $1: $2"; echo; }
skip() { echo; echo "scene $1: skipped (needs issue #4/#5/#6)"; }

# show HOST TEXT: print the prompt line "[hHOST]$ TEXT".
show() { echo "[h$1]\$ $2"; }

# on ID CMD...: print the command as typed on host .ID, run it there, print its
# output; the demo stops if it fails. `meshctl` talks to that host's agent.
on() {
    local id=$1; shift
    show "$id" "$*"
    local out rc
    if [ "$1" = meshctl ]; then out=$(mctl "$id" "${@:2}" 2>&1); rc=$?
    else out=$(ip netns exec "mt-h$id" "$@" 2>&1); rc=$?; fi
    [ -n "$out" ] && printf '%s\n' "$out"
    [ "$rc" -eq 0 ] || die "demo: '$*' on .$id exited $rc"
    LAST=$out
}

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

scene 3 "an overlay network demo, containers on two hosts"
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
echo "--- the db and web services on demo: web reaches db by name"
on 116 meshctl service create --name db --network demo
on 116 meshctl service create --name web --network demo
mk_container db1; mk_container web1
on 117 meshctl container attach --netns mt-db1 --network demo --service db --name db.1
on 118 meshctl container attach --netns mt-web1 --network demo --service web --name web.1
ip netns exec mt-db1 timeout 20 nc -l -p 3306 -q 1 <<<"mysql-like db says hello" >/dev/null 2>&1 &
track $!
wait_until 3 listening mt-db1 3306 || die "demo: db listener did not start"
db_task_seen() { [ "$(mctl 118 service ls --format json | jq -r '.[] | select(.name == "db") | .replicas')" = 1 ]; }
wait_until 2 db_task_seen || die "demo: .118 does not see db's task"
show 118 "ip netns exec mt-web1 getent hosts db"
wait_until 2 ip netns exec mt-web1 getent hosts db || die "demo: web cannot resolve db"
ip netns exec mt-web1 getent hosts db
show 118 "ip netns exec mt-web1 nc -w 3 db 3306"
ip netns exec mt-web1 timeout 5 nc -w 3 db 3306 </dev/null || die "demo: web cannot reach db by name"
echo "scene 3: publishing web on port 80 of every host: skipped (needs issue #6, the routing mesh)"

scene 4 "a whoami service and a client: names, tasks.whoami"
on 116 meshctl service create --name whoami --network demo
mk_container client; mk_container who1; mk_container who2
on 116 meshctl container attach --netns mt-client --network demo --name client
on 117 meshctl container attach --netns mt-who1 --network demo --service whoami --name whoami.1
show 116 "ip netns exec mt-client dig +short whoami"
wait_until 2 ip netns exec mt-client dig +short +time=2 +tries=1 whoami
ip netns exec mt-client dig +short +time=2 +tries=1 whoami
show 116 "# scale whoami to 2"
on 118 meshctl container attach --netns mt-who2 --network demo --service whoami --name whoami.2
tasks2() { [ "$(ip netns exec mt-client dig +short +time=2 +tries=1 tasks.whoami | grep -c .)" -eq 2 ]; }
wait_until 2 tasks2 || die "demo: tasks.whoami does not list 2 tasks"
show 116 "ip netns exec mt-client dig +short tasks.whoami"
ip netns exec mt-client dig +short +time=2 +tries=1 tasks.whoami
on 116 meshctl service ps whoami
for w in who1 who2; do
    mkdir -p "$TMP/$w"; echo "I am whoami.${w#who}" >"$TMP/$w/index.html"
    ip netns exec "mt-$w" timeout 60 python3 -m http.server 8000 --directory "$TMP/$w" >/dev/null 2>&1 &
    track $!
    wait_until 5 listening "mt-$w" 8000 || die "demo: whoami server in mt-$w"
done
show 116 "ip netns exec mt-client ping -c 2 whoami"
ip netns exec mt-client ping -n -c 2 -i 0.3 -W 2 whoami || die "demo: ping of the whoami VIP"
for i in 1 2 3 4; do
    show 116 "ip netns exec mt-client curl -s whoami:8000"
    ip netns exec mt-client curl -s -m 3 whoami:8000 || die "demo: curl whoami:8000"
done
echo; echo "scene 5: the routing mesh: skipped (needs issue #6)"
echo
echo "demo done"
