package conformance

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/lab/kube"
)

// Config says what to run.
type Config struct {
	Modes []string // lab modes: vxlan, native (Run's; RunIn runs in the lab it is given)
	// CNI networks Run's labs: lab.CNIEbpfnet (empty: the same) or lab.CNICilium, the peer.
	CNI string
	// DualStack makes Run's labs dual stack (ipFamilies: [IPv4, IPv6]): every pod has an
	// IPv6 address too, the API server a Service range of each family.
	DualStack bool
	Suites    []Suite
	// Only narrows every suite to its tests whose name matches this between the suite's
	// prefix and tag (Suite.Focus): the short subset `make test` runs. Empty: every test.
	Only    string
	Out     string      // reports, logs and summary.json go here (an absolute path)
	Lab     lab.Options // the ebpfnet and ebpfnet-cni binaries
	LabName string      // prefix of the labs' names
	Log     io.Writer   // progress, and e2e.test's output
}

// Summary is summary.json.
type Summary struct {
	Suites []Count `json:"suites"`
}

// Run brings up a 3-node kubernetes lab per mode, runs each suite's tests with e2e.test in it
// and writes Out/summary.json. It fails when a selected test failed or could not run.
func Run(ctx context.Context, cfg Config) (Summary, error) {
	var sum Summary
	var failed []string
	for _, mode := range cfg.Modes {
		counts, err := runMode(ctx, cfg, mode)
		sum.Suites = append(sum.Suites, counts...)
		if err != nil {
			return sum, err
		}
		failed = append(failed, failures(mode, counts)...)
	}
	b, err := json.MarshalIndent(sum, "", "  ")
	if err != nil {
		return sum, err
	}
	if err := os.WriteFile(filepath.Join(cfg.Out, "summary.json"), append(b, '\n'), 0o644); err != nil {
		return sum, err
	}
	if len(failed) > 0 {
		return sum, fmt.Errorf("conformance: %s", strings.Join(failed, "; "))
	}
	return sum, nil
}

// failures names the suites of counts with failed tests.
func failures(mode string, counts []Count) []string {
	var failed []string
	for _, c := range counts {
		if c.Failed > 0 {
			failed = append(failed, fmt.Sprintf("%s/%s: %d failed", mode, c.Name, c.Failed))
		}
	}
	return failed
}

// runMode runs every suite in a new 3-node lab of the mode.
func runMode(ctx context.Context, cfg Config, mode string) ([]Count, error) {
	name := cfg.LabName + mode[:2]
	if cfg.CNI == lab.CNICilium {
		name = cfg.LabName + "c" + mode[:2]
	}
	spec := &lab.Spec{Mode: mode, Kubernetes: true, CNI: cfg.CNI, Nodes: []lab.NodeSpec{{Name: "node1"}, {Name: "node2"}, {Name: "node3"}}}
	if cfg.DualStack {
		name += "ds"
		spec.IPFamilies = []string{lab.FamilyIPv4, lab.FamilyIPv6}
	}
	if err := spec.Validate(); err != nil { // fills in the defaults
		return nil, err
	}
	fmt.Fprintf(cfg.Log, "conformance: lab %s (%s, %s, %s, 3 nodes) up\n", name, spec.CNI, mode, strings.Join(spec.IPFamilies, "+"))
	st, err := lab.Up(ctx, name, spec, cfg.Lab)
	if err != nil {
		return nil, fmt.Errorf("%s lab: %w", mode, err)
	}
	defer func() {
		if err := lab.Down(name); err != nil {
			slog.Warn("lab down", "lab", name, "err", err)
		}
	}()
	return RunIn(ctx, st, cfg)
}

// RunIn runs cfg's suites (not its Modes: the lab has one) with e2e.test in the kubernetes
// lab st, after importing the images they use into its nodes, and returns their counts. Its
// reports go under cfg.Out/<mode>/<suite> (cfg.Out/cilium-<mode>/<suite> in a Cilium lab,
// cfg.Out/<mode>-dualstack/<suite> in a dual-stack one). Failed tests are counted, not an error; a suite
// that ran no test is one.
func RunIn(ctx context.Context, st *lab.State, cfg Config) ([]Count, error) {
	ex, err := Exclusions()
	if err != nil {
		return nil, err
	}
	e2e := filepath.Join(kube.E2EDir(), "e2e.test")
	if _, err := os.Stat(e2e); err != nil {
		return nil, fmt.Errorf("%w: run lab/kube/build.sh e2e (make conformance does)", err)
	}
	refs, err := imageRefs(ctx, e2e)
	if err != nil {
		return nil, err
	}
	runDir := st.Mode
	if st.CNI == lab.CNICilium {
		runDir = lab.CNICilium + "-" + st.Mode
	}
	if st.DualStack() {
		runDir += "-dualstack"
	}
	images, err := kube.BuildE2EImages(filepath.Join(cfg.Out, runDir, "images"), refs)
	if err != nil {
		return nil, err
	}
	if err := st.ImportImages(ctx, images); err != nil {
		return nil, err
	}
	cp, err := st.ControlPlane()
	if err != nil {
		return nil, err
	}
	mode, cni := st.Mode, st.CNI
	if cni == "" {
		cni = lab.CNIEbpfnet
	}
	var counts []Count
	for _, s := range cfg.Suites {
		focus := s.Focus(cfg.Only)
		dir := filepath.Join(cfg.Out, runDir, s.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return counts, err
		}
		report := filepath.Join(dir, "junit.xml")
		fmt.Fprintf(cfg.Log, "conformance: %s %s %s: e2e.test --ginkgo.focus=%q (log: %s)\n", cni, mode, s.Name, focus, filepath.Join(dir, "e2e.log"))
		start := time.Now()
		runErr := runE2E(ctx, st, cp.Kubeconfig, e2e, focus, ex, report, filepath.Join(dir, "e2e.log"))
		c, err := countJUnit(report, s, focus, ex)
		if err != nil {
			// No report: e2e.test did not get as far as its tests.
			return counts, fmt.Errorf("%s %s: %w (e2e.test: %w)", mode, s.Name, err, e2eResult(runErr))
		}
		c.CNI, c.Mode, c.DualStack, c.Seconds = cni, mode, st.DualStack(), time.Since(start).Round(time.Second).Seconds()
		counts = append(counts, c)
		fmt.Fprintf(cfg.Log, "conformance: %s %s %s: %d passed, %d failed, %d skipped, %d excluded in %s\n",
			c.CNI, mode, s.Name, c.Passed, c.Failed, c.Skipped, c.Excluded, time.Since(start).Round(time.Second))
		if c.Passed+c.Failed == 0 {
			return counts, fmt.Errorf("%s %s: no test ran (e2e.test: %w)", mode, s.Name, e2eResult(runErr))
		}
	}
	return counts, nil
}

// e2eResult is how e2e.test ended, as an error to wrap: exited 0 is one too.
func e2eResult(err error) error {
	if err == nil {
		return errors.New("exited 0")
	}
	return err
}

// runE2E runs e2e.test on the lab's underlay, where the API server is, as the admin.
func runE2E(ctx context.Context, st *lab.State, kubeconfig, e2e, focus string, ex []Exclusion, report, logPath string) error {
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{"--net=" + st.Underlay, "--", e2e,
		"--kubeconfig=" + kubeconfig,
		"--provider=skeleton",
		"--kubectl-path=" + filepath.Join(kube.BinDir(), "kubectl"),
		fmt.Sprintf("--num-nodes=%d", len(st.Nodes)),
		"--dns-domain=" + kube.ClusterDomain,
		"--ginkgo.focus=" + focus,
		"--ginkgo.junit-report=" + report,
		"--ginkgo.timeout=6h",
		"--ginkgo.no-color",
		"--ginkgo.succinct",
	}
	if len(ex) > 0 {
		args = append(args, "--ginkgo.skip="+skipRegexp(ex))
	}
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = filepath.Dir(report)
	return cmd.Run()
}

// imageRefs asks e2e.test which images its tests use (--list-images), so the images built
// here are tagged as this build of the suite expects.
func imageRefs(ctx context.Context, e2e string) ([]string, error) {
	out, err := exec.CommandContext(ctx, e2e, "--list-images").Output()
	if err != nil {
		return nil, fmt.Errorf("e2e.test --list-images: %w", err)
	}
	var refs []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if ref := strings.TrimSpace(sc.Text()); ref != "" {
			refs = append(refs, ref)
		}
	}
	return refs, nil
}

// Table is the summary as a text table.
func (s Summary) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-8s %-9s %-9s %7s %7s %8s %9s %8s\n", "cni", "mode", "suite", "passed", "failed", "skipped", "excluded", "time")
	for _, c := range s.Suites {
		mode := c.Mode
		if c.DualStack {
			mode += "+v6" // a dual-stack lab's
		}
		fmt.Fprintf(&b, "%-8s %-9s %-9s %7d %7d %8d %9d %8s\n", c.CNI, mode, c.Name, c.Passed, c.Failed, c.Skipped, c.Excluded,
			(time.Duration(c.Seconds) * time.Second).String())
		for _, f := range c.Failures {
			fmt.Fprintf(&b, "  FAIL %s\n", f)
		}
	}
	return b.String()
}
