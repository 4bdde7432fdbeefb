package agent

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/ebpfnet/ebpfnet/loader"
)

// loopStuckAfter is how long the reconcile loop may go without coming round (it wakes every
// generationPoll at least) before the agent reports itself not alive: a pass that hangs.
const loopStuckAfter = 2 * time.Minute

// nodeHook is one of the node's own attachments (not a pod's), which liveness checks.
type nodeHook struct {
	ifname string
	hook   loader.Hook
}

// nodeHooks records the node's attachments as setupNode makes them.
type nodeHooks struct {
	mu    sync.Mutex
	hooks []nodeHook
}

func (n *nodeHooks) add(ifname string, h loader.Hook) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.hooks = append(n.hooks, nodeHook{ifname, h})
}

func (n *nodeHooks) list() []nodeHook {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]nodeHook(nil), n.hooks...)
}

// attachNodeHook attaches hook on ifname and records it for the liveness check.
func (a *Agent) attachNodeHook(ifname string, h loader.Hook) error {
	if _, err := a.dp.Attach(ifname, h); err != nil {
		return err
	}
	a.hooks.add(ifname, h)
	return nil
}

// beat records that the reconcile loop came round.
func (a *Agent) beat() { a.loopBeat.Store(time.Now().UnixNano()) }

// liveProblems is why the agent is not alive, or nothing: a node hook detached (kubelet
// restarting the agent attaches it again), or the reconcile loop stuck while its store answers
// (a loop waiting on an unreachable store is not stuck: readiness reports that).
func (a *Agent) liveProblems() []string {
	var p []string
	for _, h := range a.hooks.list() {
		if err := a.dp.CheckAttached(h.ifname, h.hook); err != nil {
			p = append(p, err.Error())
		}
	}
	if s := loopStuck(time.Unix(0, a.loopBeat.Load()), time.Now(), a.health.up()); s != "" {
		p = append(p, s)
	}
	return p
}

// loopStuck says why a loop that last came round at beat is stuck at now, or "".
func loopStuck(beat, now time.Time, storeUp bool) string {
	if since := now.Sub(beat); storeUp && since > loopStuckAfter {
		return fmt.Sprintf("the reconcile loop is stuck: it last came round %s ago", since.Round(time.Second))
	}
	return ""
}

// readyProblems is why the agent should get no traffic (kubelet's readiness), or nothing: it
// is not alive, has not finished starting, or its store does not answer.
func (a *Agent) readyProblems() []string {
	p := a.liveProblems()
	if !a.ready.Load() {
		p = append(p, "the agent is starting or stopping")
	}
	if !a.health.up() {
		p = append(p, "the store does not answer (since "+a.health.sinceTime().UTC().Format(time.RFC3339)+")")
	}
	return p
}

// healthHandler answers 200 "ok", or 503 with one line per problem.
func healthHandler(problems func() []string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if p := problems(); len(p) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, strings.Join(p, "\n"))
			return
		}
		fmt.Fprintln(w, "ok")
	}
}
