package kube

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/ebpfnet/ebpfnet/namespace"
)

// pollInterval is how often the waits below look again at a condition they cannot be told about.
const pollInterval = 100 * time.Millisecond

// apiClient talks HTTPS to the apiserver from inside the network namespace it is reachable in.
type apiClient struct {
	server string
	http   *http.Client
}

// newAPIClient authenticates with the certificate pair certFile/keyFile and trusts caFile;
// its connections are opened in netns ("" = this process's namespace).
func newAPIClient(server, netns, caFile, certFile, keyFile string) (*apiClient, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("api client: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("api client: no certificate in " + caFile)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("api client: %w", err)
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}},
		// The socket is made on a thread inside netns and stays there once made.
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			nsErr := namespace.Do(netns, func() error {
				conn, err = dialer.DialContext(ctx, network, addr)
				return nil
			})
			if nsErr != nil {
				return nil, nsErr
			}
			return conn, err
		},
	}
	return &apiClient{server: server, http: &http.Client{Transport: tr, Timeout: 10 * time.Second}}, nil
}

// get returns the status code and body of GET path.
func (c *apiClient) get(ctx context.Context, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.server+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// close drops idle connections.
func (c *apiClient) close() { c.http.CloseIdleConnections() }

// waitFor polls cond until it holds, returns an error, or ctx ends; the last reason cond gave
// for not holding ends up in the timeout error.
func waitFor(ctx context.Context, what string, cond func() (bool, string, error)) error {
	for {
		ok, last, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %s)", what, ctx.Err(), last)
		case <-time.After(pollInterval): // nothing notifies us: look again
		}
	}
}
