package deployment

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
)

// Every write of the controller is conditional on the version it was
// computed from: a scale, a status and a history cleanup computed from a
// ReplicaSet or Deployment that changed since are refused, not applied over
// the change. The write paths are driven directly with the stale objects,
// as a cache that is behind would hand them over.
func TestWritesFromStaleObjectsAreRefused(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c, err := client.New(client.Config{Endpoints: cluster.Addrs(), UserAgent: "deployment-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	all := informer.Options{Namespace: resource.AllNamespaces}
	deployments, _ := informer.NewTyped[*capstanv1.Deployment](c, all)
	replicaSets, _ := informer.NewTyped[*capstanv1.ReplicaSet](c, all)
	pods, _ := informer.NewTyped[*capstanv1.Pod](c, all)
	ctrl, err := New(c, nil, Options{Deployments: deployments, ReplicaSets: replicaSets, Pods: pods})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Never run: a Run that is over at once stops its queue.
		stopped, stop := context.WithCancel(context.Background())
		stop()
		_ = ctrl.Run(stopped)
	})

	d := newDeployment("web", proto.Int32(2), nil, "/bin/sleep", "3600")
	d.Spec.RevisionHistoryLimit = proto.Int32(0)
	obj, err := c.Create(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	d = obj.(*capstanv1.Deployment)
	key := informer.Key(d)
	rs := &capstanv1.ReplicaSet{
		Metadata: &capstanv1.ObjectMeta{Namespace: testNamespace, Name: "web-old", Labels: map[string]string{"app": "web"},
			OwnerReferences: []*capstanv1.OwnerReference{controllerRefTo(d)}},
		Spec: &capstanv1.ReplicaSetSpec{Replicas: proto.Int32(0), Selector: d.GetSpec().GetSelector(), Template: d.GetSpec().GetTemplate()},
	}
	if obj, err = c.Create(ctx, rs); err != nil {
		t.Fatal(err)
	}
	rs = obj.(*capstanv1.ReplicaSet)
	rs.Status = &capstanv1.ReplicaSetStatus{ObservedGeneration: rs.GetMetadata().GetGeneration()}
	if obj, err = c.UpdateStatus(ctx, rs); err != nil {
		t.Fatal(err)
	}
	staleRS := obj.(*capstanv1.ReplicaSet) // scaled to 0 and settled: history to clean up

	// Someone else writes both after the controller's cache saw them: the
	// ReplicaSet scaled back up (a rollback), the Deployment scaled.
	next := resource.Clone(staleRS)
	next.Spec.Replicas = proto.Int32(5)
	if _, err := c.Update(ctx, next); err != nil {
		t.Fatal(err)
	}
	staleD := resource.Clone(d)
	next2 := resource.Clone(d)
	next2.Spec.Replicas = proto.Int32(7)
	if _, err := c.Update(ctx, next2); err != nil {
		t.Fatal(err)
	}

	if _, _, err := ctrl.scaleReplicaSet(ctx, key, staleD, staleRS, 2); !apierrors.IsConflict(err) {
		t.Errorf("scale from a stale ReplicaSet: %v, want ABORTED", err)
	}
	if err := ctrl.cleanupHistory(ctx, key, staleD, []*capstanv1.ReplicaSet{staleRS}); !apierrors.IsConflict(err) {
		t.Errorf("history cleanup of a stale ReplicaSet: %v, want ABORTED", err)
	}
	staleD.Status = &capstanv1.DeploymentStatus{ObservedGeneration: staleD.GetMetadata().GetGeneration(), Replicas: 2}
	if err := ctrl.writeStatus(ctx, key, staleD); !apierrors.IsConflict(err) {
		t.Errorf("status from a stale Deployment: %v, want ABORTED", err)
	}

	obj, err = c.Get(ctx, replicaSetKind, testNamespace, "web-old")
	if err != nil {
		t.Fatalf("the ReplicaSet scaled up since was deleted: %v", err)
	}
	if got := replicasOf(obj.(*capstanv1.ReplicaSet)); got != 5 {
		t.Errorf("ReplicaSet spec.replicas %d, want the newer 5", got)
	}
	obj, err = c.Get(ctx, deploymentKind, testNamespace, "web")
	if err != nil {
		t.Fatal(err)
	}
	if st := obj.(*capstanv1.Deployment).GetStatus(); st.GetReplicas() != 0 || st.GetObservedGeneration() != 0 {
		t.Errorf("Deployment status %v written from a stale Deployment", st)
	}
}
