// Package apiservertest runs real API server replicas in the test process:
// an embedded etcd cluster and N replicas on 127.0.0.1, each one the
// apiserver binary's own assembly (app.Start with app.DefaultOptions) over
// that cluster as an external etcd, with an etcd client of its own, as
// separate processes would have. Only what a test needs differs from the
// binary: loopback listeners, a discarded log, a replica name and a short
// bookmark interval. So each replica's health follows etcd's quorum, it
// registers in cluster status, and it enforces the binary's request timeout
// and size limit. Packages that test against the API (clients, informers,
// controllers) use it when the subject is not the binary itself; tests of
// the binary run the real process.
//
// A Cluster is safe for concurrent use; everything it starts is stopped by
// the test's cleanup. Start and StartReplica must be called from the test's
// goroutine (they fail the test if a replica does not come up), and never
// concurrently for the same replica.
package apiservertest

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/etcdtest"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/services/apiserver/app"
)

// DefaultBookmarkInterval is a replica's bookmark interval unless Options
// say otherwise: short, so tests see bookmarks without waiting the binary's
// 5 s.
const DefaultBookmarkInterval = 200 * time.Millisecond

// Bounds of the waits of a replica's start and stop; far above what they
// take, so a slow shared machine does not fail a test.
const (
	// startTimeout bounds a replica's start: its address free again, then
	// SERVING and registered.
	startTimeout = 30 * time.Second
	// shutdownTimeout bounds the graceful part of a replica's shutdown at
	// the end of the test.
	shutdownTimeout = 10 * time.Second
)

// Options tune a Cluster; the zero value is fine.
type Options struct {
	// EtcdMembers is the size of the etcd cluster; default 1.
	EtcdMembers int
	// BookmarkInterval for watches; default DefaultBookmarkInterval.
	BookmarkInterval time.Duration
}

// Cluster is a set of in-process API replicas over one etcd cluster.
type Cluster struct {
	t    testing.TB
	opts Options
	etcd *etcdtest.Cluster
	// client is the cluster's own etcd client, for Compact; the replicas
	// have theirs.
	client *clientv3.Client

	mu       sync.Mutex
	replicas []*replica
}

// replica is one API server: addr stays the same across StopReplica and
// StartReplica; server is nil while it is stopped.
type replica struct {
	name   string
	addr   string
	server *app.Server
}

// Start starts the etcd cluster and replicas API servers for the test, and
// returns once every replica reports SERVING and is registered in cluster
// status, so a test's first call does not race the start.
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
		o.BookmarkInterval = DefaultBookmarkInterval
	}
	etcd := etcdtest.Start(t, o.EtcdMembers)
	c := &Cluster{t: t, opts: o, etcd: etcd, client: etcd.Client(t)}
	for i := range replicas {
		c.replicas = append(c.replicas, &replica{name: fmt.Sprintf("apiserver-%d", i+1)})
	}
	// Registered before the replicas start, so it runs after any cleanup a
	// test registers for its clients, and before etcd's own.
	t.Cleanup(c.shutdown)
	for i := range replicas {
		c.StartReplica(i)
	}
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

// StartReplica starts replica i, on the address it had before if it ran,
// and returns once it reports SERVING and is registered. It does nothing if
// the replica runs.
func (c *Cluster) StartReplica(i int) {
	c.t.Helper()
	c.mu.Lock()
	r := c.replicas[i]
	running, addr := r.server != nil, r.addr
	c.mu.Unlock()
	if running {
		return
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	// A just-closed port can take a moment to be free again.
	err := poll.Until(c.t.Context(), startTimeout, "listening on "+addr, func(context.Context) error {
		var err error
		lis, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		c.t.Fatalf("apiservertest: %s: %v", r.name, err)
	}
	opts := app.DefaultOptions()
	opts.Name = r.name
	opts.Listener = lis
	opts.EtcdEndpoints = c.etcd.ClientURLs()
	opts.BookmarkInterval = c.opts.BookmarkInterval
	opts.LogOutput = io.Discard
	srv, err := app.Start(c.t.Context(), opts)
	if err != nil {
		lis.Close()
		c.t.Fatalf("apiservertest: start %s: %v", r.name, err)
	}
	c.mu.Lock()
	r.addr, r.server = srv.Addr(), srv
	c.mu.Unlock()
	c.waitReady(r.name, r.addr)
}

// waitReady waits until the replica at addr reports SERVING, which needs
// its first quorum read of etcd, and lists itself in cluster status.
func (c *Cluster) waitReady(name, addr string) {
	c.t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		c.t.Fatalf("apiservertest: dial %s: %v", addr, err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	status := capstanv1.NewClusterServiceClient(conn)
	poll.For(c.t, startTimeout, name+" SERVING and registered", func(ctx context.Context) error {
		h, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		if h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("health %v", h.GetStatus())
		}
		st, err := status.GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{})
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(st.GetApiServers(), func(a *capstanv1.ApiServer) bool { return a.GetName() == name }) {
			return fmt.Errorf("not registered yet")
		}
		return nil
	})
}

// StopReplica stops replica i at once, as if its process died: open calls
// and streams fail with UNAVAILABLE, the address refuses connections, its
// health status is never changed and it stays registered in cluster status
// until its registration lease expires.
func (c *Cluster) StopReplica(i int) {
	c.mu.Lock()
	r := c.replicas[i]
	srv := r.server
	r.server = nil
	c.mu.Unlock()
	if srv != nil {
		srv.Kill()
	}
}

// shutdown stops every running replica as SIGTERM stops the binary, all at
// once; the test's cleanup calls it.
func (c *Cluster) shutdown() {
	c.mu.Lock()
	var running []*replica
	for _, r := range c.replicas {
		if r.server != nil {
			running = append(running, r)
		}
	}
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, r := range running {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
			defer cancel()
			if err := r.server.Shutdown(ctx); err != nil {
				c.t.Errorf("apiservertest: %s stopped on its own: %v", r.name, err)
			}
		})
	}
	wg.Wait()
	c.mu.Lock()
	for _, r := range running {
		r.server = nil
	}
	c.mu.Unlock()
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
