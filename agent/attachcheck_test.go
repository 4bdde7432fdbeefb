package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ebpfnet/ebpfnet/agentapi"
)

// The agent refuses what the CNI spec does not allow, whoever sends it (the plugin checks too,
// but the API is the agent's own door): code 4, one line naming the field, and the operation
// is never run, so nothing is made.
func TestAttachRequestRefused(t *testing.T) {
	ok := agentapi.AttachRequest{ContainerID: "c1", IfName: "eth0", Netns: "/run/netns/p", Namespace: "x", Pod: "p"}
	with := func(f func(*agentapi.AttachRequest)) agentapi.AttachRequest { r := ok; f(&r); return r }
	cases := []struct {
		name  string
		req   agentapi.AttachRequest
		field string
	}{
		{"container id going up", with(func(r *agentapi.AttachRequest) { r.ContainerID = "../x" }), "containerID"},
		{"container id with a slash", with(func(r *agentapi.AttachRequest) { r.ContainerID = "a/b" }), "containerID"},
		{"container id with NUL", with(func(r *agentapi.AttachRequest) { r.ContainerID = "a\x00" }), "containerID"},
		{"container id with a newline", with(func(r *agentapi.AttachRequest) { r.ContainerID = "a\nb" }), "containerID"},
		{"empty container id", with(func(r *agentapi.AttachRequest) { r.ContainerID = "" }), "containerID"},
		{"interface name of 16 bytes", with(func(r *agentapi.AttachRequest) { r.IfName = "eth0123456789abc" }), "ifName"},
		{"interface name ..", with(func(r *agentapi.AttachRequest) { r.IfName = ".." }), "ifName"},
		{"interface name with a colon", with(func(r *agentapi.AttachRequest) { r.IfName = "eth0:1" }), "ifName"},
		{"interface name with a space", with(func(r *agentapi.AttachRequest) { r.IfName = "eth 0" }), "ifName"},
		{"interface name with NUL", with(func(r *agentapi.AttachRequest) { r.IfName = "eth\x00" }), "ifName"},
		{"relative netns", with(func(r *agentapi.AttachRequest) { r.Netns = "run/netns/p" }), "netns"},
		{"netns with NUL", with(func(r *agentapi.AttachRequest) { r.Netns = "/run/netns/p\x00" }), "netns"},
		{"netns too long", with(func(r *agentapi.AttachRequest) { r.Netns = "/" + strings.Repeat("a", 5000) }), "netns"},
		{"namespace with a slash", with(func(r *agentapi.AttachRequest) { r.Namespace = "x/y" }), "namespace"},
		{"namespace too long", with(func(r *agentapi.AttachRequest) { r.Namespace = strings.Repeat("a", 64) }), "namespace"},
		{"pod going up", with(func(r *agentapi.AttachRequest) { r.Pod = "../p" }), "pod"},
		{"pod in capitals", with(func(r *agentapi.AttachRequest) { r.Pod = "P" }), "pod"},
	}
	for _, c := range cases {
		for _, op := range []struct {
			name          string
			netnsRequired bool
		}{{"ADD", true}, {"DEL", false}, {"CHECK", true}} {
			called := false
			fn := checkedAttach(func(context.Context, agentapi.AttachRequest) (struct{}, error) { called = true; return struct{}{}, nil }, op.netnsRequired)
			_, err := fn(context.Background(), c.req)
			var ae *agentapi.APIError
			if !errors.As(err, &ae) || ae.Code != agentapi.CodeInvalidEnv || !strings.HasPrefix(ae.Message, c.field+" ") || strings.Contains(ae.Message, "\n") {
				t.Errorf("%s %s: %v; want code 4, one line about %s", op.name, c.name, err, c.field)
			}
			if called {
				t.Errorf("%s %s: the operation ran", op.name, c.name)
			}
		}
	}
	for _, r := range []agentapi.AttachRequest{ok, with(func(r *agentapi.AttachRequest) { r.Namespace, r.Pod = "", "" }),
		with(func(r *agentapi.AttachRequest) {
			r.ContainerID, r.Pod = strings.Repeat("0123456789abcdef", 4), "web-5d8f.x"
		})} {
		if err := validateAttach(r, true); err != nil {
			t.Errorf("%+v: %v", r, err)
		}
	}
	// DEL takes a request without a namespace (it is gone); ADD does not.
	gone := with(func(r *agentapi.AttachRequest) { r.Netns = "" })
	if err := validateAttach(gone, false); err != nil {
		t.Errorf("DEL without netns: %v", err)
	}
	if err := validateAttach(gone, true); err == nil {
		t.Error("ADD without netns was accepted")
	}
}

// Through the API: a DEL that would reach the store (this agent has none, so reaching it would
// panic) is refused first.
func TestAPIRefusesBadAttach(t *testing.T) {
	api := limitBody((&Agent{}).routes(), agentapi.MaxRequestBytes)
	for _, path := range []string{"/v1/cni/add", "/v1/cni/del", "/v1/cni/check"} {
		body, _ := json.Marshal(agentapi.AttachRequest{ContainerID: "../../etc", IfName: "eth0", Netns: "/run/netns/p"})
		rec := httptest.NewRecorder()
		api.ServeHTTP(rec, httptest.NewRequest("POST", path, bytes.NewReader(body)))
		var ae agentapi.APIError
		if err := json.Unmarshal(rec.Body.Bytes(), &ae); err != nil || rec.Code != 400 || ae.Code != agentapi.CodeInvalidEnv || !strings.HasPrefix(ae.Message, "containerID ") {
			t.Errorf("%s: %d %s; want 400 with code 4 about containerID", path, rec.Code, rec.Body)
		}
	}
}
