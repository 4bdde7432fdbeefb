package kubestore

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

func pod(name, rv string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: name, ResourceVersion: rv}}
}

// Sync's comparison of a live list with the cache: an object listed live that the cache
// lacks is behind, unless the cache saw it deleted at or after the version listed.
func TestCacheBehind(t *testing.T) {
	c := &class{prefix: "ebpfnet/pods/", informer: cache.NewSharedIndexInformer(&cache.ListWatch{}, &corev1.Pod{}, 0, cache.Indexers{})}
	h := cache.ResourceEventHandlerFuncs{AddFunc: c.alive, DeleteFunc: c.buried}
	if err := c.store().Add(pod("a", "10")); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		name   string
		do     func()
		live   map[string]uint64
		listRV uint64
		want   string
	}{
		{"cached at the listed version", func() {}, map[string]uint64{"x/a": 10}, 10, ""},
		{"cached older than listed", func() {}, map[string]uint64{"x/a": 11}, 11, "x/a"},
		{"listed, never cached", func() {}, map[string]uint64{"x/a": 10, "x/b": 11}, 11, "x/b"},
		{"listed, then deleted (the deletion's version)", func() { h.OnDelete(pod("b", "12")) },
			map[string]uint64{"x/a": 10, "x/b": 11}, 11, ""},
		{"deleted before the version listed, made again, not cached yet", func() {},
			map[string]uint64{"x/a": 10, "x/b": 13}, 13, "x/b"},
		{"made again and cached", func() { mustAdd(t, c, pod("b", "13")); h.OnAdd(pod("b", "13"), false) },
			map[string]uint64{"x/a": 10, "x/b": 13}, 13, ""},
		{"cached, deleted live, not seen yet", func() {}, map[string]uint64{"x/a": 10}, 14, "x/b (deleted)"},
	} {
		step.do()
		if got := cacheBehind(c, step.live, step.listRV); got != step.want {
			t.Errorf("%s: behind %q, want %q", step.name, got, step.want)
		}
	}
	// A tombstone outlives no list that cannot need it.
	h.OnDelete(pod("c", "20"))
	c.pruneTombs(map[string]uint64{"x/a": 10}, 21)
	if _, ok := c.tombs.Load("x/c"); ok {
		t.Error("x/c's tombstone kept after a list made after its deletion")
	}
	h.OnDelete(pod("d", "30"))
	c.pruneTombs(map[string]uint64{"x/a": 10, "x/d": 25}, 25)
	if _, ok := c.tombs.Load("x/d"); !ok {
		t.Error("x/d's tombstone dropped while a list that holds it may still be compared")
	}
}

// mustAdd puts obj in the class's cache.
func mustAdd(t *testing.T, c *class, obj any) {
	t.Helper()
	if err := c.store().Add(obj); err != nil {
		t.Fatal(err)
	}
}
