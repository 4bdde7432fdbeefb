package agent

import (
	"context"
	"time"
)

// identityGC deletes identities that no pod carries any more, once no node has reported one
// for a grace period: a node that still programs an identity (and may carry it in a VNI) keeps
// it alive. Any agent may collect; deleting twice is harmless.
type identityGC struct {
	grace  time.Duration
	unused map[uint32]time.Time // identity -> when this agent first saw nobody use it
}

// collectIdentities runs one pass and returns when the next candidate falls due (zero if none).
func (a *Agent) collectIdentities(ctx context.Context) (time.Duration, error) {
	gc := &a.idGC
	ids, err := a.cluster.Identities(ctx)
	if err != nil {
		return 0, err
	}
	sts, err := a.cluster.Statuses(ctx)
	if err != nil {
		return 0, err
	}
	used := map[uint32]bool{}
	for _, st := range sts {
		for _, id := range st.Identities {
			used[id] = true
		}
	}
	if out := a.lastPolicy.Load(); out != nil {
		for _, id := range out.Identities {
			used[id] = true
		}
	}
	now := time.Now()
	var next time.Duration
	for id, key := range ids {
		if used[id] {
			delete(gc.unused, id)
			continue
		}
		since, ok := gc.unused[id]
		if !ok {
			gc.unused[id] = now
			since = now
		}
		if left := gc.grace - now.Sub(since); left > 0 {
			if next == 0 || left < next {
				next = left
			}
			continue
		}
		if err := a.cluster.DeleteIdentity(ctx, id, key); err != nil {
			return 0, err
		}
		delete(gc.unused, id)
		a.metrics.identitiesCollected.Inc()
		a.log.Info("collected unused identity", "identity", id, "labels", key)
	}
	for id := range gc.unused {
		if _, ok := ids[id]; !ok {
			delete(gc.unused, id)
		}
	}
	return next, nil
}
