// Package cni is the CNI plugin's logic: strict config parsing, the calls to the agent, and
// results and errors with the spec's codes, in the cniVersion the configuration asks for.
package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ebpfnet/ebpfnet/agentapi"
)

// NetConf is the plugin's network configuration.
type NetConf struct {
	types.PluginConf
	// Socket is the agent's API socket.
	Socket string `json:"socket,omitempty"`
	// Attachments is the name libcni also sends the valid attachments under for GC.
	Attachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`
	// Args are conflist-level CNI args (accepted, not used).
	Args map[string]any `json:"args,omitempty"`
	// RuntimeConfig carries the capabilities the runtime fills in.
	RuntimeConfig struct {
		// PodLabels (capability "podLabels") are the pod's labels.
		PodLabels map[string]string `json:"podLabels,omitempty"`
	} `json:"runtimeConfig,omitempty"`
}

// k8sArgs are the CNI_ARGS Kubernetes runtimes pass.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // names fixed by the runtimes
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
}

// Timeout bounds every call to the agent.
const Timeout = 30 * time.Second

// Versions are the CNI versions the plugin answers in; STATUS and GC exist from 1.1.0 on
// (skel refuses them, and CHECK before 0.4.0, with code 1).
var Versions = []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// parseConf decodes stdin: malformed JSON is a decoding failure (6), a field we do not know,
// a missing value or one over MaxConfBytes is an invalid configuration (7).
func parseConf(data []byte) (*NetConf, error) {
	if len(data) > MaxConfBytes {
		return nil, tooLarge()
	}
	if !json.Valid(data) {
		return nil, types.NewError(types.ErrDecodingFailure, "network configuration is not valid JSON", "")
	}
	var c NetConf
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration", err.Error())
	}
	if c.CNIVersion == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration", "cniVersion is missing")
	}
	if c.Socket == "" {
		c.Socket = agentapi.DefaultSocket
	}
	if !filepath.IsAbs(c.Socket) {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration", fmt.Sprintf("socket %q is not an absolute path", c.Socket))
	}
	return &c, nil
}

// cniError turns an agent or transport error into the spec's error.
func cniError(err error) error {
	var un *agentapi.UnreachableError
	if errors.As(err, &un) {
		return types.NewError(types.ErrTryAgainLater, "the ebpfnet agent is unreachable", un.Error())
	}
	var ae *agentapi.APIError
	if errors.As(err, &ae) {
		return types.NewError(uint(ae.Code), ae.Message, "")
	}
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	return types.NewError(types.ErrInternal, err.Error(), "")
}

func request(args *skel.CmdArgs, conf *NetConf) (agentapi.AttachRequest, error) {
	var ka k8sArgs
	if err := types.LoadArgs(args.Args, &ka); err != nil {
		return agentapi.AttachRequest{}, types.NewError(types.ErrInvalidEnvironmentVariables, "invalid CNI_ARGS", err.Error())
	}
	return agentapi.AttachRequest{ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns,
		Namespace: string(ka.K8S_POD_NAMESPACE), Pod: string(ka.K8S_POD_NAME), Labels: conf.RuntimeConfig.PodLabels}, nil
}

// setup checks the runtime's variables and configuration and makes the request; netnsRequired
// is true for ADD and CHECK.
func setup(args *skel.CmdArgs, netnsRequired bool) (*NetConf, agentapi.AttachRequest, *agentapi.Client, error) {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return nil, agentapi.AttachRequest{}, nil, err
	}
	if err := checkArgs(args, netnsRequired); err != nil {
		return nil, agentapi.AttachRequest{}, nil, err
	}
	req, err := request(args, conf)
	if err != nil {
		return nil, req, nil, err
	}
	return conf, req, agentapi.NewClient(conf.Socket), nil
}

// Add attaches the pod and prints its result.
func Add(args *skel.CmdArgs) error {
	conf, req, c, err := setup(args, true)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	res, err := c.Add(ctx, req)
	if err != nil {
		return cniError(err)
	}
	return types.PrintResult(result(args, res, conf.CNIVersion), conf.CNIVersion)
}

// result is ADD's answer in the current types; PrintResult converts it to version.
func result(args *skel.CmdArgs, res agentapi.AttachResult, ver string) *types100.Result {
	gw := net.IP(res.Gateway.AsSlice())
	podIdx := 1
	pod := &types100.Interface{Name: args.IfName, Mac: res.MAC, Sandbox: args.Netns}
	if newer, _ := version.GreaterThanOrEqualTo(ver, "1.1.0"); newer {
		pod.Mtu = res.MTU // mtu is a 1.1.0 field; the converters would carry it into 1.0.0
	}
	// The first address is IPv4, or IPv6 in an IPv6-only cluster.
	bits, anyAddr := 32, net.IPv4zero.To4()
	if res.IP.Is6() {
		bits, anyAddr = 128, net.IPv6zero
	}
	out := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{{Name: res.HostIf, Mac: res.HostMAC}, pod},
		IPs:        []*types100.IPConfig{{Interface: &podIdx, Address: net.IPNet{IP: res.IP.AsSlice(), Mask: net.CIDRMask(bits, bits)}, Gateway: gw}},
		Routes:     []*types.Route{{Dst: net.IPNet{IP: anyAddr, Mask: net.CIDRMask(0, bits)}, GW: gw}},
	}
	if res.IPv6.IsValid() {
		gw6 := net.IP(res.GatewayV6.AsSlice())
		out.IPs = append(out.IPs, &types100.IPConfig{Interface: &podIdx, Address: net.IPNet{IP: res.IPv6.AsSlice(), Mask: net.CIDRMask(128, 128)}, Gateway: gw6})
		out.Routes = append(out.Routes, &types.Route{Dst: net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, GW: gw6})
	}
	return out
}

// Del detaches the pod; what is already gone is not an error.
func Del(args *skel.CmdArgs) error { return call(args, false, (*agentapi.Client).Del) }

// Check verifies the pod's attachment.
func Check(args *skel.CmdArgs) error { return call(args, true, (*agentapi.Client).Check) }

// call sends the request of args to the agent with op and maps its error to the spec's.
func call(args *skel.CmdArgs, netnsRequired bool, op func(*agentapi.Client, context.Context, agentapi.AttachRequest) error) error {
	_, req, c, err := setup(args, netnsRequired)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	if err := op(c, ctx, req); err != nil {
		return cniError(err)
	}
	return nil
}

// Status reports whether the agent is ready for ADDs (code 50 when it is not).
func Status(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := agentapi.NewClient(conf.Socket).Status(ctx)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "the ebpfnet agent is not available", err.Error())
	}
	if !st.Ready {
		return types.NewError(types.ErrPluginNotAvailable, "the ebpfnet agent is not ready", "")
	}
	return nil
}

// GC removes every attachment of this node not listed in cni.dev/valid-attachments.
func GC(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	valid := make([]agentapi.Attachment, 0, len(conf.ValidAttachments))
	for _, v := range append(conf.ValidAttachments, conf.Attachments...) {
		valid = append(valid, agentapi.Attachment{ContainerID: v.ContainerID, IfName: v.IfName})
	}
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	if _, err := agentapi.NewClient(conf.Socket).GC(ctx, valid); err != nil {
		return cniError(err)
	}
	return nil
}
