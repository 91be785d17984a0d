package e2e

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/localcluster"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/testcluster"
)

const (
	// masters and workers are the shared cluster's: three masters, so
	// that one can die with quorum intact, and three real node agents.
	masters = 3
	workers = 3
	// startTimeout bounds starting the shared cluster, building the
	// binaries included when $CAPSTAN_BIN_DIR does not have them.
	startTimeout = 10 * time.Minute
	// buildTimeout bounds building a binary the cluster does not run (the
	// echo workload, capctl) when $CAPSTAN_BIN_DIR does not have it.
	buildTimeout = 4 * time.Minute
	// readyTimeout bounds each wait for every process to be ready.
	readyTimeout = 60 * time.Second
	// signalTimeout bounds a test's own wait for a signalled process.
	signalTimeout = testcluster.SignalTimeout
)

var configMapKind = resource.MustLookup("ConfigMap")

// cluster is the shared cluster as a test sees it: testcluster's, with
// failures reported on the test.
type cluster struct {
	*testcluster.Cluster
	// names are the API servers' process names, addrs their gRPC
	// addresses and etcdURLs their embedded members' client URLs, all in
	// the same order.
	names    []string
	addrs    []string
	etcdURLs []string
}

// shared is the cluster every test uses, started on first use and
// stopped by TestMain.
var shared struct {
	once sync.Once
	err  error

	mu sync.Mutex // guards c (the watchdog reads it) and broken
	c  *cluster
	// broken is why an earlier test left the cluster unusable; later tests
	// fail at once with it instead of timing out one by one.
	broken error
}

func TestMain(m *testing.M) {
	flag.Parse()
	// A test that runs into go test's -timeout panics the binary, and
	// TestMain's cleanup never runs; the processes run in their own
	// sessions and would outlive it. Stop them a little before that.
	var watchdog *time.Timer
	if timeout := testTimeout(); timeout > time.Minute {
		watchdog = time.AfterFunc(timeout-30*time.Second, func() {
			fmt.Fprintln(os.Stderr, "e2e: the test timeout is near: stopping the cluster's processes")
			if c := sharedOrNil(); c != nil {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				if err := c.Down(ctx); err != nil {
					fmt.Fprintln(os.Stderr, "e2e:", err)
				}
			}
		})
	}
	code := m.Run()
	if watchdog != nil {
		watchdog.Stop()
	}
	if c := sharedOrNil(); c != nil {
		// Every process by its pid, and the pods' processes; the logs and
		// data stay when a test failed.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := c.Close(ctx, code != 0)
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			code = 1
		} else if code != 0 {
			fmt.Fprintf(os.Stderr, "e2e: the cluster's logs and data are kept in %s\n", c.Dir())
		}
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: goroutines leaked:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func testTimeout() time.Duration {
	f := flag.Lookup("test.timeout")
	if f == nil {
		return 0
	}
	if g, ok := f.Value.(flag.Getter); ok {
		if d, ok := g.Get().(time.Duration); ok {
			return d
		}
	}
	return 0
}

func sharedOrNil() *cluster {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	return shared.c
}

// sharedCluster returns the shared cluster, starting it on first use, and
// waits until every process is ready. A test that disturbs the cluster
// calls restoreAfter.
func sharedCluster(t *testing.T) *cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e: starts a real control plane of separate processes")
	}
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		tc, err := testcluster.Start(ctx, testcluster.Config{
			Name:    "e2e",
			Masters: masters,
			Workers: workers,
			// The node agent's tests run their pods on the real workers
			// only, by this label; the other tests' pods select hollow
			// nodes of their own.
			Args:         map[string][]string{localcluster.NodeAgentBinary: {"--labels=" + agentWorkerLabel + "=true"}},
			ReadyTimeout: readyTimeout,
		})
		if err != nil {
			shared.err = err
			return
		}
		shared.mu.Lock()
		shared.c = &cluster{Cluster: tc, names: tc.APIServers(), addrs: tc.APIAddresses(), etcdURLs: tc.EtcdURLs()}
		shared.mu.Unlock()
	})
	if shared.err != nil {
		t.Fatalf("start the cluster: %v", shared.err)
	}
	shared.mu.Lock()
	c, broken := shared.c, shared.broken
	shared.mu.Unlock()
	if broken != nil {
		t.Fatalf("an earlier test left the cluster unusable: %v", broken)
	}
	if err := c.WaitReady(t.Context()); err != nil {
		t.Fatalf("the cluster is not ready: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the end of every process's log:\n%s", c.LogTails(25))
		}
	})
	return c
}

// restoreAfter makes the cluster whole again when t ends, however it ends:
// every frozen process is thawed, every dead one started again, and it
// waits until all are ready. If that fails, later tests are told why.
func (c *cluster) restoreAfter(t *testing.T) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), readyTimeout+10*time.Second)
		defer cancel()
		if err := c.Restore(ctx); err != nil {
			t.Errorf("restore the cluster: %v", err)
			shared.mu.Lock()
			shared.broken = fmt.Errorf("%s could not restore it: %w", t.Name(), err)
			shared.mu.Unlock()
		}
	})
}

// restore thaws every process, starts every dead one again and waits until
// all are ready.
func (c *cluster) restore(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), readyTimeout+10*time.Second)
	defer cancel()
	if err := c.Restore(ctx); err != nil {
		t.Fatalf("restore: %v", err)
	}
}

// kill SIGKILLs the named processes at once and waits until they are gone.
func (c *cluster) kill(t *testing.T, names ...string) {
	t.Helper()
	if err := c.Kill(t.Context(), names...); err != nil {
		t.Fatal(err)
	}
}

// pause SIGSTOPs the named processes at once and waits until every thread
// of each is stopped.
func (c *cluster) pause(t *testing.T, names ...string) {
	t.Helper()
	if err := c.Pause(t.Context(), names...); err != nil {
		t.Fatal(err)
	}
}

// resume SIGCONTs the named processes.
func (c *cluster) resume(t *testing.T, names ...string) {
	t.Helper()
	if err := c.Resume(names...); err != nil {
		t.Fatal(err)
	}
}

// etcdLeader is the index of the replica whose embedded member leads etcd.
func (c *cluster) etcdLeader(t *testing.T) int {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	i, err := c.EtcdLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

// newClient dials a Capstan client to the given replicas; it is closed
// when the test ends.
func newClient(t *testing.T, cfg client.Config) *client.Client {
	t.Helper()
	if cfg.UserAgent == "" {
		cfg.UserAgent = "e2e"
	}
	cl, err := client.New(cfg)
	if err != nil {
		t.Fatalf("client.New(%v): %v", cfg.Endpoints, err)
	}
	t.Cleanup(func() {
		if err := cl.Close(); err != nil {
			t.Errorf("close the client: %v", err)
		}
	})
	return cl
}

// clientOf is a Capstan client of the given replicas with default settings.
func clientOf(t *testing.T, endpoints ...string) *client.Client {
	t.Helper()
	return newClient(t, client.Config{Endpoints: endpoints})
}

// rawConn is a plain gRPC connection to one replica: no health-checked
// balancing, no waiting for readiness and no retries, so a test sees
// exactly what that server answers.
func rawConn(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// healthOf asks one replica for its overall grpc.health.v1 status.
func healthOf(ctx context.Context, conn *grpc.ClientConn) (healthpb.HealthCheckResponse_ServingStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN, err
	}
	return resp.GetStatus(), nil
}

// etcdClient is a plain etcd client of the given member URLs, closed when
// the test ends.
func etcdClient(t *testing.T, urls ...string) *clientv3.Client {
	t.Helper()
	cl, err := clientv3.New(clientv3.Config{
		Endpoints:   urls,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcd client of %v: %v", urls, err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// configMap builds a ConfigMap to create.
func configMap(namespace, name string, data map[string]string) *capstanv1.ConfigMap {
	return &capstanv1.ConfigMap{
		Metadata: &capstanv1.ObjectMeta{Namespace: namespace, Name: name},
		Data:     data,
	}
}

// callCtx bounds one call made by the test itself.
func callCtx(t *testing.T) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), 15*time.Second)
}

// logCounter is a slog handler that counts the messages logged, so a test
// can tell that a client did something it only logs (a watch resumed).
type logCounter struct {
	mu     *sync.Mutex
	counts map[string]int
	buf    *bytes.Buffer
}

func newLogCounter() *logCounter {
	return &logCounter{mu: &sync.Mutex{}, counts: map[string]int{}, buf: &bytes.Buffer{}}
}

func (h *logCounter) Enabled(context.Context, slog.Level) bool { return true }

func (h *logCounter) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.counts[r.Message]++
	fmt.Fprintf(h.buf, "%s %s", r.Level, r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(h.buf, " %s=%v", a.Key, a.Value)
		return true
	})
	h.buf.WriteByte('\n')
	return nil
}

func (h *logCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logCounter) WithGroup(string) slog.Handler      { return h }

// count is how many messages containing substr were logged.
func (h *logCounter) count(substr string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for msg, c := range h.counts {
		if strings.Contains(msg, substr) {
			n += c
		}
	}
	return n
}

func (h *logCounter) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.buf.String()
}
