package replicaset

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
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

const waitTimeout = 30 * time.Second

func newClient(t *testing.T, endpoints ...string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Endpoints: endpoints, UserAgent: "replicaset-test"})
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

// runInBackground runs fn(ctx) until the test ends.
func runInBackground(t *testing.T, name string, fn func(ctx context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", name, err)
		}
	})
}

type informers struct {
	rs   *informer.Typed[*capstanv1.ReplicaSet]
	pods *informer.Typed[*capstanv1.Pod]
}

// startInformers runs a ReplicaSet informer through rsClient and a Pod
// informer through podClient, and waits for both to sync.
func startInformers(t *testing.T, rsClient, podClient *client.Client) informers {
	t.Helper()
	rsInf, err := informer.NewTyped[*capstanv1.ReplicaSet](rsClient, informer.Options{Namespace: resource.AllNamespaces})
	if err != nil {
		t.Fatal(err)
	}
	podInf, err := informer.NewTyped[*capstanv1.Pod](podClient, informer.Options{Namespace: resource.AllNamespaces})
	if err != nil {
		t.Fatal(err)
	}
	runInBackground(t, "ReplicaSet informer", rsInf.Run)
	runInBackground(t, "Pod informer", podInf.Run)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if !informer.WaitForCacheSync(ctx, rsInf.Informer, podInf.Informer) {
		t.Fatal("informers did not sync")
	}
	return informers{rs: rsInf, pods: podInf}
}

// env is one API server cluster, a client, informers and a running
// controller.
type env struct {
	cluster  *apiservertest.Cluster
	client   *client.Client
	recorder *events.Recorder
	pods     *podHighWater
	inf      informers
}

func startEnv(t *testing.T, opts Options) *env {
	t.Helper()
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	inf := startInformers(t, c, c)
	e := &env{cluster: cluster, client: c, recorder: newRecorder(t, c), pods: watchPodCount(t, c), inf: inf}
	opts.ReplicaSets, opts.Pods = inf.rs, inf.pods
	startController(t, c, e.recorder, opts)
	return e
}

func newRecorder(t *testing.T, c *client.Client) *events.Recorder {
	r := events.NewRecorder(c, &capstanv1.EventSource{Component: "replicaset-test"}, nil)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		r.Flush(ctx)
	})
	return r
}

func startController(t *testing.T, c *client.Client, recorder *events.Recorder, opts Options) *Controller {
	t.Helper()
	opts.Loop.Workers = 2
	ctrl, err := New(c, recorder, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	runInBackground(t, "controller", ctrl.Run)
	return ctrl
}

func replicaSet(name string, replicas int32, labels map[string]string) *capstanv1.ReplicaSet {
	return &capstanv1.ReplicaSet{
		Metadata: &capstanv1.ObjectMeta{Namespace: "default", Name: name},
		Spec: &capstanv1.ReplicaSetSpec{
			Replicas: &replicas,
			Selector: &capstanv1.LabelSelector{MatchLabels: labels},
			Template: &capstanv1.PodTemplateSpec{
				Metadata: &capstanv1.ObjectMeta{Labels: labels},
				Spec: &capstanv1.PodSpec{Containers: []*capstanv1.Container{
					{Name: "main", Command: []string{"sleep", "3600"}},
				}},
			},
		},
	}
}

func create[T resource.Object](t *testing.T, ctx context.Context, c *client.Client, obj T) T {
	t.Helper()
	out, err := c.Create(ctx, obj)
	if err != nil {
		t.Fatalf("create %s: %v", obj.GetMetadata().GetName(), err)
	}
	return out.(T)
}

func getRS(t *testing.T, ctx context.Context, c *client.Client, name string) *capstanv1.ReplicaSet {
	t.Helper()
	obj, err := c.Get(ctx, replicaSetKind, "default", name)
	if err != nil {
		t.Fatalf("get ReplicaSet %s: %v", name, err)
	}
	return obj.(*capstanv1.ReplicaSet)
}

// updateRS applies change to the current ReplicaSet, retrying conflicts.
func updateRS(t *testing.T, ctx context.Context, c *client.Client, name string, change func(rs *capstanv1.ReplicaSet)) *capstanv1.ReplicaSet {
	t.Helper()
	for {
		rs := getRS(t, ctx, c, name)
		change(rs)
		out, err := c.Update(ctx, rs)
		if err == nil {
			return out.(*capstanv1.ReplicaSet)
		}
		if ctx.Err() != nil {
			t.Fatalf("update ReplicaSet %s: %v", name, err)
		}
	}
}

func livePods(t *testing.T, ctx context.Context, c *client.Client) []*capstanv1.Pod {
	t.Helper()
	res, err := c.ListAll(ctx, podKind, client.ListOptions{Namespace: "default"})
	if err != nil {
		t.Fatalf("list pods: %v", err)
	}
	var out []*capstanv1.Pod
	for _, obj := range res.Items {
		// A bound pod being deleted waits for its node agent: it is no
		// longer live.
		if obj.GetMetadata().GetDeleteTime() == nil {
			out = append(out, obj.(*capstanv1.Pod))
		}
	}
	return out
}

// podsOwnedBy returns the live pods whose controller is rs.
func podsOwnedBy(t *testing.T, ctx context.Context, c *client.Client, rs *capstanv1.ReplicaSet) []*capstanv1.Pod {
	t.Helper()
	var out []*capstanv1.Pod
	for _, pod := range livePods(t, ctx, c) {
		if ref := controllerRef(pod.GetMetadata()); ref != nil && ref.GetUid() == rs.GetMetadata().GetUid() {
			out = append(out, pod)
		}
	}
	return out
}

func podNamesOf(pods []*capstanv1.Pod) []string {
	var names []string
	for _, p := range pods {
		names = append(names, p.GetMetadata().GetName())
	}
	slices.Sort(names)
	return names
}

// setPodStatus writes a pod's status: its phase and, if ready is not nil,
// its Ready condition.
func setPodStatus(t *testing.T, ctx context.Context, c *client.Client, name, phase string, ready *bool) {
	t.Helper()
	obj, err := c.Get(ctx, podKind, "default", name)
	if err != nil {
		t.Fatalf("get pod %s: %v", name, err)
	}
	pod := obj.(*capstanv1.Pod)
	pod.Status = &capstanv1.PodStatus{Phase: phase}
	if ready != nil {
		status := wellknown.ConditionFalse
		if *ready {
			status = wellknown.ConditionTrue
		}
		pod.Status.Conditions = []*capstanv1.Condition{{
			Type: wellknown.PodReady, Status: status, LastTransitionTime: timestamppb.Now(),
		}}
	}
	if _, err := c.UpdateStatus(ctx, pod); err != nil {
		t.Fatalf("update status of pod %s: %v", name, err)
	}
}

func bind(t *testing.T, ctx context.Context, c *client.Client, pod, node string) {
	t.Helper()
	if _, err := c.Pods().BindPod(ctx, &capstanv1.BindPodRequest{Namespace: "default", Name: pod, NodeName: node}); err != nil {
		t.Fatalf("bind pod %s: %v", pod, err)
	}
}

func TestReachesReplicasAndReportsStatus(t *testing.T) {
	e := startEnv(t, Options{})
	ctx := testContext(t)
	rs := create(t, ctx, e.client, replicaSet("web", 3, map[string]string{"app": "web"}))

	poll.For(t, waitTimeout, "3 pods", poll.True(func() bool { return len(podsOwnedBy(t, ctx, e.client, rs)) == 3 }))
	pods := podsOwnedBy(t, ctx, e.client, rs)
	for _, pod := range pods {
		meta := pod.GetMetadata()
		if !strings.HasPrefix(meta.GetName(), "web-") || len(meta.GetName()) != len("web-")+5 {
			t.Errorf("pod name %q is not web-<5 characters>", meta.GetName())
		}
		ref := controllerRef(meta)
		if ref.GetKind() != "ReplicaSet" || ref.GetName() != "web" || !ref.GetBlockOwnerDeletion() || len(meta.GetOwnerReferences()) != 1 {
			t.Errorf("pod %s owner references = %v", meta.GetName(), meta.GetOwnerReferences())
		}
		if meta.GetLabels()["app"] != "web" {
			t.Errorf("pod %s labels = %v", meta.GetName(), meta.GetLabels())
		}
	}
	poll.For(t, waitTimeout, "status replicas 3", poll.True(func() bool {
		st := getRS(t, ctx, e.client, "web").GetStatus()
		return st.GetReplicas() == 3 && st.GetFullyLabeledReplicas() == 3 && st.GetReadyReplicas() == 0 && st.GetObservedGeneration() == 1
	}))

	yes, no := true, false
	setPodStatus(t, ctx, e.client, pods[0].GetMetadata().GetName(), wellknown.PodRunning, &yes)
	setPodStatus(t, ctx, e.client, pods[1].GetMetadata().GetName(), wellknown.PodRunning, &yes)
	setPodStatus(t, ctx, e.client, pods[2].GetMetadata().GetName(), wellknown.PodRunning, &no)
	poll.For(t, waitTimeout, "2 ready and available", poll.True(func() bool {
		st := getRS(t, ctx, e.client, "web").GetStatus()
		return st.GetReadyReplicas() == 2 && st.GetAvailableReplicas() == 2 && st.GetReplicas() == 3
	}))

	// min_ready_seconds: ready pods are not available at once; they become
	// so without another event.
	updateRS(t, ctx, e.client, "web", func(rs *capstanv1.ReplicaSet) { rs.Spec.MinReadySeconds = 1 })
	setPodStatus(t, ctx, e.client, pods[2].GetMetadata().GetName(), wellknown.PodRunning, &yes)
	poll.For(t, waitTimeout, "3 ready, then 3 available", poll.True(func() bool {
		st := getRS(t, ctx, e.client, "web").GetStatus()
		return st.GetReadyReplicas() == 3 && st.GetAvailableReplicas() == 3 && st.GetObservedGeneration() == 2
	}))
	e.pods.check(t, 3, 3)

	e.recorder.Flush(ctx)
	poll.For(t, waitTimeout, "3 SuccessfulCreate events", poll.True(func() bool {
		res, err := e.client.ListAll(ctx, resource.MustLookup("Event"), client.ListOptions{Namespace: "default"})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, obj := range res.Items {
			if ev := obj.(*capstanv1.Event); ev.GetReason() == ReasonSuccessfulCreate && ev.GetInvolvedObject().GetName() == "web" {
				n++
			}
		}
		return n == 3
	}))
}

func TestScaleDownPrefersPodsNotYetUseful(t *testing.T) {
	e := startEnv(t, Options{})
	ctx := testContext(t)
	rs := create(t, ctx, e.client, replicaSet("web", 4, map[string]string{"app": "web"}))
	poll.For(t, waitTimeout, "4 pods", poll.True(func() bool { return len(podsOwnedBy(t, ctx, e.client, rs)) == 4 }))
	names := podNamesOf(podsOwnedBy(t, ctx, e.client, rs))

	// names[0]: unassigned, Pending. names[1]: assigned, Pending.
	// names[2]: assigned, Running, not ready. names[3]: assigned, Running, ready.
	yes, no := true, false
	for _, n := range names[1:] {
		bind(t, ctx, e.client, n, "node-a")
	}
	setPodStatus(t, ctx, e.client, names[2], wellknown.PodRunning, &no)
	setPodStatus(t, ctx, e.client, names[3], wellknown.PodRunning, &yes)
	poll.For(t, waitTimeout, "status to see the ready pod", poll.True(func() bool {
		return getRS(t, ctx, e.client, "web").GetStatus().GetReadyReplicas() == 1
	}))

	for _, step := range []struct {
		replicas int32
		keep     []string
	}{
		{3, names[1:]},
		{2, names[2:]},
		{1, names[3:]},
	} {
		updateRS(t, ctx, e.client, "web", func(rs *capstanv1.ReplicaSet) { rs.Spec.Replicas = &step.replicas })
		poll.For(t, waitTimeout, fmt.Sprintf("%d pods", step.replicas), poll.True(func() bool {
			return len(podsOwnedBy(t, ctx, e.client, rs)) == int(step.replicas)
		}))
		if got := podNamesOf(podsOwnedBy(t, ctx, e.client, rs)); !slices.Equal(got, step.keep) {
			t.Fatalf("after scaling to %d the pods are %v, want %v", step.replicas, got, step.keep)
		}
	}

	three := int32(3)
	updateRS(t, ctx, e.client, "web", func(rs *capstanv1.ReplicaSet) { rs.Spec.Replicas = &three })
	poll.For(t, waitTimeout, "3 pods again", poll.True(func() bool { return len(podsOwnedBy(t, ctx, e.client, rs)) == 3 }))
	if got := podNamesOf(podsOwnedBy(t, ctx, e.client, rs)); !slices.Contains(got, names[3]) {
		t.Errorf("scaling up replaced the ready pod: %v", got)
	}
	poll.For(t, waitTimeout, "status replicas 3", poll.True(func() bool { return getRS(t, ctx, e.client, "web").GetStatus().GetReplicas() == 3 }))
	e.pods.check(t, 3, 4)
}

func TestAdoptsMatchingOrphansAndReleasesPodsThatNoLongerMatch(t *testing.T) {
	e := startEnv(t, Options{})
	ctx := testContext(t)
	labels := map[string]string{"app": "adopt"}
	orphan := create(t, ctx, e.client, &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Namespace: "default", Name: "orphan", Labels: labels},
		Spec:     replicaSet("x", 1, labels).GetSpec().GetTemplate().GetSpec(),
	})
	other := create(t, ctx, e.client, &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Namespace: "default", Name: "other", Labels: map[string]string{"app": "other"}},
		Spec:     replicaSet("x", 1, labels).GetSpec().GetTemplate().GetSpec(),
	})
	// With the orphan in the controller's cache, the ReplicaSet adopts it
	// instead of creating a second pod.
	poll.For(t, waitTimeout, "the orphan in the pod cache", poll.True(func() bool { _, ok := e.inf.pods.Get("default", "orphan"); return ok }))
	rs := create(t, ctx, e.client, replicaSet("adopter", 2, labels))

	poll.For(t, waitTimeout, "2 owned pods", poll.True(func() bool { return len(podsOwnedBy(t, ctx, e.client, rs)) == 2 }))
	if got := podNamesOf(podsOwnedBy(t, ctx, e.client, rs)); !slices.Contains(got, "orphan") {
		t.Fatalf("owned pods %v do not include the orphan", got)
	}
	e.pods.check(t, 3, 3) // the adopted orphan, one new, the unrelated one

	// The orphan's labels change: it is released (not deleted) and replaced.
	obj, err := e.client.Get(ctx, podKind, "default", "orphan")
	if err != nil {
		t.Fatal(err)
	}
	adopted := obj.(*capstanv1.Pod)
	adopted.Metadata.Labels = map[string]string{"app": "gone"}
	if _, err := e.client.Update(ctx, adopted); err != nil {
		t.Fatalf("relabel: %v", err)
	}
	poll.For(t, waitTimeout, "orphan released and replaced", poll.True(func() bool {
		owned := podNamesOf(podsOwnedBy(t, ctx, e.client, rs))
		return len(owned) == 2 && !slices.Contains(owned, "orphan")
	}))
	obj, err = e.client.Get(ctx, podKind, "default", "orphan")
	if err != nil {
		t.Fatalf("the released pod was deleted: %v", err)
	}
	if refs := obj.GetMetadata().GetOwnerReferences(); len(refs) != 0 {
		t.Errorf("released pod still has owner references %v", refs)
	}
	if obj.GetMetadata().GetUid() != orphan.GetMetadata().GetUid() {
		t.Error("the released pod is not the original one")
	}
	obj, err = e.client.Get(ctx, podKind, "default", "other")
	if err != nil || len(obj.GetMetadata().GetOwnerReferences()) != 0 || obj.GetMetadata().GetUid() != other.GetMetadata().GetUid() {
		t.Errorf("the non-matching pod was touched: %v, %v", obj, err)
	}
}

func TestReplacesAPodDeletedElsewhere(t *testing.T) {
	e := startEnv(t, Options{})
	ctx := testContext(t)
	rs := create(t, ctx, e.client, replicaSet("web", 2, map[string]string{"app": "web"}))
	poll.For(t, waitTimeout, "2 pods", poll.True(func() bool { return len(podsOwnedBy(t, ctx, e.client, rs)) == 2 }))
	before := podNamesOf(podsOwnedBy(t, ctx, e.client, rs))

	if _, err := e.client.Delete(ctx, podKind, "default", before[0], nil); err != nil {
		t.Fatalf("delete pod: %v", err)
	}
	poll.For(t, waitTimeout, "a replacement", poll.True(func() bool {
		now := podNamesOf(podsOwnedBy(t, ctx, e.client, rs))
		return len(now) == 2 && !slices.Contains(now, before[0]) && slices.Contains(now, before[1])
	}))
}

// lagEnv has two API replicas: the pod informer reads through replica 1
// only, everything else goes through replica 0, so stopping replica 1
// freezes the pod cache while the controller's writes still land.
type lagEnv struct {
	cluster *apiservertest.Cluster
	client  *client.Client
	logs    *logRecorder
	pods    *podHighWater
}

func startLagEnv(t *testing.T, opts Options) *lagEnv {
	t.Helper()
	cluster := apiservertest.Start(t, 2)
	addrs := cluster.Addrs()
	c := newClient(t, addrs[0])
	podClient := newClient(t, addrs[1])
	rsInf := startInformers(t, c, podClient)
	logs := &logRecorder{}
	opts.ReplicaSets, opts.Pods = rsInf.rs, rsInf.pods
	opts.Loop.Logger = slog.New(logs)
	startController(t, c, nil, opts)
	return &lagEnv{cluster: cluster, client: c, logs: logs, pods: watchPodCount(t, c)}
}

// bumpGeneration changes the ReplicaSet's spec and waits until the
// controller has synced it (its status shows the new generation): one
// more sync, made with whatever the pod cache holds.
func bumpGeneration(t *testing.T, ctx context.Context, c *client.Client, name string) {
	t.Helper()
	rs := updateRS(t, ctx, c, name, func(rs *capstanv1.ReplicaSet) { rs.Spec.MinReadySeconds++ })
	poll.For(t, waitTimeout, "the controller to sync the new generation", poll.True(func() bool {
		return getRS(t, ctx, c, name).GetStatus().GetObservedGeneration() == rs.GetMetadata().GetGeneration()
	}))
}

// The pod cache stops while the controller creates pods: it must not count
// the ReplicaSet's pods as missing and create them again.
func TestExpectationsKeepALaggingCacheFromCreatingTwice(t *testing.T) {
	e := startLagEnv(t, Options{})
	ctx := testContext(t)
	e.cluster.StopReplica(1) // the pod cache is frozen from here on

	rs := create(t, ctx, e.client, replicaSet("web", 3, map[string]string{"app": "web"}))
	poll.For(t, waitTimeout, "3 pods", poll.True(func() bool { return len(podsOwnedBy(t, ctx, e.client, rs)) >= 3 }))
	for range 3 {
		bumpGeneration(t, ctx, e.client, "web")
	}
	if n := len(livePods(t, ctx, e.client)); n != 3 {
		t.Fatalf("%d pods with a lagging cache, want 3", n)
	}

	e.cluster.StartReplica(1)
	poll.For(t, waitTimeout, "status to show 3 replicas", poll.True(func() bool {
		return getRS(t, ctx, e.client, "web").GetStatus().GetReplicas() == 3
	}))
	bumpGeneration(t, ctx, e.client, "web")
	e.pods.check(t, 3, 3)
}

// With expectations that expire quickly, a cache that stays behind is not
// trusted either: the controller reads the pods from the API.
func TestExpiredExpectationsReadTheAPIInsteadOfTheCache(t *testing.T) {
	e := startLagEnv(t, Options{ExpectationsTimeout: 100 * time.Millisecond})
	ctx := testContext(t)
	e.cluster.StopReplica(1)

	rs := create(t, ctx, e.client, replicaSet("web", 3, map[string]string{"app": "web"}))
	poll.For(t, waitTimeout, "3 pods", poll.True(func() bool { return len(podsOwnedBy(t, ctx, e.client, rs)) >= 3 }))
	poll.For(t, waitTimeout, "the expectations to expire", poll.True(func() bool {
		bumpGeneration(t, ctx, e.client, "web")
		return e.logs.count("expectations expired") > 0
	}))
	for range 3 {
		bumpGeneration(t, ctx, e.client, "web") // read from the API: nothing to do
	}
	if n := len(livePods(t, ctx, e.client)); n != 3 {
		t.Fatalf("%d pods, want 3", n)
	}
	e.cluster.StartReplica(1)
	poll.For(t, waitTimeout, "status to show 3 replicas", poll.True(func() bool {
		return getRS(t, ctx, e.client, "web").GetStatus().GetReplicas() == 3
	}))
	bumpGeneration(t, ctx, e.client, "web")
	e.pods.check(t, 3, 3)
}

// A controller whose context carries a stale fencing token (a deposed
// leader) changes nothing: not a pod, not a status, not an event.
func TestStaleFenceWritesNothing(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)
	create(t, ctx, c, replicaSet("web", 3, map[string]string{"app": "web"}))
	inf := startInformers(t, c, c)
	recorder := newRecorder(t, c)

	ctrl, err := New(c, recorder, Options{ReplicaSets: inf.rs, Pods: inf.pods, Loop: reconcile.Options{Workers: 2}})
	if err != nil {
		t.Fatal(err)
	}
	var lost atomic.Int32
	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	fenced := client.WithFence(runCtx,
		client.Fence{Namespace: wellknown.SystemNamespace, Name: wellknown.ControllerManagerLease, Epoch: 1 << 40},
		func() { lost.Add(1); stop() }) // as the elector does: stop at once
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(fenced) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the controller never wrote (or never noticed it lost the lease)")
	}
	if lost.Load() == 0 {
		t.Fatal("onLost was not called")
	}
	recorder.Flush(ctx)

	if pods := livePods(t, ctx, c); len(pods) != 0 {
		t.Errorf("a deposed controller created pods: %v", podNamesOf(pods))
	}
	if st := getRS(t, ctx, c, "web").GetStatus(); st.GetObservedGeneration() != 0 || st.GetReplicas() != 0 {
		t.Errorf("a deposed controller wrote the status: %v", st)
	}
	res, err := c.ListAll(ctx, resource.MustLookup("Event"), client.ListOptions{Namespace: resource.AllNamespaces})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Items) != 0 {
		t.Errorf("a deposed controller recorded events: %v", res.Items)
	}
}

// podHighWater counts the live pods in the API (not being deleted), in
// revision order (through its own informer), and remembers the most there
// ever were at once.
type podHighWater struct {
	mu       sync.Mutex
	now, max int
}

func watchPodCount(t *testing.T, c *client.Client) *podHighWater {
	t.Helper()
	inf, err := informer.NewTyped[*capstanv1.Pod](c, informer.Options{Namespace: resource.AllNamespaces})
	if err != nil {
		t.Fatal(err)
	}
	hw := &podHighWater{}
	live := func(p *capstanv1.Pod) bool { return p.GetMetadata().GetDeleteTime() == nil }
	inf.AddEventHandler(informer.TypedHandler[*capstanv1.Pod]{
		OnAdd: func(p *capstanv1.Pod) {
			if !live(p) {
				return
			}
			hw.mu.Lock()
			defer hw.mu.Unlock()
			hw.now++
			hw.max = max(hw.max, hw.now)
		},
		OnUpdate: func(old, p *capstanv1.Pod) {
			if live(old) && !live(p) {
				hw.mu.Lock()
				defer hw.mu.Unlock()
				hw.now--
			}
		},
		OnDelete: func(p *capstanv1.Pod) {
			if !live(p) {
				return
			}
			hw.mu.Lock()
			defer hw.mu.Unlock()
			hw.now--
		},
	})
	runInBackground(t, "pod counter", inf.Run)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if !inf.WaitForSync(ctx) {
		t.Fatal("pod counter did not sync")
	}
	return hw
}

// check fails the test if there ever were more than limit pods; it first
// waits until the counter has seen the want pods there are now.
func (hw *podHighWater) check(t *testing.T, want, limit int) {
	t.Helper()
	poll.For(t, waitTimeout, fmt.Sprintf("the pod counter to see %d pods", want), poll.True(func() bool {
		hw.mu.Lock()
		defer hw.mu.Unlock()
		return hw.now == want
	}))
	hw.mu.Lock()
	defer hw.mu.Unlock()
	if hw.max > limit {
		t.Errorf("there were %d pods at once, more than %d", hw.max, limit)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	rsInf, _ := informer.NewTyped[*capstanv1.ReplicaSet](c, informer.Options{})
	podInf, _ := informer.NewTyped[*capstanv1.Pod](c, informer.Options{})
	tests := []struct {
		name   string
		client *client.Client
		opts   Options
		want   string
	}{
		{"no client", nil, Options{ReplicaSets: rsInf, Pods: podInf}, "client is nil"},
		{"no ReplicaSet informer", c, Options{Pods: podInf}, "Options.ReplicaSets"},
		{"no Pod informer", c, Options{ReplicaSets: rsInf}, "Options.Pods"},
		{"negative timeout", c, Options{ReplicaSets: rsInf, Pods: podInf, ExpectationsTimeout: -1}, "ExpectationsTimeout"},
		{"negative burst", c, Options{ReplicaSets: rsInf, Pods: podInf, BurstReplicas: -1}, "BurstReplicas"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.client, nil, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New = %v, want an error about %q", err, tt.want)
			}
		})
	}
}

// logRecorder is a slog.Handler that keeps the messages it receives.
type logRecorder struct {
	mu       sync.Mutex
	messages []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.messages = append(l.messages, rec.Message)
	return nil
}
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

func (l *logRecorder) count(prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.messages {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

// A new leader whose informers were kept warm may start with a pod cache
// that misses the previous leader's last creates: it waits for the cache to
// catch up with the API before acting.
func TestStartWaitsForThePodCacheToCatchUp(t *testing.T) {
	cluster := apiservertest.Start(t, 2)
	addrs := cluster.Addrs()
	c := newClient(t, addrs[0])
	inf := startInformers(t, c, newClient(t, addrs[1]))
	counter := watchPodCount(t, c)
	ctx := testContext(t)
	cluster.StopReplica(1) // the pod cache is frozen from here on

	// The previous leader's work: a ReplicaSet and its pods.
	labels := map[string]string{"app": "web"}
	rs := create(t, ctx, c, replicaSet("web", 3, labels))
	for i := range 3 {
		pod := newPod(rs, fmt.Sprintf("web-prev%d", i))
		create(t, ctx, c, pod)
	}
	poll.For(t, waitTimeout, "the ReplicaSet in the cache", poll.True(func() bool { _, ok := inf.rs.Get("default", "web"); return ok }))

	startController(t, c, nil, Options{ReplicaSets: inf.rs, Pods: inf.pods})
	cluster.StartReplica(1)
	poll.For(t, waitTimeout, "status to show 3 replicas", poll.True(func() bool {
		return getRS(t, ctx, c, "web").GetStatus().GetReplicas() == 3
	}))
	counter.check(t, 3, 3)
	if got := podNamesOf(livePods(t, ctx, c)); !slices.Equal(got, []string{"web-prev0", "web-prev1", "web-prev2"}) {
		t.Fatalf("pods = %v, want only the previous leader's", got)
	}
}

// If the cache does not catch up in time, the controller reads the pods
// from the API instead.
func TestStartReadsTheAPIWhileThePodCacheIsBehind(t *testing.T) {
	cluster := apiservertest.Start(t, 2)
	addrs := cluster.Addrs()
	c := newClient(t, addrs[0])
	inf := startInformers(t, c, newClient(t, addrs[1]))
	counter := watchPodCount(t, c)
	ctx := testContext(t)
	cluster.StopReplica(1)

	rs := create(t, ctx, c, replicaSet("web", 3, map[string]string{"app": "web"}))
	for i := range 2 {
		create(t, ctx, c, newPod(rs, fmt.Sprintf("web-prev%d", i)))
	}
	poll.For(t, waitTimeout, "the ReplicaSet in the cache", poll.True(func() bool { _, ok := inf.rs.Get("default", "web"); return ok }))

	startController(t, c, nil, Options{ReplicaSets: inf.rs, Pods: inf.pods, ExpectationsTimeout: 100 * time.Millisecond})
	poll.For(t, waitTimeout, "a third pod", poll.True(func() bool { return len(livePods(t, ctx, c)) >= 3 }))
	for range 3 {
		bumpGeneration(t, ctx, c, "web")
	}
	counter.check(t, 3, 3)
}
