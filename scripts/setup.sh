#!/usr/bin/env bash
# scripts/setup.sh: installs what the demo, the tests and the benchmarks need on a
# fresh Debian or Ubuntu machine, as root:
#   - the packages in PACKAGES (apt-get update first, then apt-get install), if
#     any of them is missing;
#   - a Rust toolchain (rustup, stable, into ~/.cargo) if `cargo` is not found:
#     Debian's own cargo is too old for the dependencies.
# Does nothing (and needs no network) when everything is there already.
# scripts/demo.sh and scripts/test.sh run it first; .ci/run runs it with --force.
#
# Usage: scripts/setup.sh [--force]   (--force: apt-get update + install even if all is there)
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"

# The test bed's tools (ip, iperf3, curl, dig, tcpdump, tshark, nc -N, jq, python3,
# ping, ps/sysctl, killall, ethtool, dnsperf, dnsmasq, wrk, nginx, nft) and a C
# toolchain for the crates that compile C (ring).
PACKAGES=(iproute2 iperf3 curl dnsutils tcpdump tshark netcat-openbsd jq python3
    iputils-ping procps psmisc ethtool dnsperf dnsmasq-base wrk nginx-light nftables
    gcc libc6-dev ca-certificates)

die() { echo "scripts/setup.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (it installs packages)"

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

missing=()
if command -v dpkg-query >/dev/null; then
    for p in "${PACKAGES[@]}"; do
        installed "$p" || { [ "$p" = nginx-light ] && installed nginx; } || missing+=("$p")
    done
else
    die "not a Debian or Ubuntu machine (no dpkg): install the equivalents of ${PACKAGES[*]} by hand"
fi

if [ "${1:-}" = --force ] || [ ${#missing[@]} -gt 0 ]; then
    [ ${#missing[@]} -gt 0 ] && echo "== setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; the tests run as root.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -qq || die "apt-get update failed: check the machine's package sources"
    if ! apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null; then
        # Releases that dropped nginx-light have nginx (the same server).
        PACKAGES=("${PACKAGES[@]/nginx-light/nginx}")
        apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null ||
            die "apt-get install failed for some of: ${PACKAGES[*]}"
    fi
fi

if ! command -v cargo >/dev/null; then
    echo "== setup: no cargo; installing Rust (stable) with rustup into ~/.cargo"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs -o /tmp/mt-rustup.sh ||
        die "cannot download rustup from sh.rustup.rs: install Rust (https://rustup.rs) by hand"
    sh /tmp/mt-rustup.sh -y --profile minimal --default-toolchain stable >/dev/null ||
        die "rustup failed: install Rust (https://rustup.rs) by hand"
    rm -f /tmp/mt-rustup.sh
    command -v cargo >/dev/null || die "cargo still not found after rustup (looked in ~/.cargo/bin)"
fi
