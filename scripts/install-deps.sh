#!/usr/bin/env bash
# Installs the Debian packages ebpfnet's build, demo, tests and benchmarks need, only those
# missing. Kubernetes, built from source, is not among them: `make deps-kubernetes` builds it
# (lab/kube/build.sh) for the targets that run it.
# Idempotent: on a machine that has them all it returns in well under a second.
set -euo pipefail

# kube-proxy (iptables mode) runs iptables, iptables-save and iptables-restore, the nft or the legacy
# ones of the iptables package; it clears conntrack entries over netlink, with no conntrack tool.
# bird2 is the BGP router of labs with racks (lab/router*.go): the lab runs its own bird and birdc.
# busybox-static, curl, netcat-openbsd and bind9-dnsutils go into the images of the upstream e2e
# suites (lab/kube/e2eimages.go: a shell, curl, nc and dig, as upstream's agnhost image has them).
packages=(
	clang-19 llvm-19 clang-format-19 libbpf-dev linux-libc-dev bpftool
	iproute2 iptables iputils-ping iperf3 sockperf tcpdump ethtool procps prometheus
	containerd runc bird2 busybox-static curl netcat-openbsd bind9-dnsutils
)

# One dpkg-query for all of them: this runs before every make target.
declare -A installed=()
while read -r p; do
	installed[$p]=1
done < <(dpkg-query -W -f='${Package} ${Status}\n' "${packages[@]}" 2>/dev/null | awk '/ ok installed$/ {print $1}')
missing=()
for p in "${packages[@]}"; do
	[[ -n ${installed[$p]:-} ]] || missing+=("$p")
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

# Debian enables a system BIRD (bird.service, /etc/bird/bird.conf) and may start it: the labs run
# their own, each in its router namespace, so the system one is stopped and kept from starting.
if [[ -d /run/systemd/system ]]; then
	systemctl disable --now bird.service >/dev/null 2>&1 || true
fi
if [[ -e /run/bird/bird.ctl ]]; then
	birdc -s /run/bird/bird.ctl down >/dev/null 2>&1 || true
fi
