package replicaset

import (
	"testing"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
)

// A scale-down chooses its victims from the pod cache and deletes each at
// the version it chose it from: pods that changed since the cache saw them
// are not deleted at the old version (the API refuses it). Once the cache
// has the change, the ReplicaSet is synced again and they are deleted at
// their newer versions: nothing is stuck.
func TestScaleDownFromAStaleCacheDeletesNothing(t *testing.T) {
	e := startLagEnv(t, Options{})
	ctx := testContext(t)
	create(t, ctx, e.client, replicaSet("web", 2, map[string]string{"app": "web"}))
	poll.For(t, waitTimeout, "status to show 2 replicas", poll.True(func() bool {
		return getRS(t, ctx, e.client, "web").GetStatus().GetReplicas() == 2
	}))
	e.cluster.StopReplica(1) // the pod cache is frozen from here on

	changed := map[string]int64{}
	for _, pod := range livePods(t, ctx, e.client) {
		next := resource.Clone(pod)
		next.Metadata.Annotations = map[string]string{"example.com/touched": "after the cache saw it"}
		obj, err := e.client.Update(ctx, next)
		if err != nil {
			t.Fatalf("change pod %s: %v", pod.GetMetadata().GetName(), err)
		}
		changed[obj.GetMetadata().GetName()] = obj.GetMetadata().GetResourceVersion()
	}
	rs := updateRS(t, ctx, e.client, "web", func(rs *capstanv1.ReplicaSet) { rs.Spec.Replicas = new(int32) })
	poll.For(t, waitTimeout, "the controller to sync the scale to 0", poll.True(func() bool {
		return getRS(t, ctx, e.client, "web").GetStatus().GetObservedGeneration() == rs.GetMetadata().GetGeneration()
	}))
	if n := e.logs.count("pod changed since it was chosen for deletion"); n == 0 {
		t.Error("no delete was refused")
	}
	live := livePods(t, ctx, e.client)
	if len(live) != len(changed) {
		t.Fatalf("pods %v after a scale-down from a stale cache, want %d untouched", podNamesOf(live), len(changed))
	}
	for _, pod := range live {
		if v := changed[pod.GetMetadata().GetName()]; v != pod.GetMetadata().GetResourceVersion() {
			t.Errorf("pod %s at version %d, want %d: written from a stale cache", pod.GetMetadata().GetName(), pod.GetMetadata().GetResourceVersion(), v)
		}
	}

	e.cluster.StartReplica(1)
	poll.For(t, waitTimeout, "the pods deleted at their newer versions", poll.True(func() bool {
		return len(livePods(t, ctx, e.client)) == 0
	}))
}
