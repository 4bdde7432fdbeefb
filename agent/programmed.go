package agent

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/store"
)

// ProgrammedTimeout bounds how long a change may take to reach every node.
const ProgrammedTimeout = 30 * time.Second

// waitProgrammed bumps the generation and waits until every registered node has programmed
// it, or names the nodes that have not.
func (a *Agent) waitProgrammed(ctx context.Context) error {
	return a.waitProgrammedWithin(ctx, ProgrammedTimeout)
}

// waitProgrammedWithin is waitProgrammed with its own bound.
func (a *Agent) waitProgrammedWithin(ctx context.Context, timeout time.Duration) error {
	gen, err := a.cluster.BumpGeneration(ctx)
	if err != nil {
		return err
	}
	a.trigger()
	deadline := time.Now().Add(timeout)
	for {
		nodes, err := a.cluster.Nodes(ctx)
		if err != nil {
			return err
		}
		st, err := a.cluster.Statuses(ctx)
		if err != nil {
			return err
		}
		var behind []string
		if !hasNode(nodes, a.node.Name) {
			behind = append(behind, a.node.Name) // the store's view is not complete yet
		}
		for _, n := range nodes {
			if st[n.Name].Generation < gen {
				behind = append(behind, n.Name)
			}
		}
		if len(behind) == 0 {
			return nil
		}
		if err := a.metrics.held.heldSince(gen); err != nil && slices.Contains(behind, a.node.Name) {
			return &agentapi.APIError{Code: agentapi.CodeTryAgainLater, Message: fmt.Sprintf("node %s has not programmed the change: %v", a.node.Name, err)}
		}
		if time.Now().After(deadline) {
			sort.Strings(behind)
			return fmt.Errorf("timed out after %s: nodes %s have not programmed the change", timeout, strings.Join(behind, ", "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond): // polling the nodes' reports, bounded above
		}
	}
}

func hasNode(nodes []store.Node, name string) bool {
	for _, n := range nodes {
		if n.Name == name {
			return true
		}
	}
	return false
}
