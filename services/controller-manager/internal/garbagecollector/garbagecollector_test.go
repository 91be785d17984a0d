package garbagecollector

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitTimeout = 30 * time.Second

var (
	podKind        = resource.MustLookup("Pod")
	replicaSetKind = resource.MustLookup("ReplicaSet")
	deploymentKind = resource.MustLookup("Deployment")
	configMapKind  = resource.MustLookup("ConfigMap")
)

func newClient(t *testing.T, endpoints ...string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Endpoints: endpoints, UserAgent: "garbagecollector-test"})
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

func newInformer(t *testing.T, c *client.Client, kind *resource.Kind, opts informer.Options) *informer.Informer {
	t.Helper()
	if opts.Namespace == "" {
		opts.Namespace = resource.AllNamespaces
	}
	inf, err := informer.New(c, kind, opts)
	if err != nil {
		t.Fatal(err)
	}
	runInBackground(t, kind.Name+" informer", inf.Run)
	return inf
}

// collector starts a garbage collector with one worker over informers of
// Pods and ReplicaSets (dependents) and ReplicaSets and Deployments
// (owners). rsOptions select what the ReplicaSet informer caches.
func startCollector(t *testing.T, c *client.Client, rsOptions informer.Options) {
	t.Helper()
	pods := newInformer(t, c, podKind, informer.Options{})
	replicaSets := newInformer(t, c, replicaSetKind, rsOptions)
	deployments := newInformer(t, c, deploymentKind, informer.Options{})
	gc, err := New(c, Options{
		Owners:     []*informer.Informer{replicaSets, deployments},
		Dependents: []*informer.Informer{pods, replicaSets},
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	runInBackground(t, "garbage collector", gc.Run)
}

func template(labels map[string]string) *capstanv1.PodTemplateSpec {
	return &capstanv1.PodTemplateSpec{
		Metadata: &capstanv1.ObjectMeta{Labels: labels},
		Spec:     &capstanv1.PodSpec{Containers: []*capstanv1.Container{{Name: "main", Command: []string{"sleep", "3600"}}}},
	}
}

func replicaSet(name string, owner resource.Object) *capstanv1.ReplicaSet {
	labels := map[string]string{"app": name}
	zero := int32(0)
	return &capstanv1.ReplicaSet{
		Metadata: &capstanv1.ObjectMeta{Namespace: "default", Name: name, OwnerReferences: controlledBy(owner)},
		Spec: &capstanv1.ReplicaSetSpec{
			Replicas: &zero,
			Selector: &capstanv1.LabelSelector{MatchLabels: labels},
			Template: template(labels),
		},
	}
}

func pod(name string, refs []*capstanv1.OwnerReference) *capstanv1.Pod {
	return &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Namespace: "default", Name: name, OwnerReferences: refs},
		Spec:     template(nil).GetSpec(),
	}
}

// controlledBy is a controller owner reference to owner (none if nil).
func controlledBy(owner resource.Object) []*capstanv1.OwnerReference {
	if owner == nil {
		return nil
	}
	return []*capstanv1.OwnerReference{ownerRef(owner, true)}
}

func ownerRef(owner resource.Object, controller bool) *capstanv1.OwnerReference {
	kind, _ := resource.ForMessage(owner)
	return &capstanv1.OwnerReference{
		Kind: kind.Name, Name: owner.GetMetadata().GetName(), Uid: owner.GetMetadata().GetUid(),
		Controller: controller, BlockOwnerDeletion: controller,
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

func remove(t *testing.T, ctx context.Context, c *client.Client, kind *resource.Kind, name string) {
	t.Helper()
	if _, err := c.Delete(ctx, kind, "default", name, nil); err != nil {
		t.Fatalf("delete %s %s: %v", kind.Name, name, err)
	}
}

func exists(t *testing.T, ctx context.Context, c *client.Client, kind *resource.Kind, name string) bool {
	t.Helper()
	_, err := c.Get(ctx, kind, "default", name)
	if apierrors.IsNotFound(err) {
		return false
	}
	if err != nil {
		t.Fatalf("get %s %s: %v", kind.Name, name, err)
	}
	return true
}

func waitGone(t *testing.T, ctx context.Context, c *client.Client, kind *resource.Kind, names ...string) {
	t.Helper()
	poll.For(t, waitTimeout, fmt.Sprintf("%s %v collected", kind.Name, names), func(context.Context) error {
		for _, name := range names {
			if exists(t, ctx, c, kind, name) {
				return fmt.Errorf("%s still exists", name)
			}
		}
		return nil
	})
}

func mustExist(t *testing.T, ctx context.Context, c *client.Client, kind *resource.Kind, names ...string) {
	t.Helper()
	for _, name := range names {
		if !exists(t, ctx, c, kind, name) {
			t.Errorf("%s %s was deleted, but it is not garbage", kind.Name, name)
		}
	}
}

func TestDeletingAReplicaSetCollectsItsPods(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)
	startCollector(t, c, informer.Options{})

	rs := create(t, ctx, c, replicaSet("web", nil))
	keeper := create(t, ctx, c, replicaSet("keeper", nil))
	create(t, ctx, c, pod("web-1", controlledBy(rs)))
	create(t, ctx, c, pod("web-2", controlledBy(rs)))
	create(t, ctx, c, pod("orphan", nil))
	create(t, ctx, c, pod("not-controlled", []*capstanv1.OwnerReference{ownerRef(rs, false)}))
	create(t, ctx, c, pod("co-owned", []*capstanv1.OwnerReference{ownerRef(rs, true), ownerRef(keeper, false)}))
	create(t, ctx, c, pod("keeper-1", controlledBy(keeper)))

	remove(t, ctx, c, replicaSetKind, "web")
	waitGone(t, ctx, c, podKind, "web-1", "web-2")
	// Queued after the others (one worker): once it is gone, the others
	// have been looked at.
	create(t, ctx, c, pod("sentinel", controlledBy(rs)))
	waitGone(t, ctx, c, podKind, "sentinel")
	mustExist(t, ctx, c, podKind, "orphan", "not-controlled", "co-owned", "keeper-1")
}

func TestDeletingADeploymentCascadesToReplicaSetsAndPods(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)
	startCollector(t, c, informer.Options{})

	labels := map[string]string{"app": "web"}
	deploy := create(t, ctx, c, &capstanv1.Deployment{
		Metadata: &capstanv1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: &capstanv1.DeploymentSpec{
			Selector: &capstanv1.LabelSelector{MatchLabels: labels},
			Template: template(labels),
		},
	})
	rs1 := create(t, ctx, c, replicaSet("web-aaa", deploy))
	rs2 := create(t, ctx, c, replicaSet("web-bbb", deploy))
	create(t, ctx, c, pod("web-aaa-1", controlledBy(rs1)))
	create(t, ctx, c, pod("web-aaa-2", controlledBy(rs1)))
	create(t, ctx, c, pod("web-bbb-1", controlledBy(rs2)))
	other := create(t, ctx, c, replicaSet("other", nil))
	create(t, ctx, c, pod("other-1", controlledBy(other)))

	remove(t, ctx, c, deploymentKind, "web")
	waitGone(t, ctx, c, replicaSetKind, "web-aaa", "web-bbb")
	waitGone(t, ctx, c, podKind, "web-aaa-1", "web-aaa-2", "web-bbb-1")
	mustExist(t, ctx, c, replicaSetKind, "other")
	mustExist(t, ctx, c, podKind, "other-1")
}

// An owner deleted and re-created under the same name is another owner:
// the old incarnation's dependents go, the new one's stay.
func TestRecreatedOwnerDoesNotKeepTheOldDependents(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)

	old := create(t, ctx, c, replicaSet("web", nil))
	create(t, ctx, c, pod("web-old", controlledBy(old)))
	remove(t, ctx, c, replicaSetKind, "web")
	current := create(t, ctx, c, replicaSet("web", nil))
	create(t, ctx, c, pod("web-new", controlledBy(current)))

	startCollector(t, c, informer.Options{}) // sees only the state now
	waitGone(t, ctx, c, podKind, "web-old")
	create(t, ctx, c, pod("sentinel", controlledBy(old)))
	waitGone(t, ctx, c, podKind, "sentinel")
	mustExist(t, ctx, c, podKind, "web-new")
}

// An owner missing from the cache is not enough: the API is asked, and an
// owner that exists there keeps its dependents.
func TestCacheMissAloneDeletesNothing(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)
	// The owner informer caches only ReplicaSets labelled visible=yes.
	startCollector(t, c, informer.Options{LabelSelector: "visible=yes"})

	hidden := create(t, ctx, c, replicaSet("hidden", nil))
	create(t, ctx, c, pod("hidden-1", controlledBy(hidden)))
	// A kind with no owner informer at all is read from the API too.
	cm := create(t, ctx, c, &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Namespace: "default", Name: "cm"}})
	create(t, ctx, c, pod("cm-1", controlledBy(cm)))
	gone := create(t, ctx, c, replicaSet("gone", nil))
	remove(t, ctx, c, replicaSetKind, "gone")
	create(t, ctx, c, pod("sentinel", controlledBy(gone)))
	waitGone(t, ctx, c, podKind, "sentinel")
	mustExist(t, ctx, c, podKind, "hidden-1", "cm-1")

	// The config map goes; the next change of its dependent finds it gone.
	remove(t, ctx, c, configMapKind, "cm")
	obj, err := c.Get(ctx, podKind, "default", "cm-1")
	if err != nil {
		t.Fatal(err)
	}
	obj.GetMetadata().Labels = map[string]string{"touched": "yes"}
	if _, err := c.Update(ctx, obj); err != nil {
		t.Fatal(err)
	}
	waitGone(t, ctx, c, podKind, "cm-1")
}

// A collector whose context carries a stale fencing token deletes nothing.
func TestStaleFenceDeletesNothing(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)
	rs := create(t, ctx, c, replicaSet("web", nil))
	create(t, ctx, c, pod("web-1", controlledBy(rs)))
	remove(t, ctx, c, replicaSetKind, "web")

	pods := newInformer(t, c, podKind, informer.Options{})
	replicaSets := newInformer(t, c, replicaSetKind, informer.Options{})
	gc, err := New(c, Options{Owners: []*informer.Informer{replicaSets}, Dependents: []*informer.Informer{pods}})
	if err != nil {
		t.Fatal(err)
	}
	var lost atomic.Int32
	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	fenced := client.WithFence(runCtx,
		client.Fence{Namespace: wellknown.SystemNamespace, Name: wellknown.ControllerManagerLease, Epoch: 1 << 40},
		func() { lost.Add(1); stop() })
	done := make(chan error, 1)
	go func() { done <- gc.Run(fenced) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the collector never tried to delete (or never noticed it lost the lease)")
	}
	if lost.Load() == 0 {
		t.Fatal("onLost was not called")
	}
	mustExist(t, ctx, c, podKind, "web-1")
}

func TestNewRejectsBadOptions(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	pods, _ := informer.New(c, podKind, informer.Options{})
	pods2, _ := informer.New(c, podKind, informer.Options{})
	tests := []struct {
		name   string
		client *client.Client
		opts   Options
		want   string
	}{
		{"no client", nil, Options{Dependents: []*informer.Informer{pods}}, "client is nil"},
		{"no dependents", c, Options{}, "Options.Dependents is empty"},
		{"nil informer", c, Options{Dependents: []*informer.Informer{nil}}, "Options.Dependents[0] is nil"},
		{"two of a kind", c, Options{Dependents: []*informer.Informer{pods, pods2}}, "two informers of kind Pod"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.client, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New = %v, want an error about %q", err, tt.want)
			}
		})
	}
}
