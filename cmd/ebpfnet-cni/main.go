// Command ebpfnet-cni is the CNI plugin: it asks the node's ebpfnet agent, over its root-only
// unix socket, to attach and detach pods, passing the pod's network namespace as a descriptor,
// and answers in the configuration's cniVersion (0.3.1, 0.4.0, 1.0.0 or 1.1.0).
package main

import (
	"errors"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ebpfnet/ebpfnet/cni"
)

func main() {
	if cmd := os.Getenv("CNI_COMMAND"); cmd != "" && cmd != "VERSION" {
		if err := boundStdin(); err != nil {
			var e *types.Error
			if !errors.As(err, &e) {
				e = types.NewError(types.ErrInternal, err.Error(), "")
			}
			e.Print()
			os.Exit(1)
		}
	}
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cni.Add, Del: cni.Del, Check: cni.Check, Status: cni.Status, GC: cni.GC},
		version.PluginSupports(cni.Versions...), "ebpfnet CNI plugin")
}

// boundStdin reads the network configuration, refusing one over cni.MaxConfBytes, and gives
// skel (which reads stdin to its end, however long) what was read, through a pipe.
func boundStdin() error {
	data, err := cni.ReadConf(os.Stdin)
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	go func() {
		// A failed write shows as a short configuration, which the plugin then refuses.
		_, _ = w.Write(data)
		w.Close()
	}()
	os.Stdin = r
	return nil
}
