package reconcile_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/reconcile"
	"github.com/capstan-dev/capstan/internal/resource"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitTimeout = 10 * time.Second

// syncs records every sync and answers with the errors a test scripts per
// key (nil once the script is used up).
type syncs struct {
	mu     sync.Mutex
	calls  map[string]int
	script map[string][]error
}

func newSyncs(script map[string][]error) *syncs {
	return &syncs{calls: map[string]int{}, script: script}
}

func (s *syncs) sync(_ context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[key]++
	if errs := s.script[key]; len(errs) > 0 {
		s.script[key] = errs[1:]
		return errs[0]
	}
	return nil
}

func (s *syncs) count(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[key]
}

// running is a Loop's Run in a goroutine.
type running struct {
	done chan struct{} // closed when Run has returned
	err  error         // Run's result, once done is closed
}

// wait waits for Run to return and gives its result.
func (r *running) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(waitTimeout):
		t.Fatal("Run did not return")
		return nil
	}
}

// run runs l until ctx ends or the test does.
func run(t *testing.T, ctx context.Context, l *reconcile.Loop) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	r := &running{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = l.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(waitTimeout):
			t.Error("Run did not return after its context ended")
		}
	})
	return r
}

func newLoop(t *testing.T, cfg reconcile.Config) *reconcile.Loop {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "test"
	}
	if cfg.Workers == 0 {
		cfg.Workers = 2
	}
	l, err := reconcile.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return l
}

func TestKeysAddedBeforeRunAreSynced(t *testing.T) {
	s := newSyncs(nil)
	l := newLoop(t, reconcile.Config{Sync: s.sync})
	l.Add("a")
	l.Add("b")
	run(t, t.Context(), l)
	poll.For(t, waitTimeout, "both keys synced", poll.True(func() bool { return s.count("a") == 1 && s.count("b") == 1 }))
}

// A race with a newer version, an unreachable API and any other failure
// are retried until the sync succeeds; a success is not retried.
func TestFailedSyncsAreRetried(t *testing.T) {
	s := newSyncs(map[string][]error{
		"raced":       {apierrors.Conflict("Pod", "default", "x", "stale resource_version"), apierrors.AlreadyExists("Pod", "default", "x")},
		"unreachable": {apierrors.NoQuorum(errors.New("no leader"))},
		"failed":      {errors.New("boom"), errors.New("boom again")},
	})
	l := newLoop(t, reconcile.Config{Sync: s.sync})
	for _, k := range []string{"raced", "unreachable", "failed", "fine"} {
		l.Add(k)
	}
	run(t, t.Context(), l)
	poll.For(t, waitTimeout, "every key synced to success", func(context.Context) error {
		for key, want := range map[string]int{"raced": 3, "unreachable": 2, "failed": 3, "fine": 1} {
			if got := s.count(key); got != want {
				return errors.New(key + " not yet")
			}
		}
		return nil
	})
	if l.Len() != 0 {
		t.Errorf("%d keys still queued", l.Len())
	}
}

// LEASE_NOT_HELD ends the loop: Run returns nil, nothing is retried and no
// other key is synced any more.
func TestLostLeaseStopsTheLoop(t *testing.T) {
	s := newSyncs(map[string][]error{"a": {apierrors.LeaseNotHeld("capstan-system", "controller-manager", 7)}})
	l := newLoop(t, reconcile.Config{Sync: s.sync, Options: reconcile.Options{Workers: 1}})
	l.Add("a")
	if err := run(t, t.Context(), l).wait(t); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	l.Add("b")
	if s.count("a") != 1 || s.count("b") != 0 {
		t.Fatalf("syncs after the lease was lost: a=%d b=%d, want 1 and 0", s.count("a"), s.count("b"))
	}
}

// The back-off runs on the loop's clock: a failed key is synced again only
// once the injected clock has passed its delay.
func TestBackOffRunsOnTheInjectedClock(t *testing.T) {
	clk := testingclock.NewFakeClock(time.Now())
	s := newSyncs(map[string][]error{"a": {errors.New("boom")}})
	l := newLoop(t, reconcile.Config{Sync: s.sync, Options: reconcile.Options{Clock: clk}})
	l.Add("a")
	run(t, t.Context(), l)
	poll.For(t, waitTimeout, "the first sync and its back-off timer", poll.True(func() bool { return s.count("a") == 1 && clk.HasWaiters() }))
	if s.count("a") != 1 {
		t.Fatalf("synced %d times before the clock moved", s.count("a"))
	}
	clk.Step(reconcile.DefaultRetryBaseDelay)
	poll.For(t, waitTimeout, "the retry", poll.True(func() bool { return s.count("a") == 2 }))
}

// Run waits for its caches; when its context ends first it returns nil
// without syncing anything.
func TestRunStopsQuietlyBeforeTheCachesSync(t *testing.T) {
	c, err := client.New(client.Config{Endpoints: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	never, err := informer.New(c, resource.MustLookup("Pod"), informer.Options{}) // never run: never synced
	if err != nil {
		t.Fatal(err)
	}
	s := newSyncs(nil)
	l := newLoop(t, reconcile.Config{Sync: s.sync, WaitFor: []*informer.Informer{never}})
	l.Add("a")
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := l.Run(ctx); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if s.count("a") != 0 {
		t.Fatal("a key was synced before the caches synced")
	}
}

func TestPrepareRunsBeforeTheFirstSyncAndItsErrorEndsRun(t *testing.T) {
	s := newSyncs(nil)
	prepared := false
	l := newLoop(t, reconcile.Config{Sync: func(ctx context.Context, key string) error {
		if !prepared {
			t.Error("synced before Prepare")
		}
		return s.sync(ctx, key)
	}, Prepare: func(context.Context) error { prepared = true; return nil }})
	l.Add("a")
	run(t, t.Context(), l)
	poll.For(t, waitTimeout, "the sync", poll.True(func() bool { return s.count("a") == 1 }))

	failing := newLoop(t, reconcile.Config{Sync: s.sync, Prepare: func(context.Context) error { return errors.New("no way") }})
	if err := failing.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "no way") {
		t.Fatalf("Run = %v, want Prepare's error", err)
	}
}

func TestNewRejectsABadConfig(t *testing.T) {
	sync := func(context.Context, string) error { return nil }
	for _, tc := range []struct {
		cfg  reconcile.Config
		want string
	}{
		{reconcile.Config{Sync: sync}, "Config.Name is empty"},
		{reconcile.Config{Name: "x"}, "Config.Sync is nil"},
		{reconcile.Config{Name: "x", Sync: sync, Options: reconcile.Options{Workers: -1}}, "Options.Workers is -1"},
		{reconcile.Config{Name: "x", Sync: sync, WaitFor: []*informer.Informer{nil}}, "Config.WaitFor[0] is nil"},
	} {
		if _, err := reconcile.New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error about %q", tc.cfg, err, tc.want)
		}
	}
	l := newLoop(t, reconcile.Config{Sync: sync})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_ = l.Run(ctx)
	if err := l.Run(ctx); err == nil {
		t.Error("a second Run returned nil")
	}
}

// Loops of one registry share the metrics, every leadership's loop again.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	for range 2 { // a second leadership registers again
		m, err := reconcile.NewMetrics(reg)
		if err != nil {
			t.Fatalf("NewMetrics: %v", err)
		}
		s := newSyncs(map[string][]error{"a": {errors.New("boom")}})
		l := newLoop(t, reconcile.Config{Name: "replicaset", Sync: s.sync, Options: reconcile.Options{Metrics: m}})
		l.Add("a")
		ctx, cancel := context.WithCancel(t.Context())
		r := run(t, ctx, l)
		poll.For(t, waitTimeout, "the retry", poll.True(func() bool { return s.count("a") == 2 }))
		cancel()
		if err := r.wait(t); err != nil {
			t.Fatalf("Run = %v", err)
		}
	}
	if got := metric(t, reg, "capstan_workqueue_retries_total", "replicaset"); got != 2 {
		t.Errorf("retries = %v, want 2 (one per leadership)", got)
	}
	if got := metric(t, reg, "capstan_workqueue_depth", "replicaset"); got != 0 {
		t.Errorf("depth of a stopped loop = %v, want 0", got)
	}
	for _, outcome := range []string{"done", "failed"} {
		if got := metric(t, reg, "capstan_reconcile_syncs_total", "replicaset", outcome); got != 2 {
			t.Errorf("syncs with outcome %s = %v, want 2", outcome, got)
		}
	}
}

// metric is the value of the counter or gauge name whose label values are
// values, in order.
func metric(t *testing.T, reg *prometheus.Registry, name string, values ...string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			if len(m.GetLabel()) != len(values) {
				continue
			}
			for i, l := range m.GetLabel() {
				if l.GetValue() != values[i] {
					continue series
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no series %s%v", name, values)
	return 0
}

// Resync runs every period of the loop's clock once the workers run.
func TestResyncRunsOnTheLoopClock(t *testing.T) {
	clk := testingclock.NewFakeClock(time.Now())
	s := newSyncs(nil)
	var l *reconcile.Loop
	l = newLoop(t, reconcile.Config{Sync: s.sync, Options: reconcile.Options{Clock: clk},
		ResyncPeriod: time.Minute, Resync: func(context.Context) { l.Add("resynced") }})
	run(t, t.Context(), l)
	select {
	case <-l.Started():
	case <-time.After(waitTimeout):
		t.Fatal("the loop did not start")
	}
	if s.count("resynced") != 0 {
		t.Fatal("Resync ran before its period")
	}
	for i := 1; i <= 2; i++ {
		clk.Step(time.Minute)
		poll.For(t, waitTimeout, "a resync", poll.True(func() bool { return s.count("resynced") == i }))
	}
}
