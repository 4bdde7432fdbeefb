package kubestore

import (
	"context"
	"strconv"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// listVersions lists a class's objects live from the API server: cache key -> resource
// version, and the list's own version.
func listVersions(ctx context.Context, c *class) (map[string]uint64, uint64, error) {
	obj, err := c.lister(ctx, metav1.ListOptions{ResourceVersion: ""})
	if err != nil {
		return nil, 0, err
	}
	items, err := meta.ExtractList(obj)
	if err != nil {
		return nil, 0, err
	}
	out := make(map[string]uint64, len(items))
	for _, it := range items {
		key, err := cache.MetaNamespaceKeyFunc(it)
		if err != nil {
			return nil, 0, err
		}
		out[key] = version(it)
	}
	lm, err := meta.ListAccessor(obj)
	if err != nil {
		return nil, 0, err
	}
	rv, _ := strconv.ParseUint(lm.GetResourceVersion(), 10, 64)
	return out, rv, nil
}
