package agentapi

import (
	"net/netip"
	"time"
)

// DefaultSocket is where the agent serves its API unless configured otherwise.
const DefaultSocket = "/run/ebpfnet/agent.sock"

// MaxRequestBytes bounds the body of any API request: far above a real one (a file of
// thousands of NetworkPolicies), far below what would strain the node.
const MaxRequestBytes = 16 << 20

// APIError is an error as the API returns it, with the CNI error code it maps to.
type APIError struct {
	Code    int    `json:"code"`
	Message string `json:"error"`
}

func (e *APIError) Error() string { return e.Message }

// CNI error codes the agent answers with (CNI spec 1.1.0).
const (
	CodeInvalidEnv    = 4
	CodeIOFailure     = 5
	CodeInvalidConfig = 7
	CodeTryAgainLater = 11
	CodeInternal      = 999
)

// Status is GET /v1/status.
type Status struct {
	Ready  bool   `json:"ready"`
	Node   string `json:"node"`
	NodeIP string `json:"nodeIP"`
	// NodeIPv6 is the node's IPv6 underlay address in a dual-stack cluster, if it has one.
	NodeIPv6 string `json:"nodeIPv6,omitempty"`
	PodCIDR  string `json:"podCIDR"`
	// PodCIDRv6 is the node's IPv6 pod CIDR in a dual-stack cluster, else empty.
	PodCIDRv6 string `json:"podCIDRv6,omitempty"`
	Mode      string `json:"mode"`
	PinDir    string `json:"pinDir"`
	PodMTU    int    `json:"podMTU"`
	// PrefilterMode is the XDP mode the prefilter runs in ("native" or "generic"), or "".
	PrefilterMode string `json:"prefilterMode,omitempty"`
}

// LabelRequest changes labels of a pod or namespace: set these, remove those.
type LabelRequest struct {
	Kind      string            `json:"kind"` // "pod" or "namespace"
	Namespace string            `json:"namespace"`
	Name      string            `json:"name,omitempty"`
	Set       map[string]string `json:"set,omitempty"`
	Remove    []string          `json:"remove,omitempty"`
}

// PolicyList is GET /v1/policies.
type PolicyList struct {
	Policies []PolicySummary `json:"policies"`
}

// PolicySummary is one policy as `policy list` shows it.
type PolicySummary struct {
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	PolicyTypes []string `json:"policyTypes"`
	Selects     []string `json:"selects"`
}

// ObjectsRequest declares namespaces and pods the way an API server would hold them.
type ObjectsRequest struct {
	Namespaces map[string]map[string]string `json:"namespaces,omitempty"`
	Pods       map[string]PodMeta           `json:"pods,omitempty"` // "ns/name" ->
}

// ExplainRequest asks about a flow between two pods ("ns/name") or addresses.
type ExplainRequest struct {
	From     string `json:"from"`
	To       string `json:"to"`
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"`
}

// PodPolicy is what the datapath holds for one local pod.
type PodPolicy struct {
	Node            string        `json:"node"`
	Endpoint        uint32        `json:"endpoint"`
	Identity        uint32        `json:"identity"`
	IngressEnforced bool          `json:"ingressEnforced"`
	EgressEnforced  bool          `json:"egressEnforced"`
	Entries         []PolicyShown `json:"entries"`
}

// PolicyShown is one policy map entry in words.
type PolicyShown struct {
	Direction string `json:"direction"`
	Peer      string `json:"peer"`
	Protocol  string `json:"protocol"`
	Ports     string `json:"ports"`
	Rule      string `json:"rule"`
}

// PolicyStatus is how far one NetworkPolicy's current version has reached.
type PolicyStatus struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Version names the policy's content as the store holds it now.
	Version string `json:"version"`
	// Enforcing counts the nodes that enforce that version, of Nodes.
	Enforcing int      `json:"enforcing"`
	Nodes     int      `json:"nodes"`
	Behind    []string `json:"behind,omitempty"`
}

// PodMeta is what an API server would hold of a pod for policy: its labels and ports.
type PodMeta struct {
	Labels map[string]string `json:"labels,omitempty"`
	Ports  []PodPort         `json:"ports,omitempty"`
}

// PodPort is a declared container port.
type PodPort struct {
	Name     string `json:"name,omitempty"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol,omitempty"`
}

// PrefilterRequest names a CIDR to add or delete.
type PrefilterRequest struct {
	CIDR string `json:"cidr"`
}

// MonitorEvent is one drop as `ebpfnet monitor` shows it.
type MonitorEvent struct {
	Time      time.Time `json:"time"`
	Node      string    `json:"node"`
	Type      string    `json:"type"`
	Reason    string    `json:"reason"`
	Direction string    `json:"direction"`
	Protocol  string    `json:"protocol"`
	Src       Peer      `json:"src"`
	Dst       Peer      `json:"dst"`
	Length    uint32    `json:"length"`
}

// Peer is one end of a monitored packet.
type Peer struct {
	IP       netip.Addr `json:"ip"`
	Port     uint16     `json:"port,omitempty"`
	Pod      string     `json:"pod,omitempty"` // namespace/name when the address is a pod's
	Identity uint32     `json:"identity"`
}

// ServiceView is one Service as `service list` shows it.
type ServiceView struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Type      string `json:"type"`
	// ClusterIP is the cluster IP, "None" for a headless service, "" for ExternalName.
	ClusterIP string `json:"clusterIP"`
	// ClusterIPv6 is a dual-stack service's IPv6 cluster IP.
	ClusterIPv6 string        `json:"clusterIPv6,omitempty"`
	Ports       []ServicePort `json:"ports"`
	// Frontends are the addresses the service answers on: "10.96.0.10:80/TCP", and with node
	// ports "NODEIP:30080/TCP" (this node's address; every node opens them).
	Frontends []string      `json:"frontends"`
	Backends  []BackendView `json:"backends"`
}

// BackendView is one backend of a ServiceView.
type BackendView struct {
	IP    string         `json:"ip"`
	Node  string         `json:"node,omitempty"`
	Ports map[string]int `json:"ports"`
	State string         `json:"state"` // ready | serving | terminating | not-ready
}

// ServicePort is one port of a ServiceView.
type ServicePort struct {
	Name     string `json:"name,omitempty"` // may be "" for a single-port service
	Protocol string `json:"protocol"`       // "TCP" or "UDP" (SCTP passed through; the datapath ignores it)
	Port     int    `json:"port"`
	NodePort int    `json:"nodePort,omitempty"` // 0 unless NodePort
}
