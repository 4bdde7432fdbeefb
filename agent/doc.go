// Package agent is the node agent (`ebpfnet daemon`): it loads and adopts the datapath,
// reconciles the store into the maps, and serves the CNI plugin and the CLI on a root-only unix
// socket. Its clients speak to it through package agentapi.
//
// An agent's life, in the order Run goes through it:
//
//  1. Validate: the config is checked whole (config.go); a bad value is a one-line error and
//     nothing has been touched.
//  2. Listen: the API socket is made before anything else, so that a socket which cannot be
//     made is an error at start, not a log line later (api.go).
//  3. Adopt the datapath: open the store, settle the node's name, address and pod CIDR, load
//     the BPF collection over what is pinned (maps reused, pinned links switched to the new
//     programs), set up the node's devices, make the reconcilers and register the node; then
//     one full reconcile (agent.go start).
//  4. Watch: store changes, the store's health and the datapath's events turn into reconcile
//     kicks and monitor events (agent.go watch, storehealth.go, monitor.go).
//  5. Reconcile: on every kick, and every resync period, one pass runs every reconciler in the
//     order newStages gives and explains (reconcile.go). Each reconciler owns its maps:
//     routes (routes.go, with BGP as its source in bgp.go), policy (policy.go), endpoints
//     (reconcile.go), prefilter (prefilter.go), services (services.go) and masquerade
//     (masquerade.go). The same state applied twice changes nothing.
//  6. Serve: the API (CNI operations in cni.go, policy in policyapi.go, services in
//     serviceapi.go, BGP in bgpapi.go) and the metrics, until the context ends. The pinned maps
//     and links stay when the agent stops, so the datapath keeps forwarding and enforcing.
//
// Each agent logs through one logger carrying its node's name; a reconciler's lines also carry
// its stage.
package agent
