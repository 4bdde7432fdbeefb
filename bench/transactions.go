package bench

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/ebpfnet/ebpfnet/namespace"
)

// The request/response figures of the peers suite, as netperf names them (this machine has no
// netperf): TCP_RR, one connection carrying one-byte requests, each answered before the next
// is sent; TCP_CRR, a new connection for every request. Both run from a client network
// namespace against the lab's echo servers (lab serve), which answer every byte they read.

// Transactions is what one run of TCP_RR or TCP_CRR did.
type Transactions struct {
	Count    int
	Duration time.Duration
	// Times are TCP_RR's transactions one by one, for percentiles.
	Times []time.Duration
}

// PerSecond is the transaction rate.
func (t Transactions) PerSecond() float64 { return float64(t.Count) / t.Duration.Seconds() }

// MeanMicros is the mean time of one transaction, in µs: what a ratio of latencies compares.
func (t Transactions) MeanMicros() float64 {
	if t.Count == 0 {
		return 0
	}
	return float64(t.Duration.Microseconds()) / float64(t.Count)
}

// PercentileMicros is the time, in µs, that q percent of the transactions took at most (the
// nearest rank); 0 without Times.
func (t Transactions) PercentileMicros(q float64) float64 {
	if len(t.Times) == 0 {
		return 0
	}
	s := slices.Clone(t.Times)
	slices.Sort(s)
	i := int(math.Ceil(q/100*float64(len(s)))) - 1
	return float64(s[max(i, 0)].Nanoseconds()) / 1e3
}

// TCPRR sends one-byte requests over one connection from the namespace at nsPath to dst for d.
func TCPRR(nsPath string, dst netip.AddrPort, d time.Duration) (Transactions, error) {
	var res Transactions
	err := namespace.Do(nsPath, func() error {
		c, err := net.DialTimeout("tcp", dst.String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		buf, got := []byte{'r'}, []byte{0}
		start := time.Now()
		end := start.Add(d)
		for t0 := start; t0.Before(end); {
			if err := exchange(c, buf, got); err != nil {
				return err
			}
			t1 := time.Now()
			res.Times = append(res.Times, t1.Sub(t0))
			res.Count++
			t0 = t1
		}
		res.Duration = time.Since(start)
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("TCP_RR to %s: %w", dst, err)
	}
	return res, nil
}

// TCPCRR connects, sends one byte, reads the answer and closes, again and again for d, from
// the namespace at nsPath to dst. It closes with a reset (SO_LINGER 0), as the client's ports
// would otherwise run out in TIME_WAIT: tens of thousands of connections a run.
func TCPCRR(nsPath string, dst netip.AddrPort, d time.Duration) (Transactions, error) {
	var res Transactions
	err := namespace.Do(nsPath, func() error {
		buf, got := []byte{'c'}, []byte{0}
		dialer := net.Dialer{Timeout: 5 * time.Second}
		start := time.Now()
		end := start.Add(d)
		for time.Now().Before(end) {
			c, err := dialer.Dial("tcp", dst.String())
			if err != nil {
				return err
			}
			err = exchange(c, buf, got)
			_ = c.(*net.TCPConn).SetLinger(0)
			if cerr := c.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			res.Count++
		}
		res.Duration = time.Since(start)
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("TCP_CRR to %s: %w", dst, err)
	}
	return res, nil
}

// exchange writes buf and reads as many bytes back into got, within 5 s.
func exchange(c net.Conn, buf, got []byte) error {
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	if _, err := c.Write(buf); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != string(buf) {
		return errors.New("the echo differs from the request")
	}
	return nil
}
