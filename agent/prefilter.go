package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/loader"
)

// reconcilePrefilter makes the XDP deny list match the store. The program sits on the
// underlay only while the list has entries: XDP on a veth would otherwise linearise every
// GSO packet for nothing.
func (a *Agent) reconcilePrefilter(ctx context.Context) error {
	cidrs, err := a.cluster.Prefilters(ctx)
	if err != nil {
		return err
	}
	want := map[netip.Prefix]bool{}
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil {
			want[p.Masked()] = true
		}
	}
	pf := a.dp.Prefilter()
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
	if len(cidrs) > 0 {
		mode, err := a.dp.Attach(a.cfg.UnderlayInterface, loader.HookPrefilter)
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		if mode != a.prefilterMode.Load() {
			a.prefilterMode.Store(mode)
			slog.Info("XDP prefilter attached", "interface", a.cfg.UnderlayInterface, "mode", mode, "cidrs", len(cidrs))
		}
	} else if a.prefilterMode.Load() != "" || !a.started.Load() {
		errs = append(errs, loader.Detach(a.cfg.PinDir, a.cfg.UnderlayInterface, loader.HookPrefilter))
		a.prefilterMode.Store("")
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
