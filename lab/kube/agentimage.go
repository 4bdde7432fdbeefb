package kube

import "fmt"

// AgentImage is the image deploy/ebpfnet.yaml runs: the agent, the CLI and the CNI plugin.
const AgentImage = "docker.io/ebpfnet/ebpfnet:latest"

// BuildAgentImage writes the agent's image, named ref (AgentImage if empty), as a docker archive
// into dir, holding exe as /ebpfnet and cni as /ebpfnet-cni (both static), and returns its path:
// `ctr -n k8s.io images import` it on every node, or push it to the cluster's registry.
func BuildAgentImage(dir, ref, exe, cni string) (string, error) {
	if ref == "" {
		ref = AgentImage
	}
	for _, f := range []string{exe, cni} {
		if err := checkStatic(f); err != nil {
			return "", err
		}
	}
	if err := ensureDir(dir); err != nil {
		return "", err
	}
	img := image{ref: ref, entrypoint: []string{"/ebpfnet"}, files: []imageFile{
		{name: "ebpfnet", src: exe, mode: 0o755},
		{name: "ebpfnet-cni", src: cni, mode: 0o755},
		{name: "tmp", mode: 0o1777},
	}}
	p, err := writeImage(dir, img)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", img.ref, err)
	}
	return p, nil
}
