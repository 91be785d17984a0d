// Package etcdtest starts real in-process etcd clusters for tests: embedded
// members (go.etcd.io/etcd/server/v3/embed) on 127.0.0.1 with fast raft
// ticks, no fsync and a silent logger, their data under t.TempDir().
//
// Start registers the cluster's Close with t.Cleanup, so a test only starts
// it. Members can be stopped and restarted to take quorum away and give it
// back. A Cluster's methods are safe for concurrent use; Start and Client
// must be called from the test's goroutine (they may call t.Fatal).
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"
	"go.uber.org/zap"
)

// readyTimeout bounds how long a cluster may take to elect a leader; far
// above the ~0.1 s it takes, so a slow shared machine does not fail a test.
const readyTimeout = 60 * time.Second

// clusterSeq makes every cluster's token unique in the process, so members
// of two clusters can never join each other even if a port is reused.
var clusterSeq atomic.Int64

// Cluster is a running embedded etcd cluster.
type Cluster struct {
	token   string
	members []*Member
}

// Member is one embedded etcd member of a Cluster.
type Member struct {
	// Name is the member's raft name ("m0", "m1", ...).
	Name string
	// ClientURL and PeerURL are the member's loopback URLs; they stay the
	// same across Stop and Restart.
	ClientURL, PeerURL string

	dir            string
	initialCluster string
	token          string

	mu   sync.Mutex
	etcd *embed.Etcd // nil while stopped
}

// Start starts a cluster of the given number of members, waits until it has
// a leader and every member serves, and closes it when the test ends.
func Start(t testing.TB, members int) *Cluster {
	t.Helper()
	if members < 1 {
		t.Fatalf("etcdtest: a cluster needs at least one member, not %d", members)
	}
	// A port picked by FreePort can be taken by another process before etcd
	// binds it; starting again with fresh ports is the cure.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		c, err := start(t, members)
		if err == nil {
			t.Cleanup(c.Close)
			return c
		}
		lastErr = err
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	t.Fatalf("etcdtest: start %d-member cluster: %v", members, lastErr)
	return nil
}

func start(t testing.TB, n int) (*Cluster, error) {
	c := &Cluster{token: fmt.Sprintf("etcdtest-%d", clusterSeq.Add(1))}
	var peers []string
	for i := 0; i < n; i++ {
		m := &Member{
			Name:      fmt.Sprintf("m%d", i),
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", FreePort(t)),
			PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", FreePort(t)),
			dir:       filepath.Join(t.TempDir(), fmt.Sprintf("m%d", i)),
			token:     c.token,
		}
		c.members = append(c.members, m)
		peers = append(peers, m.Name+"="+m.PeerURL)
	}
	for _, m := range c.members {
		m.initialCluster = strings.Join(peers, ",")
		if err := m.start(); err != nil {
			c.Close()
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	for _, m := range c.members {
		if err := m.waitReady(ctx); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func (m *Member) config() (*embed.Config, error) {
	cfg := embed.NewConfig()
	cfg.Name = m.Name
	cfg.Dir = m.dir
	cfg.InitialClusterToken = m.token
	cfg.InitialCluster = m.initialCluster
	cfg.ClusterState = embed.ClusterStateFlagNew
	// Test-only speed: raft ticks 10x faster than the defaults and no fsync.
	cfg.TickMs = 10
	cfg.ElectionMs = 100
	cfg.UnsafeNoFsync = true
	cfg.EnableGRPCGateway = false
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.LogLevel = "error"
	for _, u := range []struct {
		raw  string
		dest *[]url.URL
	}{
		{m.ClientURL, &cfg.ListenClientUrls}, {m.ClientURL, &cfg.AdvertiseClientUrls},
		{m.PeerURL, &cfg.ListenPeerUrls}, {m.PeerURL, &cfg.AdvertisePeerUrls},
	} {
		parsed, err := url.Parse(u.raw)
		if err != nil {
			return nil, fmt.Errorf("member %s: parse %q: %w", m.Name, u.raw, err)
		}
		*u.dest = []url.URL{*parsed}
	}
	return cfg, nil
}

func (m *Member) start() error {
	cfg, err := m.config()
	if err != nil {
		return err
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("member %s: %w", m.Name, err)
	}
	m.mu.Lock()
	m.etcd = e
	m.mu.Unlock()
	return nil
}

func (m *Member) waitReady(ctx context.Context) error {
	e := m.Etcd()
	if e == nil {
		return fmt.Errorf("member %s is stopped", m.Name)
	}
	select {
	case <-e.Server.ReadyNotify():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("member %s failed: %w", m.Name, err)
	case <-ctx.Done():
		return fmt.Errorf("member %s not ready: %w", m.Name, ctx.Err())
	}
}

// Etcd returns the running embedded server, or nil while the member is
// stopped.
func (m *Member) Etcd() *embed.Etcd {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.etcd
}

// Stop closes the member (its data stays, for Restart). Stopping a stopped
// member does nothing. Closing the leader takes about a second: it hands
// leadership over first.
func (m *Member) Stop() {
	m.mu.Lock()
	e := m.etcd
	m.etcd = nil
	m.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// Restart starts a stopped member again from its data and waits until it
// serves, which needs a quorum of the cluster. ctx bounds the wait.
func (m *Member) Restart(ctx context.Context) error {
	if m.Etcd() != nil {
		return fmt.Errorf("member %s is running", m.Name)
	}
	if err := m.start(); err != nil {
		return err
	}
	return m.waitReady(ctx)
}

// Member returns member i (0-based).
func (c *Cluster) Member(i int) *Member { return c.members[i] }

// Size is the number of members, running or stopped.
func (c *Cluster) Size() int { return len(c.members) }

// Stop closes member i; see Member.Stop.
func (c *Cluster) Stop(i int) { c.members[i].Stop() }

// ClientURLs lists every member's client URL, stopped members included.
func (c *Cluster) ClientURLs() []string {
	urls := make([]string, len(c.members))
	for i, m := range c.members {
		urls[i] = m.ClientURL
	}
	return urls
}

// Close stops every member. Start registers it as a cleanup; calling it
// again does nothing.
//
// Followers stop first, all at once, then the leader: a leader that stops
// while others run first tries to hand its leadership over, and waits
// seconds if they are stopping too.
func (c *Cluster) Close() {
	var followers, leaders []*Member
	for _, m := range c.members {
		if e := m.Etcd(); e != nil && e.Server.Leader() == e.Server.MemberID() {
			leaders = append(leaders, m)
		} else {
			followers = append(followers, m)
		}
	}
	for _, group := range [][]*Member{followers, leaders} {
		var wg sync.WaitGroup
		for _, m := range group {
			wg.Go(m.Stop)
		}
		wg.Wait()
	}
}

// Client returns a client of every member, with a silent logger, closed when
// the test ends.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   c.ClientURLs(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcdtest: client of %v: %v", c.ClientURLs(), err)
	}
	t.Cleanup(func() {
		if err := client.Close(); err != nil {
			t.Logf("etcdtest: close client: %v", err)
		}
	})
	return client
}

// portsGiven remembers the ports FreePort handed out, so two callers in one
// process never get the same one even before either binds it.
var portsGiven = struct {
	sync.Mutex
	set map[int]bool
}{set: map[int]bool{}}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and
// has not been returned before in this process. Another process may still
// take it before the caller binds it.
func FreePort(t testing.TB) int {
	t.Helper()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("etcdtest: find a free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		if err := l.Close(); err != nil {
			t.Fatalf("etcdtest: release port %d: %v", port, err)
		}
		portsGiven.Lock()
		seen := portsGiven.set[port]
		portsGiven.set[port] = true
		portsGiven.Unlock()
		if !seen {
			return port
		}
	}
}

// IgnoredGoroutines are the goleak options a package that starts clusters
// of more than one member passes to goleak.VerifyTestMain. They match only
// the peer HTTP connections between members of the same process: a closing
// member's peer server (net/http over cmux) cannot abort the pending read of
// a finished raft stream request, so http.Server.Shutdown gives up after its
// one-second grace and leaves that connection, and the other member's pooled
// client end of it (net/http persistConn), open until the process exits.
// Between processes, as in production, exiting closes them.
func IgnoredGoroutines() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("net/http.(*connReader).abortPendingRead"),
		goleak.IgnoreAnyFunction("github.com/soheilhy/cmux.(*MuxConn).Read"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	}
}
