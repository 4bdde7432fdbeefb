#!/usr/bin/env bash
# Builds the Kubernetes binaries the kubernetes lab runs (and kube-proxy, the Services benchmark's
# baseline), CoreDNS (the lab's cluster DNS) and the loopback CNI plugin, from source, into ${EBPFNET_CACHE:-/var/cache/ebpfnet},
# only those missing. Idempotent and instant when present. Run by `make deps-kubernetes` and,
# embedded in the binary (lab/kube/build.go), by `ebpfnet lab up --kubernetes`.
# `build.sh e2e` builds, besides, the upstream end-to-end suite (e2e.test) and agnhost, the image
# its tests run, at the same version: `make conformance` runs them.
set -euo pipefail

want_e2e=false
case ${1:-} in
"") ;;
e2e) want_e2e=true ;;
*) echo "build-k8s: unknown argument ${1} (none, or e2e)" >&2; exit 2 ;;
esac

k8s_version=${EBPFNET_K8S_VERSION:-v1.34.4} # kube.Version (lab/kube/kube.go); a test keeps the two equal
cache=${EBPFNET_CACHE:-/var/cache/ebpfnet}
k8s_bin=$cache/kubernetes/$k8s_version/bin
coredns_version=v1.12.4 # kube.CoreDNSVersion (lab/kube/coredns.go); a test keeps the two equal
coredns_bin=$cache/coredns/$coredns_version/bin/coredns
cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy)
e2e_bin=$cache/kubernetes/$k8s_version/e2e

# missing_k8s prints the binaries not in the cache, one a line.
missing_k8s() {
	local c
	for c in "${cmds[@]}"; do
		[[ -x $k8s_bin/$c ]] || echo "$c"
	done
}

# have_all_k8s succeeds when every binary is in the cache.
have_all_k8s() {
	[[ -z $(missing_k8s) ]]
}

# have_loopback succeeds when some version of the loopback plugin is in the cache.
have_loopback() {
	compgen -G "$cache/cni-plugins/v*/bin/loopback" >/dev/null
}

# have_all succeeds when everything asked for is in the cache.
have_all() {
	have_all_k8s && have_loopback && [[ -x $coredns_bin ]] || return 1
	! $want_e2e || [[ -x $e2e_bin/e2e.test && -x $e2e_bin/agnhost ]]
}

if have_all; then
	exit 0
fi
command -v go >/dev/null || { echo "build-k8s: go is not installed" >&2; exit 1; }
mkdir -p "$cache"
# One build at a time: a second caller waits, then finds everything built.
exec 9>"$cache/.build.lock"
flock 9
if have_all; then
	exit 0
fi
# Two cores and no swap: at most two packages compiled or linked at once keeps memory in check.
export GOFLAGS="-mod=mod -buildvcs=false -p=2" CGO_ENABLED=0 GOTOOLCHAIN=local

# wrapper_module writes, into the directory $1, a module that requires k8s.io/kubernetes at
# k8s_version with every staging module replaced by its published version (kubernetes' own
# go.mod replaces them with ./staging, which a dependency cannot), and sets ldflags to stamp
# the version as a release build does.
wrapper_module() {
	local work=$1
	local minor=${k8s_version#v1.}
	minor=${minor%%.*}
	local staging_version=v0.${k8s_version#v1.}
	local gomod
	gomod=$(go mod download -json "k8s.io/kubernetes@$k8s_version" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
	[[ -f $gomod ]] || { echo "build-k8s: no go.mod for k8s.io/kubernetes@$k8s_version" >&2; return 1; }

	# The staging modules are the ones kubernetes' go.mod replaces with ./staging/src/k8s.io/<name>.
	local staging
	staging=$(sed -n 's#^\s*\(replace\s\+\)\?\(k8s\.io/[^ ]*\)\s\+=>\s\+\./staging/src/.*#\2#p' "$gomod" | sort -u)
	[[ -n $staging ]] || { echo "build-k8s: found no staging modules in $gomod" >&2; return 1; }

	{
		echo "module ebpfnet.local/k8s-build"
		echo
		echo "go 1.24.0"
		echo
		echo "require k8s.io/kubernetes $k8s_version"
		echo
		local m
		for m in $staging; do
			echo "replace $m => $m $staging_version"
		done
	} >"$work/go.mod"

	ldflags="-s -w"
	local pkg
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
		ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
	done
}

# build_k8s builds the binaries missing from the cache, and only those.
build_k8s() {
	local missing
	mapfile -t missing < <(missing_k8s)
	local work ldflags
	work=$(mktemp -d "$cache/kubernetes/.build-$k8s_version.XXXXXX")
	trap 'rm -rf "$work"' RETURN
	wrapper_module "$work"

	mkdir -p "$work/bin" "$k8s_bin"
	local c i=0
	for c in "${missing[@]}"; do
		i=$((i + 1))
		echo "build-k8s: [$i/${#missing[@]}] building $c $k8s_version"
		(cd "$work" && go build -trimpath -ldflags "$ldflags" -o "bin/$c" "k8s.io/kubernetes/cmd/$c")
		# Renamed into place only once complete (same file system), so a half-built binary is never used.
		mv "$work/bin/$c" "$k8s_bin/$c"
		echo "build-k8s: built $c $k8s_version"
	done
}

# build_e2e builds the upstream e2e suite, as a test binary, and agnhost into e2e_bin.
build_e2e() {
	local work ldflags
	work=$(mktemp -d "$cache/kubernetes/.build-e2e-$k8s_version.XXXXXX")
	trap 'rm -rf "$work"' RETURN
	wrapper_module "$work"
	mkdir -p "$work/bin" "$e2e_bin"
	echo "build-k8s: [1/2] building e2e.test $k8s_version (the largest; minutes, more with an empty Go build cache)"
	(cd "$work" && go test -c -trimpath -ldflags "$ldflags" -o bin/e2e.test k8s.io/kubernetes/test/e2e)
	echo "build-k8s: [2/2] building agnhost $k8s_version"
	(cd "$work" && go build -trimpath -ldflags "$ldflags" -o bin/agnhost k8s.io/kubernetes/test/images/agnhost)
	mv "$work/bin/agnhost" "$e2e_bin/agnhost"
	mv "$work/bin/e2e.test" "$e2e_bin/e2e.test"
	echo "build-k8s: built e2e.test and agnhost $k8s_version"
}

# build_coredns builds CoreDNS from its Go module: CoreDNS's own coremain with only the plugins
# the lab's Corefile (lab/kube/coredns.yaml) uses linked in, as CoreDNS documents for custom builds.
build_coredns() {
	mkdir -p "$cache/coredns"
	local work
	work=$(mktemp -d "$cache/coredns/.build-$coredns_version.XXXXXX")
	trap 'rm -rf "$work"' RETURN
	printf 'module ebpfnet.local/coredns-build\n\ngo 1.24.0\n\nrequire github.com/coredns/coredns %s\n' "$coredns_version" >"$work/go.mod"
	{
		echo "// Command coredns is CoreDNS with the plugins of the lab's Corefile."
		echo "package main"
		echo
		echo "import ("
		echo '	"github.com/coredns/coredns/coremain"'
		echo
		local p
		for p in cache errors health kubernetes loadbalance log metrics ready; do
			echo "	_ \"github.com/coredns/coredns/plugin/$p\""
		done
		echo ")"
		echo
		echo "func main() { coremain.Run() }"
	} >"$work/main.go"
	echo "build-k8s: building CoreDNS $coredns_version"
	(cd "$work" && go build -trimpath -ldflags "-s -w" -o coredns .)
	mkdir -p "${coredns_bin%/coredns}"
	mv "$work/coredns" "$coredns_bin"
	echo "build-k8s: built CoreDNS $coredns_version"
}

build_loopback() {
	local version
	version=$(go list -m -f '{{.Version}}' github.com/containernetworking/plugins@latest)
	[[ $version == v1.* ]] || { echo "build-k8s: latest containernetworking/plugins is $version, not v1.x" >&2; return 1; }
	local dest=$cache/cni-plugins/$version/bin
	mkdir -p "$cache/cni-plugins"
	local work
	work=$(mktemp -d "$cache/cni-plugins/.build-$version.XXXXXX")
	trap 'rm -rf "$work"' RETURN
	GOBIN=$work/bin go install -trimpath -ldflags "-s -w" \
		"github.com/containernetworking/plugins/plugins/main/loopback@$version"
	mkdir -p "${dest%/bin}"
	rm -rf "$dest"
	mv "$work/bin" "$dest"
	echo "build-k8s: built loopback CNI plugin $version"
}

mkdir -p "$cache/kubernetes"
if ! have_all_k8s; then
	echo "build-k8s: building Kubernetes $k8s_version from source ($(missing_k8s | tr '\n' ' ')), about 12 minutes on 2 idle cores, once: cached in $cache"
	build_k8s
fi
[[ -x $coredns_bin ]] || build_coredns
have_loopback || build_loopback
if $want_e2e && ! [[ -x $e2e_bin/e2e.test && -x $e2e_bin/agnhost ]]; then
	build_e2e
fi
