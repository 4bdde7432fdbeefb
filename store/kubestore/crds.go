package kubestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"

	"github.com/ebpfnet/ebpfnet/deploy"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installCRDs creates ebpfnet's custom resource definitions that are missing and waits until
// the API server serves them.
func installCRDs(ctx context.Context, dyn dynamic.Interface) error {
	api := dyn.Resource(crdGVR)
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(deploy.CRDs), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("embedded CRDs: %w", err)
		}
		if len(u.Object) == 0 {
			continue
		}
		if _, err := api.Create(ctx, u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("install CRD %s: %w", u.GetName(), err)
		}
		if err := waitEstablished(ctx, api, u.GetName()); err != nil {
			return err
		}
	}
}

func waitEstablished(ctx context.Context, api dynamic.NamespaceableResourceInterface, name string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		u, err := api.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("CRD %s: %w", name, err)
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("CRD %s is not established after 30s", name)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond): // polling the CRD's Established condition
		}
	}
}
