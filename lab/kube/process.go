package kube

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// namespaces names the network and mount namespaces a process enters ("" = this process's).
type namespaces struct{ net, mnt string }

// enter is the nsenter command that runs exe with args in ns: nsenter switches only what it
// is told, where `ip netns exec` would remount /sys, and kubelet would then find no cgroups.
func (ns namespaces) enter(exe string, args ...string) (string, []string) {
	var flags []string
	if ns.net != "" {
		flags = append(flags, "--net="+ns.net)
	}
	if ns.mnt != "" {
		flags = append(flags, "--mount="+ns.mnt)
	}
	if len(flags) == 0 {
		return exe, args
	}
	return "nsenter", append(append(flags, "--", exe), args...)
}

// spawn starts a long-lived process in the namespaces ns, in its own session so it outlives
// the caller, logging to dir/<name>.log and recording its pid in dir/<name>.pid.
func spawn(ns namespaces, dir, name string, env []string, exe string, args ...string) (*proc, error) {
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer logf.Close()
	name0, args0 := ns.enter(exe, args...)
	cmd := exec.Command(name0, args0...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, pid: cmd.Process.Pid, log: logf.Name(), done: make(chan struct{})}
	go func() {
		_ = cmd.Wait() // reaps it if it dies while this process still runs; its log says why
		close(p.done)
	}()
	if err := os.WriteFile(filepath.Join(dir, name+".pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		return p, fmt.Errorf("record pid of %s: %w", name, err)
	}
	return p, nil
}

// proc is a process spawn started.
type proc struct {
	name string
	pid  int
	log  string
	done chan struct{} // closed once it has exited
}

// alive fails, quoting the end of its log, when the process has exited.
func (p *proc) alive() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited: %s", p.name, logTail(p.log, 5))
	default:
		return nil
	}
}

// OwnedBy reports whether pid is a live (not zombie) process whose command line names a path
// under dir: a recycled pid is then never mistaken for one of ours.
func OwnedBy(pid int, dir string) bool {
	proc := filepath.Join("/proc", strconv.Itoa(pid))
	cmdline, err := os.ReadFile(filepath.Join(proc, "cmdline"))
	if err != nil {
		return false
	}
	if stat, err := os.ReadFile(filepath.Join(proc, "stat")); err == nil && bytes.Contains(stat, []byte(") Z ")) {
		return false
	}
	return bytes.Contains(cmdline, []byte(filepath.Clean(dir)+"/"))
}

// processesUnder lists the live processes, other than this one, whose command line names a path
// under dir: the components, and containerd's shims (their -address is under dir).
func processesUnder(dir string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if OwnedBy(pid, dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// logTail returns the last n lines of a log file, joined by " | ".
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "no log: " + err.Error()
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ") + " (see " + path + ")"
}

// KubeletPID is the process of the kubelet StartNode started for the node at dir.
func KubeletPID(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "kubelet.pid"))
	if err != nil {
		return 0, fmt.Errorf("kubelet of %s: %w", dir, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || !OwnedBy(pid, dir) {
		return 0, fmt.Errorf("kubelet of %s: no kubelet runs as pid %q", dir, strings.TrimSpace(string(b)))
	}
	return pid, nil
}

// StartDaemon runs exe as a long-lived daemon of the node at dir (a peer CNI's agent, which a
// cluster would run as a host-network DaemonSet pod) in the node's network namespace netns and
// its mount namespace, logging to dir/<name>.log. Its command line must name a path under dir,
// so that Teardown(dir) finds and stops it.
func StartDaemon(dir, netns, name string, env []string, exe string, args ...string) (int, error) {
	p, err := spawn(namespaces{net: netns, mnt: filepath.Join(dir, mountNSFile)}, dir, name, env, exe, args...)
	if err != nil {
		return 0, err
	}
	return p.pid, p.alive()
}
