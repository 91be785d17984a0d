package garbagecollector

import (
	"context"
	"testing"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
)

// A dependent judged garbage as read is deleted only at that version: one
// adopted by a new controller since is refused, not deleted. The delete is
// driven directly with the version read before the adoption.
func TestDeleteOfAStaleReadIsRefused(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)
	pods, err := informer.New(c, podKind, informer.Options{Namespace: resource.AllNamespaces})
	if err != nil {
		t.Fatal(err)
	}
	gc, err := New(c, Options{Dependents: []*informer.Informer{pods}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Never run: a Run that is over at once stops its queue.
		stopped, stop := context.WithCancel(context.Background())
		stop()
		_ = gc.Run(stopped)
	})

	gone := create(t, ctx, c, replicaSet("gone", nil))
	orphan := create(t, ctx, c, pod("web", controlledBy(gone)))
	remove(t, ctx, c, replicaSetKind, "gone")
	// Adopted by a new controller after the collector read it.
	keeper := create(t, ctx, c, replicaSet("keeper", nil))
	adopted := resource.Clone(orphan)
	adopted.Metadata.OwnerReferences = controlledBy(keeper)
	if _, err := c.Update(ctx, adopted); err != nil {
		t.Fatal(err)
	}

	ref := orphan.GetMetadata().GetOwnerReferences()[0]
	if err := gc.deleteGarbage(ctx, podKind, itemKey(podKind, orphan), orphan, ref); !apierrors.IsConflict(err) {
		t.Errorf("delete of the version read before the adoption: %v, want ABORTED", err)
	}
	mustExist(t, ctx, c, podKind, "web")
	obj, err := c.Get(ctx, podKind, "default", "web")
	if err != nil {
		t.Fatal(err)
	}
	if got := obj.(*capstanv1.Pod).GetMetadata().GetOwnerReferences(); len(got) != 1 || got[0].GetUid() != keeper.GetMetadata().GetUid() {
		t.Errorf("owner references %v, want the new controller's", got)
	}
}
