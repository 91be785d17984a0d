package nodelifecycle

import (
	"slices"
	"strings"
	"testing"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

func unreachableToleration(seconds *int64) *capstanv1.Toleration {
	return &capstanv1.Toleration{Key: wellknown.TaintNodeUnreachable, Operator: "Exists",
		Effect: wellknown.TaintNoExecute, TolerationSeconds: seconds}
}

func TestDeadNodeIsMarkedTaintedAndEvicted(t *testing.T) {
	e := startEnv(t, func(e *env) {
		for _, n := range []string{"node-1", "node-2", "node-3"} {
			e.createNode(n)
			e.acquireLease(n)
		}
		e.createPod("plain", "node-1")
		e.createPod("forever", "node-1", unreachableToleration(nil))
		e.createPod("short", "node-1", unreachableToleration(new(int64(5))))
		e.createPod("long", "node-1", unreachableToleration(new(int64(30))))
		e.createPod("elsewhere", "node-2")
	})
	all := map[string]bool{"plain": true, "forever": true, "short": true, "long": true, "elsewhere": true}

	e.step(testGrace + time.Second)
	for _, n := range []string{"node-1", "node-2", "node-3"} {
		e.syncNow(n)
		if ok, state := e.healthy(n); !ok {
			t.Fatalf("a node with a lease after the grace: %s", state)
		}
	}

	e.expireLease("node-1")
	tainted := e.clock.Now()
	e.syncNow("node-1")
	if ok, state := e.markedDead("node-1"); !ok {
		t.Fatalf("node without its lease: %s", state)
	}
	if added := unreachableTaint(e.getNode("node-1")).GetTimeAdded().AsTime(); !added.Equal(tainted) {
		t.Errorf("taint time_added %v, want the clock's %v", added, tainted)
	}
	e.wantPods("at once", all)
	e.waitFor("a NodeNotReady event", func() (bool, string) {
		reasons := e.eventReasons(e.getNode("node-1").GetMetadata().GetUid())
		return slices.Contains(reasons, reasonNodeNotReady), "reasons " + strings.Join(reasons, ",")
	})

	steps := []struct {
		after time.Duration // since the taint
		gone  []string
	}{
		{after: 4 * time.Second},
		{after: 5 * time.Second, gone: []string{"short"}},            // its toleration_seconds
		{after: testEvictionTimeout - time.Second, gone: []string{}}, // not yet the timeout
		{after: testEvictionTimeout, gone: []string{"plain"}},        // no toleration: the timeout
		{after: 30 * time.Second, gone: []string{"long"}},            // longer than the timeout
		{after: 10 * time.Minute, gone: []string{}},                  // "forever" stays
	}
	for _, s := range steps {
		e.clock.SetTime(tainted.Add(s.after))
		e.syncNow("node-1")
		for _, name := range s.gone {
			all[name] = false
		}
		e.wantPods("after "+s.after.String(), all)
	}

	e.acquireLease("node-1")
	e.syncNow("node-1")
	node := e.getNode("node-1")
	if taint := unreachableTaint(node); taint != nil {
		t.Errorf("lease back, taint still there: %s", describeNode(node))
	}
	// Ready is the agent's to report again.
	if got := readyCondition(node).GetStatus(); got != wellknown.ConditionUnknown {
		t.Errorf("Ready %s after the lease came back, want it left Unknown for the agent", got)
	}
	e.wantPods("after the lease came back", all)
}

func TestStartupGrace(t *testing.T) {
	e := startEnv(t, func(e *env) {
		for _, n := range []string{"leased", "unleased", "expiring", "healthy-1", "healthy-2"} {
			e.createNode(n)
			e.createPod("pod-"+n, n)
		}
		for _, n := range []string{"leased", "expiring", "healthy-1", "healthy-2"} {
			e.acquireLease(n)
		}
	})
	// Just after the controller became leader the lease of one node expires
	// (as the failover may have cut its agent off for a moment).
	e.expireLease("expiring")
	pods := map[string]bool{"pod-leased": true, "pod-unleased": true, "pod-expiring": true, "pod-healthy-1": true, "pod-healthy-2": true}

	// The fake clock stands still until the test moves it: the controller
	// started at its first reading.
	start := e.clock.Now()
	for _, at := range []time.Duration{0, testGrace / 2, testGrace - time.Second} {
		e.clock.SetTime(start.Add(at))
		for _, n := range []string{"leased", "unleased", "expiring"} {
			e.syncNow(n)
			if ok, state := e.healthy(n); !ok {
				t.Fatalf("within the startup grace: %s", state)
			}
		}
	}

	// The grace is over: the two without a lease are dead.
	e.clock.SetTime(start.Add(testGrace))
	for _, n := range []string{"unleased", "expiring"} {
		e.syncNow(n)
		if ok, state := e.markedDead(n); !ok {
			t.Fatalf("after the startup grace: %s", state)
		}
	}
	e.syncNow("leased")
	if ok, state := e.healthy("leased"); !ok {
		t.Errorf("a node with its lease after the grace: %s", state)
	}
	e.wantPods("before the eviction timeout", pods)

	// 2 dead nodes of 5: eviction goes ahead.
	e.clock.SetTime(start.Add(testGrace + testEvictionTimeout))
	e.syncNow("unleased")
	e.syncNow("expiring")
	pods["pod-unleased"], pods["pod-expiring"] = false, false
	e.wantPods("after the eviction timeout", pods)

	// A node that registers later gets the grace from when it was first seen.
	e.createNode("late")
	e.waitFor("the late node in the cache", func() (bool, string) {
		_, ok := e.nodes.Get("", "late")
		return ok, "absent"
	})
	e.syncNow("late")
	lateSeen := e.clock.Now()
	e.clock.SetTime(lateSeen.Add(testGrace - time.Second))
	e.syncNow("late")
	if ok, state := e.healthy("late"); !ok {
		t.Errorf("a new node within its grace: %s", state)
	}
	e.clock.SetTime(lateSeen.Add(testGrace))
	e.syncNow("late")
	if ok, state := e.markedDead("late"); !ok {
		t.Errorf("a new node that never got a lease, after its grace: %s", state)
	}
}

func TestNoMassEviction(t *testing.T) {
	nodes := []string{"node-1", "node-2", "node-3", "node-4"}
	e := startEnv(t, func(e *env) {
		for _, n := range nodes {
			e.createNode(n)
			e.acquireLease(n)
			e.createPod("pod-"+n, n)
		}
	})
	pods := map[string]bool{"pod-node-1": true, "pod-node-2": true, "pod-node-3": true, "pod-node-4": true}
	e.step(testGrace + time.Second)

	// 3 of 4 nodes die at once: marked, but nothing is evicted.
	dead := nodes[:3]
	for _, n := range dead {
		e.expireLease(n)
	}
	for _, n := range dead {
		e.syncNow(n)
		if ok, state := e.markedDead(n); !ok {
			t.Fatalf("dead node: %s", state)
		}
	}
	e.step(testEvictionTimeout * 3)
	for _, n := range nodes {
		e.syncNow(n)
	}
	e.wantPods("3 of 4 nodes dead", pods)
	e.waitFor("EvictionSuppressed events on the dead nodes", func() (bool, string) {
		for _, n := range dead {
			if !slices.Contains(e.eventReasons(e.getNode(n).GetMetadata().GetUid()), reasonEvictionSuppressed) {
				return false, n + " has none"
			}
		}
		return true, ""
	})

	// Two come back: 1 of 4 dead, and its taint is old enough already.
	e.acquireLease("node-2")
	e.acquireLease("node-3")
	pods["pod-node-1"] = false
	e.waitFor("the remaining dead node's pod evicted", func() (bool, string) {
		e.step(testMonitorPeriod) // the monitor re-counts the nodes on its tick
		return !e.podExists("pod-node-1"), "pod-node-1 still there"
	})
	e.wantPods("1 of 4 nodes dead", pods)
	for _, n := range []string{"node-2", "node-3"} {
		e.waitFor("the taint of "+n+" removed", func() (bool, string) {
			node := e.getNode(n)
			return unreachableTaint(node) == nil, describeNode(node)
		})
	}
}

func TestSingleDeadNodeIsNotEvicted(t *testing.T) {
	e := startEnv(t, func(e *env) {
		e.createNode("only")
		e.acquireLease("only")
		e.createPod("pod", "only")
	})
	e.step(testGrace + time.Second)
	e.expireLease("only")
	e.syncNow("only")
	if ok, state := e.markedDead("only"); !ok {
		t.Fatalf("dead node: %s", state)
	}
	e.step(testEvictionTimeout * 2)
	e.syncNow("only")
	e.wantPods("the only node dead", map[string]bool{"pod": true})
}

func TestTolerationWait(t *testing.T) {
	taint := &capstanv1.Taint{Key: wellknown.TaintNodeUnreachable, Effect: wellknown.TaintNoExecute}
	const timeout = 10 * time.Second
	for _, tc := range []struct {
		name        string
		tolerations []*capstanv1.Toleration
		wait        time.Duration
		forever     bool
	}{
		{name: "none", wait: timeout},
		{name: "exists-forever", tolerations: []*capstanv1.Toleration{unreachableToleration(nil)}, forever: true},
		{name: "exists-seconds", tolerations: []*capstanv1.Toleration{unreachableToleration(new(int64(3)))}, wait: 3 * time.Second},
		{name: "negative-seconds", tolerations: []*capstanv1.Toleration{unreachableToleration(new(int64(-5)))}, wait: 0},
		{name: "shortest-of-several", tolerations: []*capstanv1.Toleration{
			unreachableToleration(new(int64(30))), unreachableToleration(new(int64(20)))}, wait: 20 * time.Second},
		{name: "forever-wins", tolerations: []*capstanv1.Toleration{
			unreachableToleration(new(int64(30))), unreachableToleration(nil)}, forever: true},
		{name: "empty-key-exists-tolerates-all", tolerations: []*capstanv1.Toleration{{Operator: "Exists"}}, forever: true},
		{name: "other-key", tolerations: []*capstanv1.Toleration{{Key: "other", Operator: "Exists"}}, wait: timeout},
		{name: "other-effect", tolerations: []*capstanv1.Toleration{{Key: wellknown.TaintNodeUnreachable, Operator: "Exists", Effect: wellknown.TaintNoSchedule}}, wait: timeout},
		{name: "equal-empty-value", tolerations: []*capstanv1.Toleration{{Key: wellknown.TaintNodeUnreachable, TolerationSeconds: new(int64(7))}}, wait: 7 * time.Second},
		{name: "equal-other-value", tolerations: []*capstanv1.Toleration{{Key: wellknown.TaintNodeUnreachable, Operator: "Equal", Value: "x"}}, wait: timeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &capstanv1.Pod{Spec: &capstanv1.PodSpec{Tolerations: tc.tolerations}}
			wait, forever := tolerationWait(pod, taint, timeout)
			if forever != tc.forever || (!forever && wait != tc.wait) {
				t.Errorf("tolerationWait = %v, forever %v; want %v, forever %v", wait, forever, tc.wait, tc.forever)
			}
		})
	}
}

func TestEvictionSuppressed(t *testing.T) {
	for _, tc := range []struct {
		dead, total int
		want        bool
	}{
		{0, 0, false}, {1, 1, true}, {1, 2, false}, {2, 4, false}, {3, 4, true}, {2, 3, true}, {2, 5, false}, {3, 5, true},
	} {
		if got := evictionSuppressed(make([]*capstanv1.Node, tc.dead), tc.total); got != tc.want {
			t.Errorf("%d dead of %d: suppressed %v, want %v", tc.dead, tc.total, got, tc.want)
		}
	}
}
