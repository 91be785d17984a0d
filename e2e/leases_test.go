package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/faultproxy"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/testcluster"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// The tests of leadership under faults of everything around the leaders:
// API replicas that die or freeze (the leaders must not notice), and
// leaders cut off from every API replica by the network (they must lose
// their lease and be fenced off). The leaders' own deaths are in
// controlplane_test.go, the node agents' in nodeagent_test.go.

// The reasons of the Events of lease transitions, which the API server
// records on the Lease (services/apiserver/internal/leases).
const (
	reasonLeaseAcquired    = "LeaseAcquired"
	reasonLeaseReleased    = "LeaseReleased"
	reasonLeaseExpired     = "LeaseExpired"
	reasonLeaseSessionLost = "LeaseSessionLost"
)

const (
	// apiFaults is how many faults TestAPIReplicaFaultsMoveNoLease
	// delivers, and apiFaultHold how long each lasts: long enough for an
	// etcd election and for the leaders to notice that their session's
	// replica went away, short enough that the test takes minutes.
	apiFaults    = 30
	apiFaultHold = 2 * time.Second
	// afterFreeze is how long after thawing a replica a test waits before
	// its next fault: four times the window in which the replica takes a
	// lease session's end for an after-effect of its freeze.
	afterFreeze = 2 * time.Second
)

// TestAPIReplicaFaultsMoveNoLease proves that a dead, stopped or frozen
// API replica costs the lease-gated components nothing: 30 faults of API
// server processes — SIGKILL, SIGTERM and SIGSTOP in turn, every other one
// on the replica whose etcd member leads, so that etcd elects a new leader
// too, each lasting a couple of seconds and restored before the next
// (testcluster.RunAPIFaults) — while a watch of the controller-manager's
// and the scheduler's leases records every change of holding. Neither
// lease changes epoch, no node stops being Ready (their node leases ride
// out the faults too), and afterwards both components still lead and work:
// a ReplicaSet scaled up after the faults gets its pods created and bound.
func TestAPIReplicaFaultsMoveNoLease(t *testing.T) {
	c := sharedCluster(t)
	c.restoreAfter(t)
	const (
		ns     = "e2e-api-faults"
		name   = "steady"
		before = 2
		after  = 6
	)
	watch := startStopwatch(t)
	cl := clientOf(t, c.addrs...)
	nodes := c.hollowNodes(t, "api-faults", 2, "4", "8Gi")
	pods := recordHistory(t, cl, podKind, ns)
	deleteWorkloadsAfter(t, cl, ns)
	rs := createReplicaSet(t, cl, ns, name, before, testPodSpec(nodes, "100m", "64Mi"))
	waitBound := func(want int) {
		t.Helper()
		pods.waitUntil(t, fmt.Sprintf("%d pods of %s bound", want, name), func() error {
			p := pods.activePods(rs.GetMetadata().GetUid())
			if len(p) != want || slices.ContainsFunc(p, func(p *capstanv1.Pod) bool { return !nodes.Has(p.GetSpec().GetNodeName()) }) {
				return fmt.Errorf("%d active pods: %s", len(p), describePods(p))
			}
			return nil
		})
	}
	waitBound(before)
	var settled []testcluster.Holding
	for _, lease := range leaseGated {
		settled = append(settled, c.waitSettled(t, lease))
	}
	watch.lap("set up")

	// The test's nodes are Ready before the faults; none may look otherwise
	// during them.
	nodeChanges := recordHistory(t, cl, nodeKind, "")
	nodeChanges.waitUntil(t, "the test's nodes Ready", func() error {
		for _, name := range nodes.Nodes() {
			obj, ok := nodeChanges.objects()[name]
			if !ok || !nodeIsReady(obj.(*capstanv1.Node)) {
				return fmt.Errorf("node %s is not Ready", name)
			}
		}
		return nil
	})
	nodesBefore := len(nodeChanges.record())

	holdings, err := c.RecordHoldings(t.Context(), leaseGated...)
	if err != nil {
		t.Fatal(err)
	}
	defer holdings.Stop()
	faults, err := c.RunAPIFaults(t.Context(), testcluster.APIFaultRun{Faults: apiFaults, Hold: apiFaultHold, Holdings: holdings,
		Done: func(f testcluster.APIFault) error {
			t.Logf("%v; restored in %v", f, f.Restored.Round(time.Millisecond))
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	watch.lap(fmt.Sprintf("%d faults", len(faults)))
	if err := holdings.Stop(); err != nil {
		t.Fatal(err)
	}
	onLeader := 0
	for _, f := range faults {
		if f.EtcdLeader {
			onLeader++
		}
		for lease, moved := range f.Moved {
			t.Errorf("%s changed hands with %v: %v", lease, f, moved)
		}
	}
	for i, lease := range leaseGated {
		t.Logf("%s: %d changes of holding in %d faults (%d on the etcd leader's replica): %v",
			lease, holdings.Changes(lease), len(faults), onLeader, holdings.Holdings(lease))
		if got := holdings.Holdings(lease); len(got) != 1 || got[0] != settled[i] {
			t.Errorf("%s was held by %v during the faults, want %v throughout", lease, got, settled[i])
		}
	}

	for _, ch := range nodeChanges.record()[nodesBefore:] {
		if node := ch.obj.(*capstanv1.Node); nodes.Has(node.GetMetadata().GetName()) && !nodeIsReady(node) {
			t.Errorf("node %s was not Ready during the API faults (rv %d): %v", node.GetMetadata().GetName(), ch.rv, node.GetStatus().GetConditions())
		}
	}

	// Both still lead, and work.
	for i, lease := range leaseGated {
		if now := c.waitSettled(t, lease); now != settled[i] {
			t.Errorf("%s is held by %v after the faults, want %v", lease, now, settled[i])
		}
	}
	updateObject(t, cl, replicaSetKind, ns, name, func(rs *capstanv1.ReplicaSet) { rs.Spec.Replicas = ref(int32(after)) })
	waitBound(after)
	watch.lap("scale-up after the faults")
}

// TestLeaderKilledAfterItsSessionReplicaWasFrozen proves, for the
// controller-manager and then the scheduler, that a freeze of the API
// replica that holds the leader's session leaves the session armed once
// the replica is thawed: the replica is frozen (SIGSTOP) for a couple of
// seconds — as in the API-fault runs, the leader keeps its lease and its
// session there — and thawed; a while later the leader is SIGKILLed, and
// the lease is released by its lost session (a LeaseSessionLost event at
// its epoch), not left to expire. Without that, any past freeze of a
// replica (a long GC pause, a paused container) would turn the next crash
// of a leader whose session it holds into a wait for the TTL.
func TestLeaderKilledAfterItsSessionReplicaWasFrozen(t *testing.T) {
	c := sharedCluster(t)
	c.restoreAfter(t)
	cl := clientOf(t, c.addrs...)
	events := recordHistory(t, cl, eventKind, wellknown.SystemNamespace)
	for _, lease := range leaseGated {
		t.Run(lease, func(t *testing.T) {
			watch := startStopwatch(t)
			leader := c.waitSettled(t, lease)
			replica := c.sessionReplica(t, lease, leader)
			c.pause(t, replica)
			// Nothing to wait for: the replica is to stay frozen for
			// longer than it takes to notice a freeze (1 s).
			select {
			case <-t.Context().Done():
				t.Fatal(t.Context().Err())
			case <-time.After(apiFaultHold):
			}
			c.resume(t, replica)
			c.restore(t)
			// A replica takes a session's end for the freeze's after-effect
			// only within 500 ms of noticing its freeze (leases.frozenWindow,
			// ADR 0006); the leader dies well after that.
			select {
			case <-t.Context().Done():
				t.Fatal(t.Context().Err())
			case <-time.After(afterFreeze):
			}
			watch.lap("freeze of " + replica + ", the replica of the leader's session")
			if now := c.waitSettled(t, lease); now != leader {
				t.Fatalf("the freeze of %s moved the lease from %v to %v", replica, leader, now)
			}
			t.Logf("%v keeps its session on %s after its freeze: %s", leader, replica, c.sessionReplica(t, lease, leader))
			since := c.leaseRevision(t, lease)
			c.kill(t, leader.Holder)
			next := c.waitTakeover(t, lease, leader)
			watch.lap("SIGKILL and takeover")
			t.Logf("SIGKILL to %v: %v took over", leader, next)
			waitLeaseEvent(t, events, lease, reasonLeaseAcquired, since, atEpoch(next.Epoch))
			if ended := leaseEvents(events, lease, since, reasonLeaseSessionLost); !slices.ContainsFunc(ended, atEpoch(leader.Epoch)) {
				t.Errorf("the lease of the killed %v was not released by its lost session; its events since: %s", leader,
					describeEvents(leaseEvents(events, lease, since, reasonLeaseReleased, reasonLeaseExpired, reasonLeaseSessionLost)))
			}
			c.restore(t)
		})
	}
}

// sessionReplica is the process name of the API replica that holds the
// session of the holding, as its Lease says, once it has one.
func (c *cluster) sessionReplica(t *testing.T, lease string, h testcluster.Holding) string {
	t.Helper()
	var replica string
	poll.For(t, takeoverTimeout, fmt.Sprintf("%v to have a session", h), func(ctx context.Context) error {
		l, err := c.Lease(ctx, lease)
		if err != nil {
			return err
		}
		if now := testcluster.HoldingOf(l); now != h {
			return fmt.Errorf("the lease is held by %v", now)
		}
		// An API server's --name is its process name.
		if replica = l.GetStatus().GetSessionReplica(); !slices.Contains(c.names, replica) {
			return fmt.Errorf("its session is on %q, not on one of %v", replica, c.names)
		}
		return nil
	})
	return replica
}

// TestNetworkCutLeaderIsFencedOff proves, for the controller-manager and
// then the scheduler, what happens to a leader cut off from every API
// replica by the network while its process runs on: a fourth candidate
// that reaches the API servers only through proxies (internal/faultproxy)
// is made the leader and set to work — a ReplicaSet scaling up from 2 to
// 24, a wave of 12 pods to bind — and in the middle of it every proxy
// freezes both ways, as a partition would. Its connections stay open, so
// its session is not lost: its lease ends when etcd expires it, and a
// standby takes over at a higher epoch and finishes the work. Then the
// proxies thaw and deliver everything the cut-off leader sent meanwhile,
// however late. The old leader steps down and stands by, nothing it sent
// with its stale epoch landed (checkFencedOff: no event it wrote at or
// after the end of its holding; the new holding untouched), and an
// independent watch of the pods shows the work done exactly once: never
// more active pods than replicas, no pod bound twice or moved.
func TestNetworkCutLeaderIsFencedOff(t *testing.T) {
	c := sharedCluster(t)
	c.restoreAfter(t)
	for _, lease := range leaseGated {
		t.Run(lease, func(t *testing.T) { c.networkCut(t, lease) })
	}
}

// networkCut is TestNetworkCutLeaderIsFencedOff for one component.
func (c *cluster) networkCut(t *testing.T, lease string) {
	const (
		initial, burst, cutAfter = 2, 24, 5 // the controller-manager's work
		wave, boundAfter         = 12, 3    // the scheduler's
	)
	ns := "e2e-cut-" + lease
	cut := lease + "-cut"
	watch := startStopwatch(t)

	// Proxies first, so that they close last: the candidate stops first.
	var proxies []*faultproxy.Proxy
	var proxyAddrs []string
	for _, addr := range c.addrs {
		p, err := faultproxy.Start(addr, faultproxy.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		proxies = append(proxies, p)
		proxyAddrs = append(proxyAddrs, p.Addr())
	}
	if err := c.StartCandidate(t.Context(), testcluster.ExtraCandidate{Binary: lease, Name: cut, Servers: proxyAddrs}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := c.RemoveCandidate(ctx, cut); err != nil {
			t.Errorf("remove %s: %v", cut, err)
		}
	})
	leader := c.makeLeader(t, lease, cut)
	watch.lap("the candidate behind proxies leads")

	cl, nodes, w := c.setUpFencingTest(t, ns, "cut-"+strings.TrimSuffix(lease, "-manager"), "4")
	replicaSets := recordHistory(t, cl, replicaSetKind, ns)
	offset := c.logOffset(t, cut)
	var (
		rs    *capstanv1.ReplicaSet
		done  func() error
		bound = func() int {
			n := 0
			for _, p := range w.pods.pods() {
				if p.GetSpec().GetNodeName() != "" {
					n++
				}
			}
			return n
		}
	)
	switch lease {
	case wellknown.ControllerManagerLease:
		rs = createReplicaSet(t, cl, ns, "burst", initial, testPodSpec(nodes, "50m", "32Mi"))
		active := func() int { return len(w.pods.activePods(rs.GetMetadata().GetUid())) }
		w.pods.waitUntil(t, fmt.Sprintf("%d active pods", initial), atLeast(active, initial))
		updateObject(t, cl, replicaSetKind, ns, "burst", func(rs *capstanv1.ReplicaSet) { rs.Spec.Replicas = ref(int32(burst)) })
		w.pods.waitUntil(t, "the scale-up to be under way", atLeast(active, cutAfter))
		done = func() error {
			if n := active(); n != burst {
				return fmt.Errorf("%d of %d pods active", n, burst)
			}
			return nil
		}
	case wellknown.SchedulerLease:
		created := make(chan error, 1)
		go func() {
			ctx, cancel := callCtx(t)
			defer cancel()
			for i := 1; i <= wave; i++ {
				if _, err := cl.Create(ctx, &capstanv1.Pod{
					Metadata: &capstanv1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("wave-%d", i)},
					Spec:     testPodSpec(nodes, "100m", "64Mi"),
				}); err != nil {
					created <- fmt.Errorf("create pod wave-%d: %w", i, err)
					return
				}
			}
			created <- nil
		}()
		w.pods.waitUntil(t, "the binds to be under way", atLeast(bound, boundAfter))
		defer func() {
			if err := <-created; err != nil {
				t.Error(err)
			}
		}()
		done = func() error {
			if n, all := bound(), len(w.pods.pods()); n != wave || all != wave {
				return fmt.Errorf("%d of %d pods bound", n, all)
			}
			return nil
		}
	}

	for _, p := range proxies {
		p.Freeze(faultproxy.Both)
	}
	next := c.waitTakeover(t, lease, leader)
	watch.lap("cut and takeover")
	t.Logf("cut %v off the API servers; %v took over", leader, next)
	poll.For(t, convergeTimeout, "the new leader to finish the work", func(context.Context) error { return done() })
	watch.lap("the new leader finished the work")
	held := 0
	for _, p := range proxies {
		held += p.Thaw()
	}
	t.Logf("the proxies held %d chunks of bytes during the cut, delivered now", held)
	records := c.fencedOff(t, cl, frozenLeader{lease: lease, old: leader, next: next, offset: offset}, w, "sentinel-cut")
	watch.lap("thaw, step down and fencing checks")
	t.Logf("%s logged %d lines after the cut", cut, len(records))

	record := w.pods.record()
	violations, _ := bindingViolations(record)
	for _, v := range violations {
		t.Errorf("bound twice: %s", v)
	}
	if rs != nil {
		checkNoExcessPods(t, w.pods, replicaSets, rs)
	}
}

// atLeast is a history condition: count() has reached n.
func atLeast(count func() int, n int) func() error {
	return func() error {
		if got := count(); got < n {
			return fmt.Errorf("%d, want %d", got, n)
		}
		return nil
	}
}

// makeLeader makes the named candidate the leader of lease: every other
// candidate is stopped (SIGTERM: a leader releases its lease), and started
// again once the named one holds the lease, to stand by. It returns the
// holding.
func (c *cluster) makeLeader(t *testing.T, lease, name string) testcluster.Holding {
	t.Helper()
	prev := c.waitSettled(t, lease)
	if prev.Holder == name {
		return prev
	}
	var others []string
	for _, candidate := range c.Candidates(lease) {
		if candidate != name {
			others = append(others, candidate)
		}
	}
	for _, other := range others {
		if err := c.Stop(t.Context(), other); err != nil {
			t.Fatal(err)
		}
	}
	if h := c.waitTakeover(t, lease, prev); h.Holder != name {
		t.Fatalf("the lease went to %v, want %s, the only candidate left", h, name)
	}
	for _, other := range others {
		if err := c.Start(t.Context(), other); err != nil {
			t.Fatal(err)
		}
	}
	h := c.waitSettled(t, lease)
	if h.Holder != name {
		t.Fatalf("the lease is held by %v, want %s", h, name)
	}
	return h
}

// leaseRevision is the revision of the component's Lease now: the events
// of a transition to come are changes after it.
func (c *cluster) leaseRevision(t *testing.T, lease string) int64 {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	l, err := c.Lease(ctx, lease)
	if err != nil {
		t.Fatal(err)
	}
	return l.GetMetadata().GetResourceVersion()
}

// leaseEvents are the Events about the named lease of a lease-gated
// component with one of reasons, changed after revision since, from a
// history of events.
func leaseEvents(h *history, lease string, since int64, reasons ...string) []*capstanv1.Event {
	return leaseEventsIn(h, wellknown.SystemNamespace, lease, since, reasons...)
}

// leaseEventsIn is leaseEvents of the lease namespace/name.
func leaseEventsIn(h *history, namespace, lease string, since int64, reasons ...string) []*capstanv1.Event {
	var out []*capstanv1.Event
	for _, ch := range h.record() {
		ev, ok := ch.obj.(*capstanv1.Event)
		if !ok || ch.rv <= since || ch.typ == client.Deleted {
			continue
		}
		if obj := ev.GetInvolvedObject(); obj.GetKind() == "Lease" && obj.GetNamespace() == namespace && obj.GetName() == lease && slices.Contains(reasons, ev.GetReason()) {
			out = append(out, ev)
		}
	}
	return out
}

// atEpoch matches the event of a transition at epoch ("... at epoch N").
func atEpoch(epoch int64) func(*capstanv1.Event) bool {
	return func(ev *capstanv1.Event) bool {
		return strings.HasSuffix(ev.GetMessage(), fmt.Sprintf(" at epoch %d", epoch))
	}
}

// namesHolder matches the event of the end of a holding of the candidate
// (its holder identity is <candidate>_<nonce>).
func namesHolder(candidate string) func(*capstanv1.Event) bool {
	return func(ev *capstanv1.Event) bool { return strings.Contains(ev.GetMessage(), " "+candidate+"_") }
}

// waitLeaseEvent waits until the history has an event about the named
// lease of a lease-gated component, with reason, changed after revision
// since, that match accepts.
func waitLeaseEvent(t *testing.T, h *history, lease, reason string, since int64, match func(*capstanv1.Event) bool) {
	t.Helper()
	waitLeaseEventIn(t, h, wellknown.SystemNamespace, lease, reason, since, match)
}

// waitLeaseEventIn is waitLeaseEvent of the lease namespace/name.
func waitLeaseEventIn(t *testing.T, h *history, namespace, lease, reason string, since int64, match func(*capstanv1.Event) bool) {
	t.Helper()
	h.waitUntil(t, fmt.Sprintf("a %s event on the lease %s/%s", reason, namespace, lease), func() error {
		events := leaseEventsIn(h, namespace, lease, since, reason)
		if slices.ContainsFunc(events, match) {
			return nil
		}
		return fmt.Errorf("the lease's %s events since revision %d: %s; all its events: %s", reason, since, describeEvents(events),
			describeEvents(leaseEventsIn(h, namespace, lease, since, reasonLeaseAcquired, reasonLeaseReleased, reasonLeaseExpired, reasonLeaseSessionLost)))
	})
}

// noLeaseEvents fails t for each event about the named lease of a
// lease-gated component with one of reasons, changed after revision since.
func noLeaseEvents(t *testing.T, h *history, lease string, since int64, reasons ...string) {
	t.Helper()
	if events := leaseEvents(h, lease, since, reasons...); len(events) > 0 {
		t.Errorf("events on the lease %s that must not be there: %s", lease, describeEvents(events))
	}
}

func describeEvents(events []*capstanv1.Event) string {
	if len(events) == 0 {
		return "none"
	}
	var parts []string
	for _, ev := range events {
		parts = append(parts, fmt.Sprintf("%s %q (%s, %s)", ev.GetReason(), ev.GetMessage(), ev.GetSource().GetComponent(), ev.GetSource().GetHost()))
	}
	return strings.Join(parts, "; ")
}

// nodeIsReady reports whether node's Ready condition is True.
func nodeIsReady(node *capstanv1.Node) bool {
	return conditionStatus(node.GetStatus().GetConditions(), wellknown.NodeReady) == wellknown.ConditionTrue
}
