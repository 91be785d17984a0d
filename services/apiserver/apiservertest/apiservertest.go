// Package apiservertest runs real API server replicas in the test process:
// an embedded etcd cluster and N gRPC servers on 127.0.0.1 with the same
// registry, storage and handlers as the apiserver binary. Packages that test
// against the API (clients, informers, controllers) use it when the subject is
// not the binary itself; tests of the binary run the real process.
//
// A Cluster is safe for concurrent use; everything it starts is stopped by
// the test's cleanup.
package apiservertest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/etcdtest"
	"github.com/capstan-dev/capstan/internal/grpcserver"
	"github.com/capstan-dev/capstan/internal/storage/etcd3"
	"github.com/capstan-dev/capstan/services/apiserver/internal/api"
	"github.com/capstan-dev/capstan/services/apiserver/internal/clusterstatus"
	"github.com/capstan-dev/capstan/services/apiserver/internal/leases"
	"github.com/capstan-dev/capstan/services/apiserver/internal/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Options tune a Cluster; the zero value is fine.
type Options struct {
	// EtcdMembers is the size of the etcd cluster; default 1.
	EtcdMembers int
	// BookmarkInterval for watches; default 200 ms so tests see bookmarks.
	BookmarkInterval time.Duration
}

// Cluster is a set of in-process API replicas over one etcd cluster.
type Cluster struct {
	t        testing.TB
	etcd     *etcdtest.Cluster
	client   *clientv3.Client
	reg      *registry.Registry
	mu       sync.Mutex
	replicas []*replica
}

type replica struct {
	addr     string
	server   *grpcserver.Server
	closeAPI func()
	done     chan struct{}
}

// Start starts replicas API servers (and their etcd) for the test.
func Start(t testing.TB, replicas int, opts ...Options) *Cluster {
	t.Helper()
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.EtcdMembers == 0 {
		o.EtcdMembers = 1
	}
	if o.BookmarkInterval == 0 {
		o.BookmarkInterval = 200 * time.Millisecond
	}
	etcd := etcdtest.Start(t, o.EtcdMembers)
	client := etcd.Client(t)
	c := &Cluster{
		t:      t,
		etcd:   etcd,
		client: client,
		reg: registry.New(etcd3.New(client, etcd3.Options{Logger: slog.New(slog.DiscardHandler)}), registry.Options{
			Logger:           slog.New(slog.DiscardHandler),
			BookmarkInterval: o.BookmarkInterval,
		}),
	}
	for i := 0; i < replicas; i++ {
		c.replicas = append(c.replicas, &replica{})
		c.StartReplica(i)
	}
	t.Cleanup(func() {
		for i := range c.replicas {
			c.StopReplica(i)
		}
	})
	return c
}

// Addrs are the replicas' gRPC addresses, host:port.
func (c *Cluster) Addrs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, r := range c.replicas {
		out = append(out, r.addr)
	}
	return out
}

// Etcd is the etcd cluster behind the replicas.
func (c *Cluster) Etcd() *etcdtest.Cluster { return c.etcd }

// StartReplica starts replica i, on the address it had before if it ran.
func (c *Cluster) StartReplica(i int) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.replicas[i]
	if r.server != nil {
		return
	}
	addr := r.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	var err error
	// A just-closed port can take a moment to be free again.
	for deadline := time.Now().Add(5 * time.Second); ; {
		lis, err = net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		c.t.Fatalf("apiservertest: listen %s: %v", addr, err)
	}
	srv := grpcserver.New(grpcserver.Options{Logger: slog.New(slog.DiscardHandler)})
	closeAPI, err := api.Register(srv, c.reg, leases.New(c.client, nil))
	if err != nil {
		c.t.Fatalf("apiservertest: %v", err)
	}
	status, err := clusterstatus.New(clusterstatus.Options{
		Client: c.client,
		Self:   &capstanv1.ApiServer{Name: fmt.Sprintf("apiserver-%d", i+1), Address: lis.Addr().String()},
	})
	if err != nil {
		c.t.Fatalf("apiservertest: %v", err)
	}
	capstanv1.RegisterClusterServiceServer(srv, status)
	srv.SetServing(true)
	r.addr, r.server, r.closeAPI, r.done = lis.Addr().String(), srv, closeAPI, make(chan struct{})
	go func(done chan struct{}) {
		defer close(done)
		_ = srv.Serve(lis)
	}(r.done)
}

// StopReplica stops replica i at once, as if its process died: open calls
// and streams fail with UNAVAILABLE and the address refuses connections.
func (c *Cluster) StopReplica(i int) {
	c.mu.Lock()
	r := c.replicas[i]
	srv, done, closeAPI := r.server, r.done, r.closeAPI
	r.server = nil
	c.mu.Unlock()
	if srv == nil {
		return
	}
	srv.GRPC.Stop() // no grace, no health change: as a killed process
	<-done
	closeAPI()
}

// SetServing flips replica i's health status, as losing or regaining etcd
// quorum does in the real binary.
func (c *Cluster) SetServing(i int, serving bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if srv := c.replicas[i].server; srv != nil {
		srv.SetServing(serving)
	}
}

// Compact compacts etcd at its current revision, so any older
// resource_version is expired. It returns that revision.
func (c *Cluster) Compact(ctx context.Context) (int64, error) {
	resp, err := c.client.Get(ctx, "compact-probe")
	if err != nil {
		return 0, fmt.Errorf("apiservertest: read revision: %w", err)
	}
	rev := resp.Header.Revision
	if _, err := c.client.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		return 0, fmt.Errorf("apiservertest: compact at %d: %w", rev, err)
	}
	return rev, nil
}
