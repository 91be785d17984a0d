package scheduler

import (
	"testing"

	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/services/scheduler/internal/framework"
	"github.com/capstan-dev/capstan/services/scheduler/internal/queue"
)

// A bind is conditional on the pod its decision was made for: a decision
// for a pod that was deleted and re-created under the same name (a cache
// that is behind, or a bind that arrives late) does not bind the new pod,
// and its assumption is dropped.
func TestBindOfARecreatedPodIsRefused(t *testing.T) {
	e := newEnv(t)
	e.createNode(nodeSpec{name: "a"})
	stale := e.createPod(podSpec{name: "web"})
	if _, err := e.client.Pods().DeletePod(e.ctx, &capstanv1.DeletePodRequest{Namespace: "default", Name: "web", GracePeriodSeconds: proto.Int64(0)}); err != nil {
		t.Fatal(err)
	}
	fresh := e.createPod(podSpec{name: "web"})

	s, err := New(e.client, Options{Identity: "stale", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	info, err := framework.NewPodInfo(stale)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cache.Assume(info, "a"); err != nil {
		t.Fatal(err)
	}
	s.bind(e.ctx, queue.Item{Key: "default/web"}, stale, "a")

	now := e.pods()["web"]
	if now.GetMetadata().GetUid() != fresh.GetMetadata().GetUid() {
		t.Fatalf("pod web has uid %s, want the re-created %s", now.GetMetadata().GetUid(), fresh.GetMetadata().GetUid())
	}
	if node := now.GetSpec().GetNodeName(); node != "" {
		t.Errorf("the re-created pod was bound to %s by a decision made for the old one", node)
	}
	if s.cache.IsAssumed("default/web") || s.cache.Usage("a").Pods != 0 {
		t.Errorf("the refused bind left its assumption: %+v", s.cache.Usage("a"))
	}
	if evs := e.events("web", ReasonScheduled); len(evs) != 0 {
		t.Errorf("Scheduled events for a bind that was refused: %v", evs)
	}
	flushEvents(t, s)
}
