// Package deploy holds what an operator applies to run ebpfnet in a Kubernetes cluster, embedded
// so that the agent installs the same custom resource definitions it ships and the kubernetes
// lab applies the same manifest a cluster does.
package deploy

import _ "embed"

// CRDs is crds.yaml: the EbpfnetIdentity and EbpfnetRecord custom resource definitions.
//
//go:embed crds.yaml
var CRDs []byte

// Manifest is ebpfnet.yaml: the ServiceAccount, RBAC, ConfigMap and DaemonSet that run the agent
// on every node.
//
//go:embed ebpfnet.yaml
var Manifest []byte
