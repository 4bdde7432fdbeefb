#!/usr/bin/env bash
# Installs the Debian packages ebpfnet's build, tests and benchmarks need, only those missing.
# Idempotent: on a machine that has them all it returns in well under a second.
set -euo pipefail

packages=(
	clang-19 llvm-19 clang-format-19 libbpf-dev linux-libc-dev bpftool
	iproute2 iptables iputils-ping iperf3 sockperf tcpdump ethtool procps prometheus
)

missing=()
for p in "${packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
		missing+=("$p")
	fi
done
if ((${#missing[@]} == 0)); then
	exit 0
fi
if [[ $EUID -ne 0 ]]; then
	echo "install-deps: missing ${missing[*]}; run as root to install them" >&2
	exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
