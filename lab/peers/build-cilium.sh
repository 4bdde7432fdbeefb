#!/usr/bin/env bash
# Builds Cilium, the peer the lab measures ebpfnet against, from source into
# ${EBPFNET_CACHE:-/var/cache/ebpfnet}/cilium/VERSION: cilium-agent and cilium-cni from the Go
# module github.com/cilium/cilium at the pinned version, the module's BPF sources (bpf/), which
# the agent compiles at run time with the clang the project installs, and its CRDs (crds/).
# Nothing of Cilium's is kept in this repository: this script names the module and version
# only. Idempotent and instant when built. Run by `make deps-cilium` and, embedded in the
# binary (lab/peers/cilium.go), by `ebpfnet lab up --cni cilium`.
set -euo pipefail

cilium_version=${EBPFNET_CILIUM_VERSION:-v1.20.2} # peers.CiliumVersion (lab/peers/cilium.go); a test keeps the two equal
# The GoBGP pseudo-version Cilium pins is not on the module proxy; v4.7.0, which is, compiles.
gobgp_version=v4.7.0
# Cilium's go.mod replaces controller-tools with its fork; a requiring module must say it again.
controller_tools=github.com/cilium/controller-tools
controller_tools_version=v0.21.0-1
cache=${EBPFNET_CACHE:-/var/cache/ebpfnet}
dest=$cache/cilium/$cilium_version

have_all() {
	[[ -x $dest/bin/cilium-agent && -x $dest/bin/cilium-cni && -f $dest/bpf/bpf_lxc.c && -L $dest/bin/clang && -d $dest/crds ]]
}

if have_all; then
	exit 0
fi
command -v go >/dev/null || { echo "build-cilium: go is not installed" >&2; exit 1; }
command -v clang-19 >/dev/null || { echo "build-cilium: clang-19 is not installed (make deps)" >&2; exit 1; }
mkdir -p "$cache/cilium"
# One build at a time: a second caller waits, then finds everything built.
exec 9>"$cache/cilium/.build.lock"
flock 9
if have_all; then
	exit 0
fi
# Two cores and no swap: at most two packages compiled or linked at once keeps memory in check.
export GOFLAGS="-mod=mod -buildvcs=false -p=2" CGO_ENABLED=0 GOTOOLCHAIN=local

work=$(mktemp -d "$cache/cilium/.build-$cilium_version.XXXXXX")
trap 'rm -rf "$work"' EXIT
cat >"$work/go.mod" <<MOD
module ebpfnet.local/cilium-build

go 1.26.0

require github.com/cilium/cilium $cilium_version

replace github.com/osrg/gobgp/v4 => github.com/osrg/gobgp/v4 $gobgp_version

replace sigs.k8s.io/controller-tools => $controller_tools $controller_tools_version
MOD
ldflags="-s -w -X 'github.com/cilium/cilium/pkg/version.ciliumVersion=${cilium_version#v} (built by ebpfnet from the Go module)'"
mkdir -p "$work/out/bin"
echo "build-cilium: [1/3] building cilium-agent $cilium_version from source (about 8 minutes on 2 idle cores, once: cached in $dest)"
(cd "$work" && go build -trimpath -tags osusergo -ldflags "$ldflags" -o out/bin/cilium-agent github.com/cilium/cilium/daemon)
echo "build-cilium: [2/3] building cilium-cni $cilium_version"
(cd "$work" && go build -trimpath -tags osusergo -ldflags "$ldflags" -o out/bin/cilium-cni github.com/cilium/cilium/plugins/cilium-cni)
echo "build-cilium: [3/3] copying the BPF sources and CRDs of $cilium_version"
src=$(cd "$work" && go list -m -f '{{.Dir}}' github.com/cilium/cilium)
cp -r "$src/bpf" "$work/out/bpf"
# The CRDs Cilium's operator installs: the lab runs no operator, so it applies them itself.
mkdir "$work/out/crds"
cp "$src"/pkg/k8s/apis/cilium.io/client/crds/*/*.yaml "$work/out/crds/"
chmod -R u+w "$work/out"
# The agent compiles its programs with `clang` from PATH: the project's clang-19.
ln -s "$(command -v clang-19)" "$work/out/bin/clang"
rm -rf "$dest"
mv "$work/out" "$dest"
echo "build-cilium: built cilium-agent and cilium-cni $cilium_version into $dest"
