package agent

import (
	"context"
	"fmt"
	"regexp"

	"github.com/ebpfnet/ebpfnet/agentapi"
)

// k8sLabel and k8sSubdomain are Kubernetes' rules for namespace and pod names.
var (
	k8sLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	k8sSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// validateAttach applies the CNI spec's rules (agentapi.CheckContainerID and the others) to an
// attach request, and Kubernetes' to the pod's namespace and name (CNI_ARGS), which become
// store keys: code 4, one line naming the field.
func validateAttach(r agentapi.AttachRequest, netnsRequired bool) error {
	bad := func(field string, err error) error {
		return &agentapi.APIError{Code: agentapi.CodeInvalidEnv, Message: fmt.Sprintf("%s %v", field, err)}
	}
	if err := agentapi.CheckContainerID(r.ContainerID); err != nil {
		return bad("containerID", err)
	}
	if err := agentapi.CheckIfName(r.IfName); err != nil {
		return bad("ifName", err)
	}
	if r.Netns != "" || netnsRequired {
		if err := agentapi.CheckNetnsPath(r.Netns); err != nil {
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
func checkedAttach[Resp any](fn func(context.Context, agentapi.AttachRequest) (Resp, error), netnsRequired bool) func(context.Context, agentapi.AttachRequest) (Resp, error) {
	return func(ctx context.Context, req agentapi.AttachRequest) (Resp, error) {
		if err := validateAttach(req, netnsRequired); err != nil {
			var zero Resp
			return zero, err
		}
		return fn(ctx, req)
	}
}
