package cni

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

// wantCode fails unless err is a CNI error with code and a one-line message.
func wantCode(t *testing.T, what string, err error, code uint) {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) || e.Code != code {
		t.Errorf("%s: got %v, want code %d", what, err, code)
		return
	}
	if e.Msg == "" || strings.ContainsAny(e.Msg+e.Details, "\n") {
		t.Errorf("%s: message %q (details %q) is not one line", what, e.Msg, e.Details)
	}
}

// Hostile CNI_CONTAINERID, CNI_IFNAME and CNI_NETNS are refused with code 4 before the agent is
// asked anything: the configuration names an agent that does not exist, so reaching it would
// be code 11 instead.
func TestHostileArgsRefused(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	conf := []byte(`{"cniVersion": "1.1.0", "name": "n", "type": "ebpfnet-cni", "socket": "` + filepath.Join(dir, "no-agent.sock") + `"}`)
	const ns = "/proc/self/ns/net"
	cases := []struct {
		name              string
		id, ifName, netns string
		add, del, check   bool // refused by each command
	}{
		{"container id with a slash", "a/b", "eth0", ns, true, true, true},
		{"container id going up", "../x", "eth0", ns, true, true, true},
		{"container id starting with a dot", ".x", "eth0", ns, true, true, true},
		{"container id with a space", "a b", "eth0", ns, true, true, true},
		{"container id with a NUL", "a\x00b", "eth0", ns, true, true, true},
		{"container id with a newline", "a\nb", "eth0", ns, true, true, true},
		{"empty container id", "", "eth0", ns, true, true, true},
		{"interface name of 16 bytes", "c1", "eth0123456789abc", ns, true, true, true},
		{"interface name .", "c1", ".", ns, true, true, true},
		{"interface name ..", "c1", "..", ns, true, true, true},
		{"interface name with a slash", "c1", "a/b", ns, true, true, true},
		{"interface name with a colon", "c1", "eth0:1", ns, true, true, true},
		{"interface name with a tab", "c1", "eth\t0", ns, true, true, true},
		{"empty interface name", "c1", "", ns, true, true, true},
		{"relative netns", "c1", "eth0", "proc/self/ns/net", true, true, true},
		{"netns with dots", "c1", "eth0", "../../proc/self/ns/net", true, true, true},
		{"netns that is a named pipe", "c1", "eth0", fifo, true, true, true},
		{"netns that is a directory", "c1", "eth0", dir, true, true, true},
		{"netns that is a device", "c1", "eth0", "/dev/null", true, true, true},
		{"netns too long", "c1", "eth0", "/" + strings.Repeat("a", 5000), true, true, true},
		{"missing netns", "c1", "eth0", "", true, false, true},
		{"netns that is gone", "c1", "eth0", filepath.Join(dir, "gone"), true, false, true},
	}
	for _, c := range cases {
		for _, cmd := range []struct {
			name    string
			fn      func(*skel.CmdArgs) error
			refused bool
		}{{"ADD", Add, c.add}, {"DEL", Del, c.del}, {"CHECK", Check, c.check}} {
			// Opening a named pipe would wait for a writer: a call that hangs fails the case.
			done := make(chan error, 1)
			go func() {
				done <- cmd.fn(&skel.CmdArgs{ContainerID: c.id, IfName: c.ifName, Netns: c.netns, StdinData: conf})
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Errorf("%s %s: no answer after 10s", cmd.name, c.name)
				continue
			}
			if cmd.refused {
				wantCode(t, cmd.name+" "+c.name, err, types.ErrInvalidEnvironmentVariables)
			} else {
				// Past the checks, the absent agent answers: try again later.
				wantCode(t, cmd.name+" "+c.name, err, types.ErrTryAgainLater)
			}
		}
	}
}

// What a runtime sends is accepted: a 64-hex container ID, the usual names, a namespace file.
func TestArgsAccepted(t *testing.T) {
	for _, a := range []skel.CmdArgs{
		{ContainerID: strings.Repeat("0123456789abcdef", 4), IfName: "eth0", Netns: "/proc/self/ns/net"},
		{ContainerID: "cnitool-77383ca0a0715733ca6f", IfName: "net1", Netns: "/proc/self/ns/net"},
		{ContainerID: "A_b.c-1", IfName: "eth0123456789ab", Netns: "/proc/self/ns/net"},
	} {
		if err := checkArgs(&a, true); err != nil {
			t.Errorf("%+v: %v", a, err)
		}
	}
}

// The configuration is bounded: one over MaxConfBytes is refused (7) without reading it all;
// one within is read whole.
func TestConfBounded(t *testing.T) {
	big := `{"cniVersion": "1.1.0", "name": "n", "type": "ebpfnet-cni", "args": {"pad": "` + strings.Repeat("x", MaxConfBytes) + `"}}`
	r := strings.NewReader(big)
	_, err := ReadConf(r)
	wantCode(t, "configuration over the limit", err, types.ErrInvalidNetworkConfig)
	if r.Len() != len(big)-MaxConfBytes-1 {
		t.Errorf("ReadConf read %d bytes of %d, want it to stop past %d", len(big)-r.Len(), len(big), MaxConfBytes)
	}
	_, err = parseConf([]byte(big))
	wantCode(t, "parseConf of a configuration over the limit", err, types.ErrInvalidNetworkConfig)
	small := []byte(`{"cniVersion": "1.1.0", "name": "n", "type": "ebpfnet-cni"}`)
	if data, err := ReadConf(bytes.NewReader(small)); err != nil || !bytes.Equal(data, small) {
		t.Errorf("ReadConf of %d bytes: %q, %v", len(small), data, err)
	}
}

// Configurations that are not one JSON object of known fields are refused: 6 when they are not
// JSON, 7 when they are but not a configuration of ours.
func TestConfStrict(t *testing.T) {
	for _, c := range []struct {
		in   string
		code uint
	}{
		{`{"cniVersion": "1.1.0", "name": "n", "type": "ebpfnet-cni"} {}`, types.ErrDecodingFailure},
		{`{"cniVersion": "1.1.0", "name": "n", "type": "ebpfnet-cni"}x`, types.ErrDecodingFailure},
		{"\x00", types.ErrDecodingFailure},
		{``, types.ErrDecodingFailure},
		{`[]`, types.ErrInvalidNetworkConfig},
		{`{"cniVersion": "1.1.0", "name": "n", "type": "ebpfnet-cni", "socket": "agent.sock"}`, types.ErrInvalidNetworkConfig},
		{`{"cniVersion": "1.1.0", "name": "n", "type": "ebpfnet-cni", "socket": 7}`, types.ErrInvalidNetworkConfig},
		{`{"cniVersion": "1.1.0", "name": "n", "type": "ebpfnet-cni", "runtimeConfig": {"portMappings": []}}`, types.ErrInvalidNetworkConfig},
	} {
		_, err := parseConf([]byte(c.in))
		wantCode(t, c.in, err, c.code)
	}
}
