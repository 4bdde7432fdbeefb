package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/fdpass"
	"github.com/ebpfnet/ebpfnet/maps"
)

// listenUnix makes the API socket: 0600 in a 0700 directory, so only root can open it, and
// every connection's peer must be root whatever the mode (rootOnly). Its connections may carry
// a pod's network namespace as a descriptor (fdpass).
func listenUnix(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("socket dir %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("socket dir %s: %w", dir, err)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s: another agent is serving it", path)
	}
	os.Remove(path) // a stale socket from an agent that died
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return fdpass.NewListener(rootOnly{ln}), nil
}

// apiServer serves the API; CNI handlers find a passed namespace through the connection's context.
func (a *Agent) apiServer() *http.Server {
	return &http.Server{Handler: limitBody(a.routes(), agentapi.MaxRequestBytes), ReadHeaderTimeout: 10 * time.Second,
		ConnContext: fdpass.ConnContext}
}

// limitBody refuses a request whose body is over limit bytes: at once when its Content-Length
// says so (413), else when reading it goes past the limit (the handler's read fails with the
// same error). Either way the handler never holds more than limit bytes of it, and whatever
// the client is still sending after the answer is read and thrown away (drainBody), so that
// the client, still writing, reads the answer instead of a broken pipe.
func limitBody(h http.Handler, limit int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		// Without full duplex the server stops reading the body once the answer is written.
		duplex := rc.EnableFullDuplex() == nil
		body := r.Body
		defer func() {
			if duplex {
				drainBody(rc, body)
			}
		}()
		if r.ContentLength > limit {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			writeJSON(w, tooLarge(limit))
			return
		}
		r.Body = &boundedBody{ReadCloser: r.Body, left: limit, limit: limit}
		h.ServeHTTP(w, r)
	})
}

// How much of a body the agent reads and throws away after it has answered, and for how long:
// enough for any file a person would send by mistake, bounded so a client cannot hold the agent.
const (
	drainBytes = 1 << 30
	drainTime  = 30 * time.Second
)

// drainBody sends the answer on its way, then reads what is left of the request's body, at
// most drainBytes for at most drainTime; past either the server closes the connection.
func drainBody(rc *http.ResponseController, body io.Reader) {
	// The answer is written: what fails now is a client gone or too slow, and the server
	// closes that connection.
	_ = rc.Flush()
	_ = rc.SetReadDeadline(time.Now().Add(drainTime))
	_, _ = io.CopyN(io.Discard, body, drainBytes)
}

func tooLarge(limit int64) *agentapi.APIError {
	return &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("request body is over the agent API's limit of %d MiB", limit>>20)}
}

// boundedBody reads a request body of at most limit bytes; past that, reads fail with tooLarge.
type boundedBody struct {
	io.ReadCloser
	left, limit int64
	err         error
}

func (b *boundedBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	var n int
	var err error
	if len(p) > 0 {
		n, err = b.ReadCloser.Read(p)
		b.left -= int64(n)
	}
	if b.left == 0 && err == nil {
		// At the limit the body must end: look one byte further, so that a reader which stops
		// at the limit itself (io.LimitReader) never takes a cut body for a whole one.
		var one [1]byte
		m, perr := io.ReadFull(b.ReadCloser, one[:])
		switch {
		case m > 0:
			err = tooLarge(b.limit)
		case errors.Is(perr, io.EOF):
			err = io.EOF
		default:
			err = perr
		}
	}
	b.err = err
	return n, err
}

func (a *Agent) status(ctx context.Context) agentapi.Status {
	st := agentapi.Status{Ready: a.ready.Load(), Node: a.node.Name, NodeIP: a.node.IP.String(), PodCIDR: a.node.PodCIDR.String(),
		PodCIDRv6: prefixOrEmpty(a.node.PodCIDRv6), NodeIPv6: addrOrEmpty(a.node.IPv6),
		Mode: a.cfg.mode.String(), PinDir: a.cfg.PinDir, PodMTU: a.PodMTU(), PrefilterMode: a.prefilter.mode()}
	// The store answers quickly or not at all: a status must not wait on a store that went away.
	sctx, cancel := context.WithTimeout(ctx, storeProbeTimeout)
	defer cancel()
	if !a.health.up() {
		st.Ready = false
	} else if _, err := a.cluster.Nodes(sctx); err != nil {
		st.Ready = false
	}
	return st
}

func (a *Agent) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { reply(w, a.status(r.Context()), nil) })
	mux.HandleFunc("POST /v1/cni/add", handle(checkedAttach(a.cniAdd, true)))
	mux.HandleFunc("POST /v1/cni/del", handle(checkedAttach(func(ctx context.Context, req agentapi.AttachRequest) (struct{}, error) {
		return struct{}{}, a.cniDel(ctx, req)
	}, false)))
	mux.HandleFunc("POST /v1/cni/check", handle(checkedAttach(func(ctx context.Context, req agentapi.AttachRequest) (struct{}, error) {
		return struct{}{}, a.cniCheck(ctx, req)
	}, true)))
	mux.HandleFunc("POST /v1/cni/gc", handle(a.cniGC))
	mux.HandleFunc("GET /v1/endpoints", func(w http.ResponseWriter, r *http.Request) {
		eps, err := a.cluster.Endpoints(r.Context(), r.URL.Query().Get("node"))
		reply(w, eps, err)
	})
	mux.HandleFunc("GET /v1/nodes", func(w http.ResponseWriter, r *http.Request) {
		nodes, err := a.cluster.Nodes(r.Context())
		reply(w, nodes, err)
	})
	mux.HandleFunc("DELETE /v1/nodes/{name}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, struct{}{}, a.cluster.DeleteNode(r.Context(), r.PathValue("name")))
	})
	mux.HandleFunc("GET /v1/routes", func(w http.ResponseWriter, r *http.Request) {
		rs, err := a.dp.Routes().List()
		if rs == nil {
			rs = []maps.Route{}
		}
		reply(w, rs, err)
	})
	a.policyRoutes(mux)
	a.prefilterRoutes(mux)
	mux.HandleFunc("GET /v1/monitor", a.serveMonitor)
	a.serviceRoutes(mux)
	a.bgpRoutes(mux)
	return mux
}

// handle decodes a JSON request strictly, runs fn and encodes its answer.
func handle[Req, Resp any](fn func(context.Context, Req) (Resp, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Req
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			reply(w, nil, &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: "decode request: " + err.Error()})
			return
		}
		resp, err := fn(r.Context(), req)
		reply(w, resp, err)
	}
}

func reply(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		var ae *agentapi.APIError
		if !errors.As(err, &ae) {
			ae = &agentapi.APIError{Code: agentapi.CodeInternal, Message: err.Error()}
		}
		w.WriteHeader(http.StatusBadRequest)
		writeJSON(w, ae)
		return
	}
	writeJSON(w, v)
}

// writeJSON writes an answer's body; a client that went away before reading it is only logged.
func writeJSON(w io.Writer, v any) {
	if err := json.NewEncoder(w).Encode(v); err != nil {
		slog.Debug("agent api: answer not written", "err", err)
	}
}

// prefixOrEmpty is p as text, or "" for the zero prefix.
func prefixOrEmpty(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}

func addrOrEmpty(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
