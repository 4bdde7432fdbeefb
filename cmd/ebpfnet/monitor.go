package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab"
)

func newMonitorCmd(g *globals) *cobra.Command {
	t := &target{}
	var kind string
	cmd := &cobra.Command{
		Use:   "monitor [--type drop|verdict|all]",
		Short: "stream drops (and, when asked, policy verdicts), one line each, pods named, from every node of a lab",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if kind != "drop" && kind != "verdict" && kind != "all" {
				return usageError{fmt.Errorf("--type %q: want drop, verdict or all", kind)}
			}
			clients, err := t.allClients(cmd)
			if err != nil {
				return err
			}
			var (
				mu    sync.Mutex
				ready sync.WaitGroup
				errc  = make(chan error, len(clients))
				out   = cmd.OutOrStdout()
				enc   = json.NewEncoder(out)
			)
			print := func(ev agentapi.MonitorEvent) {
				mu.Lock()
				defer mu.Unlock()
				if g.output == "json" {
					_ = enc.Encode(ev) // a closed stdout ends the command (SIGPIPE)
					return
				}
				fmt.Fprintf(out, "%s %s %s %s %s %s -> %s (identity %d -> %d)\n", ev.Time.Format("15:04:05.000"), ev.Node,
					ev.Reason, ev.Direction, ev.Protocol, peer(ev.Src), peer(ev.Dst), ev.Src.Identity, ev.Dst.Identity)
			}
			ready.Add(len(clients))
			for _, c := range clients {
				go func() { errc <- c.Monitor(cmd.Context(), kind, ready.Done, print) }()
			}
			go func() {
				ready.Wait()
				fmt.Fprintf(cmd.ErrOrStderr(), "monitoring %s events on %d node(s); ctrl-c stops\n", kind, len(clients))
			}()
			select {
			case <-cmd.Context().Done():
				return nil
			case err := <-errc:
				if cmd.Context().Err() != nil {
					return nil //nolint:nilerr // ctrl-c: the stream's error is the cancellation
				}
				if err == nil {
					err = errors.New("an agent closed the stream")
				}
				return err
			}
		},
	}
	t.add(cmd)
	cmd.Flags().StringVar(&kind, "type", "drop", "drop, verdict (new flows policy allowed) or all")
	return cmd
}

func peer(p agentapi.Peer) string {
	s := fmt.Sprintf("%s:%d", p.IP, p.Port)
	if p.Pod != "" {
		s = p.Pod + " " + s
	}
	return s
}

// allClients is every node's agent for a lab, or the local agent.
func (t *target) allClients(cmd *cobra.Command) ([]*agentapi.Client, error) {
	name := t.lab
	if name == "" && !cmd.Flags().Changed("socket") {
		if labs, err := lab.List(); err == nil && len(labs) == 1 {
			name = labs[0]
		}
	}
	if name == "" {
		return []*agentapi.Client{agentapi.NewClient(t.socket)}, nil
	}
	st, err := lab.Load(name)
	if err != nil {
		return nil, err
	}
	var out []*agentapi.Client
	for _, n := range st.Nodes {
		out = append(out, agentapi.NewClient(n.Socket))
	}
	return out, nil
}
