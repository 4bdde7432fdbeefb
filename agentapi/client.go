// Package agentapi is the agent's HTTP API as its clients see it: the client of the agent's
// root-only unix socket and the types that travel over it. It imports nothing heavy (no
// Kubernetes, etcd, GoBGP, eBPF or netlink), so the CNI plugin, which the runtime execs once
// per pod operation, stays small; the CLI, the lab and the tests use it too. The two calls whose
// types are Kubernetes' or the policy compiler's live beside those types in package agent
// (agent.ApplyServices, agent.Explain), on top of Client.Call.
package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/ebpfnet/ebpfnet/fdpass"
	"github.com/ebpfnet/ebpfnet/netnsfile"
)

// Client talks to an agent over its unix socket.
type Client struct {
	socket string
	hc     *http.Client
}

// clientTimeout bounds a request that is not a stream.
const clientTimeout = 60 * time.Second

// NewClient returns a client of the agent serving socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return fdpass.Dial(ctx, socket, nil)
	}}
	return &Client{socket: socket, hc: &http.Client{Transport: tr, Timeout: clientTimeout}}
}

// withFile returns an HTTP client whose one connection carries f's descriptor to the agent.
func (c *Client) withFile(f *os.File) (*http.Client, func()) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return fdpass.Dial(ctx, c.socket, f)
	}}
	return &http.Client{Transport: tr, Timeout: clientTimeout}, tr.CloseIdleConnections
}

// UnreachableError says the agent could not be reached at all (CNI: try again later).
type UnreachableError struct {
	Socket string
	Err    error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("agent at %s is unreachable: %v", e.Socket, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// Call sends in (if not nil) as JSON with method to path and decodes the answer into out (if
// not nil); an error answer comes back as an *APIError, no answer as an *UnreachableError.
func (c *Client) Call(ctx context.Context, method, path string, in, out any) error {
	return c.doWith(ctx, c.hc, method, path, in, out)
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	return c.Call(ctx, method, path, in, out)
}

// doNetns is do with the pod's network namespace passed along; a nil ns passes none.
func (c *Client) doNetns(ctx context.Context, ns *os.File, method, path string, in, out any) error {
	if ns == nil {
		return c.do(ctx, method, path, in, out)
	}
	hc, done := c.withFile(ns)
	defer done()
	return c.doWith(ctx, hc, method, path, in, out)
}

func (c *Client) doWith(ctx context.Context, hc *http.Client, method, path string, in, out any) error {
	var body bytes.Buffer
	if in != nil {
		if err := json.NewEncoder(&body).Encode(in); err != nil {
			return err
		}
	}
	resp, err := c.send(ctx, hc, method, path, body.Bytes())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// send makes one request of body (refused here, unsent, when the agent would refuse its size)
// and returns the response when it is a 200, else the agent's error.
func (c *Client) send(ctx context.Context, hc *http.Client, method, path string, body []byte) (*http.Response, error) {
	if err := checkSize(method, path, len(body)); err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, &UnreachableError{Socket: c.socket, Err: err}
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, answerError(resp)
}

// answerError is the agent's error in a response other than 200.
func answerError(resp *http.Response) error {
	ae := &APIError{}
	if err := json.NewDecoder(resp.Body).Decode(ae); err != nil {
		return fmt.Errorf("agent answered %s", resp.Status)
	}
	return ae
}

// Status asks whether the agent is ready.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.do(ctx, "GET", "/v1/status", nil, &s)
}

// Add attaches a pod; its netns is opened here and passed as a descriptor (the agent never opens r.Netns).
func (c *Client) Add(ctx context.Context, r AttachRequest) (AttachResult, error) {
	var res AttachResult
	ns, err := openNetns(r.Netns)
	if err != nil {
		return res, err
	}
	defer ns.Close()
	return res, c.doNetns(ctx, ns, "POST", "/v1/cni/add", r, &res)
}

// Del detaches a pod; a namespace that is gone or not given is not sent, and not an error.
func (c *Client) Del(ctx context.Context, r AttachRequest) error {
	ns, _ := openNetns(r.Netns) // gone, empty or not a namespace: DEL goes on without one
	if ns != nil {
		defer ns.Close()
	}
	return c.doNetns(ctx, ns, "POST", "/v1/cni/del", r, nil)
}

// Check verifies a pod's attachment, inside its network namespace too (passed as for Add).
func (c *Client) Check(ctx context.Context, r AttachRequest) error {
	ns, err := openNetns(r.Netns)
	if err != nil {
		return err
	}
	defer ns.Close()
	return c.doNetns(ctx, ns, "POST", "/v1/cni/check", r, nil)
}

// openNetns opens the network namespace at path; failing that, CNI_NETNS is invalid (code 4).
func openNetns(path string) (*os.File, error) {
	if path == "" {
		return nil, &APIError{Code: CodeInvalidEnv, Message: "netns is empty"}
	}
	f, err := netnsfile.Open(path)
	if err != nil {
		return nil, &APIError{Code: CodeInvalidEnv, Message: err.Error()}
	}
	return f, nil
}

// GC removes attachments not in valid.
func (c *Client) GC(ctx context.Context, valid []Attachment) (GCResult, error) {
	var res GCResult
	return res, c.do(ctx, "POST", "/v1/cni/gc", GCRequest{Valid: valid}, &res)
}

// Get fetches a JSON document from path (e.g. /v1/endpoints) into out.
func (c *Client) Get(ctx context.Context, path string, out any) error {
	return c.do(ctx, "GET", path, nil, out)
}

// DeleteNode removes a node from the store.
func (c *Client) DeleteNode(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/nodes/"+name, nil, nil)
}

// checkSize refuses, before anything is sent, a body the agent would refuse for its size.
func checkSize(method, path string, n int) error {
	if n > MaxRequestBytes {
		return &APIError{Code: CodeInvalidConfig, Message: fmt.Sprintf("%s %s: a request body of %.1f MiB is over the agent API's limit of %d MiB",
			method, path, float64(n)/(1<<20), MaxRequestBytes>>20)}
	}
	return nil
}

// ApplyPolicies sends NetworkPolicy YAML; it returns once every node has programmed it.
func (c *Client) ApplyPolicies(ctx context.Context, yamlDocs []byte) ([]string, error) {
	resp, err := c.send(ctx, c.hc, "POST", "/v1/policies", yamlDocs)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var names []string
	return names, json.NewDecoder(resp.Body).Decode(&names)
}

// DeletePolicy removes namespace/name; it returns once every node has programmed it.
func (c *Client) DeletePolicy(ctx context.Context, ns, name string) error {
	return c.do(ctx, "DELETE", "/v1/policies/"+ns+"/"+name, nil, nil)
}

// Label changes labels; it returns once every node has programmed the change.
func (c *Client) Label(ctx context.Context, r LabelRequest) error {
	return c.do(ctx, "POST", "/v1/labels", r, nil)
}

// PutObjects declares namespaces and pods.
func (c *Client) PutObjects(ctx context.Context, r ObjectsRequest) error {
	return c.do(ctx, "PUT", "/v1/objects", r, nil)
}

// Sync returns once every node has programmed everything in the store.
func (c *Client) Sync(ctx context.Context) error { return c.do(ctx, "POST", "/v1/sync", nil, nil) }

// PrefilterAdd adds a CIDR to every node's XDP deny list and returns this agent's status.
func (c *Client) PrefilterAdd(ctx context.Context, cidr string) (Status, error) {
	var st Status
	return st, c.do(ctx, "POST", "/v1/prefilter", PrefilterRequest{CIDR: cidr}, &st)
}

// PrefilterDelete removes a CIDR from the deny list.
func (c *Client) PrefilterDelete(ctx context.Context, cidr string) error {
	return c.do(ctx, "DELETE", "/v1/prefilter", PrefilterRequest{CIDR: cidr}, nil)
}

// Monitor streams drop events until ctx ends: ready is called once the agent is sending,
// then fn gets each event.
func (c *Client) Monitor(ctx context.Context, kind string, ready func(), fn func(MonitorEvent)) error {
	tr := c.hc.Transport
	hc := &http.Client{Transport: tr} // no timeout: the stream lasts as long as ctx
	req, err := http.NewRequestWithContext(ctx, "GET", "http://agent/v1/monitor?type="+kind, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return &UnreachableError{Socket: c.socket, Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return answerError(resp)
	}
	ready()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev MonitorEvent
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		fn(ev)
	}
}

// PolicyStatus asks how many nodes enforce each policy's current version.
func (c *Client) PolicyStatus(ctx context.Context) ([]PolicyStatus, error) {
	var st []PolicyStatus
	return st, c.Get(ctx, "/v1/policy-status", &st)
}

// Wait returns once every node has programmed everything the store held when it was called
// (policies, pods, labels, namespaces), or fails after timeout naming the nodes that have not.
func (c *Client) Wait(ctx context.Context, timeout time.Duration) error {
	var out struct{}
	return c.do(ctx, "POST", fmt.Sprintf("/v1/sync?timeout=%s", timeout), nil, &out)
}

// Services lists every service with its frontends and backends.
func (c *Client) Services(ctx context.Context) ([]ServiceView, error) {
	var out []ServiceView
	return out, c.do(ctx, "GET", "/v1/services", nil, &out)
}

// DeleteService removes namespace/name and frees its cluster IP and node ports.
func (c *Client) DeleteService(ctx context.Context, ns, name string) error {
	return c.do(ctx, "DELETE", "/v1/services/"+ns+"/"+name, nil, nil)
}

// DeleteEndpointSlice removes the EndpointSlice namespace/name (local and etcd stores).
func (c *Client) DeleteEndpointSlice(ctx context.Context, ns, name string) error {
	return c.do(ctx, "DELETE", "/v1/endpointslices/"+ns+"/"+name, nil, nil)
}
