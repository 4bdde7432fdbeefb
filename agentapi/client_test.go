package agentapi

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// A body over MaxRequestBytes is refused by the client itself, with the API's code and one
// line, and never sent; one at the limit is sent.
func TestClientRefusesOversizedBodies(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var requests atomic.Int32
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		_, _ = w.Write([]byte("[]"))
	})}
	go func() { _ = srv.Serve(ln) }() // ErrServerClosed once the test closes it
	t.Cleanup(func() { srv.Close() })
	c := NewClient(sock)
	ctx := context.Background()

	if _, err := c.ApplyPolicies(ctx, make([]byte, MaxRequestBytes)); err != nil {
		t.Fatalf("a body at the limit: %v", err)
	}
	if n := requests.Load(); n != 1 {
		t.Fatalf("the server saw %d requests for a body at the limit, want 1", n)
	}
	for name, call := range map[string]func() error{
		"policies": func() error { _, err := c.ApplyPolicies(ctx, make([]byte, MaxRequestBytes+1)); return err },
		"labels": func() error {
			return c.Label(ctx, LabelRequest{Namespace: strings.Repeat("x", MaxRequestBytes)})
		},
	} {
		err := call()
		var ae *APIError
		if !errors.As(err, &ae) || ae.Code != CodeInvalidConfig || !strings.Contains(ae.Message, "over the agent API's limit of 16 MiB") || strings.Contains(ae.Message, "\n") {
			t.Errorf("%s: %v; want code %d and one line naming the limit", name, err, CodeInvalidConfig)
		}
	}
	if n := requests.Load(); n != 1 {
		t.Errorf("the server saw %d requests, want only the one at the limit", n)
	}
}
