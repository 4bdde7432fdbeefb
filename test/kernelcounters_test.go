package test

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/netlinksafe"
)

// kernelCounters is a snapshot of where the kernel drops packets outside ebpfnet's own
// counters, in every namespace of a lab: each link's drops and errors, the IP and UDP
// counters of /proc/net/snmp that count a discard, and the CPUs' backlog drops. When a
// stream loses a datagram that no datapath reason counted, the difference of two snapshots
// says where it went.
type kernelCounters map[string]int64

// snmpDiscards are the /proc/net/snmp counters that count a packet the kernel threw away.
var snmpDiscards = map[string][]string{
	"Ip:":  {"InHdrErrors", "InAddrErrors", "InUnknownProtos", "InDiscards", "OutDiscards", "OutNoRoutes", "ReasmFails", "FragFails"},
	"Udp:": {"NoPorts", "InErrors", "RcvbufErrors", "SndbufErrors", "InCsumErrors", "MemErrors"},
}

func readKernelCounters(t *testing.T, st *lab.State) kernelCounters {
	t.Helper()
	c := kernelCounters{}
	netns := map[string]string{"underlay": st.Underlay}
	for _, n := range st.Nodes {
		netns[n.Name] = n.Netns
	}
	for _, p := range st.Pods {
		netns[p.Key()] = p.Netns
	}
	for name, path := range netns {
		if path == "" {
			continue
		}
		err := namespace.Do(path, func() error {
			b, err := os.ReadFile("/proc/thread-self/net/snmp")
			if err != nil {
				return err
			}
			for proto, fields := range snmpDiscards {
				for _, f := range fields {
					if v, err := snmpField(string(b), proto, f); err == nil {
						c[name+" "+proto+f] = v
					}
				}
			}
			links, err := netlinksafe.LinkList()
			if err != nil {
				return err
			}
			for _, l := range links {
				s := l.Attrs().Statistics
				if s == nil {
					continue
				}
				key := name + " " + l.Attrs().Name + " "
				c[key+"rx_dropped"], c[key+"tx_dropped"] = int64(s.RxDropped), int64(s.TxDropped)
				c[key+"rx_errors"], c[key+"tx_errors"] = int64(s.RxErrors), int64(s.TxErrors)
			}
			return nil
		})
		if err != nil {
			t.Logf("kernel counters of %s: %v", name, err)
		}
	}
	// Backlog drops and squeezes are per CPU and not per namespace: the second and third
	// columns of softnet_stat, in hex.
	if b, err := os.ReadFile("/proc/net/softnet_stat"); err == nil {
		for cpu, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			f := strings.Fields(l)
			if len(f) < 3 {
				continue
			}
			dropped, _ := strconv.ParseInt(f[1], 16, 64)
			squeezed, _ := strconv.ParseInt(f[2], 16, 64)
			c[fmt.Sprintf("cpu%d softnet dropped", cpu)], c[fmt.Sprintf("cpu%d softnet squeezed", cpu)] = dropped, squeezed
		}
	}
	return c
}

// since lists the counters that moved from before to c, one per line, or "none".
func (c kernelCounters) since(before kernelCounters) string {
	var moved []string
	for k, v := range c {
		if d := v - before[k]; d != 0 {
			moved = append(moved, fmt.Sprintf("%s +%d", k, d))
		}
	}
	if len(moved) == 0 {
		return "none"
	}
	slices.Sort(moved)
	return strings.Join(moved, "\n")
}
