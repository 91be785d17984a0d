package nodelifecycle

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/resource"
)

// The controller's writes are conditional on what it judged: marking dead a
// Node read before the agent's newer status, or evicting a pod as listed
// before it changed, is refused rather than applied over the newer state.
// The write paths are driven directly with the stale objects, as a cache
// that is behind (or a list made just before the change) hands them over.
func TestWritesFromStaleObjectsAreRefused(t *testing.T) {
	e := startEnv(t, func(e *env) {
		e.createNode("node-1")
		e.acquireLease("node-1") // alive: the running controller leaves it alone
		e.createPod("web", "node-1")
	})
	staleNode := e.getNode("node-1")
	resp, err := e.client.Pods().GetPod(e.ctx, &capstanv1.GetPodRequest{Namespace: "default", Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	stalePod := resp.GetPod()

	// The agent's newer word, and a change to the pod.
	next := resource.Clone(staleNode)
	readyCondition(next).LastHeartbeatTime = timestamppb.Now()
	if _, err := e.client.Nodes().UpdateNodeStatus(e.ctx, &capstanv1.UpdateNodeStatusRequest{Node: next}); err != nil {
		t.Fatal(err)
	}
	changed := resource.Clone(stalePod)
	changed.Metadata.Annotations = map[string]string{"example.com/touched": "after the list"}
	if _, err := e.client.Update(e.ctx, changed); err != nil {
		t.Fatal(err)
	}

	if _, err := e.ctrl.markDead(e.ctx, staleNode, e.clock.Now()); !apierrors.IsConflict(err) {
		t.Errorf("marking dead a stale Node: %v, want ABORTED", err)
	}
	if ok, state := e.healthy("node-1"); !ok {
		t.Errorf("marked from a stale Node: %s", state)
	}
	if err := e.ctrl.evictPod(e.ctx, staleNode, stalePod, time.Minute); !apierrors.IsConflict(err) {
		t.Errorf("evicting a stale pod: %v, want ABORTED", err)
	}
	e.wantPods("after an eviction of a stale pod", map[string]bool{"web": true})
	if reasons := e.eventReasons(stalePod.GetMetadata().GetUid()); len(reasons) != 0 {
		t.Errorf("events %v for writes that were refused", reasons)
	}
}
