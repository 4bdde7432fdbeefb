package agent

import (
	"context"
	"errors"
	"net/netip"

	"github.com/ebpfnet/ebpfnet/maps"
)

// masqueradeReconciler owns the no_masquerade map and keeps it equal to the config's list.
// Masquerading itself (on or off, the port range) is in the config map, written at start.
type masqueradeReconciler struct {
	set  *maps.PrefixSet
	keep []netip.Prefix // destinations not masqueraded
}

func (r *masqueradeReconciler) reconcile(context.Context, *pass) error {
	set := r.set
	have, err := set.List()
	if err != nil {
		return err
	}
	want := map[netip.Prefix]bool{}
	for _, p := range r.keep {
		want[p] = true
	}
	var errs []error
	for _, p := range have {
		if !want[p] {
			errs = append(errs, set.Delete(p))
		}
		delete(want, p)
	}
	for p := range want {
		errs = append(errs, set.Add(p))
	}
	return errors.Join(errs...)
}

// collectNAT removes the translations of flows that ended, both directions at once.
func (a *Agent) collectNAT() {
	removed, left, err := a.dp.NAT().GC()
	a.metrics.natGCRemoved.Add(float64(removed))
	a.metrics.natEntries.Set(float64(left))
	if err != nil {
		a.log.Warn("nat gc", "err", err)
	}
}
