#!/usr/bin/env bash
# scripts/test.sh: the whole test suite, as CI runs it.
#
#   cargo build --release      -> target/release/{mesh-agent,meshctl}
#   cargo test --release       -> "test result: ... N passed; M failed" lines, summed
#   netns-tests/*.sh           -> PASS:/FAIL: lines, each scenario under timeout 300
#
# Ends with one line "N passed, N failed"; exits non-zero if anything failed.
# Usage: scripts/test.sh [--no-cargo-test] [SCENARIO...]   (e.g. overlay interop)
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
[ "$(id -u)" -eq 0 ] || { echo "scripts/test.sh: needs root (network namespaces); run it as root (sudo -i)" >&2; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh || { echo "scripts/test.sh: set-up failed (see above)" >&2; exit 1; }

CARGO_TEST=1
[ "${1:-}" = --no-cargo-test ] && { CARGO_TEST=; shift; }
ORDER=(cluster network overlay attach interop)   # then any other scenario, by name

PASSED=0 FAILED=0
LOG=$(mktemp -d /tmp/mt-test.XXXXXX)
trap 'rm -rf "$LOG"' EXIT

count() {  # count PASSES FAILS LABEL
    PASSED=$((PASSED + $1)); FAILED=$((FAILED + $2))
    echo "== $3: $1 passed, $2 failed"
}

echo "== cargo build --release"
if ! cargo build --release; then
    echo "FAIL: cargo build --release"; count 0 1 "cargo build"
fi

if [ -n "$CARGO_TEST" ]; then
    echo "== cargo test --release"
    cargo test --release 2>&1 | tee "$LOG/cargo-test.txt"
    rc=${PIPESTATUS[0]}
    # "test result: ok. 12 passed; 0 failed; 0 ignored; ..." once per test binary
    read -r p f < <(awk -F'[ ;.]+' '/^test result: / { for (i = 2; i <= NF; i++) {
            if ($i == "passed") p += $(i - 1); if ($i == "failed") f += $(i - 1) } }
        END { print p + 0, f + 0 }' "$LOG/cargo-test.txt")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL: cargo test --release exited $rc with no failed test"; f=1
    fi
    count "$p" "$f" "cargo test"
fi

scenarios=()
if [ $# -gt 0 ]; then
    for s in "$@"; do scenarios+=("netns-tests/${s%.sh}.sh"); done
else
    for s in "${ORDER[@]}"; do [ -f "netns-tests/$s.sh" ] && scenarios+=("netns-tests/$s.sh"); done
    for f in netns-tests/*.sh; do
        s=$(basename "$f" .sh)
        [ "$s" = lib ] && continue
        [[ " ${ORDER[*]} " == *" $s "* ]] || scenarios+=("$f")
    done
fi

# leftovers: mt-* namespaces a scenario killed by the timeout left behind (its
# EXIT trap never ran); the next scenario's `ip netns add` would fail on them.
leftovers() {
    local ns pid
    for ns in $(ip netns list | awk '$1 ~ /^mt-/ { print $1 }'); do
        echo "== removing namespace $ns left by an earlier run"
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
        rm -rf "/etc/netns/$ns"
    done
}

for f in "${scenarios[@]}"; do
    s=$(basename "$f" .sh)
    leftovers
    echo "== netns-tests/$s.sh"
    timeout -k 60 300 bash "$f" 2>&1 | tee "$LOG/$s.txt"
    rc=${PIPESTATUS[0]}
    p=$(grep -c '^PASS: ' "$LOG/$s.txt")
    f=$(grep -c '^FAIL: ' "$LOG/$s.txt")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        [ "$rc" -eq 124 ] && why="timed out after 300 s" || why="exited $rc"
        echo "FAIL: $s $why with no FAIL line"; f=1
    fi
    if [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL: $s ran no check"; f=1
    fi
    count "$p" "$f" "$s"
done
leftovers

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
