package fuzz_test

import (
	"flag"
	"os"
	"sync"
	"testing"

	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/fuzz"
	"github.com/ebpfnet/ebpfnet/testkit/model"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

var (
	packets = flag.Int("packets", 20000, "packets the seeded comparison runs (make fuzz runs 1,000,000)")
	seed    = flag.Uint64("seed", 1, "seed of the seeded comparison's worlds and packets")
)

// shared is the one harness of the process: loading the datapath costs seconds of verifier
// time, so every test and fuzz target here uses it.
var shared struct {
	once sync.Once
	h    *fuzz.Harness
	err  error
}

func harness(tb testing.TB) *fuzz.Harness {
	tb.Helper()
	nstest.RequireRoot(tb)
	shared.once.Do(func() { shared.h, shared.err = fuzz.NewHarness() })
	if shared.err != nil {
		tb.Fatal(shared.err)
	}
	return shared.h
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if shared.h != nil {
		shared.h.Close()
	}
	os.Exit(code)
}

// The datapath does to generated and mutated packets what the model says it should.
func TestDatapathMatchesModel(t *testing.T) {
	h := harness(t)
	reported := 0
	st, took, err := h.RunSeeded(*seed, *packets, func(d fuzz.Disagreement) {
		if reported++; reported <= 10 {
			t.Error(d)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fuzz: %d packets, %d disagreements, %s (%.1f µs a packet; %d refused by BPF_PROG_TEST_RUN), seed %d",
		st.Packets, st.Disagreements, took.Round(1e6), float64(took.Microseconds())/float64(max(1, st.Packets)), st.Refused, *seed)
	t.Logf("reasons:\n%s", st.Coverage())
	if st.Disagreements > 0 {
		t.Fatalf("%d disagreements", st.Disagreements)
	}
	// VXLAN in BPF was exercised both ways: the comparison above covered it.
	if st.VXLANOut == 0 || st.VXLANIn[maps.ReasonForwardLocal] == 0 || st.VXLANIn[maps.ReasonSpoofedSource] == 0 {
		t.Errorf("no packet was encapsulated in VXLAN (%d), decapsulated to a pod (%d) or refused from a sender no node (%d)",
			st.VXLANOut, st.VXLANIn[maps.ReasonForwardLocal], st.VXLANIn[maps.ReasonSpoofedSource])
	}
	// And over an IPv6 underlay, where a sender no node was refused too.
	if st.VXLAN6Out == 0 || st.VXLAN6In[maps.ReasonForwardLocal] == 0 || st.VXLAN6In[maps.ReasonSpoofedSource] == 0 {
		t.Errorf("over IPv6: %d packets encapsulated in VXLAN, %d decapsulated to a pod, %d refused (want some of each)",
			st.VXLAN6Out, st.VXLAN6In[maps.ReasonForwardLocal], st.VXLAN6In[maps.ReasonSpoofedSource])
	}
	// Fragment tracking was exercised: the comparison above covered it.
	if st.LaterFragments == 0 {
		t.Error("no later fragment was given its first fragment's ports")
	}
	// IPv6 crossed the IPv4 underlay both ways, neighbour discovery's anti-spoofing let
	// through and dropped, and IPv6 Services translated.
	for _, want := range []struct {
		what   string
		counts map[maps.Reason]int
		reason maps.Reason
	}{
		{"ipv6 tunnelled to another node", st.IPv6, maps.ReasonForwardTunnel},
		{"ipv6 routed natively to another node", st.IPv6, maps.ReasonForwardUnder},
		{"ipv6 out of a tunnel delivered to a pod", st.IPv6In, maps.ReasonForwardLocal},
		{"neighbor advertisement let through", st.NA, maps.ReasonForwardHost},
		{"neighbor advertisement dropped as spoofed", st.NA, maps.ReasonSpoofedSource},
		// IPv6 Service traffic was translated: to a backend or back from one, into a pod
		// and to another node.
		{"ipv6 service packet translated into a pod", st.Services, maps.ReasonForwardLocal},
		{"ipv6 service packet translated to another node", st.Services, maps.ReasonForwardUnder},
		// The node's IPv6 address was lent both ways: pods' flows leaving the cluster took
		// it, and replies and ICMPv6 errors (Packet Too Big) came back to the pods.
		{"ipv6 flow of a pod masqueraded out of the underlay", st.SNAT[model.SNATMasquerade], maps.ReasonForwardUnder},
		{"reply to the node's ipv6 address translated back into a pod", st.SNAT[model.SNATReply], maps.ReasonForwardLocal},
		{"icmpv6 error about a masqueraded flow handed to its pod", st.SNAT[model.SNATError], maps.ReasonForwardLocal},
	} {
		if want.counts[want.reason] == 0 {
			t.Errorf("no %s", want.what)
		}
	}
	// IPv6 NodePort flows took the node's IPv6 address and left, natively or in a tunnel.
	if np := st.SNAT[model.SNATNodePort]; np[maps.ReasonForwardUnder]+np[maps.ReasonForwardTunnel] == 0 {
		t.Errorf("no ipv6 nodeport flow left from the node's ipv6 address (%v)", np)
	}
}

// The fuzzing engine's frames go through a program of its choice in one of sixteen worlds,
// twice (the second is conntrack's established path), then its reply.
func FuzzDatapath(f *testing.F) {
	h := harness(f)
	for i, p := range fuzz.SeedCorpus(64) {
		f.Add(uint8(p.Hook), uint8(i), p.Frame)
	}
	for _, c := range regressions {
		f.Add(uint8(c.Hook), uint8(0), c.In)
	}
	var (
		checker *fuzz.Checker
		world   = -1
	)
	f.Fuzz(func(t *testing.T, hook, worldIndex uint8, frame []byte) {
		if len(frame) > fuzz.MaxFrame {
			frame = frame[:fuzz.MaxFrame]
		}
		err := h.Do(func() error {
			if int(worldIndex%16) != world {
				c, err := h.Checker(fuzz.NewWorld(fuzz.FuzzWorld(worldIndex)))
				if err != nil {
					return err
				}
				checker, world = c, int(worldIndex%16)
			} else if err := checker.Reset(); err != nil {
				return err
			}
			in := fuzz.Packet{Hook: model.Hooks[int(hook)%len(model.Hooks)], Frame: frame}
			steps := []fuzz.Packet{in, in}
			if reply, ok := fuzz.NewGen(0, fuzz.NewWorld(fuzz.FuzzWorld(worldIndex))).Reply(frame); ok {
				steps = append(steps, reply)
			}
			for _, p := range steps {
				d, err := checker.Check(p)
				if err != nil {
					return err
				}
				if d != nil {
					t.Fatal(d)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

func TestRegressions(t *testing.T) {
	h := harness(t)
	for _, c := range regressions {
		t.Run(c.Name, func(t *testing.T) {
			err := h.Do(func() error {
				d, err := h.Replay(c)
				if d != nil {
					t.Error(d)
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
