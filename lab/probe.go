package lab

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/ebpfnet/ebpfnet/namespace"
)

// ProbeTimeout bounds one probe: a reachable pod answers in well under it.
const ProbeTimeout = time.Second

// ErrUnreachable says the probe got no answer.
var ErrUnreachable = errors.New("unreachable")

// Probe checks whether pod from reaches pod to on port/protocol: TCP connects and echoes a
// line, UDP sends a datagram and waits for its echo.
func (s *State) Probe(from, to string, port int, protocol string) error {
	src, err := s.Pod(from)
	if err != nil {
		return err
	}
	dst, err := s.Pod(to)
	if err != nil {
		return err
	}
	return probe(src.Netns, netip.AddrPortFrom(dst.IP, uint16(port)), protocol)
}

func probe(netnsPath string, addr netip.AddrPort, protocol string) error {
	payload := []byte("ebpfnet-probe\n")
	var c net.Conn
	err := namespace.Do(netnsPath, func() (err error) {
		switch protocol {
		case "TCP":
			c, err = net.DialTimeout("tcp4", addr.String(), ProbeTimeout)
		case "UDP":
			c, err = net.Dial("udp4", addr.String())
		default:
			err = fmt.Errorf("protocol %q cannot be probed (TCP or UDP)", protocol)
		}
		return err
	})
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) {
			return fmt.Errorf("%w: %v", ErrUnreachable, err)
		}
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(ProbeTimeout)
	c.SetDeadline(deadline)
	got := make([]byte, len(payload))
	if protocol == "UDP" {
		// Datagrams may be lost; ask three times within the timeout.
		for try := 0; try < 3; try++ {
			c.SetReadDeadline(time.Now().Add(ProbeTimeout / 3))
			if _, err := c.Write(payload); err != nil {
				return fmt.Errorf("%w: %v", ErrUnreachable, err)
			}
			if n, err := c.Read(got); err == nil && bytes.Equal(got[:n], payload) {
				return nil
			}
		}
		return fmt.Errorf("%w: no echo from %s", ErrUnreachable, addr)
	}
	if _, err := c.Write(payload); err != nil {
		return fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, payload) {
		return fmt.Errorf("%w: no echo from %s", ErrUnreachable, addr)
	}
	return nil
}

// Matrix is who reaches whom: Matrix[from][to].
type Matrix map[string]map[string]bool

// Matrix probes every pod from every other pod, in parallel.
func (s *State) Matrix(port int, protocol string) (Matrix, error) {
	m := Matrix{}
	var (
		mu       sync.Mutex
		wg       sync.WaitGroup
		firstErr error
	)
	sem := make(chan struct{}, 32)
	for _, from := range s.Pods {
		m[from.Key()] = map[string]bool{}
		for _, to := range s.Pods {
			if from.Key() == to.Key() {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				err := probe(from.Netns, netip.AddrPortFrom(to.IP, uint16(port)), protocol)
				mu.Lock()
				defer mu.Unlock()
				m[from.Key()][to.Key()] = err == nil
				if err != nil && !errors.Is(err, ErrUnreachable) && firstErr == nil {
					firstErr = err
				}
			}()
		}
	}
	wg.Wait()
	return m, firstErr
}

// Keys lists the pods in order.
func (m Matrix) Keys() []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// String renders the matrix the way the Kubernetes NetworkPolicy e2e tests print theirs:
// "." reachable, "X" blocked, "-" the pod itself (not probed).
func (m Matrix) String() string {
	keys := m.Keys()
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprint(tw, "-")
	for _, k := range keys {
		fmt.Fprint(tw, "\t"+k)
	}
	fmt.Fprintln(tw)
	for _, from := range keys {
		fmt.Fprint(tw, from)
		for _, to := range keys {
			switch {
			case from == to:
				fmt.Fprint(tw, "\t-")
			case m[from][to]:
				fmt.Fprint(tw, "\t.")
			default:
				fmt.Fprint(tw, "\tX")
			}
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	return b.String()
}

// ProbeFrom probes addr from any network namespace (a pod made outside the lab, say).
func ProbeFrom(netnsPath string, addr netip.AddrPort, protocol string) error {
	return probe(netnsPath, addr, protocol)
}
