package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// netpolCase is one file in test/netpol or in a folder listed in $EBPFNET_NETPOL_CASES.
type netpolCase struct {
	Name  string     `json:"name"`
	Lab   lab.Spec   `json:"lab"`
	Modes []string   `json:"modes,omitempty"` // default: every mode
	Steps []caseStep `json:"steps"`
}

type caseStep struct {
	Apply  []map[string]any `json:"apply,omitempty"`
	Delete []string         `json:"delete,omitempty"`
	Labels []labelChange    `json:"labels,omitempty"`
	Expect []expectation    `json:"expect,omitempty"`
}

// labelChange is this runner's step for label updates: a pod ("ns/name") or a namespace.
type labelChange struct {
	Pod       string            `json:"pod,omitempty"`
	Namespace string            `json:"namespace,omitempty"`
	Set       map[string]string `json:"set,omitempty"`
	Remove    []string          `json:"remove,omitempty"`
}

type expectation struct {
	Port     int      `json:"port"`
	Protocol string   `json:"protocol"`
	Blocked  []string `json:"blocked"`
}

// casesEnv lists more folders of NetworkPolicy cases to play beside test/netpol, separated
// by ':' as PATH is; a relative folder is taken from the repository's root. A listed folder that
// is missing or holds no *.yaml is an error, never a silent skip.
const casesEnv = "EBPFNET_NETPOL_CASES"

// ownCasesDir holds the cases that always play, relative to this package.
const ownCasesDir = "netpol"

// readCases reads test/netpol and every folder in $EBPFNET_NETPOL_CASES.
func readCases(t *testing.T) map[string]*netpolCase {
	t.Helper()
	cases, err := loadCases(ownCasesDir, os.Getenv(casesEnv))
	if err != nil {
		t.Fatal(err)
	}
	return cases
}

// loadCases reads the cases in own, named by their file, and those in each folder of the
// ':'-separated list extra, named "<parent folder>-<file>" (../shared/netpol/ports.yaml plays
// as shared-ports). Two cases of one name are an error.
func loadCases(own, extra string) (map[string]*netpolCase, error) {
	cases := map[string]*netpolCase{}
	if err := loadCaseDir(cases, own, ""); err != nil {
		return nil, err
	}
	for _, dir := range filepath.SplitList(extra) {
		if dir == "" {
			continue
		}
		if !filepath.IsAbs(dir) {
			dir = filepath.Join("..", dir) // go test runs in test/
		}
		abs, err := filepath.Abs(dir)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", casesEnv, err)
		}
		if err := loadCaseDir(cases, abs, filepath.Base(filepath.Dir(abs))+"-"); err != nil {
			return nil, fmt.Errorf("%s: %w", casesEnv, err)
		}
	}
	return cases, nil
}

// loadCaseDir adds every *.yaml in dir to cases, its name prefixed by prefix.
func loadCaseDir(cases map[string]*netpolCase, dir, prefix string) error {
	info, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("case folder: %w", err)
	}
	if !info.IsDir() {
		return fmt.Errorf("case folder %s is not a folder", dir)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return fmt.Errorf("case folder %s: %w", dir, err)
	}
	if len(files) == 0 {
		return fmt.Errorf("case folder %s holds no NetworkPolicy case (*.yaml)", dir)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("read case: %w", err)
		}
		c := &netpolCase{}
		if err := yaml.UnmarshalStrict(data, c); err != nil {
			return fmt.Errorf("case %s: %w", f, err)
		}
		key := prefix + strings.TrimSuffix(filepath.Base(f), ".yaml")
		if _, dup := cases[key]; dup {
			return fmt.Errorf("case %s: a case named %q is already loaded", f, key)
		}
		cases[key] = c
	}
	return nil
}

var placeholder = regexp.MustCompile(`\$\{(IP|CIDR4):([^}]+)\}`)

// substitute replaces ${IP:ns/pod} and ${CIDR4:ns/pod} in a policy by what the lab gave.
func substitute(t *testing.T, st *lab.State, doc []byte) []byte {
	return substituteFamily(t, st, doc, lab.FamilyIPv4)
}

// hostPlaceholder is ${IP:ns/pod}/32, a pod's address as a CIDR.
var hostPlaceholder = regexp.MustCompile(`(\$\{IP:[^}]+\})/32`)

// substituteFamily is substitute with the pods' addresses of family: for IPv6, ${IP:...} is the
// pod's IPv6 address, ${IP:...}/32 its /128, and ${CIDR4:...} the /4 around its IPv6 address.
func substituteFamily(t *testing.T, st *lab.State, doc []byte, family string) []byte {
	hostBits := "/32"
	if family == lab.FamilyIPv6 {
		hostBits = "/128"
	}
	doc = hostPlaceholder.ReplaceAll(doc, []byte("${1}"+hostBits))
	return placeholder.ReplaceAllFunc(doc, func(m []byte) []byte {
		parts := placeholder.FindSubmatch(m)
		p, err := st.Pod(string(parts[2]))
		if err != nil {
			t.Fatal(err)
		}
		ip, err := p.Addr(family)
		if err != nil {
			t.Fatal(err)
		}
		if string(parts[1]) == "IP" {
			return []byte(ip.String())
		}
		return []byte(netip.PrefixFrom(ip, 4).Masked().String())
	})
}

func matchPattern(pattern, pod string) bool {
	if pattern == "*" {
		return true
	}
	pns, pname, _ := strings.Cut(pattern, "/")
	ns, name, _ := strings.Cut(pod, "/")
	return (pns == "*" || pns == ns) && (pname == "*" || pname == name)
}

func blocked(patterns []string, from, to string) bool {
	for _, p := range patterns {
		f, tt, _ := strings.Cut(p, "->")
		if matchPattern(f, from) && matchPattern(tt, to) {
			return true
		}
	}
	return false
}

// TestNetworkPolicyCases plays every case in every mode and checks the matrix. Cases written
// against the same lab play one after another on one lab per mode, each starting from the
// lab as its file made it (no policy, the file's labels): a lab costs far more than a case.
// The vxlan labs are dual stack: in them the shared cases and the ipBlock ones (inIPv6) play a
// second time with the pods' IPv6 addresses, in their policies' ipBlocks and in their probes
// (subtest <case>/IPv6), after the play with the IPv4 ones that every mode has.
func TestNetworkPolicyCases(t *testing.T) {
	cases := readCases(t)
	groups := map[string][]string{}
	for name, c := range cases {
		key, err := json.Marshal(struct {
			Lab   lab.Spec
			Modes []string
		}{c.Lab, c.Modes})
		if err != nil {
			t.Fatal(err)
		}
		groups[string(key)] = append(groups[string(key)], name)
	}
	keys := make([]string, 0, len(groups))
	for k := range groups {
		sort.Strings(groups[k])
		keys = append(keys, k)
	}
	// Name the labs by their first case, so a lab's name stays put when cases are added.
	sort.Slice(keys, func(i, j int) bool { return groups[keys[i]][0] < groups[keys[j]][0] })
	for _, key := range keys {
		names := groups[key]
		modes := casesModes(cases[names[0]])
		for _, mode := range modes {
			spec := cases[names[0]].Lab
			spec.Mode = mode
			if mode == "native-bgp-racks" {
				spec = inTwoRacks(spec)
			}
			if mode == "vxlan" {
				spec.IPFamilies = []string{lab.FamilyIPv4, lab.FamilyIPv6}
			}
			inSharedLab(t, mode+"/lab-of-"+names[0], "np", spec, func(t *testing.T, st *lab.State, spec *lab.Spec) {
				for _, name := range names {
					t.Run(name, func(t *testing.T) {
						defer resetLab(t, st, spec)
						playCase(t, cases[name], st)
					})
					if st.DualStack() && inIPv6(name) {
						t.Run(name+"/"+lab.FamilyIPv6, func(t *testing.T) {
							defer resetLab(t, st, spec)
							playCaseFamily(t, cases[name], st, lab.FamilyIPv6)
						})
					}
				}
			})
		}
	}
}

// casesModes are the modes a case plays in: its own list, or every mode.
func casesModes(c *netpolCase) []string {
	if len(c.Modes) == 0 {
		return []string{"vxlan", "native-bgp-racks", "ipip"}
	}
	return c.Modes
}

// inIPv6 says whether a case plays in IPv6 too: the shared cases ("shared-*", from
// $EBPFNET_NETPOL_CASES) and the ipBlock ones, whose policies name pods' addresses.
func inIPv6(name string) bool {
	return strings.HasPrefix(name, "shared-") || strings.Contains(name, "ipblock")
}

// inSharedLab runs play as the parallel subtest title, in a lab of spec that its cases share
// (at most labSem such labs at once).
func inSharedLab(t *testing.T, title, prefix string, spec lab.Spec, play func(t *testing.T, st *lab.State, spec *lab.Spec)) {
	t.Run(title, func(t *testing.T) {
		t.Parallel()
		nstest.RequireRoot(t)
		labSem <- struct{}{}
		defer func() { <-labSem }()
		play(t, upLab(t, prefix, &spec), &spec)
	})
}

// TestNetworkPolicyCasesDualStack plays the cases of inIPv6 in dual-stack native labs (flat:
// native-bgp-racks carries no IPv6 between racks), each case once with the pods' IPv4
// addresses and once with their IPv6 ones, in its policies' ipBlocks and in its probes. Both
// must give the case's matrix. TestNetworkPolicyCases plays them so in its dual-stack vxlan
// labs; a case whose modes leave out vxlan plays in a vxlan lab here instead.
func TestNetworkPolicyCasesDualStack(t *testing.T) {
	cases := readCases(t)
	type labOf struct{ mode, lab string }
	groups := map[labOf][]string{}
	for name, c := range cases {
		if !inIPv6(name) {
			continue
		}
		key, err := json.Marshal(c.Lab)
		if err != nil {
			t.Fatal(err)
		}
		modes := []string{"native"}
		if !slices.Contains(casesModes(c), "vxlan") {
			modes = append(modes, "vxlan")
		}
		for _, mode := range modes {
			groups[labOf{mode, string(key)}] = append(groups[labOf{mode, string(key)}], name)
		}
	}
	if len(groups) == 0 {
		t.Fatal("no shared or ipBlock case to play")
	}
	for key, names := range groups {
		sort.Strings(names)
		spec := cases[names[0]].Lab
		spec.Mode = key.mode
		spec.IPFamilies = []string{lab.FamilyIPv4, lab.FamilyIPv6}
		inSharedLab(t, key.mode+"/lab-of-"+names[0], "n6", spec, func(t *testing.T, st *lab.State, spec *lab.Spec) {
			for _, name := range names {
				for _, family := range st.Families() {
					t.Run(name+"/"+family, func(t *testing.T) {
						defer resetLab(t, st, spec)
						playCaseFamily(t, cases[name], st, family)
					})
				}
			}
		})
	}
}

// resetLab undoes what a case did to a shared lab: every policy deleted, every pod's and
// namespace's labels back to the lab file's. Each call returns once every node programmed it.
func resetLab(t *testing.T, st *lab.State, spec *lab.Spec) {
	t.Helper()
	ctx := context.Background()
	var list agentapi.PolicyList
	if err := st.Client().Get(ctx, "/v1/policies", &list); err != nil {
		t.Errorf("reset: list policies: %v", err)
		return
	}
	for _, np := range list.Policies {
		if err := st.Client().DeletePolicy(ctx, np.Namespace, np.Name); err != nil {
			t.Errorf("reset: delete %s/%s: %v", np.Namespace, np.Name, err)
		}
	}
	restore := func(kind, key string, have, want map[string]string) {
		set, remove := map[string]string{}, []string{}
		for k, v := range want {
			if have[k] != v {
				set[k] = v
			}
		}
		for k := range have {
			if _, ok := want[k]; !ok {
				remove = append(remove, k)
			}
		}
		if len(set) > 0 || len(remove) > 0 {
			if err := st.Label(ctx, kind, key, set, remove); err != nil {
				t.Errorf("reset: label %s %s: %v", kind, key, err)
			}
		}
	}
	for _, p := range spec.Pods {
		have, err := st.Pod(p.Key())
		if err != nil {
			t.Error(err)
			continue
		}
		restore("pod", p.Key(), have.Labels, p.Labels)
	}
	for _, ns := range spec.Namespaces {
		for _, have := range st.Namespaces {
			if have.Name == ns.Name {
				restore("namespace", ns.Name, have.Labels, ns.Labels)
			}
		}
	}
}

// inTwoRacks is the case's lab in native mode, its nodes spread over two racks joined only by
// a BIRD router: every route between them is learned over BGP.
func inTwoRacks(spec lab.Spec) lab.Spec {
	spec.Mode = "native"
	spec.BGP = &lab.BGPSpec{ASN: 64512, RouterASN: 64500}
	spec.Nodes = append([]lab.NodeSpec(nil), spec.Nodes...)
	for i := range spec.Nodes {
		spec.Nodes[i].Rack = []string{"a", "b"}[i%2]
	}
	return spec
}

// labSem bounds how many case labs run at once on this small machine.
var labSem = make(chan struct{}, 6)

// playCase plays a case's steps on a lab made from its file.
func playCase(t *testing.T, c *netpolCase, st *lab.State) {
	playCaseFamily(t, c, st, lab.FamilyIPv4)
}

// playCaseFamily is playCase with the pods' addresses of family, in policies and probes.
func playCaseFamily(t *testing.T, c *netpolCase, st *lab.State, family string) {
	ctx := context.Background()
	for i, step := range c.Steps {
		where := fmt.Sprintf("step %d", i+1)
		if len(step.Apply) > 0 {
			var docs []string
			for _, obj := range step.Apply {
				b, err := yaml.Marshal(obj)
				if err != nil {
					t.Fatal(err)
				}
				docs = append(docs, string(substituteFamily(t, st, b, family)))
			}
			if _, err := st.Client().ApplyPolicies(ctx, []byte(strings.Join(docs, "\n---\n"))); err != nil {
				t.Fatalf("%s: apply: %v", where, err)
			}
		}
		for _, d := range step.Delete {
			ns, name, _ := strings.Cut(d, "/")
			if err := st.Client().DeletePolicy(ctx, ns, name); err != nil {
				t.Fatalf("%s: delete %s: %v", where, d, err)
			}
		}
		for _, l := range step.Labels {
			kind, key := "pod", l.Pod
			if l.Namespace != "" {
				kind, key = "namespace", l.Namespace
			}
			if err := st.Label(ctx, kind, key, l.Set, l.Remove); err != nil {
				t.Fatalf("%s: label %s %s: %v", where, kind, key, err)
			}
		}
		for _, e := range step.Expect {
			proto := e.Protocol
			if proto == "" {
				proto = "TCP"
			}
			m, err := st.MatrixFamily(e.Port, proto, family)
			if err != nil {
				t.Fatalf("%s: matrix: %v", where, err)
			}
			var wrong []string
			for _, from := range m.Keys() {
				for _, to := range m.Keys() {
					if from == to {
						continue
					}
					want := !blocked(e.Blocked, from, to)
					if m[from][to] != want {
						wrong = append(wrong, fmt.Sprintf("%s->%s reachable=%v want %v", from, to, m[from][to], want))
					}
				}
			}
			if len(wrong) > 0 {
				t.Errorf("%s, %s/%d over %s: %d pairs wrong: %s\n%s", where, proto, e.Port, family, len(wrong), strings.Join(wrong, "; "), m)
			}
		}
	}
}
