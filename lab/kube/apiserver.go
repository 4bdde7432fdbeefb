package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// apiserverArgsFile holds kube-apiserver's arguments (a JSON array), written when it first starts.
func (cp *ControlPlane) apiserverArgsFile() string {
	return filepath.Join(cp.Dir, "kube-apiserver.args.json")
}

// writeArgs records a component's arguments.
func writeArgs(path string, args []string) error {
	b, err := json.Marshal(args)
	if err != nil {
		return err
	}
	return writeFile(path, string(b)+"\n")
}

// apiserverPID returns the pid recorded for kube-apiserver and whether that process still runs.
func (cp *ControlPlane) apiserverPID() (int, bool) {
	b, err := os.ReadFile(filepath.Join(cp.Dir, "kube-apiserver.pid"))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid, err == nil && OwnedBy(pid, cp.Dir)
}

// StopAPIServer SIGKILLs the kube-apiserver and returns once it is gone. Everything else (etcd,
// controller manager, scheduler, kubelets, agents) keeps running and retries meanwhile.
func (cp *ControlPlane) StopAPIServer() error {
	pid, ok := cp.apiserverPID()
	if !ok {
		return fmt.Errorf("stop kube-apiserver: it does not run (see %s)", filepath.Join(cp.Dir, "kube-apiserver.pid"))
	}
	killAll([]int{pid}, cp.Dir)
	if OwnedBy(pid, cp.Dir) {
		return fmt.Errorf("stop kube-apiserver: pid %d survived SIGKILL", pid)
	}
	return nil
}

// StartAPIServer runs the kube-apiserver StopAPIServer stopped again, with the arguments it
// first ran with, and returns once /readyz answers ok. The previous run's log is kept as
// kube-apiserver.log.1.
func (cp *ControlPlane) StartAPIServer(ctx context.Context) error {
	if pid, ok := cp.apiserverPID(); ok {
		return fmt.Errorf("start kube-apiserver: it already runs (pid %d)", pid)
	}
	b, err := os.ReadFile(cp.apiserverArgsFile())
	if err != nil {
		return fmt.Errorf("start kube-apiserver: %w", err)
	}
	var args []string
	if err := json.Unmarshal(b, &args); err != nil {
		return fmt.Errorf("start kube-apiserver: %s: %w", cp.apiserverArgsFile(), err)
	}
	client, err := cp.client()
	if err != nil {
		return err
	}
	defer client.close()
	log := filepath.Join(cp.Dir, "kube-apiserver.log")
	if err := os.Rename(log, log+".1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("keep the last API server log: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var procs []*proc
	if err := cp.start(&procs, "kube-apiserver", args); err != nil {
		return err
	}
	return cp.waitReady(ctx, client, procs, "/readyz")
}
