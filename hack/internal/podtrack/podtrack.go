// Package podtrack is what the benchmarks of hack/ measure pods with: a
// Tracker that notes, from watches, when each pod of a namespace was first
// seen created, bound, Running and deleted, and when each node last turned
// not Ready; and KillWorker, which SIGKILLs a worker with its pods and
// measures how long its pods take to run again elsewhere. The figures come
// from the moments the watches deliver, not from how often a benchmark
// looks.
//
// Concurrency: a Tracker is safe for concurrent use; it runs two goroutines
// (one per watch), which Stop ends.
package podtrack

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"text/tabwriter"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/latency"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/testcluster"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

var (
	podKind  = resource.MustLookup("Pod")
	nodeKind = resource.MustLookup("Node")
)

// PodTimes is when the watch first saw a pod in each state (zero: not
// seen), and the node it was bound to.
type PodTimes struct {
	Node                           string
	Added, Bound, Running, Deleted time.Time
}

// Tracker watches the pods of one namespace and every node. See the
// package doc.
type Tracker struct {
	pods, nodes *client.Watcher
	cancel      context.CancelFunc
	// podsDone and nodesDone are closed when a watch has ended.
	podsDone, nodesDone chan struct{}

	mu         sync.Mutex
	podTimes   map[string]*PodTimes // by uid
	notReadyAt map[string]time.Time // by node: when it last turned not Ready
}

// Start starts tracking the pods of namespace, and the nodes; Stop ends it.
func Start(ctx context.Context, api *client.Client, namespace string) *Tracker {
	ctx, cancel := context.WithCancel(ctx)
	t := &Tracker{
		pods:       api.Watch(ctx, podKind, client.WatchOptions{Namespace: namespace}),
		nodes:      api.Watch(ctx, nodeKind, client.WatchOptions{}),
		cancel:     cancel,
		podsDone:   make(chan struct{}),
		nodesDone:  make(chan struct{}),
		podTimes:   map[string]*PodTimes{},
		notReadyAt: map[string]time.Time{},
	}
	go func() {
		defer close(t.podsDone)
		for ev := range t.pods.Events() {
			if pod, ok := ev.Object.(*capstanv1.Pod); ok {
				t.notePod(ev.Type, pod, time.Now())
			}
		}
	}()
	go func() {
		defer close(t.nodesDone)
		ready := map[string]bool{}
		for ev := range t.nodes.Events() {
			node, ok := ev.Object.(*capstanv1.Node)
			if !ok || ev.Type == client.Deleted {
				continue
			}
			now, name := time.Now(), node.GetMetadata().GetName()
			if was, seen := ready[name]; NodeReady(node) != was || !seen {
				ready[name] = NodeReady(node)
				if !ready[name] {
					t.mu.Lock()
					t.notReadyAt[name] = now
					t.mu.Unlock()
				}
			}
		}
	}()
	return t
}

// NodeReady reports whether the node's Ready condition is True.
func NodeReady(n *capstanv1.Node) bool {
	for _, c := range n.GetStatus().GetConditions() {
		if c.GetType() == wellknown.NodeReady {
			return c.GetStatus() == wellknown.ConditionTrue
		}
	}
	return false
}

func (t *Tracker) notePod(typ capstanv1.WatchEventType, pod *capstanv1.Pod, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.podTimes[pod.GetMetadata().GetUid()]
	if p == nil {
		p = &PodTimes{Added: now}
		t.podTimes[pod.GetMetadata().GetUid()] = p
	}
	if node := pod.GetSpec().GetNodeName(); node != "" && p.Bound.IsZero() {
		p.Node, p.Bound = node, now
	}
	if pod.GetStatus().GetPhase() == wellknown.PodRunning && p.Running.IsZero() {
		p.Running = now
	}
	if (typ == client.Deleted || pod.GetMetadata().GetDeleteTime() != nil) && p.Deleted.IsZero() {
		p.Deleted = now
	}
}

// Stop ends the watches and waits for their goroutines.
func (t *Tracker) Stop() {
	t.pods.Stop()
	t.nodes.Stop()
	t.cancel()
	<-t.podsDone
	<-t.nodesDone
}

// Snapshot is a copy of what the tracker knows about the pods, by uid.
func (t *Tracker) Snapshot() map[string]PodTimes {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]PodTimes, len(t.podTimes))
	for uid, p := range t.podTimes {
		out[uid] = *p
	}
	return out
}

// NotReadySince is when the node last turned not Ready (zero if never).
func (t *Tracker) NotReadySince(node string) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.notReadyAt[node]
}

// WaitFor waits until cond, given what the tracker knows of the pods and of
// when each node last turned not Ready, returns nil.
func (t *Tracker) WaitFor(ctx context.Context, timeout time.Duration, what string, cond func(pods map[string]PodTimes, notReady map[string]time.Time) error) error {
	return poll.Until(ctx, timeout, what, func(context.Context) error {
		select {
		case <-t.podsDone:
			return fmt.Errorf("the watch of pods ended: %v", t.pods.Err())
		case <-t.nodesDone:
			return fmt.Errorf("the watch of nodes ended: %v", t.nodes.Err())
		default:
		}
		t.mu.Lock()
		notReady := maps.Clone(t.notReadyAt)
		t.mu.Unlock()
		return cond(t.Snapshot(), notReady)
	})
}

// CountRunning counts the pods that exist and are Running, on a node other
// than avoid.
func CountRunning(pods map[string]PodTimes, avoid string) int {
	n := 0
	for _, p := range pods {
		if p.Deleted.IsZero() && !p.Running.IsZero() && p.Node != avoid {
			n++
		}
	}
	return n
}

// WorkerKillResult is what KillWorker measured.
type WorkerKillResult struct {
	Node, Agent string
	// Pods is how many of the tracked pods ran on the node; Processes and
	// Groups how many processes, in how many process groups, were killed
	// with the agent.
	Pods, Processes, Groups int
	Killed                  time.Time       // when the node agent was sent SIGKILL
	NotReady                time.Duration   // kill → node seen not Ready (0: not seen)
	FirstEvicted            time.Duration   // kill → first of its pods deleted
	AllEvicted              time.Duration   // kill → last of its pods deleted
	FromKill                []time.Duration // kill → each replacement Running
	FromPod                 []time.Duration // replacement seen created → Running
	AllRunning              time.Duration   // kill → want pods Running again elsewhere
}

// KillWorker SIGKILLs the worker — of agents, by node — that runs the most
// of the tracked pods, and the processes of its pods
// (testcluster.KillWorker), and measures the control plane's answer: the
// node marked not Ready, its pods evicted, and each replacement Running on
// another node, from the kill, until want pods run again and none is left
// on the dead node. timeout bounds that wait.
func KillWorker(ctx context.Context, c *testcluster.Cluster, t *Tracker, agents map[string]string, want int, timeout time.Duration) (WorkerKillResult, error) {
	var res WorkerKillResult
	perNode := map[string][]string{}
	for uid, p := range t.Snapshot() {
		if p.Deleted.IsZero() {
			perNode[p.Node] = append(perNode[p.Node], uid)
		}
	}
	for _, node := range slices.Sorted(maps.Keys(agents)) {
		if res.Node == "" || len(perNode[node]) > len(perNode[res.Node]) {
			res.Node = node
		}
	}
	res.Agent = agents[res.Node]
	victims := perNode[res.Node]
	res.Pods = len(victims)
	wasNotReady := t.NotReadySince(res.Node)

	k, err := c.KillWorker(ctx, res.Agent)
	res.Processes, res.Groups, res.Killed = len(k.Pods), k.Groups, k.At
	if err != nil {
		return res, err
	}
	killed := k.At
	err = t.WaitFor(ctx, timeout, fmt.Sprintf("%d pods Running again, none on %s", want, res.Node), func(pods map[string]PodTimes, notReady map[string]time.Time) error {
		// The first time the watch of nodes saw it not Ready since the kill.
		if at := notReady[res.Node]; res.NotReady == 0 && at.After(wasNotReady) && at.After(killed) {
			res.NotReady = at.Sub(killed)
		}
		left := 0
		for _, uid := range victims {
			if p, ok := pods[uid]; ok && p.Deleted.IsZero() {
				left++
			}
		}
		if left > 0 {
			return fmt.Errorf("%d pods still on %s", left, res.Node)
		}
		if n := CountRunning(pods, res.Node); n < want {
			return fmt.Errorf("%d of %d pods Running", n, want)
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	pods := t.Snapshot()
	for _, uid := range victims {
		gone := pods[uid].Deleted.Sub(killed)
		if res.FirstEvicted == 0 || gone < res.FirstEvicted {
			res.FirstEvicted = gone
		}
		res.AllEvicted = max(res.AllEvicted, gone)
	}
	for _, p := range pods {
		if p.Added.Before(killed) || p.Running.IsZero() || !p.Deleted.IsZero() {
			continue
		}
		res.FromKill = append(res.FromKill, p.Running.Sub(killed))
		res.FromPod = append(res.FromPod, p.Running.Sub(p.Added))
		res.AllRunning = max(res.AllRunning, p.Running.Sub(killed))
	}
	return res, nil
}

// Print reports a worker kill of a workload of want pods under heading.
func (r WorkerKillResult) Print(w io.Writer, heading string, want int) {
	fmt.Fprintf(w, "\n%s: SIGKILL of %s (%s) and of its %d pods' processes (%d processes, %d groups)\n", heading, r.Agent, r.Node, r.Pods, r.Processes, r.Groups)
	notReady := "not seen"
	if r.NotReady > 0 {
		notReady = fmt.Sprintf("%.0f ms", latency.Ms(r.NotReady))
	}
	fmt.Fprintf(w, "node not Ready after %s; its pods evicted after %.0f ms (first) to %.0f ms (last)\n", notReady, latency.Ms(r.FirstEvicted), latency.Ms(r.AllEvicted))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\tpods\tp50 ms\tp99 ms\tmax ms\t")
	Row(tw, "replacement created → Running", r.FromPod)
	Row(tw, "node death → replacement Running", r.FromKill)
	tw.Flush()
	fmt.Fprintf(w, "%d pods Running again %.0f ms after the node died\n", want, latency.Ms(r.AllRunning))
}

// Row writes one row of samples to a table of pods, p50, p99 and max.
func Row(tw io.Writer, what string, samples []time.Duration) {
	if len(samples) == 0 {
		fmt.Fprintf(tw, "%s\t0\t-\t-\t-\t\n", what)
		return
	}
	s := latency.Summarize(samples)
	fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.0f\t%.0f\t\n", what, s.N, latency.Ms(s.P50), latency.Ms(s.P99), latency.Ms(s.Max))
}
