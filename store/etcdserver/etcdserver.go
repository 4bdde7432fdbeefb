// Package etcdserver runs a single-member etcd inside this process (go.etcd.io/etcd embed),
// for tests and for the lab; production clusters point ebpfnet at their own etcd.
package etcdserver

import (
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is a running embedded etcd.
type Server struct {
	e *embed.Etcd
	// ClientURL is where clients connect.
	ClientURL string
}

// Start runs etcd with its data in dir, serving clients on clientURL (e.g.
// http://127.0.0.1:2379) and peers on peerURL, and returns once it serves.
func Start(dir, clientURL, peerURL string) (*Server, error) {
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.Name = "ebpfnet"
	cu, err := url.Parse(clientURL)
	if err != nil {
		return nil, fmt.Errorf("client url %q: %w", clientURL, err)
	}
	pu, err := url.Parse(peerURL)
	if err != nil {
		return nil, fmt.Errorf("peer url %q: %w", peerURL, err)
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.Name + "=" + peerURL
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.LogLevel = "error"
	// A lab's or a test's etcd lives as long as its namespaces: it need not survive power loss.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, fmt.Errorf("etcd did not become ready in 30s")
	}
	return &Server{e: e, ClientURL: clientURL}, nil
}

// Err reports a failure of the running server.
func (s *Server) Err() <-chan error { return s.e.Err() }

// Close stops the server.
func (s *Server) Close() { s.e.Close() }
