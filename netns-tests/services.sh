#!/usr/bin/env bash
# services.sh: services are cluster-wide objects with a VIP per network; their
# tasks are containers attached with --service; refusals leave nothing behind.
#
#   mt-p1  mt-t1 (web)      mt-p2  mt-t2 (web)      mt-p3  mt-t3 (web)
#          mt-a1 (api/back)                         mt-t4 (web, attached late)
#      | TAP  (front, back)    | TAP                   | TAP
#   mt-h116 .116            mt-h117 .117            mt-h118 .118
#   mesh-agent              mesh-agent              mesh-agent
#   sees every change       service create/rm ...   sees every change
#      |  eth0                 |  eth0                 |  eth0     VXLAN UDP 4789
#  +---+-----------------------+-----------------------+---+
#  |         mt-br0 in mt-ul, 192.168.100.0/24             |
#  +-------------------------------------------------------+
#
#   services: web (vip, front), api (vip, front + back, publish 8080:80, wrr),
#             rr (dnsrr, front); networks front, back, spare.
#   mt-pN are plain containers (no --service); none may get a VIP.

. "$(dirname "$0")/lib.sh"
need_bins
testbed_up
start_cluster

HOSTS=(116 117 118)
for net in front back spare; do
    mctl 117 network create "$net" >/dev/null || die "setup: network create $net"
done
for id in "${HOSTS[@]}"; do
    for net in front back spare; do
        wait_until 1 network_seen "$id" "$net" || die "setup: $net not seen on .$id"
    done
done

# plain containers attached before any service exists: the VIPs allocated
# later must step around their addresses
declare -A IP HOST=([p1]=116 [p2]=117 [p3]=118 [t1]=116 [t2]=117 [t3]=118 [t4]=118 [a1]=116)
for c in p1 p2; do
    mk_container "$c"
    IP[$c]=$(attach "${HOST[$c]}" "$c" front) || die "setup: attach $c on .${HOST[$c]}"
done

svc_json() { mctl "$1" service ls --format json | jq -e --arg n "$2" '.[] | select(.name == $n)'; }
svc_seen() { svc_json "$1" "$2" >/dev/null; }
svc_gone() { local id; for id in "${HOSTS[@]}"; do lacks "$id" "$1" service ls || return 1; done; }
svc_seen_all() { local id; for id in "${HOSTS[@]}"; do svc_seen "$id" "$1" || return 1; done; }
svc_field() { svc_json "$1" "$2" | jq -er "$3"; }
vip_of() { svc_json "$1" "$2" | jq -er --arg net "$3" '.networks[] | select(.network == $net) | .vip'; }

# --- create on .117, seen on .116 and .118 within 1 s --------------------------
WEB_ID=$(mctl 117 service create --name web --network front)
check "service create web prints one non-empty line (the ID)" \
    test "$(printf '%s\n' "$WEB_ID" | grep -c .)" -eq 1
if wait_until 1 svc_seen_all web; then pass "web created on .117 listed on .116 and .118 (${WAITED} s)"
else fail "web created on .117 listed on .116 and .118 within 1 s"; fi
API_ID=$(mctl 117 service create --name api --network front --network back \
    --publish 8080:80 --scheduler wrr) || die "setup: service create api"
RR_ID=$(mctl 117 service create --name rr --network front --endpoint-mode dnsrr) ||
    die "setup: service create rr"
if wait_until 1 svc_seen_all api && wait_until 1 svc_seen_all rr; then
    pass "api and rr created on .117 listed on .116 and .118 (${WAITED} s)"
else fail "api and rr created on .117 listed on .116 and .118 within 1 s"; fi

web_json_ok() {
    svc_json 116 web | jq -e --arg id "$WEB_ID" '.id == $id and .name == "web" and .endpoint_mode == "vip"
        and .scheduler == "rr" and (.networks | length) == 1 and .networks[0].network == "front"
        and (.networks[0].vip | type) == "string" and .ports == [] and .replicas == 0 and .tasks == []'
}
check "service ls --format json on .116: web (id, vip mode, rr, front VIP, no ports, 0 replicas)" web_json_ok
api_json_ok() {
    svc_json 118 api | jq -e --arg id "$API_ID" '.id == $id and .endpoint_mode == "vip" and .scheduler == "wrr"
        and ([.networks[].network] | sort) == ["back", "front"] and all(.networks[]; (.vip | type) == "string")
        and .ports == ["8080:80/tcp"] and .replicas == 0'
}
check "service ls --format json on .118: api (wrr, a VIP on front and on back, 8080:80/tcp)" api_json_ok
rr_json_ok() {
    svc_json 116 rr | jq -e --arg id "$RR_ID" '.id == $id and .endpoint_mode == "dnsrr"
        and .networks == [{"network": "front", "vip": null}] and .ports == []'
}
check "service ls --format json on .116: rr (dnsrr, front, no VIP)" rr_json_ok
inspect_matches_ls() {
    # inspect adds this host's balancer counters; all else is the ls entry
    [ "$(mctl 116 service inspect web | jq -cS 'del(.networks[].counters) | .tasks |= map(del(.counters))')" = "$(svc_json 116 web | jq -cS .)" ]
}
check "service inspect web equals its service ls entry (on .116)" inspect_matches_ls

# the text table: header and one row per service
ls_text_ok() {
    local out; out=$(mctl 118 service ls) || return 1
    echo "$out"
    head -n 1 <<<"$out" | grep -Eq '^ID +NAME +MODE +REPLICAS +SCHEDULER +VIPS +PORTS *$' || return 1
    grep -Eq "^$WEB_ID +web +vip +0 +rr +front:$(vip_of 118 web front) +- *\$" <<<"$out" || return 1
    grep -Eq "^$API_ID +api +vip +0 +wrr +.*8080:80/tcp *\$" <<<"$out" || return 1
    grep -Eq "^$RR_ID +rr +dnsrr +0 +rr " <<<"$out"
}
check "service ls on .118: header ID NAME MODE REPLICAS SCHEDULER VIPS PORTS and a row per service" ls_text_ok
# listing ID: service ls --format json on .ID in one normal form (by name, tasks by name)
listing() { mctl "$1" service ls --format json | jq -cS 'sort_by(.name) | map(.tasks |= sort_by(.name))'; }
same_views() { local v; v=$(listing 116); [ "$v" = "$(listing 117)" ] && [ "$v" = "$(listing 118)" ]; }
check "all three hosts list the same services, IDs and VIPs" wait_until 1 same_views

# --- VIPs: inside the subnet, not the gateway, distinct, never a container's ----
VIP_WEB=$(vip_of 116 web front)
VIP_API_F=$(vip_of 116 api front)
VIP_API_B=$(vip_of 116 api back)
note "VIPs: web front $VIP_WEB, api front $VIP_API_F, api back $VIP_API_B"
vip_in_subnet() {  # vip_in_subnet VIP NET
    python3 - "$1" "$(network_field 116 "$2" subnet)" "$(network_field 116 "$2" gateway)" <<'EOF'
import ipaddress, sys
vip, net, gw = ipaddress.ip_address(sys.argv[1]), ipaddress.ip_network(sys.argv[2]), ipaddress.ip_address(sys.argv[3])
assert vip in net, f"{vip} not in {net}"
assert vip not in (net.network_address, net.broadcast_address), f"{vip} is not a host address of {net}"
assert vip != gw, f"{vip} is the gateway"
EOF
}
check "web's VIP $VIP_WEB is a host address of front's subnet, not the gateway" vip_in_subnet "$VIP_WEB" front
check "api's front VIP $VIP_API_F is inside front's subnet" vip_in_subnet "$VIP_API_F" front
check "api's back VIP $VIP_API_B is inside back's subnet" vip_in_subnet "$VIP_API_B" back
check "web and api have distinct VIPs on front" test "$VIP_WEB" != "$VIP_API_F"
check "no VIP is the address of p1 or p2 (attached before the services)" \
    test -z "$(comm -12 <(printf '%s\n' "$VIP_WEB" "$VIP_API_F" | sort) <(printf '%s\n' "${IP[p1]}" "${IP[p2]}" | sort))"

# tasks and plain containers attached after the services exist
mk_container p3
IP[p3]=$(attach 118 p3 front) || die "setup: attach p3 on .118"
for c in t1 t2 t3 t4 a1; do mk_container "$c"; done

# replicas_on ID SVC N: service ls on .ID gives SVC N replicas
replicas_on() { [ "$(svc_field "$1" "$2" .replicas)" = "$3" ]; }
replicas_all() { local id; for id in "${HOSTS[@]}"; do replicas_on "$id" "$1" "$2" || return 1; done; }
replicas_check() {  # replicas_check SVC N WHAT
    if wait_until 1 replicas_all "$1" "$2"; then pass "$3: $1 REPLICAS $2 on .116 .117 .118 (${WAITED} s)"
    else fail "$3: $1 REPLICAS $2 on .116 .117 .118 within 1 s (got $(for id in "${HOSTS[@]}"; do
        printf '.%s=%s ' "$id" "$(svc_field "$id" "$1" .replicas)"; done))"; fi
}

n=0
for c in t1 t2 t3; do
    n=$((n + 1))
    if IP[$c]=$(attach "${HOST[$c]}" "$c" front --service web 2>"$TMP/attach.err"); then
        pass "attach $c on .${HOST[$c]} to front --service web: ${IP[$c]}"
    else fail "attach $c on .${HOST[$c]} to front --service web: $(head -c 200 "$TMP/attach.err")"; fi
    replicas_check web "$n" "after attaching $c"
done
if IP[a1]=$(attach 116 a1 back --service api 2>"$TMP/attach.err"); then
    pass "attach a1 on .116 to back --service api: ${IP[a1]}"
else fail "attach a1 on .116 to back --service api: $(head -c 200 "$TMP/attach.err")"; fi
replicas_check api 1 "after attaching a1"

ALL_IPS=$(for c in p1 p2 p3 t1 t2 t3 a1; do [ -n "${IP[$c]:-}" ] && echo "${IP[$c]}"; done | sort)
check "no container got a VIP ($(echo "$ALL_IPS" | tr '\n' ' '))" \
    test -z "$(comm -12 <(echo "$ALL_IPS") <(printf '%s\n' "$VIP_WEB" "$VIP_API_F" "$VIP_API_B" | sort))"
check "all container IPs are distinct" test "$(uniq -d <<<"$ALL_IPS" | grep -c .)" -eq 0
mk_container vipgrab
expect_error "attach with --ip of web's VIP $VIP_WEB refused" attach 117 vipgrab front --ip "$VIP_WEB"
check "  ... mt-vipgrab has no eth0" no_eth0 mt-vipgrab

# --- service ps: each task's host address and IP, from every host -------------
ps_json_ok() {  # ps_json_ok ID: service ps web --format json on .ID lists t1..t3
    local out c; out=$(mctl "$1" service ps web --format json) || return 1
    [ "$(jq length <<<"$out")" -eq 3 ] || { echo "$out"; return 1; }
    for c in t1 t2 t3; do
        jq -e --arg n "$c" --arg ns "mt-$c" --arg ip "${IP[$c]:-none}" --arg a "$UNDERLAY.${HOST[$c]}" \
            'any(.[]; .name == $n and .netns == $ns and .network == "front" and .ip == $ip
                 and .address == $a and (.node | type) == "string" and (.state | type) == "string")' \
            <<<"$out" >/dev/null || { echo "$c missing or wrong in: $out"; return 1; }
    done
}
for id in "${HOSTS[@]}"; do
    check "service ps web --format json on .$id: t1 t2 t3 with network, IP and host address" ps_json_ok "$id"
done
ps_text_ok() {
    local out c; out=$(mctl 117 service ps web) || return 1
    echo "$out"
    head -n 1 <<<"$out" | grep -Eq '^NAME +SERVICE +NODE +NETWORK +IP +STATE *$' || return 1
    [ "$(tail -n +2 <<<"$out" | grep -c .)" -eq 3 ] || return 1
    for c in t1 t2 t3; do grep -Eq "^$c +web +.* +front +${IP[$c]:-none} +[A-Za-z]+ *\$" <<<"$out" || return 1; done
}
check "service ps web on .117: header NAME SERVICE NODE NETWORK IP STATE, a row per task" ps_text_ok
inspect_tasks_ok() {
    mctl 118 service inspect web | jq -e --arg a "${IP[t1]:-none}" --arg b "${IP[t2]:-none}" --arg c "${IP[t3]:-none}" \
        '.replicas == 3 and ([.tasks[].ip] | sort) == ([$a, $b, $c] | sort)'
}
check "service inspect web on .118: replicas 3 and the three task IPs" inspect_tasks_ok
api_ps_ok() {
    mctl 118 service ps api --format json | jq -e --arg ip "${IP[a1]:-none}" --arg a "$UNDERLAY.116" \
        'length == 1 and .[0].name == "a1" and .[0].network == "back" and .[0].ip == $ip and .[0].address == $a'
}
check "service ps api on .118: a1 on back at .116" api_ps_ok

# --- scale: a 4th task, then detaches -------------------------------------------
if IP[t4]=$(attach 118 t4 front --service web 2>"$TMP/attach.err"); then pass "attach t4 on .118 --service web: ${IP[t4]}"
else fail "attach t4 on .118 --service web: $(head -c 200 "$TMP/attach.err")"; fi
replicas_check web 4 "after attaching t4"
check "detach t2 on .117" mctl 117 container detach --netns mt-t2 --network front
replicas_check web 3 "after detaching t2"
t2_not_in_ps() { lacks 116 t2 service ps web; }
check "  ... t2 gone from service ps web on .116" wait_until 1 t2_not_in_ps
check "detach t4 on .118" mctl 118 container detach --netns mt-t4 --network front
replicas_check web 2 "after detaching t4"
check "detaching a plain container leaves web's REPLICAS alone" mctl 118 container detach --netns mt-p3 --network front
sleep 0.3
check "  ... web still has 2 replicas on .116" replicas_on 116 web 2

# --- refusals: one line on stderr, non-zero, nothing half-applied ---------------
BEFORE=$(listing 116)
expect_error "duplicate name web (created on .117) refused on .118" mctl 118 service create --name web --network back
expect_error "WEB (web's name in other case: one DNS name) refused" mctl 118 service create --name WEB --network back
expect_error "unknown network refused" mctl 116 service create --name svc-x --network no-such-net
expect_error "unknown network among known ones refused" \
    mctl 116 service create --name svc-x --network front --network no-such-net
expect_error "--publish 8080 (published by api) refused" \
    mctl 118 service create --name svc-x --network front --publish 8080:8080
expect_error "dnsrr with --publish refused" \
    mctl 116 service create --name svc-x --network front --endpoint-mode dnsrr --publish 9090:80
expect_error "unknown scheduler refused" mctl 117 service create --name svc-x --network front --scheduler fifo
expect_error "service rm web with attached tasks (t1 on .116, t3 on .118) refused on .117" mctl 117 service rm web
expect_error "service rm api with a1 attached on .116 refused on .118" mctl 118 service rm api
expect_error "service rm of an unknown service refused" mctl 116 service rm no-such-svc
expect_error "service inspect of an unknown service refused" mctl 116 service inspect no-such-svc
expect_error "service ps of an unknown service refused" mctl 116 service ps no-such-svc
mk_container x1
expect_error "attach --service web to back (web is not on back) refused" attach 117 x1 back --service web
check "  ... mt-x1 has no eth0" no_eth0 mt-x1
expect_error "attach --service of an unknown service refused" attach 117 x1 front --service no-such-svc
check "  ... mt-x1 has no eth0" no_eth0 mt-x1
x1_absent() { lacks 116 x1 container ls; }
check "  ... x1 in no container ls" x1_absent
expect_error "network rm front refused while web, api and rr use it" mctl 116 network rm front
mctl 117 service create --name idle --network spare >/dev/null || die "setup: service create idle"
wait_until 1 svc_seen 118 idle || die "setup: idle not seen on .118"
expect_error "network rm spare refused while service idle (no tasks) uses it, on .118" mctl 118 network rm spare
check "  ... spare still listed on .116" network_seen 116 spare
sleep 0.5
BEFORE=$(jq -cS 'map(select(.name != "idle"))' <<<"$BEFORE")
unchanged_but_idle() {
    local id; for id in "${HOSTS[@]}"; do
        [ "$(listing "$id" | jq -cS 'map(select(.name != "idle"))')" = "$BEFORE" ] || return 1
    done
}
check "after the refusals, service ls is unchanged on all hosts" unchanged_but_idle
check "after the refusals, network ls still lists front, back, spare on .118" \
    test "$(mctl 118 network ls --format json | jq -c '[.[].name] | sort')" = '["back","front","spare"]'

# --- rm ------------------------------------------------------------------------
check "service rm idle on .116" mctl 116 service rm idle
if wait_until 1 svc_gone idle; then pass "idle gone from .116 .117 .118 (${WAITED} s)"
else fail "idle gone from .116 .117 .118 within 1 s"; fi
check "network rm spare once idle is gone" mctl 117 network rm spare
check "detach a1 on .116" mctl 116 container detach --netns mt-a1 --network back
replicas_check api 0 "after detaching a1"
check "service rm api on .118 once it has no tasks" mctl 118 service rm api
if wait_until 1 svc_gone api; then pass "api gone from .116 .117 .118 (${WAITED} s)"
else fail "api gone from .116 .117 .118 within 1 s"; fi
check "port 8080 is free again: service create api2 --publish 8080:80" \
    mctl 116 service create --name api2 --network back --publish 8080:80
check "the name api is free again" mctl 117 service create --name api --network back
for c in t1 t3; do
    check "detach $c on .${HOST[$c]}" mctl "${HOST[$c]}" container detach --netns "mt-$c" --network front
done
replicas_check web 0 "after detaching every task"
check "service rm web on .117" mctl 117 service rm web
if wait_until 1 svc_gone web; then pass "web gone from .116 .117 .118 (${WAITED} s)"
else fail "web gone from .116 .117 .118 within 1 s"; fi
for s in rr api api2; do mctl 116 service rm "$s" >/dev/null || fail "service rm $s"; done
for c in p1 p2; do mctl "${HOST[$c]}" container detach --netns "mt-$c" --network front >/dev/null; done
no_containers() { local id; for id in "${HOSTS[@]}"; do container_count "$id" 0 || return 1; done; }
wait_until 1 no_containers || fail "container ls empty on all hosts within 1 s of the last detach"
check "network rm front once no service uses it" mctl 118 network rm front
check "network rm back once no service uses it" mctl 116 network rm back
no_services() { local id; for id in "${HOSTS[@]}"; do [ "$(mctl "$id" service ls --format json | jq length)" -eq 0 ] || return 1; done; }
check "no service left on any host" wait_until 1 no_services

finish
