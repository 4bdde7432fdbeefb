// Command conformance runs Kubernetes' sig-network e2e suites against ebpfnet in kubernetes
// labs (make conformance): it writes JUnit reports and summary.json and prints a table.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/ebpfnet/ebpfnet/conformance"
	"github.com/ebpfnet/ebpfnet/lab"
)

func main() {
	modes := flag.String("modes", "vxlan,native", "lab modes to run in, comma-separated")
	suites := flag.String("suites", "netpol,services,dns", "suites to run, comma-separated")
	only := flag.String("only", "", "run only the suites' tests whose name matches this regular expression after the suite's prefix (\"[sig-network] Services \")")
	out := flag.String("out", "bin/conformance", "directory for the reports and summary.json")
	exe := flag.String("ebpfnet", "bin/ebpfnet", "the ebpfnet binary (ebpfnet-cni beside it)")
	name := flag.String("lab", "conf", "prefix of the labs' names")
	cni := flag.String("cni", lab.CNIEbpfnet, "what networks the labs' pods: ebpfnet, or cilium (the peer; make deps-cilium builds it)")
	dualStack := flag.Bool("dual-stack", false, "dual-stack labs (ipFamilies [IPv4, IPv6]): pods and the Service range in both families")
	flag.Parse()
	if err := run(*modes, *suites, *only, *out, *exe, *name, *cni, *dualStack); err != nil {
		fmt.Fprintln(os.Stderr, "conformance:", err)
		os.Exit(1)
	}
}

func run(modes, suites, only, out, exe, name, cni string, dualStack bool) error {
	// The labs link the binaries into each node's CNI directory, and e2e.test runs in its
	// report's directory: the paths must be absolute.
	exe, err := filepath.Abs(exe)
	if err != nil {
		return err
	}
	if out, err = filepath.Abs(out); err != nil {
		return err
	}
	if cni != lab.CNIEbpfnet && cni != lab.CNICilium {
		return fmt.Errorf("-cni %q: ebpfnet or cilium", cni)
	}
	if dualStack && cni == lab.CNICilium {
		return fmt.Errorf("-dual-stack: the Cilium lab runs IPv4 only")
	}
	cfg := conformance.Config{Modes: strings.Split(modes, ","), CNI: cni, DualStack: dualStack, Only: only, Out: out, LabName: name,
		Lab: lab.Options{Exe: exe}, Log: os.Stdout}
	for _, s := range strings.Split(suites, ",") {
		suite, err := conformance.SuiteByName(s)
		if err != nil {
			return err
		}
		cfg.Suites = append(cfg.Suites, suite)
	}
	for _, m := range cfg.Modes {
		if m != "vxlan" && m != "native" {
			return fmt.Errorf("mode %q: vxlan or native", m)
		}
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sum, err := conformance.Run(ctx, cfg)
	fmt.Print(sum.Table())
	return err
}
