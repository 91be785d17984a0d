package e2e

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
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
)

const (
	replicaCount = 3
	// buildTimeout bounds building the binaries when $CAPSTAN_BIN_DIR
	// does not have them (a cold build of one takes ~40 s here).
	buildTimeout = 4 * time.Minute
	// readyTimeout bounds each wait for every replica to be SERVING.
	readyTimeout = 60 * time.Second
	// downGrace is how long Down lets a replica shut down cleanly before it
	// is killed.
	downGrace = 10 * time.Second
	// pollInterval paces every wait for a state.
	pollInterval = 50 * time.Millisecond
)

var configMapKind = resource.MustLookup("ConfigMap")

// testCluster is the shared cluster of real API servers.
type testCluster struct {
	lc *localcluster.Cluster
	// names are the API servers' process names, addrs their gRPC
	// addresses and etcdURLs their embedded members' client URLs, all in
	// the same order.
	names    []string
	addrs    []string
	etcdURLs []string
	// candidates are the processes of each lease-gated component, by its
	// lease name (controller-manager, scheduler); a process's identity is
	// its name. healthURLs are their /healthz URLs.
	candidates map[string][]string
	healthURLs map[string]string

	mu sync.Mutex
	// broken is why an earlier test left the cluster unusable; later tests
	// fail at once with it instead of timing out one by one.
	broken error
}

var (
	sharedOnce    sync.Once
	shared        *testCluster
	sharedErr     error
	sharedRootDir string
)

func TestMain(m *testing.M) {
	flag.Parse()
	// A test that runs into go test's -timeout panics the binary, and
	// TestMain's cleanup never runs; the replicas run in their own sessions
	// and would outlive it. Stop them a little before that happens.
	var watchdog *time.Timer
	if timeout := testTimeout(); timeout > time.Minute {
		watchdog = time.AfterFunc(timeout-30*time.Second, func() {
			fmt.Fprintln(os.Stderr, "e2e: the test timeout is near: stopping the cluster's processes")
			stopShared()
		})
	}
	code := m.Run()
	if watchdog != nil {
		watchdog.Stop()
	}
	if err := stopShared(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		code = 1
	}
	if sharedRootDir != "" {
		if code == 0 {
			os.RemoveAll(sharedRootDir)
		} else {
			fmt.Fprintf(os.Stderr, "e2e: the cluster's logs and data are kept in %s\n", sharedRootDir)
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

// stopShared stops every process of the shared cluster, by pid, and checks
// that none is left.
func stopShared() error {
	if shared == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*downGrace)
	defer cancel()
	err := shared.lc.Down(ctx, downGrace)
	// Pods outlive their node agents by design: stop them too, so a test
	// binary that ends early leaves nothing behind.
	if _, killErr := shared.lc.KillPods(); killErr != nil {
		err = errors.Join(err, killErr)
	}
	for _, st := range shared.lc.Status() {
		if st.Running {
			err = errors.Join(err, fmt.Errorf("%s (pid %d) still runs after Down", st.Name, st.Pid))
		}
	}
	if err != nil {
		return fmt.Errorf("stop the cluster: %w", err)
	}
	return nil
}

// sharedCluster returns the shared cluster, starting it on first use, and
// waits until every process is ready (every API replica SERVING). A test
// that disturbs the cluster calls restoreAfter.
func sharedCluster(t *testing.T) *testCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e: starts a real control plane of separate processes")
	}
	sharedOnce.Do(func() { shared, sharedErr = startCluster() })
	if sharedErr != nil {
		t.Fatalf("start the cluster: %v", sharedErr)
	}
	c := shared
	c.mu.Lock()
	broken := c.broken
	c.mu.Unlock()
	if broken != nil {
		t.Fatalf("an earlier test left the cluster unusable: %v", broken)
	}
	ctx, cancel := context.WithTimeout(t.Context(), readyTimeout)
	defer cancel()
	if err := c.lc.WaitReady(ctx); err != nil {
		t.Fatalf("the cluster is not ready: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			c.logTails(t)
		}
	})
	return c
}

func startCluster() (*testCluster, error) {
	root, err := os.MkdirTemp("", "capstan-e2e-")
	if err != nil {
		return nil, err
	}
	sharedRootDir = root
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	binDir, err := localcluster.FindOrBuildBinaries(ctx, filepath.Join(root, "bin"), localcluster.ControlPlaneBinaries...)
	if err != nil {
		return nil, err
	}
	runnerLog, err := os.Create(filepath.Join(root, "runner.log"))
	if err != nil {
		return nil, err
	}
	logger := slog.New(slog.NewTextHandler(runnerLog, nil))

	// FreePorts releases its ports before the replicas bind them, so another
	// program may take one in between: a failed start gets one more try on
	// fresh ports.
	var errs []error
	for attempt := 1; attempt <= 2; attempt++ {
		ports, err := localcluster.FreePorts(replicaCount)
		if err != nil {
			return nil, err
		}
		topo := localcluster.ControlPlane(binDir, filepath.Join(root, fmt.Sprintf("state-%d", attempt)), ports)
		lc, err := localcluster.New(localcluster.Config{Topology: topo, Logger: logger, ReadyTimeout: readyTimeout})
		if err != nil {
			return nil, err
		}
		c := &testCluster{lc: lc, candidates: map[string][]string{}, healthURLs: map[string]string{}}
		for _, p := range lc.Topology().Processes {
			switch binary := filepath.Base(p.Binary); {
			case binary == localcluster.APIServerBinary:
				c.etcdURLs = append(c.etcdURLs, fmt.Sprintf("http://127.0.0.1:%d", ports[len(c.names)].EtcdClient))
				c.names = append(c.names, p.Name)
			case slices.Contains(leaseGated, binary):
				// The lease of each lease-gated binary is named after it,
				// and its processes' identities are their names.
				c.candidates[binary] = append(c.candidates[binary], p.Name)
				c.healthURLs[p.Name] = p.HealthURL
			}
		}
		c.addrs = lc.Topology().APIAddresses()
		// shared is set before Up, so that TestMain stops whatever Up
		// started even if Up fails.
		shared = c
		upCtx, upCancel := context.WithTimeout(context.Background(), readyTimeout+10*time.Second)
		err = lc.Up(upCtx)
		upCancel()
		if err == nil {
			return c, nil
		}
		errs = append(errs, fmt.Errorf("attempt %d: %w", attempt, err))
		if err := stopShared(); err != nil {
			return nil, errors.Join(append(errs, err)...)
		}
	}
	return nil, errors.Join(errs...)
}

// restoreAfter makes the cluster whole again when t ends, however it ends:
// every frozen process is thawed and every dead one started again, and Up
// waits until all are ready. If that fails, later tests are told why.
func (c *testCluster) restoreAfter(t *testing.T) {
	t.Helper()
	t.Cleanup(func() {
		for _, name := range c.processNames() {
			if err := c.lc.Signal(name, syscall.SIGCONT); err != nil && !errors.Is(err, localcluster.ErrNotRunning) {
				t.Errorf("thaw %s: %v", name, err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), readyTimeout+10*time.Second)
		defer cancel()
		if err := c.lc.Up(ctx); err != nil {
			t.Errorf("restore the cluster: %v", err)
			c.mu.Lock()
			c.broken = fmt.Errorf("%s could not restore it: %w", t.Name(), err)
			c.mu.Unlock()
		}
	})
}

// processNames are the names of every process of the cluster, API
// servers first.
func (c *testCluster) processNames() []string {
	var names []string
	for _, p := range c.lc.Topology().Processes {
		names = append(names, p.Name)
	}
	return names
}

// logTails logs the end of every process's log, for a failed test.
func (c *testCluster) logTails(t *testing.T) {
	const lines = 25
	for _, name := range c.processNames() {
		data, err := os.ReadFile(c.lc.Topology().LogPath(name))
		if err != nil {
			t.Logf("log of %s: %v", name, err)
			continue
		}
		all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		t.Logf("last %d lines of %s's log:\n%s", lines, name, strings.Join(all[max(0, len(all)-lines):], "\n"))
	}
}

// kill SIGKILLs the named replica and waits until it is gone.
func (c *testCluster) kill(t *testing.T, name string) {
	t.Helper()
	if err := c.lc.Signal(name, syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL %s: %v", name, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := c.lc.WaitExited(ctx, name); err != nil {
		t.Fatalf("%s after SIGKILL: %v", name, err)
	}
}

// waitStopped waits until every thread of the named replica is stopped
// (state T in /proc), the effect of a SIGSTOP that kill(2) only queues.
func (c *testCluster) waitStopped(t *testing.T, name string) {
	t.Helper()
	pid, err := c.lc.Pid(name)
	if err != nil {
		t.Fatalf("pid of %s: %v", name, err)
	}
	waitFor(t, 10*time.Second, name+" to stop", func(context.Context) error {
		tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		if err != nil || len(tasks) == 0 {
			return fmt.Errorf("no threads of pid %d: %v", pid, err)
		}
		for _, task := range tasks {
			stat, err := os.ReadFile(task)
			if err != nil {
				return err
			}
			// The state follows the command name, which is in parentheses
			// and may itself contain spaces or parentheses.
			rest := string(stat[bytes.LastIndexByte(stat, ')')+1:])
			if fields := strings.Fields(rest); len(fields) == 0 || fields[0] != "T" {
				return fmt.Errorf("thread %s is not stopped: %q", task, strings.TrimSpace(rest)[:min(len(strings.TrimSpace(rest)), 20)])
			}
		}
		return nil
	})
}

// up starts every replica that is not running and waits until all serve.
func (c *testCluster) up(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), readyTimeout+10*time.Second)
	defer cancel()
	if err := c.lc.Up(ctx); err != nil {
		t.Fatalf("Up: %v", err)
	}
}

// etcdLeader is the index of the replica whose embedded member leads etcd,
// as the cluster status reports it.
func (c *testCluster) etcdLeader(t *testing.T, cl *client.Client) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	st, err := cl.Cluster().GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{})
	if err != nil {
		t.Fatalf("GetClusterStatus: %v", err)
	}
	for _, m := range st.GetEtcdMembers() {
		if !m.GetLeader() {
			continue
		}
		for i, u := range c.etcdURLs {
			for _, cu := range m.GetClientUrls() {
				if cu == u {
					return i
				}
			}
		}
	}
	t.Fatalf("no etcd member of this cluster is reported as leader: %v", st.GetEtcdMembers())
	return -1
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

// waitFor polls cond until it returns nil or timeout passes; then the test
// fails with what was waited for and cond's last error.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		err := cond(ctx)
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after %v waiting for %s: %v", timeout, what, err)
		case <-ticker.C:
		}
	}
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
