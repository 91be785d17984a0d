package etcdmember

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/capstan-dev/capstan/internal/etcdtest"
)

func TestMain(m *testing.M) {
	// Multi-member etcd leaves in-process peer connections behind; see etcdtest.IgnoredGoroutines.
	goleak.VerifyTestMain(m, etcdtest.IgnoredGoroutines()...)
}

// freeURL returns an http URL on a loopback port that was free a moment ago.
func freeURL(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return "http://" + lis.Addr().String()
}

// testConfigs returns configs for an n-member cluster with fast raft timings.
func testConfigs(t *testing.T, n int) []Config {
	t.Helper()
	cfgs := make([]Config, n)
	var initial []string
	for i := range cfgs {
		cfgs[i] = Config{
			Name:            fmt.Sprintf("m%d", i+1),
			DataDir:         filepath.Join(t.TempDir(), fmt.Sprintf("m%d.etcd", i+1)),
			ListenPeerURL:   freeURL(t),
			ListenClientURL: freeURL(t),
			HeartbeatMs:     10,
			ElectionMs:      100,
			UnsafeNoFsync:   true,
			Logger:          slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		}
		initial = append(initial, cfgs[i].Name+"="+cfgs[i].ListenPeerURL)
	}
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(initial, ",")
	}
	return cfgs
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func waitReady(t *testing.T, m *Member) {
	t.Helper()
	select {
	case <-m.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatalf("member %s not ready after 30s", m.Name())
	}
}

func closeMember(t *testing.T, m *Member) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Close(ctx); err != nil {
		t.Errorf("Close %s: %v", m.Name(), err)
	}
	select {
	case <-m.Done():
	default:
		t.Errorf("Done of %s not closed after Close", m.Name())
	}
	if err := m.Err(); err != nil {
		t.Errorf("Err of %s after Close: %v", m.Name(), err)
	}
}

func newClient(t *testing.T, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: endpoints,
		Logger:    NewZapLogger(slog.New(slog.DiscardHandler), zapcore.ErrorLevel),
	})
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

func TestSingleMember(t *testing.T) {
	cfg := testConfigs(t, 1)[0]
	cfg.InitialCluster = "" // the default: a cluster of one
	m, err := Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, m)
	if m.ID() == 0 {
		t.Error("ID is 0")
	}
	if m.ClientURL() != cfg.ListenClientURL || m.PeerURL() != cfg.ListenPeerURL {
		t.Errorf("advertised URLs %s, %s; want the listen URLs %s, %s", m.ClientURL(), m.PeerURL(), cfg.ListenClientURL, cfg.ListenPeerURL)
	}

	cli := newClient(t, m.ClientURL())
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "/k")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("Get /k: %v", resp.Kvs)
	}
	cli.Close()
	closeMember(t, m)
	// A second Close is harmless.
	if err := m.Close(t.Context()); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	// The data survives a restart from the same directory.
	m, err = Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer closeMember(t, m)
	waitReady(t, m)
	cli = newClient(t, m.ClientURL())
	defer cli.Close()
	resp, err = cli.Get(ctx, "/k")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("Get /k after restart: %v", resp.Kvs)
	}
}

func TestThreeMembersStartOneByOne(t *testing.T) {
	cfgs := testConfigs(t, 3)
	var members []*Member
	defer func() {
		// Close concurrently: a member waiting for its peers would
		// otherwise slow the others' shutdown.
		var wg sync.WaitGroup
		for _, m := range members {
			wg.Go(func() { closeMember(t, m) })
		}
		wg.Wait()
	}()
	for i, cfg := range cfgs {
		// Start returns although no quorum is up yet for the first member.
		m, err := Start(t.Context(), cfg)
		if err != nil {
			t.Fatalf("start member %d: %v", i+1, err)
		}
		members = append(members, m)
		if i == 0 {
			select {
			case <-m.ReadyNotify():
				t.Fatal("first member of three ready without a quorum")
			default:
			}
		}
	}
	for _, m := range members {
		waitReady(t, m)
	}

	var endpoints []string
	for _, m := range members {
		endpoints = append(endpoints, m.ClientURL())
	}
	cli := newClient(t, endpoints...)
	defer cli.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	list, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Members) != 3 {
		t.Fatalf("MemberList has %d members, want 3", len(list.Members))
	}
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	// Every member gets the write; a follower may apply it a moment later.
	for _, m := range members {
		one := newClient(t, m.ClientURL())
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := one.Get(ctx, "/k", clientv3.WithSerializable())
			if err != nil {
				t.Fatalf("Get from %s: %v", m.Name(), err)
			}
			if len(resp.Kvs) == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("member %s never got the write", m.Name())
			}
			time.Sleep(10 * time.Millisecond)
		}
		one.Close()
	}
}

func TestConfigValidate(t *testing.T) {
	valid := Config{
		Name:            "a",
		DataDir:         "/tmp/a.etcd",
		ListenPeerURL:   "http://127.0.0.1:2380",
		ListenClientURL: "http://127.0.0.1:2379",
	}
	tests := []struct {
		name   string
		change func(*Config)
		want   string // "" for valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"three members", func(c *Config) {
			c.InitialCluster = "a=http://127.0.0.1:2380,b=http://127.0.0.2:2380,c=http://127.0.0.3:2380"
		}, ""},
		{"listen on all interfaces", func(c *Config) {
			c.ListenPeerURL = "http://0.0.0.0:2380"
			c.AdvertisePeerURL = "http://master-1:2380"
			c.ListenClientURL = "http://0.0.0.0:2379"
			c.AdvertiseClientURL = "http://master-1:2379"
		}, ""},
		{"no name", func(c *Config) { c.Name = "" }, "etcdmember: Name is empty"},
		{"no data dir", func(c *Config) { c.DataDir = "" }, "etcdmember: DataDir is empty"},
		{"no client URL", func(c *Config) { c.ListenClientURL = "" }, `etcdmember: ListenClientURL "": is empty`},
		{"peer URL without port", func(c *Config) { c.ListenPeerURL = "http://127.0.0.1" }, `etcdmember: ListenPeerURL "http://127.0.0.1": must be http://host:port or https://host:port`},
		{"peer URL with a bad scheme", func(c *Config) { c.ListenPeerURL = "tcp://127.0.0.1:2380" }, `etcdmember: ListenPeerURL "tcp://127.0.0.1:2380": must be http://host:port or https://host:port`},
		{"advertise unspecified", func(c *Config) { c.ListenClientURL = "http://0.0.0.0:2379" }, `etcdmember: AdvertiseClientURL "http://0.0.0.0:2379": an advertised URL must name a reachable host, not the unspecified address`},
		{"not in the initial cluster", func(c *Config) { c.InitialCluster = "b=http://127.0.0.1:2380" }, `etcdmember: InitialCluster "b=http://127.0.0.1:2380" has no member named "a"`},
		{"other peer URL in the initial cluster", func(c *Config) { c.InitialCluster = "a=http://127.0.0.9:2380" }, "etcdmember: InitialCluster gives a the peer URLs [http://127.0.0.9:2380], not AdvertisePeerURL http://127.0.0.1:2380"},
		{"bad state", func(c *Config) { c.InitialClusterState = "old" }, `etcdmember: InitialClusterState must be "new" or "existing", not "old"`},
		{"negative heartbeat", func(c *Config) { c.HeartbeatMs = -1 }, "etcdmember: HeartbeatMs must be positive, not -1"},
		{"election too short", func(c *Config) { c.HeartbeatMs = 100; c.ElectionMs = 400 }, "etcdmember: ElectionMs (400) must be at least 5 × HeartbeatMs (100)"},
		{"election too long", func(c *Config) { c.ElectionMs = 60000 }, "etcdmember: ElectionMs (60000) must be at most 50000"},
		{"retention in hours without a unit", func(c *Config) { c.AutoCompactionRetention = "1" }, `etcdmember: AutoCompactionRetention "1" must be a positive duration such as "5m"`},
		{"retention zero", func(c *Config) { c.AutoCompactionRetention = "0s" }, `etcdmember: AutoCompactionRetention "0s" must be a positive duration such as "5m"`},
		{"log level", func(c *Config) { c.LogLevel = "loud" }, `etcdmember: LogLevel: level must be debug, info, warn or error, not "loud"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid
			tt.change(&c)
			err := c.Validate()
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("Validate() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestStartRejectsInvalidConfig(t *testing.T) {
	if _, err := Start(t.Context(), Config{Name: "a"}); err == nil {
		t.Fatal("Start with no DataDir succeeded")
	}
}

func TestZapLoggerLevels(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	lg := NewZapLogger(logger, zapcore.WarnLevel).With(zap.String("member", "m1"))
	lg.Info("quiet")
	lg.Warn("loud", zap.String("peer-id", "abc"))
	lg.Warn("Running http and grpc server on single port. This is not recommended for production.")
	out := buf.String()
	if strings.Contains(out, "quiet") {
		t.Errorf("info line passed a warn logger:\n%s", out)
	}
	if !strings.Contains(out, `level=WARN msg=loud member=m1 peer-id=abc`) {
		t.Errorf("warn line missing or without its fields:\n%s", out)
	}
	if !strings.Contains(out, "level=DEBUG msg=\"Running http") {
		t.Errorf("the single-port warning was not demoted:\n%s", out)
	}
}
