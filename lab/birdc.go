package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// BirdcBinary is BIRD's client (Debian's bird2).
var BirdcBinary = "/usr/sbin/birdc"

// Birdc runs birdc against the lab router's control socket and returns its answer, without
// the "BIRD … ready." greeting.
func (s *State) Birdc(ctx context.Context, args ...string) ([]byte, error) {
	if s.Router == nil {
		return nil, fmt.Errorf("lab %s has no BGP router (bgp.routerASN in its file)", s.Name)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, BirdcBinary, append([]string{"-s", s.Router.Socket}, args...)...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("birdc %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	if first, rest, ok := bytes.Cut(out, []byte("\n")); ok && bytes.HasPrefix(first, []byte("BIRD ")) && bytes.HasSuffix(first, []byte(" ready.")) {
		out = rest
	}
	return out, nil
}

// AnnounceFromRouter makes the router originate prefixes itself, besides what the nodes
// announce, and send them to every node (blackhole routes of a static protocol: they never reach
// the router's own kernel); an empty list withdraws them. Tests use it to check that agents
// refuse what they must not install.
func (s *State) AnnounceFromRouter(ctx context.Context, prefixes []netip.Prefix) error {
	if s.Router == nil {
		return fmt.Errorf("lab %s has no BGP router (bgp.routerASN in its file)", s.Name)
	}
	var announced []netip.Prefix
	for _, p := range prefixes {
		if !p.IsValid() || !p.Addr().Is4() {
			return fmt.Errorf("announce %s: not an IPv4 prefix", p)
		}
		if p.Masked() != p {
			return fmt.Errorf("announce %s: host bits set (the network is %s)", p, p.Masked())
		}
		if !slices.Contains(announced, p) {
			announced = append(announced, p)
		}
	}
	s.Router.Announced = announced
	if err := s.save(); err != nil {
		return err
	}
	return s.reconfigureRouter(ctx)
}

// reconfigureRouter rewrites bird.conf from the lab's state and has BIRD load it.
func (s *State) reconfigureRouter(ctx context.Context) error {
	if err := s.writeBirdConfig(ctx); err != nil {
		return err
	}
	out, err := s.Birdc(ctx, "configure")
	if err != nil {
		return err
	}
	if !bytes.Contains(out, []byte("Reconfigured")) && !bytes.Contains(out, []byte("Reconfiguration in progress")) {
		return fmt.Errorf("birdc configure: %s", bytes.TrimSpace(out))
	}
	return nil
}

// writeBirdConfig writes bird.conf, once BIRD has parsed it: a bad config never replaces the
// one the router runs.
func (s *State) writeBirdConfig(ctx context.Context) error {
	cfg := s.Router.Config
	tmp := cfg + ".new"
	if err := os.WriteFile(tmp, []byte(s.birdConfig()), 0o600); err != nil {
		return fmt.Errorf("write bird.conf: %w", err)
	}
	if err := checkBirdConfig(ctx, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, cfg)
}

// checkBirdConfig has BIRD parse the config file at path, without running it.
func checkBirdConfig(ctx context.Context, path string) error {
	out, err := exec.CommandContext(ctx, BirdBinary, "-p", "-c", path).CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return fmt.Errorf("bird.conf does not parse: %s", bytes.TrimSpace(out))
	}
	if err != nil {
		return fmt.Errorf("bird -p: %w (install bird2: scripts/install-deps.sh)", err)
	}
	return nil
}
