// Command ebpfnet-cni is the CNI plugin: it asks the node's ebpfnet agent, over its root-only
// unix socket, to attach and detach pods, passing the pod's network namespace as a descriptor,
// and answers in the configuration's cniVersion (0.3.1, 0.4.0, 1.0.0 or 1.1.0).
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ebpfnet/ebpfnet/cni"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cni.Add, Del: cni.Del, Check: cni.Check, Status: cni.Status, GC: cni.GC},
		version.PluginSupports(cni.Versions...), "ebpfnet CNI plugin")
}
