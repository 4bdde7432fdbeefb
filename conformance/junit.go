package conformance

import (
	"encoding/xml"
	"fmt"
	"os"
	"regexp"
	"sort"
)

// Count is one suite's outcome in one mode. Excluded tests are the ones exclusions.yaml left
// out; Skipped ones skipped themselves at run time (a missing provider feature, say).
type Count struct {
	Name      string   `json:"name"`
	CNI       string   `json:"cni"` // lab.CNIEbpfnet, or lab.CNICilium: the peer's counts
	Mode      string   `json:"mode"`
	DualStack bool     `json:"dualStack,omitempty"` // the lab's pods had an IPv6 address too
	Passed    int      `json:"passed"`
	Failed    int      `json:"failed"`
	Skipped   int      `json:"skipped"`
	Excluded  int      `json:"excluded"`
	Seconds   float64  `json:"seconds"`
	Failures  []string `json:"failures,omitempty"`
}

// junitCase is what is read of a ginkgo JUnit test case.
type junitCase struct {
	Name    string    `xml:"name,attr"`
	Status  string    `xml:"status,attr"`
	Time    float64   `xml:"time,attr"`
	Failure *struct{} `xml:"failure"`
	Error   *struct{} `xml:"error"`
	Skipped *struct {
		Message string `xml:"message,attr"`
	} `xml:"skipped"`
}

// countJUnit reads a ginkgo JUnit report and counts the suite's tests, those whose name focus
// matches (the report lists every test of e2e.test, the unfocused ones as skipped).
func countJUnit(path string, s Suite, focus string, ex []Exclusion) (Count, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Count{}, fmt.Errorf("junit report: %w", err)
	}
	var doc struct {
		Suites []struct {
			Cases []junitCase `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b, &doc); err != nil {
		return Count{}, fmt.Errorf("junit report %s: %w", path, err)
	}
	focusRE, err := regexp.Compile(focus)
	if err != nil {
		return Count{}, err
	}
	var skip *regexp.Regexp
	if len(ex) > 0 {
		skip = regexp.MustCompile(skipRegexp(ex))
	}
	c := Count{Name: s.Name}
	for _, st := range doc.Suites {
		for _, tc := range st.Cases {
			if !focusRE.MatchString(tc.Name) {
				continue
			}
			c.Seconds += tc.Time
			switch {
			case tc.Failure != nil || tc.Error != nil || tc.Status == "failed" || tc.Status == "panicked" || tc.Status == "timedout":
				c.Failed++
				c.Failures = append(c.Failures, tc.Name)
			case tc.Skipped != nil || tc.Status == "skipped" || tc.Status == "pending":
				if skip != nil && skip.MatchString(tc.Name) {
					c.Excluded++
				} else {
					c.Skipped++
				}
			default:
				c.Passed++
			}
		}
	}
	sort.Strings(c.Failures)
	return c, nil
}
