// Command ebpfnet-cni is the CNI plugin (spec 1.1.0): it asks the node's ebpfnet agent, over its
// root-only unix socket, to attach and detach pods, and reports results and errors in CNI form.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ebpfnet/ebpfnet/cni"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cni.Add, Del: cni.Del, Check: cni.Check, Status: cni.Status, GC: cni.GC},
		version.PluginSupports("0.4.0", "1.0.0", "1.1.0"), "ebpfnet CNI plugin")
}
