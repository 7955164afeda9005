#!/usr/bin/env bash
# attach.sh: container attach refusals leave nothing behind; detach and re-attach.
#
#   mt-c1 eth0          mt-c2 eth0          mt-dup (no eth0: every attach refused)
#      | TAP               | TAP  detach/re-attach     mt-nosuch: never exists
#   mt-h116 .116        mt-h117 .117        mt-h118 .118
#   mesh-agent          mesh-agent          mesh-agent
#      |                   |                   |          VXLAN UDP 4789
#  +---+-------------------+-------------------+---+
#  |       mt-br0 in mt-ul, 192.168.100.0/24       |
#  +-----------------------------------------------+

. "$(dirname "$0")/lib.sh"
need_bins
testbed_up
# .118 will lead (the lowest node ID), for the slow-leader scene below.
mkdir -p "$TMP/h118" && echo 0000000000000000000000000 >"$TMP/h118/node-id"
start_cluster

mctl 116 network create demo >/dev/null || die "setup: network create demo"
wait_until 1 network_seen 118 demo || die "setup: demo not seen on .118"
mk_container c1
mk_container c2
C1=$(attach 116 c1 demo) || die "setup: attach c1 on .116"
C2=$(attach 117 c2 demo) || die "setup: attach c2 on .117"
for id in 116 117 118; do wait_until 1 container_count "$id" 2 || die "setup: .$id does not list c1 and c2"; done
check "ping c1 -> c2 before anything else" ping_ok mt-c1 "$C2"

listing() { mctl "$1" container ls --format json | jq -cS 'sort_by(.network, .ip)'; }
BEFORE=$(listing 116)
unchanged() { local id; for id in 116 117 118; do [ "$(listing "$id")" = "$BEFORE" ] || return 1; done; }

# --- refusals --------------------------------------------------------------------
mk_container dup
expect_error "attach on .118 with c1's IP $C1 (same network, other host) refused" \
    attach 118 dup demo --ip "$C1"
check "  ... because the address is in use (whoever leads while the lead moves)" grep -q "already in use" "$TMP/err.txt"
check "  ... mt-dup has no eth0" no_eth0 mt-dup
expect_error "attach on .116 with c1's IP $C1 (same host) refused" attach 116 dup demo --ip "$C1"
check "  ... because the address is in use" grep -q "already in use" "$TMP/err.txt"
check "  ... mt-dup has no eth0" no_eth0 mt-dup
expect_error "attach to an unknown network refused" attach 118 dup no-such-net
check "  ... mt-dup has no eth0" no_eth0 mt-dup
[ -e /run/netns/mt-nosuch ] && die "setup: a netns mt-nosuch exists already"
expect_error "attach of a missing netns refused" attach 118 nosuch demo
if [ -e /run/netns/mt-nosuch ]; then
    NAMESPACES+=(mt-nosuch); fail "  ... attach created netns mt-nosuch"
else pass "  ... and no netns mt-nosuch was created"; fi
expect_error "attach with --netns '' refused" mctl 118 container attach --netns "" --network demo
expect_error "attach of a file that is no namespace (/etc/hostname) refused" \
    mctl 118 container attach --netns /etc/hostname --network demo --name dup
expect_error "attach of the host's own namespace (mt-h118, by name) refused" \
    mctl 118 container attach --netns mt-h118 --network demo --name dup --ifname m0
check "  ... and the host has no interface m0" sh -c "! ip -n mt-h118 link show m0 2>/dev/null"
expect_error "attach as c1 (the name of c1, on .116) refused" \
    mctl 118 container attach --netns mt-dup --network demo --name c1
check "  ... mt-dup has no eth0" no_eth0 mt-dup
expect_error "attach as C1 (names are case-insensitive, as in DNS) refused" \
    mctl 118 container attach --netns mt-dup --network demo --name C1
expect_error "--weight without --service refused" attach 118 dup demo --weight 2
check "  ... mt-dup has no eth0" no_eth0 mt-dup
sleep 1                                     # anything half-applied would have spread by now
check "after the refusals, container ls is unchanged on all hosts" unchanged

# A refused attach holds no address: the next attach may take it at once.
FREE=${C1%.*}.200
mk_container own
ip -n mt-own link add eth0 type veth peer name eth0p || die "setup: an eth0 (veth) of its own in mt-own"
expect_error "attach --ip $FREE to a netns with an eth0 of its own refused" attach 118 own demo --ip "$FREE"
expect_error "attach with a 16-character --ifname refused" \
    attach 118 own demo --ip "$FREE" --ifname aaaaaaaaaaaaaaaa
mk_container next
check "  ... and $FREE is free for the next attach right away" test "$(attach 118 next demo --ip "$FREE")" = "$FREE"
check "  ... (detached again)" mctl 118 container detach --netns mt-next --network demo

# Two attaches of one name at once, from two hosts: each host's own check
# sees neither, the leader takes one and refuses the other.
mk_container twin1; mk_container twin2
for t in 1 2; do
    mctl $((116 + t)) container attach --netns "mt-twin$t" --network demo --name twin \
        >"$TMP/twin$t.out" 2>&1 &
    TWIN[t]=$!
done
wait "${TWIN[1]}"; RC1=$?; wait "${TWIN[2]}"; RC2=$?
note "attaches of twin on .117 and .118: exit $RC1 and $RC2; $(cat "$TMP/twin1.out" "$TMP/twin2.out" | tr '\n' ' ')"
check "two attaches of the name twin at once, from .117 and .118: exactly one succeeds" \
    test "$((RC1 == 0)) $((RC2 == 0))" = "1 0" -o "$((RC1 == 0)) $((RC2 == 0))" = "0 1"
check "  ... the other says the name is taken" grep -q "name twin is" "$TMP/twin1.out" "$TMP/twin2.out"
for t in 1 2; do mctl $((116 + t)) container detach --netns "mt-twin$t" --network demo >/dev/null 2>&1; done

# A namespace deleted and made again under its name is attached again at once
# (its old attachment goes first), not refused as attached already.
mk_container again
attach 118 again demo >/dev/null || die "setup: attach again"
ip netns del mt-again && ip netns add mt-again || die "setup: re-create mt-again"
check "a re-created namespace is attached again at once" attach 118 again demo
once_listed() { [ "$(mctl 116 container ls --format json | jq '[.[] | select(.name == "again")] | length')" = 1 ]; }
check "  ... and listed once" wait_until 2 once_listed
mctl 118 container detach --netns mt-again --network demo >/dev/null 2>&1

# --- a leader that does not answer holds up only the attach that waits for it ------
# TCP to .118's cluster port is dropped: it stays Ready (gossip is UDP), but an
# attach on .117 waits for it (8 s) and fails. Other changes on .117 go on.
mk_container s1
attach 117 s1 demo >/dev/null || die "setup: attach s1 on .117"
nsx mt-h118 nft -f - <<'NFT' || die "setup: nft in mt-h118"
table inet mt_slow {
    chain in { type filter hook input priority 0; tcp dport 7946 drop; }
}
NFT
mk_container s2
timeout 20 "$BIN/meshctl" --api "$TMP/h117.sock" container attach --netns mt-s2 --network demo \
    >"$TMP/s2.out" 2>&1 &
SPID=$!; track $SPID
sleep 0.5
T0=$(date +%s%N)
mctl 117 container detach --netns mt-s1 --network demo >/dev/null; RC=$?
T1=$(date +%s%N)
WAITING=$(gone "$SPID" && echo no || echo yes)
MS=$(((T1 - T0) / 1000000))
# The attach waits 8 s for the leader: a detach queued behind it would take
# that long. 3 s leaves room for starting meshctl on a loaded machine.
check "detach on .117 while an attach there waits for the leader: exit $RC in $MS ms (under 3000)" \
    test "$RC" = 0 -a "$MS" -lt 3000
check "  ... the attach was still waiting meanwhile" test "$WAITING" = yes
wait_until 10 gone "$SPID"; wait "$SPID"; RC=$?
nsx mt-h118 nft delete table inet mt_slow
check "  ... then failed, saying so: $(head -c 120 "$TMP/s2.out")" test "$RC" -ne 0

# --- detach ------------------------------------------------------------------------
check "detach c2 on .117" mctl 117 container detach --netns mt-c2 --network demo
check "  ... mt-c2 has no eth0" no_eth0 mt-c2
c2_gone() { local id; for id in 116 117 118; do lacks "$id" c2 container ls || return 1; done; }
if wait_until 1 c2_gone; then pass "c2 gone from container ls on .116 .117 .118 (${WAITED} s)"
else fail "c2 gone from container ls on .116 .117 .118 within 1 s"; fi
check "ping c1 -> c2's old IP fails" ping_fails mt-c1 "$C2"
expect_error "detach c2 again refused" mctl 117 container detach --netns mt-c2 --network demo

# --- re-attach, with the IP it had --------------------------------------------------
check "re-attach c2 on .117 with --ip $C2" test "$(attach 117 c2 demo --ip "$C2")" = "$C2"
check "  ... mt-c2 has eth0 again" has_eth0 mt-c2
check "  ... listed on .116 within 1 s" wait_until 1 container_count 116 2
# c1 may still hold c2's old MAC in its ARP cache (stale, re-probed after ~5 s)
# unless the agent gives the same IP the same MAC again.
if wait_until 10 ping_ok mt-c1 "$C2"; then pass "ping c1 -> c2 after re-attach (${WAITED} s)"
else fail "ping c1 -> c2 after re-attach within 10 s"; fi
check "tcp c2 -> c1 after re-attach" tcp_ok mt-c2 mt-c1 "$C1"

# --- a container deletes its own interface -----------------------------------------
# Its TAP can no longer be read; the agent must stop reading it (a deleted
# TAP stays "ready" in epoll forever) instead of spinning on it.
P117=$(agent_pid 117) || die "setup: no mesh-agent process for .117"
ip -n mt-c2 link del eth0 || die "setup: ip link del eth0 in mt-c2"
sleep 0.5
t0=$(cpu_ticks "$P117"); sleep 2; t1=$(cpu_ticks "$P117")
HZ=$(getconf CLK_TCK)
check "after c2 deleted its eth0, .117's agent is not spinning ($((t1 - t0)) ticks of CPU in 2 s, at most $((HZ / 2)))" \
    test $((t1 - t0)) -le $((HZ / 2))
check "  ... detaches c2" mctl 117 container detach --netns mt-c2 --network demo
if C2_AGAIN=$(attach 117 c2 demo); then
    # .116 learns the new endpoint by gossip: a moment, as at the first attach.
    check "  ... and attaches it again, reachable: ping c1 -> c2 ($C2_AGAIN)" wait_until 10 ping_ok mt-c1 "$C2_AGAIN"
else fail "  ... and attaches it again: container attach failed"; fi

# --- a container on two networks leaves the first ------------------------------------
mctl 116 network create second >/dev/null || die "setup: network create second"
wait_until 2 network_seen 116 second || die "setup: second not seen on .116"
attach 116 c1 second --ifname eth1 >/dev/null || die "setup: attach c1 to second as eth1"
check "detach c1 from demo (its first network, which held the default route)" \
    mctl 116 container detach --netns mt-c1 --network demo
default_via_eth1() { ip -n mt-c1 route show default | grep -q 'dev eth1'; }
check "  ... c1 keeps a default route, now through eth1 on second" default_via_eth1

# --- a namespace given by path is the same as by name ------------------------------
expect_error "attach of c2 again, by path, refused (already attached)" \
    mctl 117 container attach --netns /run/netns/mt-c2 --network demo
check "detach of c2 by another path to it (/var/run/netns/mt-c2)" \
    mctl 117 container detach --netns /var/run/netns/mt-c2 --network demo
check "  ... c2 is gone from container ls on .117" lacks 117 c2 container ls

# --- containers that go away without a detach ---------------------------------------
# A named namespace deleted, and a process's namespace whose process exits: the
# agent's TAP would keep the dead namespace alive, its address and name taken.
mk_container gone
GONE_IP=$(attach 117 gone demo) || die "setup: attach gone on .117"
unshare -n sleep 60 &
PROC=$!; track "$PROC"
wait_until 2 test -e "/proc/$PROC/ns/net" || die "setup: a process namespace"
PROC_IP=$(mctl 118 container attach --netns "/proc/$PROC/ns/net" --network demo) ||
    die "setup: attach /proc/$PROC/ns/net on .118"
seen_all() { local id; for id in 116 117 118; do containers "$id" "$1" >/dev/null || return 1; done; }
wait_until 2 seen_all gone && wait_until 2 seen_all "pid-$PROC" || die "setup: gone and pid-$PROC not listed"
ip netns del mt-gone
kill "$PROC"; wait "$PROC" 2>/dev/null
gone_all() { local id n; for id in 116 117 118; do for n; do lacks "$id" "$n" container ls || return 1; done; done; }
check "deleted namespace mt-gone and exited pid-$PROC leave container ls on every host within 5 s" \
    wait_until 5 gone_all gone "pid-$PROC"
note "took ${WAITED}s"
mk_container back; mk_container back2
check "  ... and mt-gone's address can be attached again ($GONE_IP)" attach 116 back demo --ip "$GONE_IP"
check "  ... and pid-$PROC's too ($PROC_IP)" attach 116 back2 demo --ip "$PROC_IP"

# --- meshctl against an agent that takes the connection but never answers ----------
# (stopped, wedged): a detach gives up within seconds, not after the longest drain.
kill -STOP "${AGENT_PID[117]}"
T0=$(date +%s)
timeout 40 "$BIN/meshctl" --api "$TMP/h117.sock" container detach --netns mt-c2 --network demo \
    >"$TMP/stopped.out" 2>&1
RC=$?
T1=$(date +%s)
kill -CONT "${AGENT_PID[117]}"
check "detach against a stopped agent fails in $((T1 - T0)) s (exit $RC, under 40 s): $(head -c 150 "$TMP/stopped.out")" \
    test "$RC" -ne 0 -a "$RC" -ne 124
check "  ... saying the agent did not answer" grep -q 'did not answer' "$TMP/stopped.out"
check "  ... and the agent answers again once continued" wait_until 5 api_up 117

# --- a stopped agent takes its containers' DNS settings with it ------------------------
check "c1 (attached on .116) has its resolv.conf" test -e /etc/netns/mt-c1/resolv.conf
kill_agent 116 TERM
no_c1_dns() { [ ! -e /etc/netns/mt-c1/resolv.conf ]; }
check "  ... gone once .116's agent stopped" wait_until 5 no_c1_dns

finish
