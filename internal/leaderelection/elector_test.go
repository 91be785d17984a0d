package leaderelection_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	clocktesting "k8s.io/utils/clock/testing"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/events"
	"github.com/capstan-dev/capstan/internal/faultproxy"
	"github.com/capstan-dev/capstan/internal/leaderelection"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testTTL is the shortest lease etcd grants, so expiries come soon.
const testTTL = 2 * time.Second

const leaseName = "test-component"

var (
	configMapKind = resource.MustLookup("ConfigMap")
	eventKind     = resource.MustLookup("Event")
)

func newClient(t *testing.T, endpoints []string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Endpoints: endpoints, UserAgent: "leaderelection-test"})
	if err != nil {
		t.Fatalf("client.New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// candidate is one elector running in the test, with what its callbacks
// saw.
type candidate struct {
	identity string
	elector  *leaderelection.Elector
	cancel   context.CancelFunc
	done     chan struct{}

	mu       sync.Mutex
	leadCtxs []context.Context // one per leadership, in order
	stopped  int
	leaders  []string // OnNewLeader identities, in order
}

// leadership is the fenced context of the n-th leadership (from 1), once
// it started.
func (c *candidate) leadership(n int) (context.Context, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.leadCtxs) < n {
		return nil, false
	}
	return c.leadCtxs[n-1], true
}

// waitLeadership waits for the n-th leadership (from 1) to start and
// returns its fenced context: IsLeader turns true just before
// OnStartedLeading is called on its own goroutine.
func (c *candidate) waitLeadership(t *testing.T, n int) context.Context {
	t.Helper()
	var leadCtx context.Context
	poll.For(t, 10*time.Second, fmt.Sprintf("OnStartedLeading of %s's leadership %d", c.identity, n), func(context.Context) error {
		var ok bool
		if leadCtx, ok = c.leadership(n); !ok {
			c.mu.Lock()
			defer c.mu.Unlock()
			return fmt.Errorf("%d leaderships started", len(c.leadCtxs))
		}
		return nil
	})
	return leadCtx
}

func (c *candidate) stoppedCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopped
}

// leadingNow counts the candidates inside OnStartedLeading, and the most
// ever seen at once.
type leadingNow struct {
	now, most atomic.Int32
}

func (l *leadingNow) enter() {
	n := l.now.Add(1)
	for {
		most := l.most.Load()
		if n <= most || l.most.CompareAndSwap(most, n) {
			return
		}
	}
}

func (l *leadingNow) leave() { l.now.Add(-1) }

// startCandidate runs an elector for identity until the test ends (or its
// cancel is called). clk may be nil for the real clock.
func startCandidate(t *testing.T, c *client.Client, identity string, clk *clocktesting.FakeClock, counter *leadingNow) *candidate {
	t.Helper()
	return startCandidateWith(t, c, identity, clk, counter, testTTL)
}

// startCandidateTTL runs an elector with a TTL of its own and the real
// clock.
func startCandidateTTL(t *testing.T, c *client.Client, identity string, ttl time.Duration) *candidate {
	t.Helper()
	return startCandidateWith(t, c, identity, nil, nil, ttl)
}

func startCandidateWith(t *testing.T, c *client.Client, identity string, clk *clocktesting.FakeClock, counter *leadingNow, ttl time.Duration, configure ...func(*leaderelection.Config)) *candidate {
	t.Helper()
	cfg := leaderelection.Config{
		Client:   c,
		Name:     leaseName,
		Identity: identity,
		TTL:      ttl,
		Logger:   slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})).With("identity", identity),
	}
	if clk != nil {
		cfg.Clock = clk
	}
	for _, f := range configure {
		f(&cfg)
	}
	e, err := leaderelection.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cand := &candidate{identity: identity, elector: e, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(cand.done)
		err := e.Run(ctx, leaderelection.Callbacks{
			OnStartedLeading: func(ctx context.Context) {
				if counter != nil {
					counter.enter()
					defer counter.leave()
				}
				cand.mu.Lock()
				cand.leadCtxs = append(cand.leadCtxs, ctx)
				cand.mu.Unlock()
				<-ctx.Done()
			},
			OnStoppedLeading: func() {
				cand.mu.Lock()
				cand.stopped++
				cand.mu.Unlock()
			},
			OnNewLeader: func(identity string, epoch int64) {
				cand.mu.Lock()
				cand.leaders = append(cand.leaders, leaderelection.IdentityOf(identity))
				cand.mu.Unlock()
			},
		})
		if err != nil {
			t.Errorf("%s: Run: %v", identity, err)
		}
	}()
	t.Cleanup(cand.stop)
	return cand
}

// stop cancels the elector's context and waits for Run to return.
func (c *candidate) stop() {
	c.cancel()
	<-c.done
}

// waitForLeader waits until exactly one of cands leads and returns it.
func waitForLeader(t *testing.T, cands ...*candidate) *candidate {
	t.Helper()
	var leader *candidate
	poll.For(t, 30*time.Second, "one leader", func(context.Context) error {
		leader = nil
		for _, c := range cands {
			if c.elector.IsLeader() {
				if leader != nil {
					t.Fatalf("%s and %s lead at once", leader.identity, c.identity)
				}
				leader = c
			}
		}
		if leader == nil {
			return errors.New("none of them leads")
		}
		return nil
	})
	return leader
}

// notDone is a poll.Condition's answer for ctx to have ended.
func notDone(ctx context.Context) error {
	if ctx.Err() == nil {
		return errors.New("the context is not done")
	}
	return nil
}

// twoWaiters is a poll.Condition's answer for at least two timers armed on
// clk.
func twoWaiters(clk *clocktesting.FakeClock) error {
	if n := clk.Waiters(); n < 2 {
		return fmt.Errorf("%d timers armed", n)
	}
	return nil
}

func getLease(t *testing.T, ctx context.Context, c *client.Client) *capstanv1.Lease {
	t.Helper()
	resp, err := c.Leases().GetLease(ctx, &capstanv1.GetLeaseRequest{Namespace: wellknown.SystemNamespace, Name: leaseName})
	if err != nil {
		t.Fatalf("GetLease: %v", err)
	}
	return resp.GetLease()
}

func TestNewRejectsBadConfig(t *testing.T) {
	c := newClient(t, []string{"127.0.0.1:1"})
	for _, tc := range []struct {
		name string
		cfg  leaderelection.Config
		want string
	}{
		{"no client", leaderelection.Config{Name: "x", Identity: "a"}, "leaderelection: Config.Client is nil"},
		{"no name", leaderelection.Config{Client: c, Identity: "a"}, "leaderelection: Config.Name (the lease name) is empty"},
		{"no identity", leaderelection.Config{Client: c, Name: "x"}, "leaderelection: Config.Identity is empty"},
		{"ttl too short", leaderelection.Config{Client: c, Name: "x", Identity: "a", TTL: time.Second}, "leaderelection: Config.TTL must be whole seconds and at least 2s (etcd's minimum lease), not 1s"},
		{"ttl not whole seconds", leaderelection.Config{Client: c, Name: "x", Identity: "a", TTL: 2500 * time.Millisecond}, "leaderelection: Config.TTL must be whole seconds and at least 2s (etcd's minimum lease), not 2.5s"},
		{"slash in name", leaderelection.Config{Client: c, Name: "a/b", Identity: "a"}, "leaderelection: lease capstan-system/a/b: namespace and name must not contain '/'"},
		{"negative release wait", leaderelection.Config{Client: c, Name: "x", Identity: "a", ReleaseWait: -time.Second}, "leaderelection: Config.ReleaseWait must not be negative, not -1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := leaderelection.New(tc.cfg)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("New: got %v, want %q", err, tc.want)
			}
		})
	}
}

// Two candidates: exactly one leads; when it stops (as on SIGTERM) it
// releases the lease and the other takes over with a greater epoch.
func TestOneLeaderAndHandoverOnStop(t *testing.T) {
	api := apiservertest.Start(t, 2)
	ctx := testContext(t)
	var counter leadingNow

	a := startCandidate(t, newClient(t, api.Addrs()), "a", nil, &counter)
	b := startCandidate(t, newClient(t, api.Addrs()), "b", nil, &counter)
	first := waitForLeader(t, a, b)
	second := b
	if first == b {
		second = a
	}
	firstEpoch := first.elector.Epoch()
	if firstEpoch <= 0 {
		t.Fatalf("leader %s has epoch %d", first.identity, firstEpoch)
	}
	if second.elector.Epoch() != 0 {
		t.Fatalf("standby %s reports epoch %d", second.identity, second.elector.Epoch())
	}
	lease := getLease(t, ctx, newClient(t, api.Addrs()))
	if got := lease.GetSpec().GetHolderIdentity(); got != leaderelection.HolderIdentity(first.identity) || leaderelection.IdentityOf(got) != first.identity {
		t.Fatalf("lease holder %q, leader %q", got, first.identity)
	}
	if got := lease.GetStatus().GetEpoch(); got != firstEpoch {
		t.Fatalf("lease epoch %d, leader's %d", got, firstEpoch)
	}
	// The standby saw the leader.
	poll.For(t, 10*time.Second, "the standby to observe the leader", func(context.Context) error {
		second.mu.Lock()
		defer second.mu.Unlock()
		if len(second.leaders) == 0 || second.leaders[len(second.leaders)-1] != first.identity {
			return fmt.Errorf("the standby observed leaders %q, want %s last", second.leaders, first.identity)
		}
		return nil
	})
	if id, epoch := second.elector.Leader(); id != leaderelection.HolderIdentity(first.identity) || epoch != firstEpoch {
		t.Fatalf("standby's Leader() = %s, %d; want %s, %d", id, epoch, first.identity, firstEpoch)
	}

	first.stop()
	if first.stoppedCount() != 1 {
		t.Fatalf("OnStoppedLeading called %d times, want 1", first.stoppedCount())
	}
	if first.elector.IsLeader() {
		t.Fatal("stopped elector still reports leading")
	}
	newLeader := waitForLeader(t, second)
	if got := newLeader.elector.Epoch(); got <= firstEpoch {
		t.Fatalf("new leader's epoch %d is not greater than the old %d", got, firstEpoch)
	}
	if most := counter.most.Load(); most != 1 {
		t.Fatalf("%d candidates were inside OnStartedLeading at once", most)
	}
}

func TestMetrics(t *testing.T) {
	api := apiservertest.Start(t, 1)
	reg := prometheus.NewRegistry()
	e, err := leaderelection.New(leaderelection.Config{Client: newClient(t, api.Addrs()), Name: leaseName, Identity: "a", TTL: testTTL, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = e.Run(ctx, leaderelection.Callbacks{OnStartedLeading: func(ctx context.Context) { <-ctx.Done() }})
	}()
	defer func() { cancel(); <-done }()
	poll.For(t, 30*time.Second, "leadership", poll.True(e.IsLeader))
	lease := wellknown.SystemNamespace + "/" + leaseName
	if got := gauge(t, reg, "capstan_leader", lease); got != 1 {
		t.Fatalf("capstan_leader = %v while leading, want 1", got)
	}
	if got := gauge(t, reg, "capstan_leader_epoch", lease); got != float64(e.Epoch()) {
		t.Fatalf("capstan_leader_epoch = %v, want %d", got, e.Epoch())
	}
	cancel()
	<-done
	if got := gauge(t, reg, "capstan_leader", lease); got != 0 {
		t.Fatalf("capstan_leader = %v after stopping, want 0", got)
	}
	for reason, want := range map[string]float64{"acquired": 1, "released": 1} {
		if got := transitions(t, reg, lease, reason); got != want {
			t.Fatalf("capstan_lease_transitions_total{reason=%q} = %v, want %v", reason, got, want)
		}
	}
	// A second elector for the same lease on the same registry is a
	// configuration mistake New reports.
	if _, err := leaderelection.New(leaderelection.Config{Client: newClient(t, api.Addrs()), Name: leaseName, Identity: "b", Registerer: reg}); err == nil {
		t.Fatal("New registered the same lease's metrics twice")
	}
}

// gauge reads the value of the named gauge with label lease from reg.
func gauge(t *testing.T, reg *prometheus.Registry, name, lease string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "lease" && l.GetValue() == lease {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no gauge %s{lease=%q}", name, lease)
	return 0
}

// transitions reads capstan_lease_transitions_total{lease, reason} from reg
// (0 if the series does not exist yet).
func transitions(t *testing.T, reg *prometheus.Registry, lease, reason string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "capstan_lease_transitions_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["lease"] == lease && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// The leader's callback context carries the fence; a write made with it
// lands while the leader holds the lease.
func TestLeaderWritesAreFenced(t *testing.T) {
	api := apiservertest.Start(t, 1)
	ctx := testContext(t)
	c := newClient(t, api.Addrs())
	a := startCandidate(t, c, "a", nil, nil)
	waitForLeader(t, a)
	leadCtx := a.waitLeadership(t, 1)
	fence, ok := client.FenceFrom(leadCtx)
	if !ok {
		t.Fatal("the leading context carries no fence")
	}
	if want := (client.Fence{Namespace: wellknown.SystemNamespace, Name: leaseName, Epoch: a.elector.Epoch()}); fence != want {
		t.Fatalf("fence %+v, want %+v", fence, want)
	}
	cm := &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: "written-by-leader"}, Data: map[string]string{"k": "v"}}
	if _, err := c.Create(leadCtx, cm); err != nil {
		t.Fatalf("fenced create by the leader: %v", err)
	}
	if _, err := c.Get(ctx, configMapKind, "default", "written-by-leader"); err != nil {
		t.Fatalf("the leader's write did not land: %v", err)
	}
}

// A leader whose clock runs but that stops renewing (a paused process, here
// an elector on a fake clock that never advances) loses the lease to
// etcd's expiry; the standby, watching the lease, takes it over; the old
// leader's next fenced write is refused with LEASE_NOT_HELD, changes
// nothing, and cancels its leading context; it then campaigns again.
func TestPausedLeaderIsFencedOff(t *testing.T) {
	api := apiservertest.Start(t, 2)
	ctx := testContext(t)
	frozen := clocktesting.NewFakeClock(time.Now())
	reg := prometheus.NewRegistry()
	pausedClient := newClient(t, api.Addrs())
	recorder := events.NewRecorder(pausedClient, &capstanv1.EventSource{Component: "leaderelection-test"}, nil)
	a := startCandidateWith(t, pausedClient, "paused", frozen, nil, testTTL, func(cfg *leaderelection.Config) {
		cfg.Events, cfg.Registerer = recorder, reg
	})
	waitForLeader(t, a)
	oldEpoch := a.elector.Epoch()
	leadCtx := a.waitLeadership(t, 1)

	b := startCandidate(t, newClient(t, api.Addrs()), "standby", nil, nil)
	poll.For(t, 30*time.Second, "the standby to take over after the lease expired", poll.True(b.elector.IsLeader))
	if got := b.elector.Epoch(); got <= oldEpoch {
		t.Fatalf("new epoch %d not greater than the paused leader's %d", got, oldEpoch)
	}
	if !a.elector.IsLeader() || leadCtx.Err() != nil {
		t.Fatal("the paused leader stepped down by itself; this test needs it to believe it still leads")
	}

	writer := newClient(t, api.Addrs())
	cm := &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: "from-deposed-leader"}}
	_, err := writer.Create(leadCtx, cm)
	if !apierrors.Is(err, apierrors.ReasonLeaseNotHeld) {
		t.Fatalf("write with a stale epoch: got %v, want LEASE_NOT_HELD", err)
	}
	poll.For(t, 10*time.Second, "the deposed leader's context to be cancelled", func(context.Context) error { return notDone(leadCtx) })
	poll.For(t, 10*time.Second, "the deposed leader to step down", func(context.Context) error {
		if a.elector.IsLeader() {
			return errors.New("it still reports leading")
		}
		return nil
	})
	if _, err := writer.Get(ctx, configMapKind, "default", "from-deposed-leader"); !apierrors.IsNotFound(err) {
		t.Fatalf("the refused write left something behind: %v", err)
	}
	poll.For(t, 10*time.Second, "OnStoppedLeading", func(context.Context) error {
		if n := a.stoppedCount(); n != 1 {
			return fmt.Errorf("called %d times", n)
		}
		return nil
	})
	// The fencing is visible: a LeaseFenced event on the Lease and the
	// transition counted.
	lease := wellknown.SystemNamespace + "/" + leaseName
	if got := transitions(t, reg, lease, "fenced"); got != 1 {
		t.Fatalf("capstan_lease_transitions_total{reason=fenced} = %v, want 1", got)
	}
	if !recorder.Flush(ctx) {
		t.Fatal("the event recorder did not flush")
	}
	list, err := writer.List(ctx, eventKind, client.ListOptions{Namespace: wellknown.SystemNamespace})
	if err != nil {
		t.Fatalf("list events: %v", err)
	}
	if !slices.ContainsFunc(list.Items, func(o resource.Object) bool {
		ev := o.(*capstanv1.Event)
		return ev.GetReason() == leaderelection.ReasonFenced && ev.GetInvolvedObject().GetKind() == "Lease" && ev.GetInvolvedObject().GetName() == leaseName
	}) {
		t.Fatalf("no %s event on Lease %s among %d events", leaderelection.ReasonFenced, lease, len(list.Items))
	}

	// It is a candidate again: when the new leader stops, it leads.
	b.stop()
	poll.For(t, 30*time.Second, "the old leader to lead again", poll.True(a.elector.IsLeader))
	if got := a.elector.Epoch(); got <= oldEpoch {
		t.Fatalf("re-elected with epoch %d, not above %d", got, oldEpoch)
	}
}

// A leader whose renewals fail (every API replica is gone) stops acting
// before the TTL has run out by its own clock, so before etcd can have
// expired its lease.
func TestLeaderStepsDownBeforeTTLWhenRenewalsFail(t *testing.T) {
	api := apiservertest.Start(t, 2)
	clk := clocktesting.NewFakeClock(time.Now())
	acquiredBy := clk.Now() // the acquire was sent at or after this instant
	a := startCandidate(t, newClient(t, api.Addrs()), "a", clk, nil)
	waitForLeader(t, a)
	leadCtx := a.waitLeadership(t, 1)
	// The renewal and deadline timers are armed.
	poll.For(t, 10*time.Second, "the leader's timers", func(context.Context) error { return twoWaiters(clk) })

	for i := range api.Addrs() {
		api.StopReplica(i)
	}
	// Step the clock up to the last instant before the deadline: the leader
	// keeps acting while its renewals fail.
	margin := testTTL / 6 // marginDivisor
	clk.Step(testTTL - margin - time.Millisecond)
	poll.For(t, 10*time.Second, "a renewal attempt to fail and be retried", func(context.Context) error { return twoWaiters(clk) })
	if leadCtx.Err() != nil {
		t.Fatalf("stepped down before the deadline: %v", context.Cause(leadCtx))
	}
	clk.Step(time.Millisecond)
	poll.For(t, 10*time.Second, "the leader to stop acting", func(context.Context) error { return notDone(leadCtx) })
	if a.elector.IsLeader() {
		t.Fatal("IsLeader after the leading context was cancelled")
	}
	if elapsed := clk.Since(acquiredBy); elapsed >= testTTL {
		t.Fatalf("stopped %v after acquiring, not before the TTL %v", elapsed, testTTL)
	}
}

// An AcquireLease that took the lease but whose answer was lost: the next
// attempt finds the lease held under the elector's own identity and the
// elector leads with that holding's epoch instead of waiting for it to
// expire.
func TestLostAcquireAnswerIsAdopted(t *testing.T) {
	api := apiservertest.Start(t, 1)
	ctx := testContext(t)
	// The proxy keeps the replica's answers back while frozen toward the
	// client, as a network that delivers a request and loses its response.
	proxy, err := faultproxy.Start(api.Addrs()[0], faultproxy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	viaProxy := newClient(t, []string{proxy.Addr()})
	// A first call makes the connection and sees the replica healthy, so
	// held answers later do not stop calls from being sent.
	if _, err := viaProxy.Leases().GetLease(ctx, &capstanv1.GetLeaseRequest{Namespace: wellknown.SystemNamespace, Name: leaseName}); !apierrors.IsNotFound(err) {
		t.Fatalf("GetLease: %v", err)
	}
	proxy.Freeze(faultproxy.ToClient)
	released := false
	defer func() {
		if !released {
			proxy.Thaw()
		}
	}()

	var logs syncBuffer
	e, err := leaderelection.New(leaderelection.Config{
		Client:   viaProxy,
		Name:     leaseName,
		Identity: "lost-answer",
		TTL:      3 * time.Second,
		Logger:   slog.New(slog.NewTextHandler(io.MultiWriter(&logs, t.Output()), nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = e.Run(runCtx, leaderelection.Callbacks{OnStartedLeading: func(ctx context.Context) { <-ctx.Done() }})
	}()
	defer func() { cancel(); <-done }()

	direct := newClient(t, api.Addrs())
	var epoch int64
	poll.For(t, 10*time.Second, "the unanswered attempt to take the lease", func(ctx context.Context) error {
		resp, err := direct.Leases().GetLease(ctx, &capstanv1.GetLeaseRequest{Namespace: wellknown.SystemNamespace, Name: leaseName})
		if err != nil {
			return fmt.Errorf("GetLease: %w", err)
		}
		epoch = resp.GetLease().GetStatus().GetEpoch()
		if holder := resp.GetLease().GetSpec().GetHolderIdentity(); holder != leaderelection.HolderIdentity("lost-answer") {
			return fmt.Errorf("the lease is held by %q", holder)
		}
		return nil
	})
	poll.For(t, 10*time.Second, "the elector to give up on the attempt", func(context.Context) error {
		if !strings.Contains(logs.String(), "acquiring the lease failed") {
			return errors.New(`no "acquiring the lease failed" in the log`)
		}
		return nil
	})
	if e.IsLeader() {
		t.Fatal("leads although no answer reached it")
	}
	proxy.Thaw()
	released = true
	poll.For(t, 10*time.Second, "the elector to lead", poll.True(e.IsLeader))
	if got := e.Epoch(); got != epoch {
		t.Fatalf("leads at epoch %d, not the lost attempt's %d", got, epoch)
	}
	if !strings.Contains(logs.String(), "taking over the holding an earlier attempt made") {
		t.Fatal("no log line about the adopted holding")
	}
}

// syncBuffer is a log destination safe for the elector's goroutines.
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

// A holding under the same name made by another process — an earlier run
// still alive, or a second replica misconfigured with the same identity —
// is never taken for this process's own: it waits for it to end.
func TestHoldingOfAnotherProcessWithTheSameNameIsNotAdopted(t *testing.T) {
	api := apiservertest.Start(t, 1)
	c := newClient(t, api.Addrs())
	ctx := t.Context()
	other := "twin_00000000" // the same name, another process's nonce
	resp, err := c.Leases().AcquireLease(ctx, &capstanv1.AcquireLeaseRequest{
		Namespace: wellknown.SystemNamespace, Name: leaseName, HolderIdentity: other, LeaseDurationSeconds: 60,
	})
	if err != nil || !resp.GetAcquired() {
		t.Fatalf("the other process's acquisition: %v, acquired %v", err, resp.GetAcquired())
	}
	cand := startCandidate(t, c, "twin", nil, nil)
	poll.For(t, 10*time.Second, "the candidate to see the other process's holding", func(context.Context) error {
		if holder, _ := cand.elector.Leader(); holder != other {
			return fmt.Errorf("it sees %q", holder)
		}
		return nil
	})
	if cand.elector.IsLeader() {
		t.Fatal("the candidate leads on another process's holding of its name")
	}
	if _, err := c.Leases().ReleaseLease(ctx, &capstanv1.ReleaseLeaseRequest{
		Namespace: wellknown.SystemNamespace, Name: leaseName, HolderIdentity: other, Epoch: resp.GetLease().GetStatus().GetEpoch(),
	}); err != nil {
		t.Fatalf("release: %v", err)
	}
	poll.For(t, 10*time.Second, "the candidate to lead once the other holding ended", poll.True(cand.elector.IsLeader))
	if got := leaderelection.IdentityOf(cand.elector.Identity()); got != "twin" {
		t.Fatalf("IdentityOf(%q) = %q", cand.elector.Identity(), got)
	}
}
