#!/usr/bin/env bash
# scripts/bench-repeat.sh: runs one benchmark script N times and sums up its
# ratios, for machines whose neighbours make one run say little (a shared
# KVM host: the kernel baseline alone was seen to move 2-4x between runs).
#
#   run 1 .. N of scripts/bench-NAME.sh [ARGS...], one after the other; each
#   run's own RESULT lines compare mesh with its baseline in that run, so every
#   ratio is a side-by-side figure. For each case the N ratios are listed in
#   run order with their median, min and max, then one machine-readable line:
#     REPEAT bench=NAME case=CASE runs=N median=R min=R max=R ratios=R,R,...
#   A run that fails (non-zero exit, or no RESULT line) is reported and counted;
#   the summary covers the runs that gave a ratio, and the script exits 1 if any
#   run failed.
#
# Usage: scripts/bench-repeat.sh N NAME [ARGS...]
#   NAME: overlay, dns, vip, ingress (scripts/bench-NAME.sh); ARGS go to every
#   run (--smoke, --busy-poll US, ...; DURATION and AGENT_ARGS pass through
#   the environment). Example: scripts/bench-repeat.sh 3 ingress
. "$(dirname "$0")/../netns-tests/lib.sh"     # median; TMP, removed on exit

usage() { echo "usage: $0 N overlay|dns|vip|ingress [ARGS...]" >&2; exit 2; }
[ $# -ge 2 ] || usage
N=$1 NAME=$2
shift 2
[[ $N =~ ^[1-9][0-9]*$ ]] && [ "$N" -le 50 ] || { echo "$0: N must be 1 to 50, not '$N'" >&2; exit 2; }
SCRIPT="$(cd "$(dirname "$0")" && pwd)/bench-$NAME.sh"
case $NAME in overlay | dns | vip | ingress) ;; *) usage ;; esac
[ -f "$SCRIPT" ] || { echo "$0: $SCRIPT not found" >&2; exit 2; }

OUT=$TMP
failed=0
for ((i = 1; i <= N; i++)); do
    echo "== bench-$NAME run $i of $N"
    # Each run is bounded like CI's smoke runs: a hung run cannot hold the rest.
    timeout -k 30 900 bash "$SCRIPT" "$@" >"$OUT/run$i.txt" 2>&1
    rc=$?
    grep -E '^RESULT case=' "$OUT/run$i.txt" | sed 's/^/   /'
    if [ "$rc" -ne 0 ] || ! grep -q '^RESULT case=' "$OUT/run$i.txt"; then
        failed=$((failed + 1))
        echo "   run $i failed (exit $rc); its last lines:"
        tail -n 5 "$OUT/run$i.txt" | sed 's/^/     /'
    fi
done

# One line per case: its ratios in run order (runs without one are skipped).
for ((i = 1; i <= N; i++)); do cat "$OUT/run$i.txt"; done | awk '
    /^RESULT case=/ {
        c = ""; r = ""
        for (i = 2; i <= NF; i++) {
            split($i, kv, "=")
            if (kv[1] == "case") c = kv[2]
            if (kv[1] == "ratio" && kv[2] ~ /^[0-9]*[.]?[0-9]+$/) r = kv[2]
        }
        if (c != "" && r != "") { if (!(c in seen)) { seen[c] = 1; order[++n] = c } list[c] = list[c] (list[c] == "" ? "" : ",") r }
    }
    END { for (i = 1; i <= n; i++) print order[i], list[order[i]] }' >"$OUT/cases.txt"

echo
echo "bench-$NAME, $N runs ($failed failed): ratio = mesh / baseline within each run"
while read -r c list; do
    IFS=, read -ra rs <<<"$list"
    sorted=$(printf '%s\n' "${rs[@]}" | sort -g)
    k=${#rs[@]}
    median=$(printf %.2f "$(median "${rs[@]}")")
    min=$(printf '%s\n' "$sorted" | head -n 1)
    max=$(printf '%s\n' "$sorted" | tail -n 1)
    printf '  %-22s median %-6s min %-6s max %-6s runs: %s\n' "$c" "$median" "$min" "$max" "${list//,/ }"
    echo "REPEAT bench=$NAME case=$c runs=$k median=$median min=$min max=$max ratios=$list"
done <"$OUT/cases.txt"
[ "$failed" -eq 0 ]
