package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/namespace"
)

// AddNode joins a new node to a running lab: namespace, underlay, agent. The other nodes
// learn of it through the store (and, with BGP, through the router, whose config gains the
// node's session before its agent starts; then AddNode returns once every node routes to every
// pod CIDR). A rack the lab does not have yet becomes a new segment, with the router's leg in it.
func (s *State) AddNode(ctx context.Context, spec NodeSpec, opts Options) (*Node, error) {
	if s.Kubernetes {
		return nil, fmt.Errorf("lab %s runs Kubernetes: nodes cannot be added to it yet", s.Name)
	}
	if err := checkNodeName(spec.Name); err != nil {
		return nil, fmt.Errorf("node name: %w", err)
	}
	if err := s.checkRack(spec.Rack); err != nil {
		return nil, err
	}
	if err := opts.fill(); err != nil {
		return nil, err
	}
	if _, err := s.Node(spec.Name); err == nil {
		return nil, fmt.Errorf("lab %s already has node %s", s.Name, spec.Name)
	}
	racks := len(s.Racks)
	planned, err := s.placeNode(spec)
	if err != nil {
		return nil, err
	}
	s.Nodes = append(s.Nodes, planned)
	n := &s.Nodes[len(s.Nodes)-1]
	if err := s.save(); err != nil {
		return nil, err
	}
	b := &builder{st: s, opts: opts}
	if len(s.Racks) > racks {
		if err := b.rackBridge(s.Racks[racks]); err != nil {
			return nil, err
		}
		if err := b.routerLeg(s.Router.Legs[len(s.Router.Legs)-1]); err != nil {
			return nil, err
		}
	}
	if s.Router != nil {
		if err := s.reconfigureRouter(ctx); err != nil {
			return nil, err
		}
	}
	if err := b.node(ctx, n); err != nil {
		return nil, err
	}
	if err := s.save(); err != nil {
		return nil, err
	}
	if s.BGP != nil {
		// Routes come over BGP sessions that take a moment: return once they have.
		return n, b.converged(ctx)
	}
	return n, nil
}

// checkRack refuses a new node's rack unless it fits the lab: every node has one or none does.
func (s *State) checkRack(rack string) error {
	switch {
	case rack != "" && (!dnsLabel.MatchString(rack) || len(rack) > 63):
		return fmt.Errorf("rack: %.80q is not a DNS label", rack)
	case rack != "" && s.Router == nil:
		return fmt.Errorf("rack: lab %s has no BGP router to join racks (bgp.routerASN)", s.Name)
	case rack == "" && len(s.Racks) > 0:
		return fmt.Errorf("rack: lab %s has racks: the node needs one too", s.Name)
	case rack != "" && len(s.Racks) == 0 && len(s.Nodes) > 0:
		return fmt.Errorf("rack: lab %s has no racks: its nodes share %s", s.Name, bridgeIf)
	}
	return nil
}

// RemoveNode takes a node out of the lab for good: off the underlay first (so that nothing
// reaches the router or the other nodes from it any more), then its agent, its pods and their
// servers are gone, the store forgets it (through another node's agent), its namespace and
// pins are removed, and the router drops its session. Its rack stays, if it was the last there.
func (s *State) RemoveNode(ctx context.Context, name string) error {
	if s.Kubernetes {
		return fmt.Errorf("lab %s runs Kubernetes: nodes cannot be removed from it yet", s.Name)
	}
	n, err := s.Node(name)
	if err != nil {
		return err
	}
	node := *n
	var other *Node
	for i := range s.Nodes {
		if s.Nodes[i].Name != name {
			other = &s.Nodes[i]
			break
		}
	}
	if other == nil {
		return fmt.Errorf("node %s is lab %s's last: take the lab down instead", name, s.Name)
	}
	if err := s.unplug(node); err != nil {
		return fmt.Errorf("node %s: unplug from the underlay: %w", name, err)
	}
	var errs []error
	errs = append(errs, stop(node.AgentPID, s.Name))
	var pods []Pod
	for _, p := range s.Pods {
		if p.Node != name {
			pods = append(pods, p)
			continue
		}
		errs = append(errs, stop(p.ServerPID, s.Name), namespace.Delete(filepath.Base(p.Netns)))
	}
	if err := agentapi.NewClient(other.Socket).DeleteNode(ctx, name); err != nil {
		return fmt.Errorf("node %s: delete from the store: %w", name, err)
	}
	errs = append(errs, loader.Uninstall(node.PinDir), namespace.Delete(filepath.Base(node.Netns)),
		os.RemoveAll(filepath.Dir(node.Socket)))
	s.Nodes = slices.DeleteFunc(s.Nodes, func(n Node) bool { return n.Name == name })
	s.Pods = pods
	if err := s.save(); err != nil {
		return err
	}
	if s.Router != nil {
		errs = append(errs, s.reconfigureRouter(ctx))
	}
	return errors.Join(errs...)
}

// unplug deletes the node's port on its segment's bridge, and with it the node's eth0.
func (s *State) unplug(n Node) error {
	return inNetns(s.Underlay, func(h *netlink.Handle) error {
		l, err := h.LinkByName(portName(n.IP))
		var missing netlink.LinkNotFoundError
		if errors.As(err, &missing) {
			return nil
		}
		if err != nil {
			return err
		}
		return h.LinkDel(l)
	})
}
