package agent

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"unicode"
)

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

// k8sLabel and k8sSubdomain are Kubernetes' rules for namespace and pod names.
var (
	k8sLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	k8sSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// validate applies the rules above to an attach request, and Kubernetes' to the pod's
// namespace and name (CNI_ARGS), which become store keys: code 4, one line naming the field.
func (r AttachRequest) validate(netnsRequired bool) error {
	bad := func(field string, err error) error {
		return &APIError{Code: CodeInvalidEnv, Message: fmt.Sprintf("%s %v", field, err)}
	}
	if err := CheckContainerID(r.ContainerID); err != nil {
		return bad("containerID", err)
	}
	if err := CheckIfName(r.IfName); err != nil {
		return bad("ifName", err)
	}
	if r.Netns != "" || netnsRequired {
		if err := CheckNetnsPath(r.Netns); err != nil {
			return bad("netns", err)
		}
	}
	if r.Namespace != "" && (len(r.Namespace) > 63 || !k8sLabel.MatchString(r.Namespace)) {
		return bad("namespace", fmt.Errorf("%.80q is not a DNS label", r.Namespace))
	}
	if r.Pod != "" && (len(r.Pod) > 253 || !k8sSubdomain.MatchString(r.Pod)) {
		return bad("pod", fmt.Errorf("%.80q is not a DNS subdomain", r.Pod))
	}
	return nil
}

// checkedAttach runs fn only for a request that passes validate: nothing is made for one that
// does not. DEL may come without a namespace (it is gone); ADD and CHECK may not.
func checkedAttach[Resp any](fn func(context.Context, AttachRequest) (Resp, error), netnsRequired bool) func(context.Context, AttachRequest) (Resp, error) {
	return func(ctx context.Context, req AttachRequest) (Resp, error) {
		if err := req.validate(netnsRequired); err != nil {
			var zero Resp
			return zero, err
		}
		return fn(ctx, req)
	}
}
