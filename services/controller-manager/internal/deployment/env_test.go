package deployment

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

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
	"github.com/capstan-dev/capstan/services/controller-manager/internal/replicaset"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testNamespace = "default"

var podKind = resource.MustLookup("Pod")

// env is an API server, the controller over real informers, and a stand-in
// for the ReplicaSet controller and the pods (see simulatePods).
type env struct {
	t           *testing.T
	ctx         context.Context
	client      *client.Client
	replicaSets *informer.Typed[*capstanv1.ReplicaSet] // the controller's cache
}

// envOptions choose what plays the ReplicaSet controller.
type envOptions struct {
	// stuck, if not nil, names ReplicaSets whose pods never become
	// available (simulated pods only).
	stuck func(*capstanv1.ReplicaSet) bool
	// realReplicaSets runs the real ReplicaSet controller, and a stand-in
	// for the node agents that marks every pod Running and Ready, instead
	// of simulatePods.
	realReplicaSets bool
}

// startEnv starts everything for one test with simulated pods; stuck, if not
// nil, names ReplicaSets whose pods never become available.
func startEnv(t *testing.T, stuck func(*capstanv1.ReplicaSet) bool) *env {
	t.Helper()
	return startEnvWith(t, envOptions{stuck: stuck})
}

// startEnvWith starts everything for one test; the test's cleanup stops it.
func startEnvWith(t *testing.T, opts envOptions) *env {
	t.Helper()
	cluster := apiservertest.Start(t, 1)
	c, err := client.New(client.Config{Endpoints: cluster.Addrs(), UserAgent: "deployment-test"})
	if err != nil {
		t.Fatalf("client.New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })

	all := informer.Options{Namespace: resource.AllNamespaces}
	deployments, err := informer.NewTyped[*capstanv1.Deployment](c, all)
	if err != nil {
		t.Fatal(err)
	}
	replicaSets, err := informer.NewTyped[*capstanv1.ReplicaSet](c, all)
	if err != nil {
		t.Fatal(err)
	}
	pods, err := informer.NewTyped[*capstanv1.Pod](c, all)
	if err != nil {
		t.Fatal(err)
	}
	recorder := events.NewRecorder(c, &capstanv1.EventSource{Component: "deployment-test"}, nil)
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctrl, err := New(c, recorder, Options{Deployments: deployments, ReplicaSets: replicaSets, Pods: pods,
		Loop: reconcile.Options{Workers: 2, Logger: logger}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for _, inf := range []*informer.Informer{deployments.Informer, replicaSets.Informer, pods.Informer} {
		wg.Go(func() { _ = inf.Run(ctx) })
	}
	wg.Go(func() {
		if err := ctrl.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	e := &env{t: t, ctx: ctx, client: c, replicaSets: replicaSets}
	if opts.realReplicaSets {
		rsCtrl, err := replicaset.New(c, recorder, replicaset.Options{ReplicaSets: replicaSets, Pods: pods,
			Loop: reconcile.Options{Workers: 2, Logger: logger.With("test-peer", "replicaset")}})
		if err != nil {
			t.Fatalf("replicaset.New: %v", err)
		}
		wg.Go(func() {
			if err := rsCtrl.Run(ctx); err != nil {
				t.Errorf("replicaset Run: %v", err)
			}
		})
		wg.Go(func() { e.runPods(ctx) })
	} else {
		wg.Go(func() { e.simulatePods(ctx, opts.stuck) })
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		flushCtx, flushCancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer flushCancel()
		recorder.Flush(flushCtx)
	})
	return e
}

// simulatePods plays the ReplicaSet controller and its pods: each
// ReplicaSet's status follows its spec, its available pods dropping at once
// to a smaller spec (the ReplicaSet controller deletes unavailable pods
// first, so no more than that), and growing by one pod per status write (so
// pods become available one at a time, interleaved with the controller's
// moves). A stuck ReplicaSet's pods never become available.
func (e *env) simulatePods(ctx context.Context, stuck func(*capstanv1.ReplicaSet) bool) {
	w := e.client.Watch(ctx, replicaSetKind, client.WatchOptions{Namespace: resource.AllNamespaces})
	defer w.Stop()
	for ev := range w.Events() {
		if ev.Type != client.Added && ev.Type != client.Modified {
			continue
		}
		rs := ev.Object.(*capstanv1.ReplicaSet)
		size := replicasOf(rs)
		available := min(rs.GetStatus().GetAvailableReplicas(), size)
		if available < size && (stuck == nil || !stuck(rs)) {
			available++
		}
		want := &capstanv1.ReplicaSetStatus{
			Replicas:             size,
			FullyLabeledReplicas: size,
			ReadyReplicas:        available,
			AvailableReplicas:    available,
			ObservedGeneration:   rs.GetMetadata().GetGeneration(),
		}
		if proto.Equal(want, rs.GetStatus()) {
			continue
		}
		next := resource.Clone(rs)
		next.Status = want
		_, err := e.client.ReplicaSets().UpdateReplicaSetStatus(ctx, &capstanv1.UpdateReplicaSetStatusRequest{ReplicaSet: next})
		if err != nil && ctx.Err() == nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			e.t.Errorf("simulated pods: update status of %s: %v", rs.GetMetadata().GetName(), err)
		}
		// A conflict means a newer version is on its way as an event.
	}
}

// runPods plays the node agents: every pod is Running and Ready as soon as
// it exists.
func (e *env) runPods(ctx context.Context) {
	w := e.client.Watch(ctx, podKind, client.WatchOptions{Namespace: resource.AllNamespaces})
	defer w.Stop()
	for ev := range w.Events() {
		if ev.Type != client.Added && ev.Type != client.Modified {
			continue
		}
		pod := ev.Object.(*capstanv1.Pod)
		if pod.GetStatus().GetPhase() == wellknown.PodRunning {
			continue
		}
		next := resource.Clone(pod)
		now := timestamppb.Now()
		next.Status = &capstanv1.PodStatus{
			Phase:     wellknown.PodRunning,
			StartTime: now,
			Conditions: []*capstanv1.Condition{
				{Type: wellknown.PodReady, Status: wellknown.ConditionTrue, LastTransitionTime: now},
				{Type: wellknown.ContainersReady, Status: wellknown.ConditionTrue, LastTransitionTime: now},
			},
		}
		_, err := e.client.Pods().UpdatePodStatus(ctx, &capstanv1.UpdatePodStatusRequest{Pod: next})
		if err != nil && ctx.Err() == nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			e.t.Errorf("running pods: update status of %s: %v", pod.GetMetadata().GetName(), err)
		}
	}
}

// waitFor waits until cond holds; cond's string says the state it saw.
func (e *env) waitFor(what string, timeout time.Duration, cond func() (bool, string)) {
	e.t.Helper()
	poll.For(e.t, timeout, what, poll.Reported(cond))
}

func (e *env) createDeployment(d *capstanv1.Deployment) *capstanv1.Deployment {
	e.t.Helper()
	resp, err := e.client.Deployments().CreateDeployment(e.ctx, &capstanv1.CreateDeploymentRequest{Deployment: d})
	if err != nil {
		e.t.Fatalf("CreateDeployment: %v", err)
	}
	return resp.GetDeployment()
}

func (e *env) getDeployment(name string) *capstanv1.Deployment {
	e.t.Helper()
	resp, err := e.client.Deployments().GetDeployment(e.ctx, &capstanv1.GetDeploymentRequest{Namespace: testNamespace, Name: name})
	if err != nil {
		e.t.Fatalf("GetDeployment: %v", err)
	}
	return resp.GetDeployment()
}

// updateDeployment changes the stored deployment's spec with change.
func (e *env) updateDeployment(name string, change func(*capstanv1.Deployment)) *capstanv1.Deployment {
	e.t.Helper()
	d := e.getDeployment(name)
	change(d)
	d.Metadata.ResourceVersion = 0 // whatever is current: the controller writes status meanwhile
	resp, err := e.client.Deployments().UpdateDeployment(e.ctx, &capstanv1.UpdateDeploymentRequest{Deployment: d})
	if err != nil {
		e.t.Fatalf("UpdateDeployment: %v", err)
	}
	return resp.GetDeployment()
}

// replicaSetsOf lists the ReplicaSets the deployment controls.
func (e *env) replicaSetsOf(d *capstanv1.Deployment) []*capstanv1.ReplicaSet {
	e.t.Helper()
	resp, err := e.client.ReplicaSets().ListReplicaSets(e.ctx, &capstanv1.ListReplicaSetsRequest{Namespace: testNamespace})
	if err != nil {
		e.t.Fatalf("ListReplicaSets: %v", err)
	}
	var out []*capstanv1.ReplicaSet
	for _, rs := range resp.GetReplicaSets() {
		if ref := controllerOf(rs.GetMetadata()); ref != nil && ref.GetUid() == d.GetMetadata().GetUid() {
			out = append(out, rs)
		}
	}
	return out
}

// rolledOut reports whether the deployment's current template is fully
// rolled out and available, every other ReplicaSet scaled to 0, and the
// status says so.
func (e *env) rolledOut(name string) (bool, string) {
	d := e.getDeployment(name)
	replicas := desiredReplicas(d)
	rss := e.replicaSetsOf(d)
	newRS, old := splitNewAndOld(d, rss)
	st := d.GetStatus()
	desc := fmt.Sprintf("generation %d status %v; replica sets %s", d.GetMetadata().GetGeneration(), st, describe(rss))
	if newRS == nil || replicasOf(newRS) != replicas || newRS.GetStatus().GetAvailableReplicas() != replicas {
		return false, desc
	}
	if sumSpecReplicas(old) != 0 || sumStatus(old, statusReplicas) != 0 {
		return false, desc
	}
	progressing := findCondition(st.GetConditions(), "Progressing")
	available := findCondition(st.GetConditions(), "Available")
	ok := st.GetObservedGeneration() == d.GetMetadata().GetGeneration() &&
		st.GetReplicas() == replicas && st.GetUpdatedReplicas() == replicas &&
		st.GetAvailableReplicas() == replicas && st.GetReadyReplicas() == replicas && st.GetUnavailableReplicas() == 0 &&
		progressing.GetStatus() == "True" && progressing.GetReason() == reasonNewReplicaSetAvailable &&
		available.GetStatus() == "True"
	return ok, desc
}

func describe(rss []*capstanv1.ReplicaSet) string {
	s := "["
	for i, rs := range rss {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s rev=%s spec=%d available=%d", rs.GetMetadata().GetName(),
			rs.GetMetadata().GetAnnotations()["deployment.capstan.dev/revision"], replicasOf(rs), rs.GetStatus().GetAvailableReplicas())
	}
	return s + "]"
}

// stateWatch watches a deployment's ReplicaSets and calls onState with
// every committed state of them (each watch event is one write, delivered
// in revision order).
type stateWatch struct {
	mu   sync.Mutex
	seen map[string]int64 // resource_version last seen, by ReplicaSet uid
}

func (e *env) watchStates(deploymentUID string, onState func(revision int64, current map[string]*capstanv1.ReplicaSet)) *stateWatch {
	sw := &stateWatch{seen: map[string]int64{}}
	ctx, cancel := context.WithCancel(e.ctx)
	w := e.client.Watch(ctx, replicaSetKind, client.WatchOptions{Namespace: resource.AllNamespaces})
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer w.Stop()
		current := map[string]*capstanv1.ReplicaSet{}
		for ev := range w.Events() {
			rs := ev.Object.(*capstanv1.ReplicaSet)
			if ref := controllerOf(rs.GetMetadata()); ref == nil || ref.GetUid() != deploymentUID {
				continue
			}
			uid := rs.GetMetadata().GetUid()
			if ev.Type == client.Deleted {
				delete(current, uid)
			} else {
				current[uid] = rs
			}
			onState(ev.ResourceVersion, current)
			sw.mu.Lock()
			sw.seen[uid] = rs.GetMetadata().GetResourceVersion()
			sw.mu.Unlock()
		}
	}()
	e.t.Cleanup(func() {
		cancel()
		<-done
	})
	return sw
}

// caughtUp waits until the watch has delivered every ReplicaSet of the
// deployment at least at the version a read returns now.
func (e *env) caughtUp(sw *stateWatch, d *capstanv1.Deployment) {
	e.t.Helper()
	final := e.replicaSetsOf(d)
	e.waitFor("the watch to catch up", rolloutTimeout, func() (bool, string) {
		sw.mu.Lock()
		defer sw.mu.Unlock()
		for _, rs := range final {
			if sw.seen[rs.GetMetadata().GetUid()] < rs.GetMetadata().GetResourceVersion() {
				return false, fmt.Sprintf("seen %v, want %s", sw.seen, describe(final))
			}
		}
		return true, ""
	})
}

// bounds records every committed state of a deployment's ReplicaSets that
// breaks the rolling-update bounds: the total of spec.replicas above
// replicas + maxSurge, or (once the deployment has been fully available)
// the total of status.available_replicas below replicas - maxUnavailable.
type bounds struct {
	watch      *stateWatch
	mu         sync.Mutex
	violations []string
	states     int
	maxTotal   int32
	minAvail   int32
}

func (e *env) watchBounds(deploymentUID string, replicas, surge, unavailable int32) *bounds {
	b := &bounds{minAvail: replicas}
	armed := false
	b.watch = e.watchStates(deploymentUID, func(revision int64, current map[string]*capstanv1.ReplicaSet) {
		var total, available int32
		for _, r := range current {
			total += replicasOf(r)
			available += r.GetStatus().GetAvailableReplicas()
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		b.states++
		b.maxTotal = max(b.maxTotal, total)
		if total > replicas+surge {
			b.violations = append(b.violations, fmt.Sprintf("at revision %d: total spec.replicas %d > %d + %d",
				revision, total, replicas, surge))
		}
		if available >= replicas {
			armed = true
		}
		if armed {
			b.minAvail = min(b.minAvail, available)
			if available < replicas-unavailable {
				b.violations = append(b.violations, fmt.Sprintf("at revision %d: available %d < %d - %d",
					revision, available, replicas, unavailable))
			}
		}
	})
	return b
}

// check waits for the watch to catch up with d's ReplicaSets, then reports
// every violation.
func (e *env) check(b *bounds, d *capstanv1.Deployment) {
	e.t.Helper()
	e.caughtUp(b.watch, d)
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, v := range b.violations {
		e.t.Error(v)
	}
	e.t.Logf("observed %d replica set states: max total spec.replicas %d, min available %d", b.states, b.maxTotal, b.minAvail)
}

// newDeployment is a deployment of app=name whose template runs command.
func newDeployment(name string, replicas *int32, strategy *capstanv1.DeploymentStrategy, command ...string) *capstanv1.Deployment {
	labels := map[string]string{"app": name}
	return &capstanv1.Deployment{
		Metadata: &capstanv1.ObjectMeta{Name: name, Namespace: testNamespace},
		Spec: &capstanv1.DeploymentSpec{
			Replicas: replicas,
			Selector: &capstanv1.LabelSelector{MatchLabels: labels},
			Template: &capstanv1.PodTemplateSpec{
				Metadata: &capstanv1.ObjectMeta{Labels: labels},
				Spec:     &capstanv1.PodSpec{Containers: []*capstanv1.Container{{Name: "main", Command: command}}},
			},
			Strategy: strategy,
		},
	}
}

func setCommand(command ...string) func(*capstanv1.Deployment) {
	return func(d *capstanv1.Deployment) { d.Spec.Template.Spec.Containers[0].Command = command }
}
