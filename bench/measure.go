package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/ebpfnet/ebpfnet/namespace"
)

const (
	iperfPort = 5201
	// latencyPort is sockperf's server's, or over IPv6 (which Debian's sockperf 3.7 lacks) the
	// echo server's that the Go TCP_RR and TCP_CRR clients talk to.
	latencyPort = 11111
)

// startServers runs iperf3 and sockperf (over IPv6, the lab pods' echo server, `ebpfnet lab
// serve`) in the server namespace and waits until both listen.
func (t *Topology) startServers() error {
	ip := t.ServerIP.String()
	if err := t.start(t.Server, "iperf3", "-s", "-B", ip, "-p", fmt.Sprint(iperfPort)); err != nil {
		return err
	}
	if t.ServerIP.Is6() {
		exe, err := ebpfnetExe()
		if err != nil {
			return err
		}
		// It listens on both families; waitListening below is what is waited on, not its ready file.
		if err := t.start(t.Server, exe, "lab", "serve", "--ports", fmt.Sprintf("%d/TCP", latencyPort), "--ready", os.DevNull); err != nil {
			return err
		}
	} else if err := t.start(t.Server, "sockperf", "sr", "--tcp", "-i", ip, "-p", fmt.Sprint(latencyPort)); err != nil {
		return err
	}
	for _, port := range []uint16{iperfPort, latencyPort} {
		if err := waitListening(t.serverPath(), netip.AddrPortFrom(t.ServerIP, port)); err != nil {
			return fmt.Errorf("%s: %w", t.Name, err)
		}
	}
	return nil
}

// waitListening polls the namespace's TCP table (of addr's family) until a socket listens on
// addr's port.
func waitListening(nsPath string, addr netip.AddrPort) error {
	want := fmt.Sprintf(":%04X ", addr.Port())
	table := "/proc/thread-self/net/tcp"
	if addr.Addr().Is6() {
		table += "6"
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var listening bool
		err := namespace.Do(nsPath, func() error {
			f, err := os.Open(table)
			if err != nil {
				return err
			}
			defer f.Close()
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				fields := strings.Fields(sc.Text())
				if len(fields) > 3 && strings.HasSuffix(fields[1]+" ", want) && fields[3] == "0A" {
					listening = true
				}
			}
			return sc.Err()
		})
		if err != nil {
			return err
		}
		if listening {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on %s after 10s", addr)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, bounded by the deadline
	}
}

// throughput runs one iperf3 TCP stream for d and returns what the receiver got, in Gbit/s.
func (t *Topology) throughput(d time.Duration) (float64, error) {
	return iperf3(t.Name, exec.Command("ip", "netns", "exec", t.Client, "iperf3", "-c", t.target().String(),
		"-p", fmt.Sprint(iperfPort), "-t", fmt.Sprint(int(d.Seconds())), "-O", "1", "-J"))
}

// iperfStream is throughput from the namespace at nsPath (a pod's, say) to dst.
func iperfStream(nsPath string, dst netip.AddrPort, d time.Duration) (float64, error) {
	return iperf3(dst.String(), exec.Command("nsenter", "--net="+nsPath, "--", "iperf3", "-c", dst.Addr().String(),
		"-p", fmt.Sprint(dst.Port()), "-t", fmt.Sprint(int(d.Seconds())), "-O", "1", "-J"))
}

// iperf3 runs an iperf3 client asking for JSON (-J) and returns the receiver's Gbit/s.
func iperf3(over string, cmd *exec.Cmd) (float64, error) {
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("iperf3 over %s: %w: %s", over, err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return 0, fmt.Errorf("parse iperf3 output: %w", err)
	}
	if res.Error != "" {
		return 0, fmt.Errorf("iperf3 over %s: %s", over, res.Error)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, nil
}

var percentile = regexp.MustCompile(`percentile (50|99)\.000 =\s+([0-9.]+)`)

// latency runs sockperf TCP ping-pong for d and returns the p50 and p99 one-way latency in µs;
// over IPv6, TCP_RR's p50 and p99 round trip.
func (t *Topology) latency(d time.Duration) (p50, p99 float64, err error) {
	if t.target().Is6() {
		rr, err := TCPRR(namespace.Path(t.Client), netip.AddrPortFrom(t.target(), latencyPort), d)
		return rr.PercentileMicros(50), rr.PercentileMicros(99), err
	}
	out, err := exec.Command("ip", "netns", "exec", t.Client, "sockperf", "pp", "--tcp", "-i", t.target().String(),
		"-p", fmt.Sprint(latencyPort), "-t", fmt.Sprint(int(d.Seconds()))).CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("sockperf over %s: %w: %s", t.Name, err, out)
	}
	for _, m := range percentile.FindAllStringSubmatch(string(out), -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		if m[1] == "50" {
			p50 = v
		} else {
			p99 = v
		}
	}
	if p50 == 0 {
		return 0, 0, fmt.Errorf("no percentiles in sockperf output over %s", t.Name)
	}
	return p50, p99, nil
}
