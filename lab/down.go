package lab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

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
	for _, p := range st.Pods {
		stopServer(p.ServerPID, name)
	}
	for _, p := range st.Pods {
		errs = append(errs, namespace.Delete(filepath.Base(p.Netns)))
	}
	for _, n := range st.Nodes {
		errs = append(errs, loader.Uninstall(n.PinDir), namespace.Delete(filepath.Base(n.Netns)))
	}
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

// stopServer kills a lab server if pid is still one of this lab's, and waits for it to go.
func stopServer(pid int, lab string) {
	if pid <= 0 || !isLabServer(pid, lab) {
		return
	}
	syscall.Kill(pid, syscall.SIGKILL)
	deadline := time.Now().Add(5 * time.Second)
	for isLabServer(pid, lab) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // waiting for the kernel to reap the process
	}
}

// isLabServer checks /proc so that a recycled pid is never killed by mistake.
func isLabServer(pid int, lab string) bool {
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return false
	}
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err == nil && bytes.Contains(stat, []byte(") Z ")) {
		return false // a zombie holds nothing
	}
	return bytes.Contains(cmdline, []byte("\x00serve\x00")) && bytes.Contains(cmdline, []byte(Dir(lab)+"/"))
}
