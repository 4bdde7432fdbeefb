package bench

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/lab"
)

// echoServer listens on a loopback port of this namespace with the lab pods' echo server.
func echoServer(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go lab.EchoTCP(ln)
	return netip.MustParseAddrPort(ln.Addr().String())
}

func TestTransactionsAgainstEchoServer(t *testing.T) {
	self := "/proc/self/ns/net"
	dst := echoServer(t)
	rr, err := TCPRR(self, dst, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	crr, err := TCPCRR(self, dst, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	for name, tr := range map[string]Transactions{"TCP_RR": rr, "TCP_CRR": crr} {
		if tr.Count < 10 || tr.Duration < 300*time.Millisecond {
			t.Errorf("%s: %d transactions in %s, want at least 10 in at least 300ms", name, tr.Count, tr.Duration)
		}
		if got, want := tr.MeanMicros(), float64(tr.Duration.Microseconds())/float64(tr.Count); got != want {
			t.Errorf("%s: mean %.2f µs, want %.2f", name, got, want)
		}
	}
	if len(rr.Times) != rr.Count || rr.PercentileMicros(50) <= 0 || rr.PercentileMicros(99) < rr.PercentileMicros(50) {
		t.Errorf("TCP_RR: %d times of %d transactions, p50 %.1f µs, p99 %.1f µs", len(rr.Times), rr.Count, rr.PercentileMicros(50), rr.PercentileMicros(99))
	}
	// A connection per transaction costs more than a transaction on an open one.
	if crr.MeanMicros() <= rr.MeanMicros() {
		t.Errorf("TCP_CRR %.1f µs per transaction, TCP_RR %.1f: a new connection each should cost more", crr.MeanMicros(), rr.MeanMicros())
	}
	// Nothing listens: both fail, naming the destination.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	for _, run := range []func(string, netip.AddrPort, time.Duration) (Transactions, error){TCPRR, TCPCRR} {
		if _, err := run(self, netip.MustParseAddrPort(closed), 100*time.Millisecond); err == nil || !strings.Contains(err.Error(), closed) {
			t.Errorf("against a closed port: %v, want an error naming %s", err, closed)
		}
	}
}

func TestPercentileMicros(t *testing.T) {
	var tr Transactions
	if got := tr.PercentileMicros(50); got != 0 {
		t.Errorf("p50 of nothing = %v", got)
	}
	for i := 100; i >= 1; i-- {
		tr.Times = append(tr.Times, time.Duration(i)*time.Microsecond)
	}
	for q, want := range map[float64]float64{50: 50, 99: 99, 100: 100, 0: 1, 0.5: 1} {
		if got := tr.PercentileMicros(q); got != want {
			t.Errorf("p%v of 1..100 µs = %v, want %v", q, got, want)
		}
	}
	if tr.Times[0] != 100*time.Microsecond {
		t.Error("PercentileMicros sorted the times in place")
	}
}

func TestConnectsSeesListenerAndRefusal(t *testing.T) {
	dst := echoServer(t)
	if !connects("/proc/self/ns/net", dst) {
		t.Fatalf("no connection to the echo server at %s", dst)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	if connects("/proc/self/ns/net", closed) {
		t.Errorf("connected to %s, where nothing listens", closed)
	}
}

func TestTimingWrapperPassesThroughAndTimes(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "fake-cni")
	// The plugin it stands for: echoes its stdin, names its arguments on stderr, and exits 7 on DEL.
	plugin := "#!/bin/sh\ncat\necho \"args: $*\" >&2\n[ \"$CNI_COMMAND\" = DEL ] && exit 7\nexit 0\n"
	if err := os.WriteFile(bin, []byte(plugin), 0o755); err != nil {
		t.Fatal(err)
	}
	restore, err := wrapPlugin(bin)
	if err != nil {
		t.Fatal(err)
	}
	call := func(command string) (string, string, int) {
		c := exec.Command(bin, "x", "y")
		c.Env = append(os.Environ(), "CNI_COMMAND="+command)
		c.Stdin = strings.NewReader(`{"cniVersion":"1.1.0"}`)
		var stdout, stderr bytes.Buffer
		c.Stdout, c.Stderr = &stdout, &stderr
		err := c.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return stdout.String(), stderr.String(), code
	}
	out, errOut, code := call("ADD")
	if out != `{"cniVersion":"1.1.0"}` || errOut != "args: x y\n" || code != 0 {
		t.Errorf("ADD through the wrapper: stdout %q, stderr %q, exit %d", out, errOut, code)
	}
	if _, _, code := call("DEL"); code != 7 {
		t.Errorf("DEL through the wrapper exited %d, want the plugin's 7", code)
	}
	if _, _, code := call("ADD"); code != 0 {
		t.Errorf("second ADD exited %d", code)
	}
	adds, err := readAddTimes(bin + ".times")
	if err != nil {
		t.Fatal(err)
	}
	if len(adds) != 2 {
		t.Fatalf("%d ADDs timed, want 2 (the DEL and its failure are not ADDs)", len(adds))
	}
	for _, ms := range adds {
		if ms <= 0 || ms > 60_000 {
			t.Errorf("an ADD timed at %.3f ms", ms)
		}
	}
	restore()
	got, err := os.ReadFile(bin)
	if err != nil || string(got) != plugin {
		t.Errorf("after restore, %s holds %q (%v), want the plugin back", bin, got, err)
	}
	if _, err := os.Stat(bin + ".timed"); !os.IsNotExist(err) {
		t.Errorf("%s.timed left after restore: %v", bin, err)
	}
}

func TestMainPluginIsFirstConflistsFirst(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := mainPlugin(dir); err == nil {
		t.Error("no conflist, no error")
	}
	write("10-other.conflist", `{"plugins":[{"type":"other"}]}`)
	write("05-cilium.conflist", `{"plugins":[{"type":"cilium-cni"},{"type":"portmap"}]}`)
	if got, err := mainPlugin(dir); err != nil || got != "cilium-cni" {
		t.Errorf("mainPlugin = %q, %v; want cilium-cni", got, err)
	}
	write("01-bad.conflist", `{"plugins":[{"type":"../escape"}]}`)
	if got, err := mainPlugin(dir); err == nil {
		t.Errorf("a plugin type with a slash taken: %q", got)
	}
}

func TestPeerFigureRatioAndGoal(t *testing.T) {
	f := PeerFigure{Name: "TCP_RR", HigherIsBetter: false}
	for _, v := range []float64{30, 10, 20} {
		add(&f, lab.CNIEbpfnet, v)
	}
	for _, v := range []float64{40, 50, 60, 45} {
		add(&f, lab.CNICilium, v)
	}
	f = finish(f)
	if f.EbpfnetMedian != 20 || f.CiliumMedian != 47.5 || f.Ratio != 20/47.5 || !f.Better() {
		t.Errorf("medians %v / %v, ratio %v, better %v", f.EbpfnetMedian, f.CiliumMedian, f.Ratio, f.Better())
	}
	f.HigherIsBetter = true
	if f.Better() {
		t.Error("a throughput at 0.42 of Cilium's counts as better")
	}
	var b strings.Builder
	(&PeersCost{CiliumVersion: "v1.20.2", Rounds: 3, Figures: []PeerFigure{f}}).markdown(&b)
	if !strings.Contains(b.String(), "| TCP_RR |  | 20.00  | 47.50  | 0.421 | no |") {
		t.Errorf("table row missing:\n%s", b.String())
	}
}
