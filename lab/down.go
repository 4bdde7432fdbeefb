package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ebpfnet/ebpfnet/lab/kube"
	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/namespace"
)

// Down removes every process, namespace, link and pin of the lab. It is idempotent, and it
// also cleans up after a lab whose processes were killed or whose `up` failed half-way.
func Down(name string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	st, err := Load(name)
	if errors.Is(err, ErrNotUp) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	if st.Kubernetes {
		// Kubelets and containerds first: they own the pods' sandboxes and namespaces.
		errs = append(errs, kube.Teardown(KubeDir(name)))
	}
	for _, p := range st.Pods {
		_ = stop(p.ServerPID, name) // teardown goes on; what is left shows in what comes next
	}
	for _, n := range st.Nodes {
		_ = stop(n.AgentPID, name) // teardown goes on; what is left shows in what comes next
	}
	_ = stop(st.EtcdPID, name) // teardown goes on; what is left shows in what comes next
	if st.Router != nil {
		_ = stop(st.Router.PID, name) // teardown goes on; what is left shows in what comes next
		errs = append(errs, namespace.Delete(filepath.Base(st.Router.Netns)))
	}
	for _, p := range st.Pods {
		errs = append(errs, namespace.Delete(filepath.Base(p.Netns)))
	}
	for _, n := range st.Nodes {
		errs = append(errs, loader.Uninstall(n.PinDir), namespace.Delete(filepath.Base(n.Netns)))
	}
	// The underlay namespace holds the bridges (br0 and the racks').
	errs = append(errs, namespace.Delete(filepath.Base(st.Underlay)))
	if err := os.Remove(filepath.Join(PinRoot, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove lab pin dir: %w", err))
	}
	os.Remove(PinRoot) // only if no other lab uses it
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return os.RemoveAll(Dir(name))
}
