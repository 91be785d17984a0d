package component_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/leaderelection/component"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestValidate(t *testing.T) {
	valid := func() component.Options {
		o := component.DefaultOptions("thing", "127.0.0.1:0")
		o.Identity = "thing-1"
		o.Server = "127.0.0.1:6441"
		return o
	}
	for _, tc := range []struct {
		name   string
		change func(o *component.Options)
		want   string // "" for valid
	}{
		{"defaults", func(o *component.Options) {}, ""},
		{"lease name only", func(o *component.Options) { o.LeaderLease = "other" }, ""},
		{"no metrics", func(o *component.Options) { o.MetricsListen = "" }, ""},
		{"empty identity", func(o *component.Options) { o.Identity = "" }, "--identity must not be empty"},
		{"identity with space", func(o *component.Options) { o.Identity = "a b" }, `--identity "a b": must not contain white space`},
		{"bad lease", func(o *component.Options) { o.LeaderLease = "a/b/c" }, `--leader-lease "a/b/c": must be namespace/name or name`},
		{"empty lease namespace", func(o *component.Options) { o.LeaderLease = "/b" }, `--leader-lease "/b"`},
		{"short lease", func(o *component.Options) { o.LeaseDuration = time.Second }, "--lease-duration must be whole seconds and at least 2s, not 1s"},
		{"fractional lease", func(o *component.Options) { o.LeaseDuration = 2500 * time.Millisecond }, "--lease-duration must be whole seconds"},
		{"bad server", func(o *component.Options) { o.Server = "nohost" }, `--server: "nohost" must be host:port`},
		{"bad metrics", func(o *component.Options) { o.MetricsListen = "x" }, `--metrics-listen "x": must be host:port`},
		{"bad level", func(o *component.Options) { o.LogLevel = "loud" }, "--log-level must be debug, info, warn or error"},
		{"bad format", func(o *component.Options) { o.LogFormat = "xml" }, "--log-format must be text or json"},
		{"probe host:port", func(o *component.Options) { o.HealthProbe = "127.0.0.1:1"; o.Identity = "" }, ""},
		{"probe URL", func(o *component.Options) { o.HealthProbe = "http://127.0.0.1:1/healthz" }, ""},
		{"bad probe", func(o *component.Options) { o.HealthProbe = "ftp://x/y" }, `--health-probe "ftp://x/y": must be an http(s) URL or host:port`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := valid()
			tc.change(&o)
			err := o.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestProbeURL(t *testing.T) {
	o := component.Options{HealthProbe: "127.0.0.1:10251"}
	if got, err := o.HealthProbeURL(); err != nil || got != "http://127.0.0.1:10251/healthz" {
		t.Fatalf("HealthProbeURL: %q, %v", got, err)
	}
}

// syncBuffer is a log destination safe for the component's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// A component leads, serves /healthz and /metrics saying so, passes its
// own health probe, logs component and identity on every line, makes fenced
// writes, and on shutdown stops its work and releases the lease.
func TestRunLeadsServesHealthAndReleasesOnStop(t *testing.T) {
	api := apiservertest.Start(t, 1)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	opts := component.DefaultOptions("thing", "")
	opts.Identity = "thing-1"
	opts.Server = strings.Join(api.Addrs(), ",")
	opts.MetricsListener = lis
	opts.LogOutput = &logs

	type leadership struct {
		ctx context.Context
		l   component.Leadership
	}
	led := make(chan leadership, 1)
	workStopped := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() {
		runDone <- component.Run(ctx, opts, component.Spec{Name: "thing", Lead: func(ctx context.Context, l component.Leadership) error {
			led <- leadership{ctx, l}
			<-ctx.Done()
			close(workStopped)
			return nil
		}})
	}()
	var got leadership
	select {
	case got = <-led:
	case err := <-runDone:
		t.Fatalf("Run returned before leading: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("never led")
	}
	if got.l.Identity != "thing-1" || got.l.Epoch <= 0 {
		t.Fatalf("leadership %+v", got.l)
	}
	if _, err := got.l.Client.Create(got.ctx, &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: "by-leader"}}); err != nil {
		t.Fatalf("fenced write: %v", err)
	}

	base := "http://" + lis.Addr().String()
	health := httpGet(t, base+"/healthz")
	for _, want := range []string{"ok\n", "identity: thing-1\n", "leading: true\n", "leader: thing-1\n"} {
		if !strings.Contains(health, want) {
			t.Errorf("/healthz %q lacks %q", health, want)
		}
	}
	metrics := httpGet(t, base+"/metrics")
	for _, want := range []string{`capstan_leader{lease="capstan-system/thing"} 1`, `capstan_build_info{component="thing"`, "go_goroutines"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	probe := component.Options{HealthProbe: lis.Addr().String()}
	if err := component.Run(context.Background(), probe, component.Spec{Name: "thing", Lead: func(context.Context, component.Leadership) error { return nil }}); err != nil {
		t.Errorf("health probe of a running component: %v", err)
	}

	cancel()
	select {
	case err := <-runDone:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	select {
	case <-workStopped:
	default:
		t.Fatal("Run returned before the work stopped")
	}
	c, err := client.New(client.Config{Endpoints: api.Addrs()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Leases().GetLease(context.Background(), &capstanv1.GetLeaseRequest{Namespace: wellknown.SystemNamespace, Name: "thing"}); !apierrors.IsNotFound(err) {
		t.Fatalf("lease after shutdown: %v, want it released (NOT_FOUND)", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if !strings.Contains(line, "component=thing") || !strings.Contains(line, "identity=thing-1") {
			t.Errorf("log line without component and identity: %s", line)
		}
	}
	if err := component.Run(context.Background(), probe, component.Spec{Name: "thing", Lead: func(context.Context, component.Leadership) error { return nil }}); err == nil {
		t.Error("health probe of a stopped component succeeded")
	}
}

func TestRunRejectsBadOptions(t *testing.T) {
	opts := component.DefaultOptions("thing", "")
	opts.Identity = ""
	err := component.Run(context.Background(), opts, component.Spec{Name: "thing", Lead: func(context.Context, component.Leadership) error { return nil }})
	if err == nil || !strings.Contains(err.Error(), "thing: --identity must not be empty") {
		t.Fatalf("Run: %v", err)
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	return string(body)
}
