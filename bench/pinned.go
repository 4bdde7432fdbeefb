package bench

import (
	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/maps"
)

// pinnedDatapath opens a benchmark topology's pinned maps.
type pinnedDatapath struct {
	dp  *loader.Datapath
	pol *maps.Policy
	eps *maps.Endpoints
}

func openPinnedPolicy(prefix string) (*pinnedDatapath, error) {
	dp, err := loader.Load(loader.Config{PinDir: "/sys/fs/bpf/ebpfnet-bench-" + prefix})
	if err != nil {
		return nil, err
	}
	return &pinnedDatapath{dp: dp, pol: dp.Policy(), eps: dp.Endpoints()}, nil
}

func (p *pinnedDatapath) close() { p.dp.Close() }
