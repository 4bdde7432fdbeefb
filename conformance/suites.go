// Package conformance runs Kubernetes' own sig-network e2e suites (the Netpol tests, and the
// Services and DNS [Conformance] tests) against ebpfnet in a kubernetes lab, and sums up their
// JUnit reports.
package conformance

import (
	_ "embed"
	"fmt"
	"regexp"
	"strings"

	"sigs.k8s.io/yaml"
)

// Suite is one upstream suite: the tests its focus selects, less the exclusions. A test's full
// name is its prefix, what it does, then its tags: "[sig-network] Services should serve a
// basic endpoint from pods [Conformance]".
type Suite struct {
	Name   string
	Prefix string // a regular expression the test's full name starts with
	Tag    string // one its name ends with; "": any
}

// Suites are the suites `make conformance` runs.
var Suites = []Suite{
	{Name: "netpol", Prefix: `\[sig-network\] Netpol `},
	{Name: "services", Prefix: `\[sig-network\] Services `, Tag: `\[Conformance\]`},
	{Name: "dns", Prefix: `\[sig-network\] DNS `, Tag: `\[Conformance\]`},
}

// Focus is the suite's regular expression over test names (ginkgo's --focus); with only, just
// its tests whose name matches only between the prefix and the tag (say, "should serve a basic
// endpoint from pods" in Services).
func (s Suite) Focus(only string) string {
	f := s.Prefix
	if only != "" {
		f += ".*" + only
	}
	if s.Tag != "" {
		f += ".*" + s.Tag
	}
	return f
}

// SuiteByName finds a suite.
func SuiteByName(name string) (Suite, error) {
	var names []string
	for _, s := range Suites {
		if s.Name == name {
			return s, nil
		}
		names = append(names, s.Name)
	}
	return Suite{}, fmt.Errorf("no suite %q (%s)", name, strings.Join(names, ", "))
}

// Exclusion is a test left out, and why.
type Exclusion struct {
	Test   string `json:"test"`
	Reason string `json:"reason"`
}

//go:embed exclusions.yaml
var exclusionsYAML []byte

// Exclusions are the tests left out of every suite (exclusions.yaml).
func Exclusions() ([]Exclusion, error) {
	var ex []Exclusion
	if err := yaml.UnmarshalStrict(exclusionsYAML, &ex); err != nil {
		return nil, fmt.Errorf("exclusions.yaml: %w", err)
	}
	for _, e := range ex {
		if e.Reason == "" {
			return nil, fmt.Errorf("exclusions.yaml: %q has no reason", e.Test)
		}
		if _, err := regexp.Compile(e.Test); err != nil {
			return nil, fmt.Errorf("exclusions.yaml: %w", err)
		}
	}
	return ex, nil
}

// skipRegexp is ginkgo's --skip for the exclusions.
func skipRegexp(ex []Exclusion) string {
	parts := make([]string, len(ex))
	for i, e := range ex {
		parts[i] = "(" + e.Test + ")"
	}
	return strings.Join(parts, "|")
}
