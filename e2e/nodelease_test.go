package e2e

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/localcluster"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/testcluster"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// The tests of a node agent's lease, its heartbeat: released by the API
// replica that holds its session when the agent dies, so that the node's
// pods are replaced without waiting for the lease's TTL; and kept by an
// agent that comes back in time.

// evictionWindow is how long TestNodeAgentBackInTimeKeepsItsPods watches
// the pods after the restarted agent holds its lease again: longer than
// the controller-manager's pod eviction timeout (5 s by default; 10 s
// before), so an eviction the agent's absence had set off would have come.
const evictionWindow = 12 * time.Second

// nodeStartupGrace is the controller-manager's --node-startup-grace (its
// default): for that long after it becomes the leader its NodeLifecycle
// controller judges no node.
const nodeStartupGrace = 20 * time.Second

// waitNodesJudged waits until the controller-manager's leader has led for
// longer than its node startup grace: from then on its NodeLifecycle
// controller acts on a node whose lease goes at once, so a test that a
// node is kept proves something.
func (c *cluster) waitNodesJudged(t *testing.T) {
	t.Helper()
	poll.For(t, nodeStartupGrace+takeoverTimeout, "the controller-manager's leader to be past its node startup grace", func(ctx context.Context) error {
		l, err := c.Lease(ctx, wellknown.ControllerManagerLease)
		if err != nil {
			return err
		}
		if led := time.Since(l.GetStatus().GetAcquireTime().AsTime()); led < nodeStartupGrace+time.Second {
			return fmt.Errorf("%v has led for %v", testcluster.HoldingOf(l), led.Round(time.Millisecond))
		}
		return nil
	})
}

// sleeper is a pod of the node lease tests as the test found it running.
type sleeper struct {
	uid, node string
	proc      localcluster.PodProcess
}

// startSleepers creates a ReplicaSet of replicas pods of /bin/sleep on the
// real workers and waits until each runs one process.
func (na *nodeAgents) startSleepers(t *testing.T, ns string, replicas int32) map[string]sleeper {
	t.Helper()
	grace := int64(testGraceSeconds)
	createReplicaSet(t, na.cl, ns, "sleepers", replicas, &capstanv1.PodSpec{
		Containers: []*capstanv1.Container{{
			Name:      "main",
			Command:   []string{"/bin/sleep", "3600"},
			Resources: &capstanv1.ResourceRequirements{Requests: map[string]string{"cpu": "10m", "memory": "16Mi"}},
		}},
		NodeSelector:                  map[string]string{agentWorkerLabel: "true"},
		TerminationGracePeriodSeconds: &grace,
	})
	return na.waitSleepers(t, ns, int(replicas), "", podStartTimeout)
}

// waitSleepers waits until namespace holds exactly want pods that are up,
// none of them on node avoid (nor any pod there, terminating or not), each
// running one process, and returns them by name.
func (na *nodeAgents) waitSleepers(t *testing.T, ns string, want int, avoid string, timeout time.Duration) map[string]sleeper {
	t.Helper()
	var found map[string]sleeper
	what := fmt.Sprintf("%d pods up", want)
	if avoid != "" {
		what += ", none on " + avoid
	}
	poll.For(t, timeout, what, func(ctx context.Context) error {
		list, err := na.listPods(ctx, ns)
		if err != nil {
			return err
		}
		got := map[string]sleeper{}
		for _, p := range list {
			node := p.GetSpec().GetNodeName()
			if avoid != "" && node == avoid {
				return fmt.Errorf("a pod is still on %s: %s", avoid, podSummary(list))
			}
			if p.GetMetadata().GetDeleteTime() != nil {
				continue
			}
			if !podIsUp(p) || !slices.Contains(na.nodes, node) {
				return fmt.Errorf("not every pod is up on an agent's node: %s", podSummary(list))
			}
			s := sleeper{uid: p.GetMetadata().GetUid(), node: node}
			if s.proc, err = onlyProcess(s.uid); err != nil {
				return err
			}
			got[p.GetMetadata().GetName()] = s
		}
		if len(got) != want {
			return fmt.Errorf("%d pods up, want %d: %s", len(got), want, podSummary(list))
		}
		found = got
		return nil
	})
	return found
}

// busiestNode is the node with the most of the pods (the first by name of
// those with as many).
func busiestNode(pods map[string]sleeper) string {
	perNode := map[string]int{}
	for _, p := range pods {
		perNode[p.node]++
	}
	busiest := ""
	for _, node := range slices.Sorted(maps.Keys(perNode)) {
		if busiest == "" || perNode[node] > perNode[busiest] {
			busiest = node
		}
	}
	return busiest
}

// nodeLease reads the node's lease.
func (na *nodeAgents) nodeLease(t *testing.T, node string) *capstanv1.Lease {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	obj, err := na.cl.Get(ctx, leaseKind, wellknown.NodeLeaseNamespace, node)
	if err != nil {
		t.Fatalf("the node lease of %s: %v", node, err)
	}
	return obj.(*capstanv1.Lease)
}

// TestNodeAgentKilledReleasesItsNode proves that a worker that dies —
// SIGKILL of its node agent and of its pods' processes — gives its node
// lease up at once: the API replica that holds the agent's session sees
// the agent's connection break and releases the lease (a LeaseSessionLost
// event on capstan-node-lease/<node> at the lease's epoch, no
// LeaseExpired), so the node lifecycle controller does not wait for the
// lease's TTL. Its pods are evicted and run again on the other nodes; the
// pods there were not touched.
func TestNodeAgentKilledReleasesItsNode(t *testing.T) {
	na := startNodeAgents(t)
	c := na.c
	const ns = "e2e-agent-killed"
	na.cleanupPodsAfter(t, ns)
	c.restoreAfter(t)
	watch := startStopwatch(t)
	events := recordHistory(t, na.cl, eventKind, wellknown.NodeLeaseNamespace)
	pods := na.startSleepers(t, ns, 6)
	victim := busiestNode(pods)
	agent := na.agentOf(t, victim)
	lease := na.nodeLease(t, victim)
	held := testcluster.HoldingOf(lease)
	since := lease.GetMetadata().GetResourceVersion()
	watch.lap("six pods up")

	k, err := c.KillWorker(t.Context(), agent)
	if err != nil {
		t.Fatal(err)
	}
	watch.lap(fmt.Sprintf("SIGKILL of %s and its %d processes", agent, len(k.Pods)))
	t.Logf("killed %s (node %s, lease held by %v) and its pods' processes %v", agent, victim, held, k.Pods)
	waitLeaseEventIn(t, events, wellknown.NodeLeaseNamespace, victim, reasonLeaseSessionLost, since, atEpoch(held.Epoch))
	watch.lap("the node lease released")
	if expired := leaseEventsIn(events, wellknown.NodeLeaseNamespace, victim, since, reasonLeaseExpired, reasonLeaseReleased); len(expired) > 0 {
		t.Errorf("the node lease of the killed agent ended otherwise too: %s", describeEvents(expired))
	}

	replaced := na.waitSleepers(t, ns, len(pods), victim, replaceTimeout)
	watch.lap("the pods replaced on the other nodes")
	for name, p := range pods {
		if p.node == victim {
			continue
		}
		if now, ok := replaced[name]; !ok || now != p {
			t.Errorf("pod %s on a healthy node was replaced or restarted: was %+v, now %+v", name, p, now)
		}
	}
}

// TestNodeAgentBackInTimeKeepsItsPods proves that a node agent SIGKILLed
// alone (its pods' processes run on) and started again at once — well
// within the pod eviction timeout — keeps its node and its pods: it holds
// its node lease again at a new epoch, the Node is the same object, and
// for longer than the eviction timeout after that none of its pods is
// deleted and each still runs the very process it ran before (pid and
// start time), unrestarted. The kill comes once the controller-manager's
// leader is past its node startup grace, so that the lease released at
// the agent's death is judged at once (whether the node was marked
// unreachable for the moment depends on how fast the agent came back: it
// is logged, not asserted).
func TestNodeAgentBackInTimeKeepsItsPods(t *testing.T) {
	na := startNodeAgents(t)
	c := na.c
	const ns = "e2e-agent-back"
	na.cleanupPodsAfter(t, ns)
	c.restoreAfter(t)
	watch := startStopwatch(t)
	history := recordPods(t, na.cl, ns)
	nodes := recordHistory(t, na.cl, nodeKind, "")
	pods := na.startSleepers(t, ns, 6)
	victim := busiestNode(pods)
	agent := na.agentOf(t, victim)
	watch.lap("six pods up")
	c.waitNodesJudged(t)
	watch.lap("past the node startup grace")
	before := testcluster.HoldingOf(na.nodeLease(t, victim))
	ctx, cancel := callCtx(t)
	defer cancel()
	nodeObj, err := na.cl.Get(ctx, nodeKind, "", victim)
	if err != nil {
		t.Fatal(err)
	}

	c.kill(t, agent)
	if err := c.Start(t.Context(), agent); err != nil {
		t.Fatalf("start %s again: %v", agent, err)
	}
	watch.lap(fmt.Sprintf("SIGKILL of %s and its start", agent))
	poll.For(t, podStartTimeout, "the restarted agent to hold its node lease again", func(ctx context.Context) error {
		obj, err := na.cl.Get(ctx, leaseKind, wellknown.NodeLeaseNamespace, victim)
		if err != nil {
			return err
		}
		if h := testcluster.HoldingOf(obj.(*capstanv1.Lease)); h.Holder != before.Holder || h.Epoch <= before.Epoch {
			return fmt.Errorf("the lease is held by %v; it was %v", h, before)
		}
		return nil
	})
	na.waitNodesReady(t)
	watch.lap("node lease held again, node Ready")

	// Nothing to wait for: an eviction must not come, so the test looks
	// again and again until the window has passed.
	until := time.Now().Add(evictionWindow)
	for rounds := 0; rounds < 3 || time.Now().Before(until); rounds++ {
		if err := samePods(history, pods); err != nil {
			t.Fatalf("%v after %s came back (round %d)", err, agent, rounds)
		}
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
	watch.lap("pods kept through the eviction window")
	tainted := slices.ContainsFunc(nodes.record(), func(ch change) bool {
		n, ok := ch.obj.(*capstanv1.Node)
		return ok && n.GetMetadata().GetName() == victim && slices.ContainsFunc(n.GetSpec().GetTaints(), func(taint *capstanv1.Taint) bool {
			return taint.GetKey() == wellknown.TaintNodeUnreachable
		})
	})
	t.Logf("the NodeLifecycle controller marked %s unreachable while its agent was away: %v", victim, tainted)
	ctx, cancel = callCtx(t)
	defer cancel()
	now, err := na.cl.Get(ctx, nodeKind, "", victim)
	if err != nil {
		t.Fatal(err)
	}
	if now.GetMetadata().GetUid() != nodeObj.GetMetadata().GetUid() {
		t.Errorf("node %s is another object after the agent's restart: uid %s, was %s", victim, now.GetMetadata().GetUid(), nodeObj.GetMetadata().GetUid())
	}
}

// samePods checks that the pods are all still there, never marked for
// deletion, and each runs the very process found before, unrestarted.
func samePods(history *podRecorder, pods map[string]sleeper) error {
	for _, name := range slices.Sorted(maps.Keys(pods)) {
		p := pods[name]
		for _, v := range history.history(name) {
			if v.GetMetadata().GetDeleteTime() != nil {
				return fmt.Errorf("pod %s was marked for deletion (on %s)", name, v.GetSpec().GetNodeName())
			}
		}
		now := history.pod(name)
		if now == nil || now.GetMetadata().GetUid() != p.uid {
			return fmt.Errorf("pod %s (uid %s) is gone or replaced: %v", name, p.uid, now.GetMetadata())
		}
		if cs := containerStatus(now); cs.GetRestartCount() != 0 {
			return fmt.Errorf("pod %s was restarted: %v", name, cs)
		}
		proc, err := onlyProcess(p.uid)
		if err != nil {
			return err
		}
		if proc != p.proc {
			return fmt.Errorf("pod %s runs %v, not %v: it was restarted", name, proc, p.proc)
		}
	}
	return nil
}
