package main

import (
	"errors"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// heavy are the module paths the CNI plugin must not link: the runtime execs it once per pod
// operation, so every package it carries is paid for at each ADD, DEL and CHECK.
var heavy = []string{"k8s.io/", "go.etcd.io/", "github.com/osrg/gobgp"}

// deps lists the packages pkg builds from, as go list sees them.
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	out, err := exec.Command(goBin, "list", "-deps", pkg).Output()
	if err != nil {
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			t.Fatalf("go list -deps %s: %v: %s", pkg, err, ee.Stderr)
		}
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}

// heavyOf returns the packages of list under one of the heavy module paths.
func heavyOf(list []string) []string {
	var found []string
	for _, p := range list {
		for _, h := range heavy {
			if strings.HasPrefix(p, h) {
				found = append(found, p)
			}
		}
	}
	return found
}

func TestPluginIsLean(t *testing.T) {
	// The agent links all of them: if none shows there, the check below sees nothing.
	agent := heavyOf(deps(t, "github.com/ebpfnet/ebpfnet/agent"))
	for _, h := range heavy {
		seen := false
		for _, p := range agent {
			seen = seen || strings.HasPrefix(p, h)
		}
		if !seen {
			t.Fatalf("go list -deps of the agent shows no %s package: the check cannot see one", h)
		}
	}
	if found := heavyOf(deps(t, "github.com/ebpfnet/ebpfnet/cmd/ebpfnet-cni")); len(found) > 0 {
		t.Errorf("the CNI plugin links %d packages it must not, first %s; up to ten: %s", len(found), found[0], strings.Join(found[:min(len(found), 10)], " "))
	}
}
