package agentapi

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"unicode"
)

// AttachRequest is what the CNI plugin sends for ADD, DEL and CHECK. The pod's network
// namespace itself comes as a descriptor on the request's connection (see fdpass).
type AttachRequest struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	// Netns is the runtime's path of the pod's namespace, for display only: it is opened in the
	// plugin's mount namespace, which need not be the agent's.
	Netns     string            `json:"netns"`
	Namespace string            `json:"namespace,omitempty"`
	Pod       string            `json:"pod,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
}

// AttachResult is the answer to ADD.
type AttachResult struct {
	IP      netip.Addr `json:"ip"`
	Gateway netip.Addr `json:"gateway"`
	// IPv6 and GatewayV6 are the pod's IPv6 address and next hop in a dual-stack cluster.
	IPv6      netip.Addr `json:"ipv6,omitzero"`
	GatewayV6 netip.Addr `json:"gatewayV6,omitzero"`
	MAC       string     `json:"mac"`
	HostIf    string     `json:"hostIf"`
	HostMAC   string     `json:"hostMAC"`
	MTU       int        `json:"mtu"`
}

// GCRequest lists the attachments that must stay.
type GCRequest struct {
	Valid []Attachment `json:"valid"`
}

// Attachment names one pod interface.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// GCResult says what GC removed.
type GCResult struct {
	Removed []Attachment `json:"removed"`
}

// The CNI spec's rules for what a runtime passes (CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS),
// applied by the plugin before it asks the agent and by the agent before it makes anything.
// Each returns why the value breaks them, without naming the field: callers do.

// containerIDPattern is the spec's: alphanumerics first, then alphanumerics, '_', '.', '-'.
var containerIDPattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`)

// MaxNetnsPath bounds a network namespace's path, as the kernel bounds any path.
const MaxNetnsPath = 4095

// CheckContainerID says why id is not a container ID the CNI spec allows.
func CheckContainerID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("is empty")
	case !containerIDPattern.MatchString(id):
		return fmt.Errorf("%.80q does not match %s", id, containerIDPattern)
	}
	return nil
}

// CheckIfName says why name is not an interface name the CNI spec (and the kernel) allows:
// 1 to 15 bytes, not "." or "..", no '/', ':' or whitespace.
func CheckIfName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("is empty")
	case len(name) > 15:
		return fmt.Errorf("%.80q is longer than 15 bytes", name)
	case name == "." || name == "..":
		return fmt.Errorf("%q is not a name", name)
	case strings.ContainsFunc(name, func(r rune) bool { return r == '/' || r == ':' || r == 0 || unicode.IsSpace(r) }):
		return fmt.Errorf("%q contains '/', ':', NUL or whitespace", name)
	}
	return nil
}

// CheckNetnsPath says why path cannot name a network namespace: it must be absolute, clean
// of NUL and within the kernel's path length. Whether it is a network namespace is checked
// where it is opened.
func CheckNetnsPath(path string) error {
	switch {
	case path == "":
		return fmt.Errorf("is empty")
	case len(path) > MaxNetnsPath:
		return fmt.Errorf("is longer than %d bytes", MaxNetnsPath)
	case strings.ContainsRune(path, 0):
		return fmt.Errorf("%.80q contains NUL", path)
	case !filepath.IsAbs(path):
		return fmt.Errorf("%.80q is not an absolute path", path)
	}
	return nil
}
