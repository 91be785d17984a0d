package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
	"github.com/capstan-dev/capstan/services/scheduler/internal/framework"
	"github.com/capstan-dev/capstan/services/scheduler/internal/queue"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitTimeout = 60 * time.Second

// testEnv is one API replica over embedded etcd, and a client to it.
type testEnv struct {
	t      *testing.T
	client *client.Client
	ctx    context.Context
}

func newEnv(t *testing.T) *testEnv {
	t.Helper()
	api := apiservertest.Start(t, 1)
	c, err := client.New(client.Config{Endpoints: api.Addrs(), UserAgent: "scheduler-test"})
	if err != nil {
		t.Fatalf("client.New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	t.Cleanup(cancel)
	return &testEnv{t: t, client: c, ctx: ctx}
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// nodeSpec describes a test node: Ready, 4 cpu, 8Gi unless changed.
type nodeSpec struct {
	name          string
	cpu, memory   string
	notReady      bool
	unschedulable bool
	labels        map[string]string
	taints        []*capstanv1.Taint
}

// createNode creates a node through the API, then reports its status as a
// node agent would.
func (e *testEnv) createNode(s nodeSpec) {
	e.t.Helper()
	if s.cpu == "" {
		s.cpu = "4"
	}
	if s.memory == "" {
		s.memory = "8Gi"
	}
	ready := wellknown.ConditionTrue
	if s.notReady {
		ready = wellknown.ConditionFalse
	}
	created, err := e.client.Nodes().CreateNode(e.ctx, &capstanv1.CreateNodeRequest{Node: &capstanv1.Node{
		Metadata: &capstanv1.ObjectMeta{Name: s.name, Labels: s.labels},
		Spec:     &capstanv1.NodeSpec{Unschedulable: s.unschedulable, Taints: s.taints},
	}})
	if err != nil {
		e.t.Fatalf("create node %s: %v", s.name, err)
	}
	node := created.GetNode()
	resources := map[string]string{"cpu": s.cpu, "memory": s.memory}
	node.Status = &capstanv1.NodeStatus{
		Capacity:    resources,
		Allocatable: resources,
		Conditions:  []*capstanv1.Condition{{Type: wellknown.NodeReady, Status: ready, Reason: "Test"}},
	}
	if _, err := e.client.Nodes().UpdateNodeStatus(e.ctx, &capstanv1.UpdateNodeStatusRequest{Node: node}); err != nil {
		e.t.Fatalf("update status of node %s: %v", s.name, err)
	}
}

// podSpec describes a test pod.
type podSpec struct {
	name     string
	cpu      string
	hostPort int32
	selector map[string]string
	owner    string
}

func (e *testEnv) createPod(s podSpec) *capstanv1.Pod {
	e.t.Helper()
	c := &capstanv1.Container{Name: "main", Command: []string{"/bin/sleep", "3600"}}
	if s.cpu != "" {
		c.Resources = &capstanv1.ResourceRequirements{Requests: map[string]string{"cpu": s.cpu}}
	}
	if s.hostPort != 0 {
		c.Ports = []*capstanv1.ContainerPort{{ContainerPort: 8080, HostPort: s.hostPort}}
	}
	pod := &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Namespace: "default", Name: s.name},
		Spec:     &capstanv1.PodSpec{Containers: []*capstanv1.Container{c}, NodeSelector: s.selector},
	}
	if s.owner != "" {
		pod.Metadata.OwnerReferences = []*capstanv1.OwnerReference{{Kind: "ReplicaSet", Name: s.owner, Uid: "uid-" + s.owner, Controller: true}}
	}
	resp, err := e.client.Pods().CreatePod(e.ctx, &capstanv1.CreatePodRequest{Pod: pod})
	if err != nil {
		e.t.Fatalf("create pod %s: %v", s.name, err)
	}
	return resp.GetPod()
}

// startScheduler runs a Scheduler with ctx (a fenced one, say) until the
// test ends.
func (e *testEnv) startScheduler(ctx context.Context, opts Options) *Scheduler {
	e.t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(e.t)
	}
	if opts.Identity == "" {
		opts.Identity = "scheduler-test"
	}
	s, err := New(e.client, opts)
	if err != nil {
		e.t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("Run: %v", err)
		}
		flushEvents(e.t, s)
	})
	return s
}

// pods returns every pod by name.
func (e *testEnv) pods() map[string]*capstanv1.Pod {
	e.t.Helper()
	resp, err := e.client.Pods().ListPods(e.ctx, &capstanv1.ListPodsRequest{Namespace: "default"})
	if err != nil {
		e.t.Fatalf("list pods: %v", err)
	}
	out := map[string]*capstanv1.Pod{}
	for _, p := range resp.GetPods() {
		out[p.GetMetadata().GetName()] = p
	}
	return out
}

// events returns the events about pod with reason.
func (e *testEnv) events(pod, reason string) []*capstanv1.Event {
	e.t.Helper()
	resp, err := e.client.Events().ListEvents(e.ctx, &capstanv1.ListEventsRequest{Namespace: "default"})
	if err != nil {
		e.t.Fatalf("list events: %v", err)
	}
	var out []*capstanv1.Event
	for _, ev := range resp.GetEvents() {
		if ev.GetInvolvedObject().GetName() == pod && ev.GetReason() == reason {
			out = append(out, ev)
		}
	}
	return out
}

// waitBound waits until pod is bound and returns its node.
func (e *testEnv) waitBound(pod string) string {
	e.t.Helper()
	var node string
	poll.For(e.t, waitTimeout, "pod "+pod+" to be bound", func(context.Context) error {
		if node = e.pods()[pod].GetSpec().GetNodeName(); node == "" {
			return errors.New("not bound")
		}
		return nil
	})
	return node
}

// waitEvent waits for an event about pod with reason, and returns its message.
func (e *testEnv) waitEvent(pod, reason string) string {
	e.t.Helper()
	var msg string
	poll.For(e.t, waitTimeout, reason+" event of "+pod, func(context.Context) error {
		evs := e.events(pod, reason)
		if len(evs) > 0 {
			msg = evs[0].GetMessage()
		}
		if msg == "" {
			return fmt.Errorf("%d such events, none with a message", len(evs))
		}
		return nil
	})
	return msg
}

func TestBindsOnlyToAFittingNode(t *testing.T) {
	e := newEnv(t)
	ssd := map[string]string{"disk": "ssd"}
	e.createNode(nodeSpec{name: "good", labels: ssd})
	e.createNode(nodeSpec{name: "not-ready", labels: ssd, notReady: true})
	e.createNode(nodeSpec{name: "cordoned", labels: ssd, unschedulable: true})
	e.createNode(nodeSpec{name: "tainted", labels: ssd, taints: []*capstanv1.Taint{{Key: "dedicated", Value: "db", Effect: wellknown.TaintNoSchedule}}})
	e.createNode(nodeSpec{name: "too-small", labels: ssd, cpu: "100m"})
	e.createNode(nodeSpec{name: "other-disk", labels: map[string]string{"disk": "hdd"}})
	e.startScheduler(context.Background(), Options{})

	for i := range 4 {
		name := fmt.Sprintf("web-%d", i)
		e.createPod(podSpec{name: name, cpu: "500m", selector: ssd})
		if node := e.waitBound(name); node != "good" {
			t.Errorf("pod %s bound to %s, want good", name, node)
		}
		if msg, want := e.waitEvent(name, ReasonScheduled), "Successfully assigned default/"+name+" to good"; msg != want {
			t.Errorf("Scheduled event %q, want %q", msg, want)
		}
	}

	// A pod too big for what is left on good: the message names why each
	// node refuses, reasons sorted as formatted.
	e.createPod(podSpec{name: "no-room", cpu: "2100m", selector: ssd})
	const want = "0/6 nodes are available: 1 node(s) didn't match node selector, 1 node(s) had untolerated taint {dedicated: db}, " +
		"1 node(s) were not ready, 1 node(s) were unschedulable, 2 Insufficient cpu."
	if msg := e.waitEvent("no-room", ReasonFailedScheduling); msg != want {
		t.Errorf("FailedScheduling event %q,\nwant %q", msg, want)
	}
	if node := e.pods()["no-room"].GetSpec().GetNodeName(); node != "" {
		t.Errorf("no-room bound to %s", node)
	}
}

func TestUnschedulablePodBoundOnceANodeIsAdded(t *testing.T) {
	e := newEnv(t)
	e.createNode(nodeSpec{name: "sick", notReady: true})
	e.startScheduler(context.Background(), Options{})
	e.createPod(podSpec{name: "web", cpu: "1"})
	if msg, want := e.waitEvent("web", ReasonFailedScheduling), "0/1 nodes are available: 1 node(s) were not ready."; msg != want {
		t.Errorf("FailedScheduling event %q, want %q", msg, want)
	}
	e.createNode(nodeSpec{name: "fresh"})
	if node := e.waitBound("web"); node != "fresh" {
		t.Errorf("web bound to %s, want fresh", node)
	}
}

func TestHostPortConflict(t *testing.T) {
	e := newEnv(t)
	e.createNode(nodeSpec{name: "a"})
	e.createNode(nodeSpec{name: "b"})
	e.startScheduler(context.Background(), Options{})
	for i := range 3 {
		e.createPod(podSpec{name: fmt.Sprintf("proxy-%d", i), hostPort: 8443})
	}
	var bound, unbound []string
	poll.For(t, waitTimeout, "2 pods bound and 1 FailedScheduling", func(context.Context) error {
		bound, unbound = nil, nil
		for name, p := range e.pods() {
			if n := p.GetSpec().GetNodeName(); n != "" {
				bound = append(bound, n)
			} else {
				unbound = append(unbound, name)
			}
		}
		if len(bound) != 2 || len(unbound) != 1 {
			return fmt.Errorf("bound to %v, unbound %v", bound, unbound)
		}
		if len(e.events(unbound[0], ReasonFailedScheduling)) == 0 {
			return fmt.Errorf("no FailedScheduling event of %s", unbound[0])
		}
		return nil
	})
	sort.Strings(bound)
	if !slices.Equal(bound, []string{"a", "b"}) {
		t.Errorf("pods with the same host port bound to %v, want one on a and one on b", bound)
	}
	want := "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports."
	if msg := e.events(unbound[0], ReasonFailedScheduling)[0].GetMessage(); msg != want {
		t.Errorf("FailedScheduling %q, want %q", msg, want)
	}
}

func TestSpreadsPodsOfOneOwner(t *testing.T) {
	e := newEnv(t)
	for _, n := range []string{"a", "b", "c"} {
		e.createNode(nodeSpec{name: n})
	}
	for i := range 6 {
		e.createPod(podSpec{name: fmt.Sprintf("web-%d", i), cpu: "100m", owner: "web"})
	}
	e.startScheduler(context.Background(), Options{})
	perNode := map[string]int{}
	for i := range 6 {
		perNode[e.waitBound(fmt.Sprintf("web-%d", i))]++
	}
	if want := map[string]int{"a": 2, "b": 2, "c": 2}; fmt.Sprint(perNode) != fmt.Sprint(want) {
		t.Errorf("pods per node %v, want %v", perNode, want)
	}
}

// TestAssumeCacheAccounting creates 10 pods of 1 cpu before the scheduler
// starts on 2 nodes of 4 cpu: decisions run ahead of the watch, and only the
// assume cache keeps them from over-committing.
func TestAssumeCacheAccounting(t *testing.T) {
	e := newEnv(t)
	e.createNode(nodeSpec{name: "a"})
	e.createNode(nodeSpec{name: "b"})
	for i := range 10 {
		e.createPod(podSpec{name: fmt.Sprintf("job-%d", i), cpu: "1"})
	}
	s := e.startScheduler(context.Background(), Options{})
	var unbound []string
	poll.For(t, waitTimeout, "8 pods bound and 2 with FailedScheduling events", func(context.Context) error {
		unbound = nil
		perNode := map[string]int{}
		for name, p := range e.pods() {
			if n := p.GetSpec().GetNodeName(); n != "" {
				perNode[n]++
			} else {
				unbound = append(unbound, name)
			}
		}
		if perNode["a"] > 4 || perNode["b"] > 4 {
			t.Fatalf("over-committed: pods per node %v", perNode)
		}
		if len(unbound) != 2 {
			return fmt.Errorf("pods per node %v, unbound %v", perNode, unbound)
		}
		for _, name := range unbound {
			if len(e.events(name, ReasonFailedScheduling)) == 0 {
				return fmt.Errorf("no FailedScheduling event of %s", name)
			}
		}
		return nil
	})
	want := "0/2 nodes are available: 2 Insufficient cpu."
	for _, name := range unbound {
		if msg := e.events(name, ReasonFailedScheduling)[0].GetMessage(); msg != want {
			t.Errorf("%s: FailedScheduling %q, want %q", name, msg, want)
		}
	}
	poll.For(t, waitTimeout, "the watch to confirm every bind", func(context.Context) error {
		if a, b := s.cache.Usage("a").Assumed, s.cache.Usage("b").Assumed; a != 0 || b != 0 {
			return fmt.Errorf("%d binds on a and %d on b only assumed", a, b)
		}
		return nil
	})
	for _, n := range []string{"a", "b"} {
		if u := s.cache.Usage(n); u.Pods != 4 || u.Requested.MilliCPU != 4000 {
			t.Errorf("cache counts %+v on %s, want 4 pods of 4000m", u, n)
		}
	}

	// A bound pod deleted frees room for one of the waiting pods.
	victim := ""
	for name, p := range e.pods() {
		if p.GetSpec().GetNodeName() != "" {
			victim = name
			break
		}
	}
	// The test plays the victim's node agent: the pod is gone at once.
	if _, err := e.client.Pods().DeletePod(e.ctx, &capstanv1.DeletePodRequest{Namespace: "default", Name: victim, GracePeriodSeconds: proto.Int64(0)}); err != nil {
		t.Fatalf("delete %s: %v", victim, err)
	}
	poll.For(t, waitTimeout, "one waiting pod bound in the freed room", func(context.Context) error {
		bound := 0
		for _, name := range unbound {
			if e.pods()[name].GetSpec().GetNodeName() != "" {
				bound++
			}
		}
		if bound != 1 {
			return fmt.Errorf("%d of the waiting pods %v bound", bound, unbound)
		}
		return nil
	})
}

// TestPodBoundElsewhereIsNotRebound: a pod bound by someone else while it
// waited is left where it is.
func TestPodBoundElsewhereIsNotRebound(t *testing.T) {
	e := newEnv(t)
	e.createNode(nodeSpec{name: "a"})
	s := e.startScheduler(context.Background(), Options{})
	pod := e.createPod(podSpec{name: "pinned", selector: map[string]string{"disk": "ssd"}})
	e.waitEvent("pinned", ReasonFailedScheduling)

	if _, err := e.client.Pods().BindPod(e.ctx, &capstanv1.BindPodRequest{Namespace: "default", Name: "pinned", NodeName: "a"}); err != nil {
		t.Fatalf("bind by hand: %v", err)
	}
	e.createNode(nodeSpec{name: "b", labels: map[string]string{"disk": "ssd"}})
	e.createPod(podSpec{name: "marker", selector: map[string]string{"disk": "ssd"}})
	if node := e.waitBound("marker"); node != "b" {
		t.Fatalf("marker bound to %s, want b", node)
	}
	// The scheduler has seen node b (it bound marker there): pinned stays.
	if node := e.pods()["pinned"].GetSpec().GetNodeName(); node != "a" {
		t.Errorf("pinned moved to %s, want a", node)
	}
	if evs := e.events("pinned", ReasonScheduled); len(evs) != 0 {
		t.Errorf("Scheduled events for a pod the scheduler did not bind: %v", evs)
	}
	poll.For(t, waitTimeout, "the cache to count pinned on a", func(context.Context) error {
		if n := s.cache.Usage("a").Pods; n != 1 {
			return fmt.Errorf("the cache counts %d pods on a", n)
		}
		return nil
	})

	// The race itself: a decision made from a stale view (pinned unbound),
	// assumed on b, whose bind meets the pod bound to a.
	stale := pod
	info, err := framework.NewPodInfo(stale)
	if err != nil {
		t.Fatal(err)
	}
	racer, err := New(e.client, Options{Identity: "racer", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := racer.cache.Assume(info, "b"); err != nil {
		t.Fatal(err)
	}
	racer.bind(e.ctx, queue.Item{Key: "default/pinned"}, stale, "b")
	if racer.cache.IsAssumed("default/pinned") || racer.cache.Usage("b").Pods != 0 {
		t.Errorf("the failed bind left its assumption: %+v", racer.cache.Usage("b"))
	}
	if node := e.pods()["pinned"].GetSpec().GetNodeName(); node != "a" {
		t.Errorf("pinned moved to %s, want a", node)
	}
	flushEvents(t, racer)
}

// flushEvents waits for the events s recorded, so that the recorder's
// goroutine has ended when the test does.
func flushEvents(t *testing.T, s *Scheduler) {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if !s.recorder.Flush(ctx) {
		t.Error("events not written")
	}
}

// TestFencedWritesStopTheScheduler runs the scheduler with a fence on a
// lease nobody holds: its bind is refused, the fence's onLost fires, and
// nothing is written.
func TestFencedWritesStopTheScheduler(t *testing.T) {
	e := newEnv(t)
	e.createNode(nodeSpec{name: "a"})
	var lostOnce sync.Once
	lost := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fenced := client.WithFence(ctx, client.Fence{Namespace: wellknown.SystemNamespace, Name: wellknown.SchedulerLease, Epoch: 1},
		func() { lostOnce.Do(func() { close(lost); cancel() }) })
	e.startScheduler(fenced, Options{})
	e.createPod(podSpec{name: "web"})
	select {
	case <-lost:
	case <-time.After(waitTimeout):
		t.Fatal("the fence's onLost was not called")
	}
	if node := e.pods()["web"].GetSpec().GetNodeName(); node != "" {
		t.Errorf("a fenced-off scheduler bound web to %s", node)
	}
	if evs := e.events("web", ReasonScheduled); len(evs) != 0 {
		t.Errorf("a fenced-off scheduler wrote events: %v", evs)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"negative TTL", Options{AssumeTTL: -time.Second}, "Options.AssumeTTL is -1s; it must not be negative"},
		{"backoff upside down", Options{InitialBackoff: time.Minute, MaxBackoff: time.Second}, "Options.InitialBackoff (1m0s) is longer than Options.MaxBackoff (1s)"},
		{"negative binds", Options{MaxBindsInFlight: -1}, "Options.MaxBindsInFlight is -1; it must not be negative"},
	}
	for _, tt := range tests {
		if _, err := New(e.client, tt.opts); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: New = %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
	if _, err := New(nil, Options{}); err == nil {
		t.Error("New without a client: no error")
	}
	s, err := New(e.client, Options{Identity: "x"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Run(ctx); err != nil {
		t.Errorf("Run with a cancelled ctx = %v", err)
	}
	if err := s.Run(ctx); err == nil {
		t.Error("second Run: no error")
	}
}
