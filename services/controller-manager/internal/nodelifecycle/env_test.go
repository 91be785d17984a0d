package nodelifecycle

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/timestamppb"
	testingclock "k8s.io/utils/clock/testing"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/events"
	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/reconcile"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Options of the controller under test.
const (
	testGrace           = 20 * time.Second
	testEvictionTimeout = 10 * time.Second
	testMonitorPeriod   = time.Second
	waitTimeout         = 20 * time.Second
)

// env is an API server, the controller on a fake clock, and the informers
// it reads (so a test can wait for them to reflect a change).
type env struct {
	t      *testing.T
	ctx    context.Context
	client *client.Client
	clock  *testingclock.FakeClock
	ctrl   *Controller
	leases *informer.Typed[*capstanv1.Lease]
	nodes  *informer.Typed[*capstanv1.Node]

	mu         sync.Mutex
	syncStarts int64
	completed  map[string]int64 // node -> start number of its last successful sync
}

// startEnv creates nodes (each with a lease if leased says so) and pods
// first, then starts the controller: the clock's "now" is its start.
func startEnv(t *testing.T, setup func(e *env)) *env {
	t.Helper()
	cluster := apiservertest.Start(t, 1)
	c, err := client.New(client.Config{Endpoints: cluster.Addrs(), UserAgent: "nodelifecycle-test"})
	if err != nil {
		t.Fatalf("client.New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithCancel(t.Context())
	e := &env{t: t, ctx: ctx, client: c, clock: testingclock.NewFakeClock(time.Now()), completed: map[string]int64{}}
	if setup != nil {
		setup(e)
	}

	if e.nodes, err = informer.NewTyped[*capstanv1.Node](c, informer.Options{}); err != nil {
		t.Fatal(err)
	}
	if e.leases, err = informer.NewTyped[*capstanv1.Lease](c, informer.Options{Namespace: resource.AllNamespaces}); err != nil {
		t.Fatal(err)
	}
	recorder := events.NewRecorder(c, &capstanv1.EventSource{Component: "nodelifecycle-test"}, nil)
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.ctrl, err = New(c, recorder, Options{
		Nodes: e.nodes, Leases: e.leases,
		PodEvictionTimeout: testEvictionTimeout, StartupGrace: testGrace, MonitorPeriod: testMonitorPeriod,
		Loop: reconcile.Options{Workers: 2, Logger: logger, Clock: e.clock},
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.ctrl.syncing = func(node string) func(error) {
		e.mu.Lock()
		e.syncStarts++
		start := e.syncStarts
		e.mu.Unlock()
		return func(err error) {
			if err != nil {
				return
			}
			e.mu.Lock()
			e.completed[node] = max(e.completed[node], start)
			e.mu.Unlock()
		}
	}

	var wg sync.WaitGroup
	for _, inf := range []*informer.Informer{e.nodes.Informer, e.leases.Informer} {
		wg.Go(func() { _ = inf.Run(ctx) })
	}
	wg.Go(func() {
		if err := e.ctrl.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		flushCtx, flushCancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer flushCancel()
		recorder.Flush(flushCtx)
	})
	// The controller is judging once its workers and its monitor run.
	select {
	case <-e.ctrl.loop.Started():
	case <-time.After(waitTimeout):
		t.Fatal("the controller did not start")
	}
	return e
}

// waitFor waits until cond holds; cond's string says the state it saw.
func (e *env) waitFor(what string, cond func() (bool, string)) {
	e.t.Helper()
	poll.For(e.t, waitTimeout, what, poll.Reported(cond))
}

// syncNow makes the controller look at node at the fake clock's current
// time and waits until it has, with the caches as they are now (a sync
// that started after this call).
func (e *env) syncNow(node string) {
	e.t.Helper()
	e.mu.Lock()
	marker := e.syncStarts
	e.mu.Unlock()
	e.waitFor("a sync of "+node, func() (bool, string) {
		// Asked again on every look: a sync that failed waits out its
		// back-off on the fake clock, which only the test moves.
		e.ctrl.enqueue(node)
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.completed[node] > marker, fmt.Sprintf("last completed sync %d, marker %d", e.completed[node], marker)
	})
}

// step moves the fake clock on.
func (e *env) step(d time.Duration) { e.clock.Step(d) }

func (e *env) createNode(name string) {
	e.t.Helper()
	node := &capstanv1.Node{Metadata: &capstanv1.ObjectMeta{Name: name, Labels: map[string]string{wellknown.LabelHostname: name}}}
	resp, err := e.client.Nodes().CreateNode(e.ctx, &capstanv1.CreateNodeRequest{Node: node})
	if err != nil {
		e.t.Fatalf("CreateNode: %v", err)
	}
	node = resp.GetNode()
	node.Status = &capstanv1.NodeStatus{
		Capacity:    map[string]string{"cpu": "4", "memory": "8Gi"},
		Allocatable: map[string]string{"cpu": "4", "memory": "8Gi"},
		Conditions: []*capstanv1.Condition{{
			Type: wellknown.NodeReady, Status: wellknown.ConditionTrue, Reason: "AgentReady",
			LastHeartbeatTime: timestamppb.Now(), LastTransitionTime: timestamppb.Now(),
		}},
	}
	if _, err := e.client.Nodes().UpdateNodeStatus(e.ctx, &capstanv1.UpdateNodeStatusRequest{Node: node}); err != nil {
		e.t.Fatalf("UpdateNodeStatus: %v", err)
	}
}

func (e *env) getNode(name string) *capstanv1.Node {
	e.t.Helper()
	resp, err := e.client.Nodes().GetNode(e.ctx, &capstanv1.GetNodeRequest{Name: name})
	if err != nil {
		e.t.Fatalf("GetNode: %v", err)
	}
	return resp.GetNode()
}

// acquireLease takes the node's lease as its agent would, with a TTL that
// outlives the test: the test decides when it is gone.
func (e *env) acquireLease(node string) {
	e.t.Helper()
	resp, err := e.client.Leases().AcquireLease(e.ctx, &capstanv1.AcquireLeaseRequest{
		Namespace: wellknown.NodeLeaseNamespace, Name: node, HolderIdentity: node, LeaseDurationSeconds: 600,
	})
	if err != nil {
		e.t.Fatalf("AcquireLease: %v", err)
	}
	if !resp.GetAcquired() {
		e.t.Fatalf("AcquireLease %s: not acquired", node)
	}
	if e.leases != nil {
		e.waitFor("the lease of "+node+" in the cache", func() (bool, string) {
			_, ok := e.leases.Get(wellknown.NodeLeaseNamespace, node)
			return ok, "absent"
		})
	}
}

// expireLease deletes the node's lease, as etcd does when its TTL runs out,
// and waits until the controller's cache has seen it.
func (e *env) expireLease(node string) {
	e.t.Helper()
	_, err := e.client.Leases().DeleteLease(e.ctx, &capstanv1.DeleteLeaseRequest{Namespace: wellknown.NodeLeaseNamespace, Name: node})
	if err != nil {
		e.t.Fatalf("DeleteLease: %v", err)
	}
	if e.leases != nil {
		e.waitFor("the lease of "+node+" gone from the cache", func() (bool, string) {
			_, ok := e.leases.Get(wellknown.NodeLeaseNamespace, node)
			return !ok, "present"
		})
	}
}

// createPod creates a pod bound to node.
func (e *env) createPod(name, node string, tolerations ...*capstanv1.Toleration) {
	e.t.Helper()
	pod := &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: &capstanv1.PodSpec{
			NodeName:    node,
			Containers:  []*capstanv1.Container{{Name: "main", Command: []string{"/bin/sleep", "3600"}}},
			Tolerations: tolerations,
		},
	}
	if _, err := e.client.Pods().CreatePod(e.ctx, &capstanv1.CreatePodRequest{Pod: pod}); err != nil {
		e.t.Fatalf("CreatePod: %v", err)
	}
}

func (e *env) podExists(name string) bool {
	e.t.Helper()
	_, err := e.client.Pods().GetPod(e.ctx, &capstanv1.GetPodRequest{Namespace: "default", Name: name})
	if apierrors.IsNotFound(err) {
		return false
	}
	if err != nil {
		e.t.Fatalf("GetPod: %v", err)
	}
	return true
}

// wantPods fails the test unless exactly the pods in want (name -> exists)
// exist as said.
func (e *env) wantPods(when string, want map[string]bool) {
	e.t.Helper()
	for name, exists := range want {
		if got := e.podExists(name); got != exists {
			e.t.Errorf("%s: pod %s exists=%v, want %v", when, name, got, exists)
		}
	}
}

// healthy reports whether node has no unreachable taint and Ready=True.
func (e *env) healthy(name string) (bool, string) {
	node := e.getNode(name)
	return unreachableTaint(node) == nil && readyCondition(node).GetStatus() == wellknown.ConditionTrue, describeNode(node)
}

// markedDead reports whether node has Ready=Unknown for the lease and the
// unreachable NoExecute taint.
func (e *env) markedDead(name string) (bool, string) {
	node := e.getNode(name)
	ready := readyCondition(node)
	return unreachableTaint(node) != nil && ready.GetStatus() == wellknown.ConditionUnknown &&
		ready.GetReason() == reasonNodeStatusUnknown && ready.GetMessage() == messageLeaseNotRenewed, describeNode(node)
}

func describeNode(node *capstanv1.Node) string {
	ready := readyCondition(node)
	return fmt.Sprintf("node %s: taints %v, Ready %s (%s: %s)", node.GetMetadata().GetName(), node.GetSpec().GetTaints(),
		ready.GetStatus(), ready.GetReason(), ready.GetMessage())
}

// eventReasons lists the reasons of events about the object with uid.
func (e *env) eventReasons(uid string) []string {
	e.t.Helper()
	res, err := e.client.ListAll(e.ctx, resource.MustLookup("Event"), client.ListOptions{Namespace: resource.AllNamespaces})
	if err != nil {
		e.t.Fatalf("list events: %v", err)
	}
	var reasons []string
	for _, obj := range res.Items {
		if ev := obj.(*capstanv1.Event); ev.GetInvolvedObject().GetUid() == uid {
			reasons = append(reasons, ev.GetReason())
		}
	}
	return reasons
}
