package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync/atomic"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/store"
)

// prefilterReconciler owns the XDP deny list and the XDP hook on the underlay: it makes the
// list match the store. The program sits on the underlay only while the list has entries: XDP
// on a veth would otherwise linearise every GSO packet for nothing.
type prefilterReconciler struct {
	cluster  *store.Cluster
	dp       *loader.Datapath
	underlay string
	pinDir   string
	log      *slog.Logger
	// attached is the XDP mode ("native" or "generic") while the program is attached, else "".
	attached atomic.Value
	// adopted is set after the first pass, which detaches a program a former agent left.
	adopted bool
}

func newPrefilterReconciler(cluster *store.Cluster, dp *loader.Datapath, s *settled, log *slog.Logger) *prefilterReconciler {
	r := &prefilterReconciler{cluster: cluster, dp: dp, underlay: s.UnderlayInterface, pinDir: s.PinDir, log: log}
	r.attached.Store("")
	return r
}

// mode is the XDP mode the prefilter runs in, or "" while it is not attached.
func (r *prefilterReconciler) mode() string {
	if r == nil {
		return ""
	}
	return r.attached.Load().(string)
}

func (r *prefilterReconciler) reconcile(ctx context.Context, _ *pass) error {
	cidrs, err := r.cluster.Prefilters(ctx)
	if err != nil {
		return err
	}
	want := map[netip.Prefix]bool{}
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil {
			want[p.Masked()] = true
		}
	}
	pf := r.dp.Prefilter()
	have, err := pf.List()
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range have {
		if !want[p] {
			errs = append(errs, pf.Delete(p))
		}
		delete(want, p)
	}
	for p := range want {
		errs = append(errs, pf.Add(p))
	}
	first := !r.adopted
	r.adopted = true
	if len(cidrs) > 0 {
		mode, err := r.dp.Attach(r.underlay, loader.HookPrefilter)
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		if mode != r.mode() {
			r.attached.Store(mode)
			r.log.Info("XDP prefilter attached", "interface", r.underlay, "mode", mode, "cidrs", len(cidrs))
		}
	} else if r.mode() != "" || first {
		errs = append(errs, loader.Detach(r.pinDir, r.underlay, loader.HookPrefilter))
		r.attached.Store("")
	}
	return errors.Join(errs...)
}

func (a *Agent) prefilterRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/prefilter", handle(func(ctx context.Context, req agentapi.PrefilterRequest) (agentapi.Status, error) {
		p, err := netip.ParsePrefix(req.CIDR)
		if err != nil {
			return agentapi.Status{}, &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("cidr %q is not a CIDR", req.CIDR)}
		}
		if err := a.cluster.PutPrefilter(ctx, p.Masked().String()); err != nil {
			return agentapi.Status{}, err
		}
		if err := a.waitProgrammed(ctx); err != nil {
			return agentapi.Status{}, err
		}
		return a.status(ctx), nil
	}))
	mux.HandleFunc("DELETE /v1/prefilter", handle(func(ctx context.Context, req agentapi.PrefilterRequest) (struct{}, error) {
		p, err := netip.ParsePrefix(req.CIDR)
		if err != nil {
			return struct{}{}, &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("cidr %q is not a CIDR", req.CIDR)}
		}
		ok, err := a.cluster.DeletePrefilter(ctx, p.Masked().String())
		if err == nil && !ok {
			err = &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: fmt.Sprintf("%s is not in the prefilter", p.Masked())}
		}
		if err != nil {
			return struct{}{}, err
		}
		return struct{}{}, a.waitProgrammed(ctx)
	}))
	mux.HandleFunc("GET /v1/prefilter", func(w http.ResponseWriter, r *http.Request) {
		cidrs, err := a.cluster.Prefilters(r.Context())
		reply(w, cidrs, err)
	})
}
