package cache_test

import (
	"errors"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/scheduler/internal/cache"
	"github.com/capstan-dev/capstan/services/scheduler/internal/framework"
)

func node(name, cpu string) *capstanv1.Node {
	return &capstanv1.Node{
		Metadata: &capstanv1.ObjectMeta{Name: name},
		Status: &capstanv1.NodeStatus{
			Allocatable: map[string]string{"cpu": cpu, "memory": "8Gi"},
			Conditions:  []*capstanv1.Condition{{Type: wellknown.NodeReady, Status: wellknown.ConditionTrue}},
		},
	}
}

func pod(t *testing.T, name, cpu string) *framework.PodInfo {
	t.Helper()
	info, err := framework.NewPodInfo(&capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: &capstanv1.PodSpec{Containers: []*capstanv1.Container{{
			Name: "main", Resources: &capstanv1.ResourceRequirements{Requests: map[string]string{"cpu": cpu}},
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// first picks the first node offered.
func first(nodes []*framework.NodeInfo) (string, error) {
	if len(nodes) == 0 {
		return "", errors.New("no nodes")
	}
	return nodes[0].Name, nil
}

func wantUsage(t *testing.T, c *cache.Cache, nodeName string, want cache.NodeUsage) {
	t.Helper()
	if got := c.Usage(nodeName); got != want {
		t.Errorf("Usage(%s) = %+v, want %+v", nodeName, got, want)
	}
}

func TestAssumeConfirm(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	c := cache.New(clk, 30*time.Second)
	if err := c.SetNode(node("a", "4")); err != nil {
		t.Fatal(err)
	}
	p := pod(t, "web", "1")
	got, err := c.Place(p, first)
	if err != nil || got != "a" {
		t.Fatalf("Place = %q, %v; want a", got, err)
	}
	if !c.IsAssumed(p.Key) {
		t.Fatal("not assumed after Place")
	}
	wantUsage(t, c, "a", cache.NodeUsage{Requested: framework.Resources{MilliCPU: 1000}, Pods: 1, Assumed: 1})
	if _, err := c.Place(p, first); err == nil {
		t.Error("Place of a placed pod: no error")
	}

	c.FinishBinding(p.Key)
	if freed := c.SetPod(p, "a"); freed {
		t.Error("confirming on the assumed node reported freed room")
	}
	if c.IsAssumed(p.Key) {
		t.Error("still assumed after the watch confirmed it")
	}
	wantUsage(t, c, "a", cache.NodeUsage{Requested: framework.Resources{MilliCPU: 1000}, Pods: 1})

	clk.Step(time.Hour)
	if expired := c.Expire(); len(expired) != 0 {
		t.Errorf("Expire dropped confirmed pods %q", expired)
	}
	if !c.RemovePod(p.Key) {
		t.Error("RemovePod of a bound pod = false")
	}
	wantUsage(t, c, "a", cache.NodeUsage{})
}

func TestForgetAndExpire(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	c := cache.New(clk, 30*time.Second)
	_ = c.SetNode(node("a", "4"))
	failed, lost, inFlight := pod(t, "failed", "1"), pod(t, "lost", "1"), pod(t, "in-flight", "1")
	for _, p := range []*framework.PodInfo{failed, lost, inFlight} {
		if err := c.Assume(p, "a"); err != nil {
			t.Fatal(err)
		}
	}
	if !c.Forget(failed.Key) {
		t.Error("Forget of an assumed pod = false")
	}
	c.FinishBinding(lost.Key)
	clk.Step(29 * time.Second)
	if expired := c.Expire(); len(expired) != 0 {
		t.Errorf("expired before the TTL: %q", expired)
	}
	clk.Step(2 * time.Second)
	if expired := c.Expire(); len(expired) != 1 || expired[0] != lost.Key {
		t.Errorf("Expire = %q, want [%s] (a bind still in flight never expires)", expired, lost.Key)
	}
	wantUsage(t, c, "a", cache.NodeUsage{Requested: framework.Resources{MilliCPU: 1000}, Pods: 1, Assumed: 1})

	// The watch shows the in-flight pod bound elsewhere: it moves, and Forget
	// after the failed bind leaves it there.
	if freed := c.SetPod(inFlight, "b"); !freed {
		t.Error("moving an assumed pod to another node did not report freed room")
	}
	if c.Forget(inFlight.Key) {
		t.Error("Forget dropped a pod the watch showed bound")
	}
	wantUsage(t, c, "a", cache.NodeUsage{})
	wantUsage(t, c, "b", cache.NodeUsage{Requested: framework.Resources{MilliCPU: 1000}, Pods: 1})
}

func TestNodesKnownOnlyByTheirPods(t *testing.T) {
	c := cache.New(nil, 0)
	c.SetPod(pod(t, "early", "3"), "late-node")
	if _, err := c.Place(pod(t, "p", "1"), first); err == nil {
		t.Fatal("a node without its Node was offered to decide")
	}
	_ = c.SetNode(node("late-node", "4"))
	offered := 0
	_, err := c.Place(pod(t, "p", "1"), func(nodes []*framework.NodeInfo) (string, error) {
		offered = len(nodes)
		if got := nodes[0].Requested.MilliCPU; got != 3000 {
			t.Errorf("late-node requested %dm, want the 3000m of the pod bound before it appeared", got)
		}
		return nodes[0].Name, nil
	})
	if err != nil || offered != 1 {
		t.Fatalf("Place: %v, %d nodes offered", err, offered)
	}
	c.RemoveNode("late-node")
	wantUsage(t, c, "late-node", cache.NodeUsage{Requested: framework.Resources{MilliCPU: 4000}, Pods: 2, Assumed: 1})
	if _, err := c.Place(pod(t, "q", "1"), first); err == nil {
		t.Error("a removed node was offered to decide")
	}
}
