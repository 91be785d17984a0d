package e2e

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/testcluster"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// The messages of the lease-gated components' logs that the tests look
// for (internal/leaderelection and internal/leaderelection/component).
const (
	msgStoppedLeading = "stopped leading"
	msgReleased       = "released the lease"
	msgAlreadyGone    = "the lease was already gone; nothing to release"
	msgReleaseFailed  = "releasing the lease failed; it expires by itself within its TTL"
	msgWorkStopped    = "leadership over: the work stopped"
	msgStopped        = "stopped"
	// reasonShutdown and reasonDeadline begin the reason of a
	// msgStoppedLeading record: a SIGTERM, and a leader that could not
	// renew in time (it was frozen).
	reasonShutdown = "shutting down"
	reasonDeadline = "no renewal succeeded"
	reasonRefused  = "refused with LEASE_NOT_HELD"
	// rejectedWrite is in the message of every call refused for a stale
	// fencing token (apierrors.LeaseNotHeld).
	rejectedWrite = "no longer the leader"
)

// TestLeaseGatedComponentsFailOver proves, for the controller-manager and
// then the scheduler, with the real processes, that each way a leader can
// go hands the lease over to a standby at a higher epoch, and how the
// holding ended (every lease transition is an Event on the Lease):
//
//   - SIGKILL of the leader (the lease holder): the kernel closes its
//     connections, and the API replica that holds its session releases
//     the lease at once: a LeaseSessionLost event at the dead leader's
//     epoch, no LeaseExpired, and the standby's LeaseAcquired at a higher
//     epoch. (A dead process writes nothing: there is nothing to fence.)
//   - SIGTERM of the next leader: it stops its work, releases its lease
//     (its log says so, at its epoch; a LeaseReleased event says so too)
//     and exits with status 0; the last standby takes over at a higher
//     epoch. That the release makes the takeover quicker than the TTL is
//     a timing claim, not asserted here (hack/benchfailover measures it).
//   - restoring the cluster restarts both stopped processes, and they
//     stand by: the cluster status lists them as standbys of the lease,
//     and their /healthz says that they do not lead and names the current
//     holding.
//   - SIGSTOP of the leader: its connections stay open, so its lease ends
//     when etcd expires it (a LeaseExpired event naming it), and a standby
//     takes over. Thawed, the old leader steps down and stands by, and it
//     was fenced off: whatever it tried with its stale epoch changed
//     nothing (checkFencedOff: no event it wrote landed after its holding
//     ended, the new holding is untouched). TestFrozenControllerManager-
//     IsFencedOff and TestFrozenSchedulerIsFencedOff freeze leaders in the
//     middle of their work.
func TestLeaseGatedComponentsFailOver(t *testing.T) {
	c := sharedCluster(t)
	c.restoreAfter(t)
	cl := clientOf(t, c.addrs...)
	w := witnesses{
		// Leases' events are in the leases' namespace; the components'
		// in their objects' namespaces.
		events: recordHistory(t, cl, eventKind, resource.AllNamespaces),
		leases: recordHistory(t, cl, leaseKind, wellknown.SystemNamespace),
	}
	for _, lease := range leaseGated {
		t.Run(lease, func(t *testing.T) {
			watch := startStopwatch(t)
			killed := c.waitSettled(t, lease)
			since := c.leaseRevision(t, lease)
			watch.lap("settle")
			c.kill(t, killed.Holder)
			termed := c.waitTakeover(t, lease, killed)
			watch.lap("SIGKILL and takeover")
			t.Logf("SIGKILL to %v: %v took over", killed, termed)
			waitLeaseEvent(t, w.events, lease, reasonLeaseAcquired, since, atEpoch(termed.Epoch))
			waitLeaseEvent(t, w.events, lease, reasonLeaseSessionLost, since, atEpoch(killed.Epoch))
			noLeaseEvents(t, w.events, lease, since, reasonLeaseExpired, reasonLeaseReleased)
			watch.lap("events of the SIGKILL")

			// SIGTERM once the last standby watches the new holding.
			if settled := c.waitSettled(t, lease); settled != termed {
				t.Fatalf("the lease moved on from %v to %v by itself", termed, settled)
			}
			since = c.leaseRevision(t, lease)
			watch.lap("settle")
			offset := c.logOffset(t, termed.Holder)
			ws, err := c.Terminate(t.Context(), termed.Holder)
			if err != nil {
				t.Fatalf("SIGTERM %s: %v", termed.Holder, err)
			}
			if !ws.Exited() || ws.ExitStatus() != 0 {
				t.Errorf("%s exited with %v after SIGTERM, want exit status 0", termed.Holder, describeWaitStatus(ws))
			}
			last := c.waitTakeover(t, lease, termed)
			watch.lap("SIGTERM, exit and takeover")
			t.Logf("SIGTERM to %v: %v took over", termed, last)
			records := c.logSince(t, termed.Holder, offset)
			epoch := strconv.FormatInt(termed.Epoch, 10)
			if r, ok := find(records, msgStoppedLeading, "epoch", epoch); !ok || r["reason"] != reasonShutdown {
				t.Errorf("%s did not log %q at epoch %s with reason %q; its log after SIGTERM:\n%s", termed.Holder, msgStoppedLeading, epoch, reasonShutdown, lines(records))
			}
			if _, ok := find(records, msgReleased, "epoch", epoch); !ok {
				t.Errorf("%s did not log %q at epoch %s; its log after SIGTERM:\n%s", termed.Holder, msgReleased, epoch, lines(records))
			}
			// The component's own last line: its controllers' "stopped"
			// lines carry the epoch of their leadership.
			if _, ok := find(records, msgStopped, "epoch", ""); !ok {
				t.Errorf("%s did not log %q; its log after SIGTERM:\n%s", termed.Holder, msgStopped, lines(records))
			}
			waitLeaseEvent(t, w.events, lease, reasonLeaseAcquired, since, atEpoch(last.Epoch))
			waitLeaseEvent(t, w.events, lease, reasonLeaseReleased, since, atEpoch(termed.Epoch))
			noLeaseEvents(t, w.events, lease, since, reasonLeaseExpired, reasonLeaseSessionLost)

			c.restore(t)
			watch.lap("restart")
			restarted := []string{killed.Holder, termed.Holder}
			poll.For(t, takeoverTimeout, fmt.Sprintf("the restarted %v to stand by", restarted), func(ctx context.Context) error {
				listed, current, err := c.Standbys(ctx, lease)
				if err != nil {
					return err
				}
				if current != last {
					return fmt.Errorf("the lease is held by %v, not %v", current, last)
				}
				for _, name := range restarted {
					if !slices.Contains(listed, name) {
						return fmt.Errorf("the cluster status lists the standbys %v, without %s", listed, name)
					}
					hz, err := c.Health(ctx, name)
					if err != nil {
						return err
					}
					if hz.Leading || hz.Leader != last.Holder || hz.LeaderEpoch != last.Epoch {
						return fmt.Errorf("%s reports %+v", name, hz)
					}
				}
				return nil
			})
			watch.lap("stand by")

			frozen := c.waitSettled(t, lease)
			since = c.leaseRevision(t, lease)
			offset = c.logOffset(t, frozen.Holder)
			c.pause(t, frozen.Holder)
			next := c.waitTakeover(t, lease, frozen)
			watch.lap("SIGSTOP and takeover")
			t.Logf("SIGSTOP to %v: %v took over", frozen, next)
			waitLeaseEvent(t, w.events, lease, reasonLeaseAcquired, since, atEpoch(next.Epoch))
			waitLeaseEvent(t, w.events, lease, reasonLeaseExpired, since, namesHolder(frozen.Holder))
			noLeaseEvents(t, w.events, lease, since, reasonLeaseReleased, reasonLeaseSessionLost)
			c.thawFencedOff(t, cl, frozenLeader{lease: lease, old: frozen, next: next, offset: offset}, w, "sentinel-failover-"+lease)
			watch.lap("thaw, step down and fencing checks")
		})
	}
}

// TestFrozenControllerManagerIsFencedOff proves that a controller-manager
// paused past its lease changes nothing when it wakes up, and steps down.
//
// The leader is frozen (SIGSTOP) in the middle of work: the moment an
// independent watch sees the third new pod of a scale-up from 2 to 24,
// while its ReplicaSet controller is still creating pods and its event
// recorder still has events to write. A standby takes the lease over at a
// higher epoch. While the old leader is still frozen the test makes changes
// it would act on — the ReplicaSet is scaled to 30 and two of its pods are
// deleted — and the new leader carries them out (the old one cannot: it is
// frozen). The old leader's watch streams buffer those changes, so on
// SIGCONT its caches are stale and it has work queued. Then:
//
//   - it steps down: its log says "stopped leading" at its old epoch, and
//     its /healthz reports that it does not lead and names the new holding;
//     the cluster status lists it as a standby;
//   - it made a call with its stale token after SIGCONT, and that call
//     changed nothing: if it stepped down because its renewal deadline had
//     passed, it tried to release the stale holding (and was told, so far
//     in every run, "the lease was already gone"); otherwise it stepped
//     down because a renewal or a fenced write was refused. The new
//     holding is untouched;
//   - nothing it sent after its holding ended landed: an independent watch
//     of events sees none written by it (events carry their writer's
//     identity) at or after the revision at which its holding ended. The
//     fenced writes it had queued (events) and that were refused are
//     counted from its log; how many depends on the moment of the freeze;
//   - an independent watch of pods and ReplicaSets shows that at no moment
//     were there more active pods than the ReplicaSet's replicas at that
//     moment, and it ends with exactly 30.
func TestFrozenControllerManagerIsFencedOff(t *testing.T) {
	c := sharedCluster(t)
	c.restoreAfter(t)
	const (
		ns   = "e2e-frozen-cm"
		name = "burst"
		// The ReplicaSet starts at initial, is frozen in the scale-up to
		// burst (once frozenAfter pods are active), and is scaled to final
		// while its old leader is frozen, which also sees deleted pods go.
		initial     = 2
		burst       = 24
		frozenAfter = initial + 3
		final       = 30
		deleted     = 2
	)
	lease := wellknown.ControllerManagerLease
	watch := startStopwatch(t)
	cl, nodes, w := c.setUpFencingTest(t, ns, "frozen-cm", "4")
	pods := w.pods
	replicaSets := recordHistory(t, cl, replicaSetKind, ns)

	rs := createReplicaSet(t, cl, ns, name, initial, testPodSpec(nodes, "50m", "32Mi"))
	uid := rs.GetMetadata().GetUid()
	active := func() []*capstanv1.Pod { return pods.activePods(uid) }
	waitActive := func(what string, ok func(n int) bool) {
		t.Helper()
		pods.waitUntil(t, what, func() error {
			if p := active(); !ok(len(p)) {
				return fmt.Errorf("%d active pods: %s", len(p), describePods(p))
			}
			return nil
		})
	}
	waitActive(fmt.Sprintf("%d active pods", initial), func(n int) bool { return n == initial })
	old := c.waitSettled(t, lease)
	offset := c.logOffset(t, old.Holder)
	watch.lap("set up")

	updateObject(t, cl, replicaSetKind, ns, name, func(rs *capstanv1.ReplicaSet) { rs.Spec.Replicas = ref(int32(burst)) })
	waitActive("the scale-up to be under way", func(n int) bool { return n >= frozenAfter })
	c.pause(t, old.Holder)
	frozenWith := len(active())
	next := c.waitTakeover(t, lease, old)
	watch.lap("freeze and takeover")
	t.Logf("froze %v with %d of %d pods active; %v took over", old, frozenWith, burst, next)

	updateObject(t, cl, replicaSetKind, ns, name, func(rs *capstanv1.ReplicaSet) { rs.Spec.Replicas = ref(int32(final)) })
	// The victims are bound pods: they are deleted gracefully (their
	// hollow node's agent removes them), and no bind races the deletion — a
	// Delete without preconditions of an unbound pod that a BindPod
	// overtakes is refused with ABORTED today.
	var victims []*capstanv1.Pod
	pods.waitUntil(t, "bound pods to delete", func() error {
		victims = slices.DeleteFunc(active(), func(p *capstanv1.Pod) bool { return p.GetSpec().GetNodeName() == "" })
		if len(victims) < deleted {
			return fmt.Errorf("%d active pods are bound", len(victims))
		}
		return nil
	})
	slices.SortFunc(victims, func(a, b *capstanv1.Pod) int {
		return strings.Compare(a.GetMetadata().GetName(), b.GetMetadata().GetName())
	})
	ctx, cancel := callCtx(t)
	defer cancel()
	for _, p := range victims[:deleted] {
		if _, err := cl.Delete(ctx, podKind, ns, p.GetMetadata().GetName(), nil); err != nil {
			t.Fatalf("delete pod %s: %v", p.GetMetadata().GetName(), err)
		}
	}
	poll.For(t, convergeTimeout, fmt.Sprintf("the new leader to bring the ReplicaSet to %d pods", final), func(ctx context.Context) error {
		if p := active(); len(p) != final {
			return fmt.Errorf("%d active pods", len(p))
		}
		obj, err := cl.Get(ctx, replicaSetKind, ns, name)
		if err != nil {
			return err
		}
		rs := obj.(*capstanv1.ReplicaSet)
		if rs.GetStatus().GetReplicas() != final || rs.GetStatus().GetObservedGeneration() != rs.GetMetadata().GetGeneration() {
			return fmt.Errorf("the ReplicaSet's status: %v", rs.GetStatus())
		}
		return nil
	})
	watch.lap("changes carried out by the new leader")

	c.thawFencedOff(t, cl, frozenLeader{lease: lease, old: old, next: next, offset: offset}, w, "sentinel-frozen-cm")
	watch.lap("thaw, step down and fencing checks")

	checkNoExcessPods(t, pods, replicaSets, rs)
	if p := active(); len(p) != final {
		t.Errorf("%d active pods at the end, want %d: %s", len(p), final, describePods(p))
	}
}

// checkNoExcessPods fails t for every moment, in the histories of pods and
// of ReplicaSets, at which the ReplicaSet rs had more active pods than the
// replicas it asked for at that moment.
func checkNoExcessPods(t *testing.T, pods, replicaSets *history, rs *capstanv1.ReplicaSet) {
	t.Helper()
	uid := rs.GetMetadata().GetUid()
	replicasAt := replicasTimeline(replicaSets.record(), rs.GetMetadata().GetName())
	maxActive, moments := 0, 0
	var excess []string
	replayPods(pods.record(), func(rv int64, state map[string]*capstanv1.Pod) {
		n := 0
		for _, p := range state {
			if controlledBy(p, uid) && isActive(p) {
				n++
			}
		}
		moments++
		maxActive = max(maxActive, n)
		if want := replicasAt(rv); int32(n) > want {
			excess = append(excess, fmt.Sprintf("revision %d: %d active pods, replicas %d", rv, n, want))
		}
	})
	t.Logf("%d moments of the pods; at most %d active", moments, maxActive)
	if len(excess) > 0 {
		t.Errorf("more active pods than replicas at %d moments: %v", len(excess), excess)
	}
}

// TestFrozenSchedulerIsFencedOff proves the same of the scheduler, whose
// writes are binds: the leader is frozen in the middle of binding a first
// wave of 12 pods; a standby takes over and, while the old leader is still
// frozen, binds those left and a second wave of 12 created after the
// takeover, which the old leader's watch buffers as unbound pods. After
// SIGCONT the old leader steps down and nothing it sent after its holding
// ended landed (as for the controller-manager). An independent watch of
// the pods shows that no pod was ever bound twice or moved to another node
// (every pod's node_name changes from "" to a node at most once), and that
// at no moment did a node hold more pods than fit its allocatable cpu
// (900m for pods of 100m: 9 on each of the 3 nodes, for 24 pods).
func TestFrozenSchedulerIsFencedOff(t *testing.T) {
	c := sharedCluster(t)
	c.restoreAfter(t)
	const (
		ns          = "e2e-frozen-sched"
		wave        = 12
		frozenAfter = 3
		podsPerNode = 9
	)
	lease := wellknown.SchedulerLease
	watch := startStopwatch(t)
	cl, nodes, w := c.setUpFencingTest(t, ns, "frozen-sched", "900m")
	pods := w.pods
	bound := func() []*capstanv1.Pod {
		var out []*capstanv1.Pod
		for _, p := range pods.pods() {
			if p.GetSpec().GetNodeName() != "" {
				out = append(out, p)
			}
		}
		return out
	}
	createPods := func(prefix string) error {
		ctx, cancel := callCtx(t)
		defer cancel()
		for i := 1; i <= wave; i++ {
			_, err := cl.Create(ctx, &capstanv1.Pod{
				Metadata: &capstanv1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("%s-%d", prefix, i)},
				Spec:     testPodSpec(nodes, "100m", "64Mi"),
			})
			if err != nil {
				return fmt.Errorf("create pod %s-%d: %w", prefix, i, err)
			}
		}
		return nil
	}

	old := c.waitSettled(t, lease)
	offset := c.logOffset(t, old.Holder)
	watch.lap("set up")
	// The first wave is created while the test waits for the first binds,
	// so the freeze comes while pods are still arriving.
	created := make(chan error, 1)
	go func() { created <- createPods("first") }()
	pods.waitUntil(t, "the binds to be under way", func() error {
		if n := len(bound()); n < frozenAfter {
			return fmt.Errorf("%d pods bound", n)
		}
		return nil
	})
	c.pause(t, old.Holder)
	if err := <-created; err != nil {
		t.Fatal(err)
	}
	frozenWith := len(bound())
	next := c.waitTakeover(t, lease, old)
	watch.lap("freeze and takeover")
	t.Logf("froze %v with %d of %d pods bound; %v took over", old, frozenWith, wave, next)

	if err := createPods("second"); err != nil {
		t.Fatal(err)
	}
	poll.For(t, convergeTimeout, "the new leader to bind every pod", func(context.Context) error {
		if b, all := len(bound()), len(pods.pods()); b != 2*wave || all != 2*wave {
			return fmt.Errorf("%d of %d pods bound", b, all)
		}
		return nil
	})
	watch.lap("binds by the new leader")

	records := c.thawFencedOff(t, cl, frozenLeader{lease: lease, old: old, next: next, offset: offset}, w, "sentinel-frozen-sched")
	watch.lap("thaw, step down and fencing checks")
	t.Logf("binds %s abandoned after SIGCONT: %d", old.Holder, len(containing(records, "bind abandoned")))

	record := pods.record()
	violations, boundTo := bindingViolations(record)
	for _, v := range violations {
		t.Errorf("bound twice: %s", v)
	}
	perNode := map[string]int{}
	for uid, node := range boundTo {
		if !nodes.Has(node) {
			t.Errorf("pod %s is bound to %q, not to one of %v", uid, node, nodes.Nodes())
		}
		perNode[node]++
	}
	t.Logf("pods per node: %v", perNode)
	checkNodeCapacity(t, record, podsPerNode)
}

// checkNodeCapacity fails t for every moment of a pod record at which a
// node held more than podsPerNode active pods.
func checkNodeCapacity(t *testing.T, record []change, podsPerNode int) {
	t.Helper()
	var over []string
	replayPods(record, func(rv int64, state map[string]*capstanv1.Pod) {
		perNode := map[string]int{}
		for _, p := range state {
			// A pod being deleted holds its resources until it is gone; a
			// finished one holds none.
			phase := p.GetStatus().GetPhase()
			if node := p.GetSpec().GetNodeName(); node != "" && phase != wellknown.PodSucceeded && phase != wellknown.PodFailed {
				perNode[node]++
			}
		}
		for node, n := range perNode {
			if n > podsPerNode {
				over = append(over, fmt.Sprintf("revision %d: %d pods on %s", rv, n, node))
			}
		}
	})
	if len(over) > 0 {
		t.Errorf("more pods on a node than fit its allocatable cpu (%d) at %d moments: %v", podsPerNode, len(over), over)
	}
}

// witnesses are the independent histories that judge a frozen leader: the
// pods (if the test has some) and events of the test's namespace (or of
// every namespace), and the leases of the system namespace.
type witnesses struct {
	pods, events, leases *history
}

// setUpFencingTest sets up a test that freezes a leader in namespace ns: a
// client, three hollow nodes (the pool pool) with cpu each, the witnesses,
// and the removal of the namespace's workloads when t ends.
func (c *cluster) setUpFencingTest(t *testing.T, ns, pool, cpu string) (*client.Client, *testcluster.Pool, witnesses) {
	t.Helper()
	cl := clientOf(t, c.addrs...)
	nodes := c.hollowNodes(t, pool, 3, cpu, "16Gi")
	w := witnesses{
		pods:   recordHistory(t, cl, podKind, ns),
		events: recordHistory(t, cl, eventKind, ns),
		leases: recordHistory(t, cl, leaseKind, wellknown.SystemNamespace),
	}
	deleteWorkloadsAfter(t, cl, ns)
	return cl, nodes, w
}

// frozenLeader is a leader a test froze, and the holding that took over
// from it.
type frozenLeader struct {
	lease     string
	old, next testcluster.Holding
	// offset is the size of the old leader's log before it was frozen.
	offset int64
}

// thawFencedOff thaws the frozen leader, waits until it has stepped down
// and stands by (waitSteppedDown), brings the witnesses up to now with a
// sentinel of that name, and checks that the old leader was fenced off
// (checkFencedOff). It returns what the old leader logged since the
// freeze.
func (c *cluster) thawFencedOff(t *testing.T, cl *client.Client, f frozenLeader, w witnesses, sentinel string) []logRecord {
	t.Helper()
	c.resume(t, f.old.Holder)
	return c.fencedOff(t, cl, f, w, sentinel)
}

// fencedOff waits until a leader that lost its lease while it could not
// act — frozen, or cut off from the API servers — and can again has
// stepped down and stands by (waitSteppedDown), brings the witnesses up to
// now with a sentinel of that name, and checks that it was fenced off
// (checkFencedOff). It returns what the old leader logged since offset.
func (c *cluster) fencedOff(t *testing.T, cl *client.Client, f frozenLeader, w witnesses, sentinel string) []logRecord {
	t.Helper()
	records := c.waitSteppedDown(t, f.lease, f.old, f.next, f.offset)
	if w.pods != nil {
		w.pods.catchUp(t, cl, sentinel)
	}
	w.events.catchUp(t, cl, sentinel)
	c.checkFencedOff(t, f.lease, f.old, f.next, records, w.leases.record(), w.events.record())
	return records
}

// waitSteppedDown waits, once the old leader can act again (SIGCONT, or
// the network back), until it has stepped down and stands by — its
// /healthz says it does not lead and names the new holding, and its log
// says its work stopped — and returns what it logged since offset.
func (c *cluster) waitSteppedDown(t *testing.T, lease string, old, next testcluster.Holding, offset int64) []logRecord {
	t.Helper()
	var records []logRecord
	epoch := strconv.FormatInt(old.Epoch, 10)
	poll.For(t, takeoverTimeout, old.Holder+" to step down and stand by", func(ctx context.Context) error {
		hz, err := c.Health(ctx, old.Holder)
		if err != nil {
			return err
		}
		if hz.Leading || hz.Leader != next.Holder || hz.LeaderEpoch != next.Epoch {
			return fmt.Errorf("%s reports %+v", old.Holder, hz)
		}
		records = c.logSince(t, old.Holder, offset)
		if _, ok := find(records, msgWorkStopped, "epoch", epoch); !ok {
			return fmt.Errorf("%s has not logged %q at epoch %s", old.Holder, msgWorkStopped, epoch)
		}
		listed, _, err := c.Standbys(ctx, lease)
		if err != nil {
			return err
		}
		if !slices.Contains(listed, old.Holder) {
			return fmt.Errorf("the cluster status lists the standbys %v, without %s", listed, old.Holder)
		}
		return nil
	})
	return records
}

// checkFencedOff checks what a leader that was frozen (or cut off from the
// API servers) past its lease did when it could act again: it stepped down at its old epoch; if it did so because
// its renewal deadline had passed, its release of the stale holding was
// refused; the new holding is still there; and no event it wrote landed at
// or after the revision at which its holding ended (every fenced write it
// sent after that was refused). It logs how many of its calls were refused
// for their stale fencing token.
func (c *cluster) checkFencedOff(t *testing.T, lease string, old, next testcluster.Holding, records []logRecord, leaseRecord, eventRecord []change) {
	t.Helper()
	epoch := strconv.FormatInt(old.Epoch, 10)
	stepDown, ok := find(records, msgStoppedLeading, "epoch", epoch)
	if !ok {
		t.Fatalf("%s did not log %q at epoch %s after it lost its lease:\n%s", old.Holder, msgStoppedLeading, epoch, lines(records))
	}
	// Each way of stepping down after the thaw makes a call with the stale
	// token.
	t.Logf("%s stepped down: %s", old.Holder, stepDown["reason"])
	switch reason := stepDown["reason"]; {
	case strings.HasPrefix(reason, reasonDeadline):
		// It could not know whether its lease was gone, so it tried to
		// hand it back, at an epoch that is no longer the key's: the server
		// refuses that ("already gone"). A client that lost the first
		// answer and retried reports the refusal as a success ("released"),
		// and a call without any answer fails ("failed"); either way, what
		// proves that it changed nothing is that the new holding is still
		// there (below).
		attempt, ok := find(records, msgAlreadyGone, "epoch", epoch)
		if !ok {
			attempt, ok = find(records, msgReleased, "epoch", epoch)
		}
		if !ok {
			attempt, ok = find(records, msgReleaseFailed, "epoch", epoch)
		}
		if !ok {
			t.Errorf("%s stepped down at its deadline but did not try to release the lease at epoch %s:\n%s", old.Holder, epoch, lines(records))
		} else {
			t.Logf("%s tried to release its stale holding: %s", old.Holder, attempt["msg"])
		}
	case strings.Contains(reason, reasonRefused):
		// A renewal or a fenced write was refused: that is the step-down.
	default:
		t.Errorf("%s stepped down for an unexpected reason: %s", old.Holder, stepDown["line"])
	}
	refused := containing(records, rejectedWrite)
	t.Logf("%s logged %d fenced writes refused after it lost its lease (events it had queued, binds)", old.Holder, len(refused))
	for _, r := range refused[:min(len(refused), 3)] {
		t.Logf("  %s", r["line"])
	}

	ctx, cancel := callCtx(t)
	defer cancel()
	if now, err := c.LeaseHolding(ctx, lease); err != nil || now != next {
		t.Errorf("after %s stepped down the lease is held by %v (%v), want %v", old.Holder, now, err, next)
	}

	end := holdingEnd(leaseRecord, lease, old.Epoch)
	if end == 0 {
		t.Errorf("the lease history shows no end of the holding %v", old)
		end = next.Epoch
	}
	t.Logf("the holding %v ended at revision %d; %v began at %d", old, end, next, next.Epoch)
	before := len(eventsBy(eventRecord, old.Holder, 0))
	late := eventsBy(eventRecord, old.Holder, end)
	t.Logf("%s wrote %d events while it led", old.Holder, before-len(late))
	for _, ch := range late {
		ev := ch.obj.(*capstanv1.Event)
		t.Errorf("an event written by %s landed at revision %d, after its holding ended at %d: %s %s %q",
			old.Holder, ch.rv, end, ev.GetMetadata().GetName(), ev.GetReason(), ev.GetMessage())
	}
}

// TestReplicaSetKeepsItsSizeWhileLeadersAreKilled proves that a ReplicaSet
// of 5 stays at 5 while the leading controller-manager and the leading
// scheduler are SIGKILLed, both at once, in three rounds (and restarted
// after each). Each round deletes one of the pods right before the kills,
// so there is work under way when they come: the pod is replaced by the
// old leaders or by the new ones, but exactly once. Each pod requests 400m
// of a node's 1 cpu, so two fit on a node and the five take all three
// nodes. An independent watch of the pods shows:
//
//   - at no moment more than 5 active pods, and exactly 5 + 3 pods were
//     ever created (one replacement per deletion, none more);
//   - no pod bound twice or moved; at no moment more than 2 pods on a node;
//   - at the end exactly 5 active pods, all bound to the test's nodes.
func TestReplicaSetKeepsItsSizeWhileLeadersAreKilled(t *testing.T) {
	c := sharedCluster(t)
	c.restoreAfter(t)
	const (
		ns          = "e2e-kill-leaders"
		name        = "steady"
		replicas    = 5
		rounds      = 3
		podsPerNode = 2
	)
	watch := startStopwatch(t)
	cl := clientOf(t, c.addrs...)
	nodes := c.hollowNodes(t, "kill-leaders", 3, "1", "4Gi")
	pods := recordHistory(t, cl, podKind, ns)
	deleteWorkloadsAfter(t, cl, ns)

	rs := createReplicaSet(t, cl, ns, name, replicas, testPodSpec(nodes, "400m", "64Mi"))
	uid := rs.GetMetadata().GetUid()
	active := func() []*capstanv1.Pod { return pods.activePods(uid) }
	waitAllBound := func(what string) {
		t.Helper()
		poll.For(t, convergeTimeout, what, func(context.Context) error {
			p := active()
			if len(p) != replicas || slices.ContainsFunc(p, func(p *capstanv1.Pod) bool { return p.GetSpec().GetNodeName() == "" }) {
				return fmt.Errorf("%d active pods: %s", len(p), describePods(p))
			}
			return nil
		})
	}
	waitAllBound(fmt.Sprintf("%d pods bound", replicas))
	watch.lap("set up")

	for round := 1; round <= rounds; round++ {
		cm := c.waitSettled(t, wellknown.ControllerManagerLease)
		sched := c.waitSettled(t, wellknown.SchedulerLease)
		watch.lap(fmt.Sprintf("round %d: settle", round))
		victims := active()
		slices.SortFunc(victims, func(a, b *capstanv1.Pod) int {
			return strings.Compare(a.GetMetadata().GetName(), b.GetMetadata().GetName())
		})
		ctx, cancel := callCtx(t)
		_, err := cl.Delete(ctx, podKind, ns, victims[0].GetMetadata().GetName(), nil)
		cancel()
		if err != nil {
			t.Fatalf("round %d: delete pod %s: %v", round, victims[0].GetMetadata().GetName(), err)
		}
		c.kill(t, cm.Holder)
		c.kill(t, sched.Holder)
		nextCM := c.waitTakeover(t, wellknown.ControllerManagerLease, cm)
		nextSched := c.waitTakeover(t, wellknown.SchedulerLease, sched)
		waitAllBound(fmt.Sprintf("round %d: %d pods bound again", round, replicas))
		watch.lap(fmt.Sprintf("round %d: kills, takeovers and replacement", round))
		t.Logf("round %d: deleted %s; SIGKILL to %v and %v; %v and %v took over", round, victims[0].GetMetadata().GetName(), cm, sched, nextCM, nextSched)
		c.restore(t)
		watch.lap(fmt.Sprintf("round %d: restart", round))
	}
	pods.catchUp(t, cl, "sentinel-kill-leaders")

	record := pods.record()
	maxActive, minActive := 0, replicas
	created := map[string]bool{}
	replayPods(record, func(rv int64, state map[string]*capstanv1.Pod) {
		n := 0
		for _, p := range state {
			if controlledBy(p, uid) {
				created[p.GetMetadata().GetUid()] = true
				if isActive(p) {
					n++
				}
			}
		}
		if n > replicas {
			t.Errorf("revision %d: %d active pods, more than %d", rv, n, replicas)
		}
		maxActive = max(maxActive, n)
		if maxActive == replicas {
			minActive = min(minActive, n)
		}
	})
	t.Logf("active pods: at most %d, at least %d once %d were reached; %d pods created in all", maxActive, minActive, replicas, len(created))
	if len(created) != replicas+rounds {
		t.Errorf("%d pods were created, want %d: %d and one replacement per deleted pod", len(created), replicas+rounds, replicas)
	}
	violations, boundTo := bindingViolations(record)
	for _, v := range violations {
		t.Errorf("bound twice: %s", v)
	}
	checkNodeCapacity(t, record, podsPerNode)
	final := active()
	perNode := map[string]int{}
	for _, p := range final {
		perNode[p.GetSpec().GetNodeName()]++
		if node := boundTo[p.GetMetadata().GetUid()]; !nodes.Has(node) {
			t.Errorf("pod %s is bound to %q, not to one of %v", p.GetMetadata().GetName(), node, nodes.Nodes())
		}
	}
	t.Logf("the final pods per node: %v", perNode)
	if len(final) != replicas {
		t.Errorf("%d active pods at the end, want %d: %s", len(final), replicas, describePods(final))
	}
}

// TestDeploymentRollingUpdateKeepsItsBounds proves a rolling update's
// bounds with the real controller-manager and scheduler: a Deployment of 4
// (maxSurge 1, maxUnavailable 1) changes its pod template, and the active
// controller-manager is SIGKILLed once the first pod of the new template
// exists, so that a standby finishes the rollout. Its nodes are hollow
// (hollowNodes): bound pods become Ready at once, deleted ones go. An
// independent watch of the pods shows that at no moment
// were there more than 5 active pods, nor, from the template change on,
// fewer than 3 available ones; the rollout completes (the Deployment's
// status: updated, available and replicas all 4) with 4 active pods, all of
// the new template and available.
func TestDeploymentRollingUpdateKeepsItsBounds(t *testing.T) {
	c := sharedCluster(t)
	c.restoreAfter(t)
	const (
		ns                          = "e2e-rollout"
		name                        = "web"
		replicas                    = 4
		maxSurge, maxUnavailable    = 1, 1
		oldVersion, newVersion      = "1", "2"
		versionVariable             = "VERSION"
		mostActive, fewestAvailable = replicas + maxSurge, replicas - maxUnavailable
		lease                       = wellknown.ControllerManagerLease
	)
	watch := startStopwatch(t)
	cl := clientOf(t, c.addrs...)
	nodes := c.hollowNodes(t, "rollout", 3, "2", "8Gi")
	pods := recordHistory(t, cl, podKind, ns)
	deleteWorkloadsAfter(t, cl, ns)

	labels := map[string]string{"app": name}
	versionOf := func(p *capstanv1.Pod) string {
		for _, env := range p.GetSpec().GetContainers()[0].GetEnv() {
			if env.GetName() == versionVariable {
				return env.GetValue()
			}
		}
		return ""
	}
	ctx, cancel := callCtx(t)
	defer cancel()
	_, err := cl.Create(ctx, &capstanv1.Deployment{
		Metadata: &capstanv1.ObjectMeta{Namespace: ns, Name: name},
		Spec: &capstanv1.DeploymentSpec{
			Replicas: ref(int32(replicas)),
			Selector: &capstanv1.LabelSelector{MatchLabels: labels},
			Template: &capstanv1.PodTemplateSpec{
				Metadata: &capstanv1.ObjectMeta{Labels: labels},
				Spec:     testPodSpec(nodes, "100m", "64Mi", &capstanv1.EnvVar{Name: versionVariable, Value: oldVersion}),
			},
			Strategy: &capstanv1.DeploymentStrategy{
				Type: wellknown.StrategyRollingUpdate,
				RollingUpdate: &capstanv1.RollingUpdateDeployment{
					MaxSurge: strconv.Itoa(maxSurge), MaxUnavailable: strconv.Itoa(maxUnavailable),
				},
			},
		},
	})
	if err != nil {
		t.Fatalf("create Deployment %s/%s: %v", ns, name, err)
	}
	waitComplete := func(what string) {
		t.Helper()
		poll.For(t, convergeTimeout, what, func(ctx context.Context) error {
			obj, err := cl.Get(ctx, deploymentKind, ns, name)
			if err != nil {
				return err
			}
			d := obj.(*capstanv1.Deployment)
			st := d.GetStatus()
			if st.GetObservedGeneration() < d.GetMetadata().GetGeneration() ||
				st.GetReplicas() != replicas || st.GetUpdatedReplicas() != replicas || st.GetAvailableReplicas() != replicas {
				return fmt.Errorf("generation %d, status %v", d.GetMetadata().GetGeneration(), st)
			}
			return nil
		})
	}
	waitComplete("the first rollout to complete")
	watch.lap("first rollout")

	cm := c.waitSettled(t, lease)
	changed := updateObject(t, cl, deploymentKind, ns, name, func(d *capstanv1.Deployment) {
		d.Spec.Template.Spec.Containers[0].Env = []*capstanv1.EnvVar{{Name: versionVariable, Value: newVersion}}
	})
	rolloutAt := changed.GetMetadata().GetResourceVersion()
	poll.For(t, convergeTimeout, "the first pod of the new template", func(context.Context) error {
		if slices.ContainsFunc(pods.pods(), func(p *capstanv1.Pod) bool { return versionOf(p) == newVersion }) {
			return nil
		}
		return fmt.Errorf("pods: %s", describePods(pods.pods()))
	})
	watch.lap("update until the first new pod")
	c.kill(t, cm.Holder)
	next := c.waitTakeover(t, lease, cm)
	watch.lap("SIGKILL and takeover")
	t.Logf("SIGKILL to %v during the rollout; %v took over", cm, next)
	waitComplete("the rollout to complete")
	watch.lap("rest of the rollout")
	c.restore(t)
	pods.catchUp(t, cl, "sentinel-rollout")

	maxActive, minAvailable := 0, replicas
	var broken []string
	replayPods(pods.record(), func(rv int64, state map[string]*capstanv1.Pod) {
		activeNow, availableNow := 0, 0
		var all []*capstanv1.Pod
		for _, p := range state {
			if p.GetMetadata().GetLabels()["app"] != name {
				continue
			}
			all = append(all, p)
			if isActive(p) {
				activeNow++
			}
			if isAvailable(p) {
				availableNow++
			}
		}
		maxActive = max(maxActive, activeNow)
		if activeNow > mostActive {
			broken = append(broken, fmt.Sprintf("revision %d: %d active pods, more than %d: %s", rv, activeNow, mostActive, describeVersions(all, versionOf)))
		}
		if rv >= rolloutAt {
			minAvailable = min(minAvailable, availableNow)
			if availableNow < fewestAvailable {
				broken = append(broken, fmt.Sprintf("revision %d: %d available pods, fewer than %d: %s", rv, availableNow, fewestAvailable, describeVersions(all, versionOf)))
			}
		}
	})
	t.Logf("during the rollout: at most %d active pods, at least %d available", maxActive, minAvailable)
	for _, b := range broken {
		t.Errorf("rolling update bounds broken at %s", b)
	}
	var final []*capstanv1.Pod
	for _, p := range pods.pods() {
		if isActive(p) {
			final = append(final, p)
		}
	}
	if len(final) != replicas || slices.ContainsFunc(final, func(p *capstanv1.Pod) bool { return versionOf(p) != newVersion || !isAvailable(p) }) {
		t.Errorf("at the end, want %d available pods of version %s: %s", replicas, newVersion, describePods(final))
	}
}

// describeVersions is a one-line summary of a Deployment's pods, with the
// version of the template each was made from.
func describeVersions(pods []*capstanv1.Pod, versionOf func(*capstanv1.Pod) string) string {
	var b strings.Builder
	slices.SortFunc(pods, func(a, b *capstanv1.Pod) int {
		return strings.Compare(a.GetMetadata().GetName(), b.GetMetadata().GetName())
	})
	for _, p := range pods {
		state := "available"
		switch {
		case !isActive(p):
			state = "terminating"
		case !isReady(p):
			state = "not-ready"
		}
		fmt.Fprintf(&b, "%s(v%s %s) ", p.GetMetadata().GetName(), versionOf(p), state)
	}
	return b.String()
}

// describeWaitStatus says how a process ended.
func describeWaitStatus(ws syscall.WaitStatus) string {
	switch {
	case ws.Exited():
		return fmt.Sprintf("exit status %d", ws.ExitStatus())
	case ws.Signaled():
		return "signal " + ws.Signal().String()
	}
	return fmt.Sprintf("wait status %#x", uint32(ws))
}

func ref[T any](v T) *T { return &v }
