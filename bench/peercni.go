package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ebpfnet/ebpfnet/lab/kube"
)

// The peers suite's CNI figures: kubelet and containerd add a Deployment's pods to one node,
// parallel more at a time, through each lab's own CNI plugin, whose every call a wrapper times;
// and the growth of the node's agent's memory over those pods.

const peerCNINode = "n1"

// timingWrapper runs the plugin it replaces (renamed to <name>.timed) and appends each call's
// command, start and end (ns) and exit status to <name>.times. Its own start is not counted.
const timingWrapper = `#!/bin/sh
# ebpfnet-bench: times each call of the CNI plugin it stands for
start=$(date +%s%N)
"$0.timed" "$@"
rc=$?
echo "$CNI_COMMAND $start $(date +%s%N) $rc" >>"$0.times"
exit $rc
`

type peerCNICost struct {
	addP50, addP99      float64
	rssBefore, rssAfter int // KiB
}

// measurePeerCNI scales a Deployment pinned to peerCNINode up to pods replicas, parallel at a
// time, each step waited on until every replica is ready, with the node's CNI plugin wrapped by
// timingWrapper; then deletes it and waits until its pods are gone.
func measurePeerCNI(ctx context.Context, l *peerLab, pods, parallel int) (peerCNICost, error) {
	var c peerCNICost
	plugin, err := mainPlugin(l.st.KubeCNIConfDir(peerCNINode))
	if err != nil {
		return c, err
	}
	bin := filepath.Join(l.st.NodeHostPath(peerCNINode, kube.NodeCNIBin), plugin)
	restore, err := wrapPlugin(bin)
	if err != nil {
		return c, err
	}
	defer restore()
	pid, err := l.st.AgentPID(peerCNINode)
	if err != nil {
		return c, err
	}
	if c.rssBefore, err = rssKiB(pid); err != nil {
		return c, err
	}
	const ns = "bench"
	if _, err := l.api.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return c, err
	}
	defer l.api.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) //nolint:errcheck // the lab goes down next
	d, err := l.api.AppsV1().Deployments(ns).Create(ctx, echoDeployment("cni", ns, 0, map[string]string{"kubernetes.io/hostname": peerCNINode}), metav1.CreateOptions{})
	if err != nil {
		return c, err
	}
	for n := parallel; n <= pods; n += parallel {
		if err := scaleAndWait(ctx, l, ns, d.Name, int32(n)); err != nil {
			return c, err
		}
	}
	if c.rssAfter, err = rssKiB(pid); err != nil {
		return c, err
	}
	adds, err := readAddTimes(bin + ".times")
	if err != nil {
		return c, err
	}
	if len(adds) < pods {
		return c, fmt.Errorf("%s timed %d ADDs for %d pods", plugin, len(adds), pods)
	}
	sort.Float64s(adds)
	c.addP50, c.addP99 = median(adds), adds[(len(adds)*99)/100]
	if err := scaleAndWait(ctx, l, ns, d.Name, 0); err != nil {
		return c, err
	}
	return c, nil
}

// scaleAndWait sets the Deployment's replicas and waits until as many of its pods are ready
// and no other is left.
func scaleAndWait(ctx context.Context, l *peerLab, ns, name string, n int32) error {
	// A merge patch carries no resourceVersion: the controller's status writes do not conflict.
	patch := fmt.Appendf(nil, `{"spec":{"replicas":%d}}`, n)
	if _, err := l.api.AppsV1().Deployments(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return err
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		pods, err := l.api.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		ready := 0
		for _, p := range pods.Items {
			for _, cond := range p.Status.Conditions {
				if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		if ready == int(n) && len(pods.Items) == int(n) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d pods ready, %d pods, after 5 minutes", ready, n, len(pods.Items))
		}
		time.Sleep(200 * time.Millisecond) // polling a condition, bounded by the deadline
	}
}

// mainPlugin is the type of the first plugin of the first conflist in dir: the one containerd
// loads.
func mainPlugin(dir string) (string, error) {
	lists, err := filepath.Glob(filepath.Join(dir, "*.conflist"))
	if err != nil || len(lists) == 0 {
		return "", fmt.Errorf("no conflist in %s", dir)
	}
	sort.Strings(lists)
	b, err := os.ReadFile(lists[0])
	if err != nil {
		return "", err
	}
	var conf struct {
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &conf); err != nil {
		return "", fmt.Errorf("%s: %w", lists[0], err)
	}
	if len(conf.Plugins) == 0 || conf.Plugins[0].Type == "" || strings.Contains(conf.Plugins[0].Type, "/") {
		return "", fmt.Errorf("%s: no plugin type", lists[0])
	}
	return conf.Plugins[0].Type, nil
}

// wrapPlugin puts timingWrapper in bin's place; the returned func puts bin back.
func wrapPlugin(bin string) (func(), error) {
	if err := os.Rename(bin, bin+".timed"); err != nil {
		return nil, err
	}
	restore := func() {
		_ = os.Remove(bin + ".times") // the figures are read
		_ = os.Remove(bin)            // the wrapper, if written
		_ = os.Rename(bin+".timed", bin)
	}
	if err := os.WriteFile(bin, []byte(timingWrapper), 0o755); err != nil {
		restore()
		return nil, err
	}
	return restore, nil
}

// readAddTimes reads what timingWrapper wrote: each successful ADD's duration, in ms.
func readAddTimes(path string) ([]float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var adds []float64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 4 || fields[0] != "ADD" || fields[3] != "0" {
			continue
		}
		start, err1 := strconv.ParseInt(fields[1], 10, 64)
		end, err2 := strconv.ParseInt(fields[2], 10, 64)
		if err1 != nil || err2 != nil || end < start {
			return nil, fmt.Errorf("%s: bad line %q", path, sc.Text())
		}
		adds = append(adds, float64(end-start)/1e6)
	}
	return adds, sc.Err()
}

// rssKiB is the resident memory of process pid, in KiB.
func rssKiB(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return 0, fmt.Errorf("process %d: no VmRSS", pid)
}
