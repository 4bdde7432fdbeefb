package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/ebpfnet/ebpfnet/yamlguard"
)

// ParseServices reads one or more YAML (or JSON) documents of Services and EndpointSlices
// (discovery.k8s.io/v1), Lists of them flattened, strictly: an unknown field is an error
// naming the document.
func ParseServices(data []byte) (ServiceObjects, error) {
	var out ServiceObjects
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for doc := 1; ; doc++ {
		b, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return ServiceObjects{}, fmt.Errorf("document %d: %w", doc, err)
		}
		if err := yamlguard.Check(b); err != nil {
			return ServiceObjects{}, fmt.Errorf("document %d: %w", doc, err)
		}
		head, err := typeOf(b)
		if err != nil {
			return ServiceObjects{}, fmt.Errorf("document %d: %w", doc, err)
		}
		if head.APIVersion == "" && head.Kind == "" {
			var any map[string]any
			if err := yaml.Unmarshal(b, &any); err == nil && len(any) == 0 {
				continue // empty, or only comments
			}
		}
		switch head.Kind {
		case "List", "ServiceList", "EndpointSliceList":
			var list struct {
				metav1.TypeMeta `json:",inline"`
				Metadata        metav1.ListMeta   `json:"metadata"`
				Items           []json.RawMessage `json:"items"`
			}
			if err := yaml.UnmarshalStrict(b, &list); err != nil {
				return ServiceObjects{}, fmt.Errorf("document %d: %s", doc, cleanDecodeError(err))
			}
			for i, item := range list.Items {
				if err := decodeServiceObject(item, nil, &out); err != nil {
					return ServiceObjects{}, fmt.Errorf("document %d: items[%d]: %w", doc, i, err)
				}
			}
		default:
			if err := decodeServiceObject(b, &head, &out); err != nil {
				return ServiceObjects{}, fmt.Errorf("document %d: %w", doc, err)
			}
		}
	}
	if len(out.Services)+len(out.EndpointSlices) == 0 {
		return ServiceObjects{}, errors.New("no Service or EndpointSlice in the input")
	}
	return out, nil
}

// typeOf reads a document's apiVersion and kind.
func typeOf(b []byte) (metav1.TypeMeta, error) {
	var head metav1.TypeMeta
	if err := yaml.Unmarshal(b, &head); err != nil {
		return head, errors.New(cleanDecodeError(err))
	}
	return head, nil
}

// decodeServiceObject decodes a Service or an EndpointSlice strictly and appends it to out;
// head is its apiVersion and kind when the caller read them already.
func decodeServiceObject(b []byte, head *metav1.TypeMeta, out *ServiceObjects) error {
	if head == nil {
		h, err := typeOf(b)
		if err != nil {
			return err
		}
		head = &h
	}
	switch {
	case head.APIVersion == "v1" && head.Kind == "Service":
		var s corev1.Service
		if err := yaml.UnmarshalStrict(b, &s); err != nil {
			return errors.New(cleanDecodeError(err))
		}
		out.Services = append(out.Services, s)
	case head.APIVersion == discoveryv1.SchemeGroupVersion.String() && head.Kind == "EndpointSlice":
		var es discoveryv1.EndpointSlice
		if err := yaml.UnmarshalStrict(b, &es); err != nil {
			return errors.New(cleanDecodeError(err))
		}
		out.EndpointSlices = append(out.EndpointSlices, es)
	default:
		return fmt.Errorf("apiVersion %q, kind %q: want v1 Service or discovery.k8s.io/v1 EndpointSlice", head.APIVersion, head.Kind)
	}
	return nil
}

// cleanDecodeError turns the decoder's wording into `unknown field "spec.x"` and the like.
func cleanDecodeError(err error) string {
	msg := err.Error()
	for _, p := range []string{"error unmarshaling JSON: while decoding JSON: ", "json: "} {
		msg = strings.TrimPrefix(msg, p)
	}
	return msg
}
