// Package deploy holds what an operator applies to run ebpfnet in a Kubernetes cluster, embedded
// so that the agent installs the same custom resource definitions it ships.
package deploy

import _ "embed"

// CRDs is crds.yaml: the EbpfnetIdentity and EbpfnetRecord custom resource definitions.
//
//go:embed crds.yaml
var CRDs []byte
