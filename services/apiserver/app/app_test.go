package app

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/etcdtest"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
)

func TestMain(m *testing.M) {
	// Multi-member etcd leaves in-process peer connections behind; see etcdtest.IgnoredGoroutines.
	goleak.VerifyTestMain(m, etcdtest.IgnoredGoroutines()...)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// testOptions are options for one replica embedding a one-member etcd on
// free loopback ports, with fast raft timings.
func testOptions(t *testing.T, name string) Options {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts := DefaultOptions()
	opts.Name = name
	opts.Listener = lis
	opts.EtcdDataDir = filepath.Join(t.TempDir(), name+".etcd")
	opts.EtcdListenPeer = fmt.Sprintf("http://127.0.0.1:%d", etcdtest.FreePort(t))
	opts.EtcdListenClient = fmt.Sprintf("http://127.0.0.1:%d", etcdtest.FreePort(t))
	opts.EtcdHeartbeatMs = 10
	opts.EtcdElectionMs = 100
	opts.EtcdUnsafeNoFsync = true
	opts.LogLevel = "debug"
	opts.LogOutput = testWriter{t}
	return opts
}

// runApp runs Run in a goroutine and returns a stop function that cancels
// it and returns Run's error.
func runApp(t *testing.T, opts Options) (addr string, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	result := make(chan error, 1)
	go func() { result <- Run(ctx, opts) }()
	stopped := false
	var err error
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case err = <-result:
			case <-time.After(60 * time.Second):
				t.Fatal("Run did not return within 60s of its context ending")
			}
		}
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return opts.Listener.Addr().String(), stop
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// waitTimeout bounds every wait for a replica's state; far above what it
// takes, so a slow shared machine does not fail a test.
const waitTimeout = 30 * time.Second

// healthIs holds once the server behind conn reports want.
func healthIs(conn *grpc.ClientConn, want healthpb.HealthCheckResponse_ServingStatus) poll.Condition {
	health := healthpb.NewHealthClient(conn)
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		if resp.GetStatus() != want {
			return fmt.Errorf("health %v", resp.GetStatus())
		}
		return nil
	}
}

func waitServing(t *testing.T, conn *grpc.ClientConn) {
	t.Helper()
	poll.For(t, waitTimeout, "health is SERVING", healthIs(conn, healthpb.HealthCheckResponse_SERVING))
}

// registeredNames holds once cluster status through conn lists exactly
// want (comma-separated, in order).
func registeredNames(conn *grpc.ClientConn, want string) poll.Condition {
	cluster := capstanv1.NewClusterServiceClient(conn)
	return func(ctx context.Context) error {
		st, err := cluster.GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{})
		if err != nil {
			return err
		}
		var names []string
		for _, a := range st.GetApiServers() {
			names = append(names, a.GetName())
		}
		if got := strings.Join(names, ","); got != want {
			return fmt.Errorf("registered: %q", got)
		}
		return nil
	}
}

func listServices(t *testing.T, conn *grpc.ClientConn) []string {
	t.Helper()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	return names
}

func TestRunEmbedded(t *testing.T) {
	opts := testOptions(t, "apiserver-1")
	addr, stop := runApp(t, opts)
	conn := dial(t, addr)
	waitServing(t, conn)

	services := listServices(t, conn)
	want := []string{"capstan.v1.ClusterService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"}
	for _, k := range resource.All() {
		want = append(want, string(k.Service().FullName()))
	}
	for _, w := range want {
		if !slices.Contains(services, w) {
			t.Errorf("reflection does not list %s; it lists %v", w, services)
		}
	}

	// The API works end to end.
	configMaps := capstanv1.NewConfigMapServiceClient(conn)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	created, err := configMaps.CreateConfigMap(ctx, &capstanv1.CreateConfigMapRequest{ConfigMap: &capstanv1.ConfigMap{
		Metadata: &capstanv1.ObjectMeta{Name: "settings"},
		Data:     map[string]string{"a": "1"},
	}})
	if err != nil {
		t.Fatalf("CreateConfigMap: %v", err)
	}
	got, err := configMaps.GetConfigMap(ctx, &capstanv1.GetConfigMapRequest{Name: "settings"})
	if err != nil {
		t.Fatalf("GetConfigMap: %v", err)
	}
	if got.GetConfigMap().GetMetadata().GetResourceVersion() != created.GetConfigMap().GetMetadata().GetResourceVersion() {
		t.Errorf("read back resource version %d, created %d", got.GetConfigMap().GetMetadata().GetResourceVersion(), created.GetConfigMap().GetMetadata().GetResourceVersion())
	}

	// Cluster status: this replica, registered, on its one healthy member.
	cluster := capstanv1.NewClusterServiceClient(conn)
	var status *capstanv1.GetClusterStatusResponse
	poll.For(t, waitTimeout, "the replica is registered", func(ctx context.Context) error {
		status, err = cluster.GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{})
		if err == nil && len(status.GetApiServers()) != 1 {
			err = fmt.Errorf("%d replicas registered", len(status.GetApiServers()))
		}
		return err
	})
	self := status.GetSelf()
	if self.GetName() != "apiserver-1" || self.GetAddress() != addr || self.GetEtcdMember() != "apiserver-1" || self.GetStartTime() == nil {
		t.Errorf("self = %v", self)
	}
	if !status.GetQuorum() || len(status.GetEtcdMembers()) != 1 || !status.GetEtcdMembers()[0].GetLeader() || !status.GetEtcdMembers()[0].GetHealthy() {
		t.Errorf("quorum %v, members %v", status.GetQuorum(), status.GetEtcdMembers())
	}

	// Probe mode is Run too.
	probe := func() error {
		return Run(t.Context(), Options{HealthProbe: addr})
	}
	if err := probe(); err != nil {
		t.Errorf("probe of a SERVING replica: %v", err)
	}

	if err := stop(); err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
	if err := probe(); err == nil {
		t.Error("probe of a stopped replica succeeded")
	}
}

func TestRunThreeStackedReplicas(t *testing.T) {
	names := []string{"apiserver-1", "apiserver-2", "apiserver-3"}
	opts := make([]Options, len(names))
	var initial []string
	for i, name := range names {
		opts[i] = testOptions(t, name)
		opts[i].EtcdName = fmt.Sprintf("master-%d", i+1)
		initial = append(initial, opts[i].EtcdName+"="+opts[i].EtcdListenPeer)
	}
	var conns []*grpc.ClientConn
	var stops []func() error
	for i := range opts {
		opts[i].EtcdInitialCluster = strings.Join(initial, ",")
		addr, stop := runApp(t, opts[i])
		conns = append(conns, dial(t, addr))
		stops = append(stops, stop)
		if i == 0 {
			// Alone, the first replica answers, NOT_SERVING.
			health := healthpb.NewHealthClient(conns[0])
			poll.For(t, waitTimeout, "the first replica answers health checks", func(ctx context.Context) error {
				ctx, cancel := context.WithTimeout(ctx, time.Second)
				defer cancel()
				resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
				if err == nil && resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
					t.Fatalf("first replica of three, alone: %v", resp.GetStatus())
				}
				return err
			})
		}
	}
	for _, conn := range conns {
		waitServing(t, conn)
	}
	cluster := capstanv1.NewClusterServiceClient(conns[1])
	poll.For(t, waitTimeout, "every replica is registered", func(ctx context.Context) error {
		status, err := cluster.GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{})
		if err == nil && !(len(status.GetApiServers()) == 3 && len(status.GetEtcdMembers()) == 3 && status.GetQuorum()) {
			err = fmt.Errorf("%d replicas, %d etcd members, quorum %v", len(status.GetApiServers()), len(status.GetEtcdMembers()), status.GetQuorum())
		}
		return err
	})

	// A write through one replica is read through another.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := capstanv1.NewConfigMapServiceClient(conns[0]).CreateConfigMap(ctx, &capstanv1.CreateConfigMapRequest{ConfigMap: &capstanv1.ConfigMap{
		Metadata: &capstanv1.ObjectMeta{Name: "shared"},
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := capstanv1.NewConfigMapServiceClient(conns[2]).GetConfigMap(ctx, &capstanv1.GetConfigMapRequest{Name: "shared"}); err != nil {
		t.Fatalf("read through another replica: %v", err)
	}

	errs := make(chan error, len(stops))
	for _, stop := range stops {
		go func() { errs <- stop() }()
	}
	for range stops {
		if err := <-errs; err != nil {
			t.Errorf("Run after cancel: %v", err)
		}
	}
}

func TestRunExternalEtcd(t *testing.T) {
	cluster := etcdtest.Start(t, 3)
	opts := testOptions(t, "apiserver-ext")
	opts.EtcdEndpoints = cluster.ClientURLs()[:1] // the others are found by Sync
	addr, stop := runApp(t, opts)
	conn := dial(t, addr)
	waitServing(t, conn)

	status, err := capstanv1.NewClusterServiceClient(conn).GetClusterStatus(t.Context(), &capstanv1.GetClusterStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if status.GetSelf().GetEtcdMember() != "" {
		t.Errorf("external etcd, yet self names member %q", status.GetSelf().GetEtcdMember())
	}
	if len(status.GetEtcdMembers()) != 3 {
		t.Errorf("%d etcd members, want 3", len(status.GetEtcdMembers()))
	}
	if err := stop(); err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
}

// startServer starts a server with Start and shuts it down when the test
// ends (a no-op if the test stopped it; the tests check Shutdown's result
// where it matters).
func startServer(t *testing.T, opts Options) *Server {
	t.Helper()
	s, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	return s
}

// TestKillAndShutdown: Kill stops a server as a dead process stops — its
// address refuses, it stays registered — while Shutdown deregisters it; both
// leave Done closed and Err nil.
func TestKillAndShutdown(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	var servers []*Server
	var conns []*grpc.ClientConn
	for _, name := range []string{"a", "b", "c"} {
		opts := testOptions(t, name)
		opts.EtcdEndpoints = cluster.ClientURLs()
		s := startServer(t, opts)
		if s.Addr() != opts.Listener.Addr().String() {
			t.Fatalf("Addr() = %s, want the listener's %s", s.Addr(), opts.Listener.Addr())
		}
		servers = append(servers, s)
		conns = append(conns, dial(t, s.Addr()))
	}
	for _, conn := range conns {
		waitServing(t, conn)
	}
	poll.For(t, waitTimeout, "every server is registered", registeredNames(conns[0], "a,b,c"))

	servers[1].Kill()
	select {
	case <-servers[1].Done():
	default:
		t.Fatal("Done is open after Kill returned")
	}
	if err := servers[1].Err(); err != nil {
		t.Errorf("Err after Kill = %v, want nil", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(conns[1]).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false)); status.Code(err) != codes.Unavailable {
		t.Errorf("health check of a killed server = %v, want UNAVAILABLE", err)
	}
	if err := registeredNames(conns[0], "a,b,c")(t.Context()); err != nil {
		t.Errorf("a killed server deregistered: %v", err)
	}
	servers[1].Kill() // a second stop returns at once
	if err := servers[1].Shutdown(t.Context()); err != nil {
		t.Errorf("Shutdown after Kill = %v, want nil", err)
	}

	if err := servers[2].Shutdown(t.Context()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := registeredNames(conns[0], "a,b")(t.Context()); err != nil {
		t.Errorf("after c's shutdown: %v", err)
	}
}

// TestStopsOnItsOwn: a server whose gRPC server fails shuts itself down and
// says why.
func TestStopsOnItsOwn(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	opts := testOptions(t, "a")
	opts.EtcdEndpoints = cluster.ClientURLs()
	s := startServer(t, opts)
	waitServing(t, dial(t, s.Addr()))
	opts.Listener.Close() // Serve fails on its next accept
	select {
	case <-s.Done():
	case <-time.After(waitTimeout):
		t.Fatalf("the server did not stop within %v of losing its listener", waitTimeout)
	}
	if err := s.Err(); err == nil || !strings.Contains(err.Error(), "gRPC server stopped") {
		t.Fatalf("Err = %v, want the gRPC server's failure", err)
	}
	if err := s.Shutdown(t.Context()); err != s.Err() {
		t.Fatalf("Shutdown after a failure = %v, want Err %v", err, s.Err())
	}
}

func TestStartRejectsProbeMode(t *testing.T) {
	opts := DefaultOptions()
	opts.HealthProbe = "127.0.0.1:6441"
	if _, err := Start(t.Context(), opts); err == nil || err.Error() != "apiserver: --health-probe 127.0.0.1:6441: a probe is not a server; use Run" {
		t.Fatalf("Start in probe mode: %v", err)
	}
}

func TestRunRejectsInvalidOptions(t *testing.T) {
	opts := DefaultOptions()
	opts.LogFormat = "xml"
	err := Run(t.Context(), opts)
	if err == nil || err.Error() != `apiserver: --log-format must be text or json, not "xml"` {
		t.Fatalf("Run with a bad option: %v", err)
	}
}

func TestParseFlags(t *testing.T) {
	opts, err := ParseFlags([]string{
		"--name=apiserver-2",
		"--listen=0.0.0.0:6442",
		"--etcd-name=master-2",
		"--etcd-listen-peer=http://0.0.0.0:2380",
		"--etcd-listen-client=http://0.0.0.0:2379",
		"--etcd-advertise-peer=http://master-2:2380",
		"--etcd-advertise-client=http://master-2:2379",
		"--etcd-initial-cluster=master-1=http://master-1:2380,master-2=http://master-2:2380",
		"--etcd-initial-cluster-state=existing",
		"--etcd-heartbeat-ms=50",
		"--etcd-election-ms=500",
		"--etcd-auto-compaction-retention=1h",
		"--request-timeout=3s",
		"--max-request-bytes=2048",
		"--bookmark-interval=0s",
		"--log-level=warn",
		"--log-format=json",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := opts.Validate(); err != nil {
		t.Fatal(err)
	}
	opts = opts.Complete()
	checks := []struct {
		name      string
		got, want any
	}{
		{"Name", opts.Name, "apiserver-2"},
		{"Listen", opts.Listen, "0.0.0.0:6442"},
		{"EtcdName", opts.EtcdName, "master-2"},
		{"EtcdDataDir", opts.EtcdDataDir, "./master-2.etcd"},
		{"EtcdAdvertisePeer", opts.EtcdAdvertisePeer, "http://master-2:2380"},
		{"EtcdInitialClusterState", opts.EtcdInitialClusterState, "existing"},
		{"EtcdHeartbeatMs", opts.EtcdHeartbeatMs, 50},
		{"EtcdElectionMs", opts.EtcdElectionMs, 500},
		{"EtcdAutoCompactionRetention", opts.EtcdAutoCompactionRetention, "1h"},
		{"RequestTimeout", opts.RequestTimeout, 3 * time.Second},
		{"MaxRequestBytes", opts.MaxRequestBytes, 2048},
		{"BookmarkInterval", opts.BookmarkInterval, time.Duration(0)},
		{"LogLevel", opts.LogLevel, "warn"},
		{"LogFormat", opts.LogFormat, "json"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	// A wildcard listen address is advertised under the hostname.
	if host, port, _ := net.SplitHostPort(opts.AdvertiseAddress); host == "0.0.0.0" || port != "6442" {
		t.Errorf("AdvertiseAddress = %q", opts.AdvertiseAddress)
	}

	ext, err := ParseFlags([]string{"--name=a", "--etcd-endpoints=http://e1:2379, http://e2:2379"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"http://e1:2379", "http://e2:2379"}; !slices.Equal(ext.EtcdEndpoints, want) {
		t.Errorf("EtcdEndpoints = %q, want %q", ext.EtcdEndpoints, want)
	}
}

func TestParseFlagsErrors(t *testing.T) {
	// ParseFlags prints these errors and the usage to stderr, as flag does.
	for _, args := range [][]string{{"--no-such-flag"}, {"extra"}, {"--etcd-heartbeat-ms=x"}} {
		if _, err := ParseFlags(args); err == nil {
			t.Errorf("ParseFlags(%q) succeeded", args)
		}
	}
	if _, err := ParseFlags([]string{"-h"}); err != flag.ErrHelp {
		t.Errorf("ParseFlags(-h) = %v, want flag.ErrHelp", err)
	}
}

func TestValidate(t *testing.T) {
	base := func() Options {
		o := DefaultOptions()
		o.Name = "a"
		o.LogOutput = io.Discard
		return o
	}
	tests := []struct {
		name   string
		change func(*Options)
		want   string
	}{
		{"defaults", func(*Options) {}, ""},
		{"external etcd", func(o *Options) { o.EtcdEndpoints = []string{"http://10.0.0.1:2379"}; o.EtcdListenPeer = "" }, ""},
		{"probe mode ignores the rest", func(o *Options) { o.HealthProbe = "127.0.0.1:6441"; o.Name = "" }, ""},
		{"bad probe address", func(o *Options) { o.HealthProbe = "6441" }, `--health-probe "6441": must be host:port`},
		{"no name", func(o *Options) { o.Name = "" }, "--name must not be empty (and the hostname is unknown)"},
		{"slash in name", func(o *Options) { o.Name = "a/b" }, `--name "a/b": must not contain '/'`},
		{"bad listen", func(o *Options) { o.Listen = "6441" }, `--listen "6441": must be host:port`},
		{"bad advertise", func(o *Options) { o.AdvertiseAddress = "host" }, `--advertise-address "host": must be host:port`},
		{"bad endpoint", func(o *Options) { o.EtcdEndpoints = []string{"10.0.0.1:2379"} }, `--etcd-endpoints: "10.0.0.1:2379" must be http://host:port or https://host:port`},
		{"bad peer URL", func(o *Options) { o.EtcdListenPeer = "127.0.0.1:2380" }, `--etcd-listen-peer "127.0.0.1:2380": must be http://host:port or https://host:port`},
		{"bad client URL", func(o *Options) { o.EtcdAdvertiseClient = "http://x" }, `--etcd-advertise-client "http://x": must be http://host:port or https://host:port`},
		{"not in the initial cluster", func(o *Options) { o.EtcdInitialCluster = "b=http://127.0.0.1:2380" }, `--etcd-initial-cluster "b=http://127.0.0.1:2380" has no member named "a" (--etcd-name)`},
		{"other peer URL", func(o *Options) { o.EtcdInitialCluster = "a=http://127.0.0.2:2380" }, "--etcd-initial-cluster gives a the peer URLs [http://127.0.0.2:2380], not --etcd-advertise-peer http://127.0.0.1:2380"},
		{"bad state", func(o *Options) { o.EtcdInitialClusterState = "old" }, `--etcd-initial-cluster-state must be new or existing, not "old"`},
		{"zero heartbeat", func(o *Options) { o.EtcdHeartbeatMs = 0 }, "--etcd-heartbeat-ms must be positive, not 0"},
		{"short election", func(o *Options) { o.EtcdElectionMs = 400 }, "--etcd-election-ms must be between 5 × --etcd-heartbeat-ms (500) and 50000, not 400"},
		{"bad retention", func(o *Options) { o.EtcdAutoCompactionRetention = "5" }, `--etcd-auto-compaction-retention must be a positive duration such as 5m, not "5"`},
		{"zero timeout", func(o *Options) { o.RequestTimeout = 0 }, "--request-timeout must be positive, not 0s"},
		{"huge requests", func(o *Options) { o.MaxRequestBytes = 2 << 20 }, "--max-request-bytes must be between 1 and 1572864 (etcd's request limit), not 2097152"},
		{"negative bookmarks", func(o *Options) { o.BookmarkInterval = -time.Second }, "--bookmark-interval must not be negative, not -1s"},
		{"bad level", func(o *Options) { o.LogLevel = "trace" }, `--log-level must be debug, info, warn or error, not "trace"`},
		{"bad format", func(o *Options) { o.LogFormat = "xml" }, `--log-format must be text or json, not "xml"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := base()
			tt.change(&o)
			got := ""
			if err := o.Validate(); err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("Validate() = %q, want %q", got, tt.want)
			}
		})
	}
}
