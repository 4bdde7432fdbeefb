package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// startEtcd runs the lab's etcd in the underlay namespace (on its data dir, so a restart
// keeps the cluster's state) and returns once it serves.
func (s *State) startEtcd(ctx context.Context, exe string) error {
	dir := filepath.Join(Dir(s.Name), "etcd")
	ready := dir + ".ready"
	os.Remove(ready)
	pid, err := spawn(s.Underlay, dir+".log", exe, "etcd", "--data-dir", dir,
		"--client-url", s.EtcdURL, "--peer-url", "http://127.0.0.1:2380", "--ready", ready)
	if err != nil {
		return err
	}
	s.EtcdPID = pid
	if err := s.save(); err != nil {
		return err
	}
	return waitFor(ctx, 30*time.Second, "etcd to serve", func() (bool, string) {
		_, err := os.Stat(ready)
		return err == nil, logTail(dir + ".log")
	})
}

// StopEtcd kills the lab's etcd (SIGKILL): a store outage. The agents and the datapath run on.
func (s *State) StopEtcd() error {
	if s.Kubernetes {
		return errors.New("a kubernetes lab keeps its state in the API server, not the lab's etcd")
	}
	if err := stop(s.EtcdPID, s.Name); err != nil {
		return fmt.Errorf("stop etcd: %w", err)
	}
	s.EtcdPID = 0
	return s.save()
}

// StartEtcd starts the lab's etcd again after StopEtcd, on the same data.
func (s *State) StartEtcd(ctx context.Context, opts Options) error {
	if err := opts.fill(); err != nil {
		return err
	}
	return s.startEtcd(ctx, opts.Exe)
}
