package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/store"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// churnSoak is how long TestCNIChurn runs at least: EBPFNET_SOAK (say 10m) in `make soak`,
// none in `make test`, where it ends once every caller has done its cycles.
func churnSoak(t *testing.T) time.Duration {
	if s := os.Getenv("EBPFNET_SOAK"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("EBPFNET_SOAK=%q: %v", s, err)
		}
		return d
	}
	return 0
}

// churnCycles is how many ADD, CHECK, DEL cycles every caller completes in each of the agent's
// four lifetimes (the first and three restarts) in TestCNIChurn.
const churnCycles = 1

// churnStall is how long TestCNIChurn waits for a caller that completes no cycle.
const churnStall = 2 * time.Minute

// churnCallers is how many CNI callers run at once.
const churnCallers = 100

// etcdCount counts the keys under prefix in a lab's etcd.
func etcdCount(t *testing.T, st *lab.State, prefix string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := labEtcd(t, st).Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return int(r.Count)
}

// agentFigures are an agent's goroutines and heap, scraped from its metrics.
type agentFigures struct {
	at         time.Duration
	goroutines float64
	heapMiB    float64
}

// Acceptance (issue 13): 100 concurrent CNI callers ADD and DEL pods (retrying, as kubelet
// does, what fails while the agent is away) while the agent is SIGKILLed and restarted three
// times: no address is ever handed to two live pods; afterwards no veth, lease, endpoint, map
// entry or link pin of theirs is left, and the agent's goroutines and heap, sampled through the
// last run, stay flat.
func TestCNIChurn(t *testing.T) {
	t.Parallel()
	st := upLab(t, "ch", twoNodes("vxlan"))
	node1 := *must(st.Node("node1"))
	before := stateOf(t, &node1)
	leases := store.Prefix + "ipam/node1/ips/"
	leasesBefore := etcdCount(t, st, leases)
	identitiesBefore := identityCount(t, &node1)
	conf := cniConf(node1.Socket, "")
	soak := churnSoak(t)
	cycles := make([]atomic.Int64, churnCallers) // each caller's completed ADD, CHECK, DEL cycles
	var stop, abandon atomic.Bool                // stop: callers end after their cycle; abandon: at once (the test failed)

	var (
		mu         sync.Mutex
		live       = map[string]string{} // address -> the caller holding it
		dup        []string
		adds, dels atomic.Int64
		retries    atomic.Int64
		wg         sync.WaitGroup
	)
	retry := func(op func() (string, int)) string {
		for {
			out, code := op()
			if code == 0 || abandon.Load() {
				return out
			}
			retries.Add(1)
			time.Sleep(50 * time.Millisecond) // a caller's backoff before it tries again, as kubelet's
		}
	}
	for i := range churnCallers {
		ns := nstest.New(t, fmt.Sprintf("ch%d", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; !stop.Load() && !abandon.Load(); n++ {
				id := fmt.Sprintf("churn-%d-%d", i, n)
				var ip string
				for ip == "" {
					if abandon.Load() {
						return
					}
					out, code := plugin(t, &node1, cniEnv("ADD", id, ns.Path), conf)
					if code != 0 { // the agent went away mid-ADD: DEL what may be left, then again
						retries.Add(1)
						retry(func() (string, int) { return plugin(t, &node1, cniEnv("DEL", id, ns.Path), conf) })
						continue
					}
					var res struct {
						IPs []struct{ Address string } `json:"ips"`
					}
					if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) != 1 {
						t.Errorf("ADD %s printed %q", id, out)
						return
					}
					ip = strings.Split(res.IPs[0].Address, "/")[0]
				}
				adds.Add(1)
				// The address is this caller's from its ADD until its DEL begins: no other ADD
				// may return it meanwhile.
				mu.Lock()
				if other, ok := live[ip]; ok {
					dup = append(dup, fmt.Sprintf("%s to %s while %s holds it", ip, id, other))
				}
				live[ip] = id
				mu.Unlock()
				retry(func() (string, int) { return plugin(t, &node1, cniEnv("CHECK", id, ns.Path), conf) })
				mu.Lock()
				delete(live, ip)
				mu.Unlock()
				retry(func() (string, int) { return plugin(t, &node1, cniEnv("DEL", id, ns.Path), conf) })
				dels.Add(1)
				cycles[i].Add(1)
			}
		}()
	}
	// Each of the agent's four lifetimes lasts until every caller has completed churnCycles
	// cycles in it (and, in make soak, a quarter of the soak has passed): so every caller got
	// the agent's service after each restart.
	var figures []agentFigures
	start := time.Now()
	for k := 1; k <= 4; k++ {
		base := make([]int64, churnCallers)
		for i := range cycles {
			base[i] = cycles[i].Load()
		}
		progress, moved := int64(-1), time.Now()
		for {
			figures = append(figures, sampleAgent(t, &node1, time.Since(start)))
			behind, sum := 0, int64(0)
			for i := range cycles {
				n := cycles[i].Load()
				sum += n
				if n-base[i] < churnCycles {
					behind++
				}
			}
			if behind == 0 && time.Since(start) >= soak*time.Duration(k)/4 {
				break
			}
			if t.Failed() {
				abandon.Store(true)
				wg.Wait()
				t.FailNow()
			}
			if sum != progress {
				progress, moved = sum, time.Now()
			} else if time.Since(moved) > churnStall {
				abandon.Store(true)
				wg.Wait()
				t.Fatalf("agent lifetime %d: no caller completed a cycle for %s; %d callers short of %d cycles", k, churnStall, behind, churnCycles)
			}
			time.Sleep(time.Second) // the sampling period of the agent's figures
		}
		if k == 4 {
			break
		}
		if err := st.StopAgent("node1"); err != nil {
			t.Fatal(err)
		}
		if err := st.StartAgent(context.Background(), "node1", labOpts()); err != nil {
			t.Fatalf("restart #%d: %v", k, err)
		}
		figures = nil // a new process: its figures start again
	}
	stop.Store(true)
	// The last agent is sampled from its start until every caller is done.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for finished := false; !finished; {
		figures = append(figures, sampleAgent(t, &node1, time.Since(start)))
		select {
		case <-done:
			finished = true
		case <-time.After(time.Second): // the sampling period of the agent's figures
		}
	}
	if len(dup) > 0 {
		t.Errorf("addresses handed out twice: %s", strings.Join(dup, "; "))
	}
	eventually(t, 30*time.Second, "node1 to hold what it held before the churn", func() (bool, string) {
		got := stateOf(t, &node1)
		return got == before, fmt.Sprintf("%+v, before %+v", got, before)
	})
	if n := etcdCount(t, st, leases); n != leasesBefore {
		t.Errorf("%d address leases left, %d before the churn", n, leasesBefore)
	}
	eventually(t, 60*time.Second, "the churned pods' identities to be collected", func() (bool, string) {
		n := identityCount(t, &node1)
		return n == identitiesBefore, fmt.Sprintf("%d identities, %d before", n, identitiesBefore)
	})
	var series []string
	for _, f := range figures {
		series = append(series, fmt.Sprintf("%s: %.0f goroutines, %.1f MiB heap", f.at.Round(time.Second), f.goroutines, f.heapMiB))
	}
	if len(figures) >= 2 {
		first, last := figures[0], figures[len(figures)-1]
		if last.goroutines > first.goroutines+50 || last.heapMiB > 2*first.heapMiB+32 {
			t.Errorf("the agent grew over its last run: %s", strings.Join(series, "; "))
		}
	}
	t.Logf("%d ADDs and %d DELs by %d callers in %s across 3 agent restarts (%d retried calls); the last agent: %s",
		adds.Load(), dels.Load(), churnCallers, time.Since(start).Round(time.Second), retries.Load(), strings.Join(series, "; "))
}

// sampleAgent scrapes the agent's goroutines and heap.
func sampleAgent(t *testing.T, n *lab.Node, at time.Duration) agentFigures {
	expo := scrape(t, n)
	return agentFigures{at: at, goroutines: sample(t, expo, "go_goroutines", nil),
		heapMiB: sample(t, expo, "go_memstats_heap_alloc_bytes", nil) / (1 << 20)}
}

func identityCount(t *testing.T, n *lab.Node) int {
	t.Helper()
	var ids map[string]string
	if err := agentapi.NewClient(n.Socket).Get(context.Background(), "/v1/identities", &ids); err != nil {
		t.Fatal(err)
	}
	return len(ids)
}
