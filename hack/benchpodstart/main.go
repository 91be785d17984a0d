// Command benchpodstart measures how fast pods start on real node agents,
// and how fast a dead node's pods run again elsewhere. It brings up a local
// cluster of real processes on free loopback ports (package testcluster:
// three API servers with embedded etcd, three controller-managers, three
// schedulers, and three node agents, node-1..3, running pods as processes),
// then:
//
//  1. creates a ReplicaSet of -replicas pods of a light process (-command,
//     default /bin/sleep 3600) and, from a watch of its pods, times each
//     pod from the ReplicaSet's creation until the watch shows it Running
//     (also from the pod's own creation, and until it was bound), and the
//     time until all are Running;
//  2. SIGKILLs the node agent with the most of those pods and the process
//     groups of its pods, and times the controllers' answer: the node
//     marked not Ready, its pods evicted, and each replacement Running on
//     another node, from the kill — until -replicas pods run again.
//
// The controller-manager gives every node --node-startup-grace (20 s) after
// it becomes the leader before it judges its lease; phase 2 starts only
// once that much has passed since the cluster came up, so it measures the
// steady state: about the node lease's TTL (the agents' --lease-duration,
// 6 s) plus --pod-eviction-timeout (10 s) plus scheduling and start.
//
// Every process is stopped when it ends (also on Ctrl-C): the cluster by
// its pids, then the pods' processes (testcluster's Close). `make
// bench-podstart` runs it. It is a benchmark, not a test: it asserts
// nothing about the figures.
//
//	benchpodstart [-replicas 100] [-command '/bin/sleep 3600'] [-bin-dir bin] [-pod-eviction-timeout 10s] [-node-lease-duration 6s] [-skip-node-death] [-keep-state] [-v]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/latency"
	"github.com/capstan-dev/capstan/internal/localcluster"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/testcluster"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// The objects the bench works with.
const (
	benchNamespace = "bench-podstart"
	replicaSetName = "bench-podstart"
	// defaultNodeStartupGrace is the controller-manager's own default.
	defaultNodeStartupGrace = 20 * time.Second
	// readyTimeout bounds the waits for every process, and every node, to
	// be ready.
	readyTimeout = 2 * time.Minute
)

var (
	podKind  = resource.MustLookup("Pod")
	nodeKind = resource.MustLookup("Node")
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "benchpodstart:", err)
		os.Exit(1)
	}
}

// options are the bench's flags.
type options struct {
	program            testcluster.ProgramFlags
	replicas           int
	command            []string
	skipNodeDeath      bool
	podEvictionTimeout time.Duration
	nodeStartupGrace   time.Duration
	nodeLeaseDuration  time.Duration
	timeout            time.Duration
}

func parseFlags() (options, error) {
	var o options
	command := flag.String("command", "/bin/sleep 3600", "the pods' command, split at spaces")
	flag.IntVar(&o.replicas, "replicas", 100, "replicas of the ReplicaSet")
	o.program.AddFlags(flag.CommandLine)
	flag.BoolVar(&o.skipNodeDeath, "skip-node-death", false, "measure pod start only")
	flag.DurationVar(&o.podEvictionTimeout, "pod-eviction-timeout", 0, "--pod-eviction-timeout of the controller-managers (default: theirs, 10s)")
	flag.DurationVar(&o.nodeStartupGrace, "node-startup-grace", defaultNodeStartupGrace, "--node-startup-grace of the controller-managers; the node is killed no earlier than this after the cluster came up")
	flag.DurationVar(&o.nodeLeaseDuration, "node-lease-duration", 0, "--lease-duration of the node agents (default: theirs, 6s)")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Minute, "bound of each phase's wait")
	flag.Parse()
	o.command = strings.Fields(*command)
	switch {
	case o.replicas < 1:
		return o, fmt.Errorf("-replicas must be at least 1, not %d", o.replicas)
	case len(o.command) == 0:
		return o, errors.New("-command is empty")
	case o.nodeStartupGrace <= 0:
		return o, fmt.Errorf("-node-startup-grace must be positive, not %v", o.nodeStartupGrace)
	}
	return o, nil
}

func run(ctx context.Context) error {
	o, err := parseFlags()
	if err != nil {
		return err
	}
	cmArgs := []string{"--node-startup-grace=" + o.nodeStartupGrace.String()}
	if o.podEvictionTimeout != 0 {
		cmArgs = append(cmArgs, "--pod-eviction-timeout="+o.podEvictionTimeout.String())
	}
	args := map[string][]string{localcluster.ControllerManagerBinary: cmArgs}
	if o.nodeLeaseDuration != 0 {
		args[localcluster.NodeAgentBinary] = []string{"--lease-duration=" + o.nodeLeaseDuration.String()}
	}
	fmt.Fprintln(os.Stderr, "starting the cluster (3 API servers, 3 controller-managers, 3 schedulers, 3 node agents) ...")
	cluster, err := o.program.Start(ctx, testcluster.Config{Name: "benchpodstart", Workers: 3, Args: args, ReadyTimeout: readyTimeout})
	if err != nil {
		return err
	}
	// The pods outlive their node agents by design: Close stops the pods'
	// processes too.
	defer o.program.Close(cluster)
	upAt := time.Now()
	api, err := cluster.NewClient(client.Config{Logger: o.program.Logger()})
	if err != nil {
		return err
	}
	defer api.Close()

	b := &bench{opts: o, cluster: cluster, api: api, agents: map[string]string{}}
	for _, a := range cluster.NodeAgents() {
		b.agents[a.Node] = a.Process
	}
	if err := b.waitNodesReady(ctx); err != nil {
		return err
	}
	tracker := startTracking(ctx, api)
	defer tracker.stop()

	start, err := b.podStart(ctx, tracker)
	if err != nil {
		return err
	}
	printPodStart(os.Stdout, o, start)
	if !o.skipNodeDeath {
		if wait := time.Until(upAt.Add(o.nodeStartupGrace + time.Second)); wait > 0 {
			fmt.Fprintf(os.Stderr, "waiting %v: the controller-manager judges no node before its node startup grace (%v) has passed\n", wait.Round(time.Second), o.nodeStartupGrace)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
		}
		death, err := b.nodeDeath(ctx, tracker)
		if err != nil {
			return err
		}
		printNodeDeath(os.Stdout, o, death)
	}
	fmt.Fprintf(os.Stdout, "\ncommand: go run ./hack/benchpodstart %s\n", strings.Join(quoteArgs(os.Args[1:]), " "))
	return nil
}

// bench is the cluster the bench runs on.
type bench struct {
	opts    options
	cluster *testcluster.Cluster
	api     *client.Client
	agents  map[string]string // node name → node agent process
}

func (b *bench) waitNodesReady(ctx context.Context) error {
	return poll.Until(ctx, readyTimeout, "every node Ready", func(ctx context.Context) error {
		for node := range b.agents {
			obj, err := b.api.Get(ctx, nodeKind, "", node)
			if err != nil {
				return err
			}
			if !nodeReady(obj.(*capstanv1.Node)) {
				return fmt.Errorf("node %s is not Ready", node)
			}
		}
		return nil
	})
}

func nodeReady(n *capstanv1.Node) bool {
	for _, c := range n.GetStatus().GetConditions() {
		if c.GetType() == wellknown.NodeReady {
			return c.GetStatus() == wellknown.ConditionTrue
		}
	}
	return false
}

// podStartResult is phase 1's figures.
type podStartResult struct {
	fromReplicaSet []time.Duration // ReplicaSet created → pod Running
	fromPod        []time.Duration // pod seen created → pod Running
	bound          []time.Duration // ReplicaSet created → pod bound
	allRunning     time.Duration
	perNode        map[string]int
}

func (b *bench) podStart(ctx context.Context, tracker *tracker) (podStartResult, error) {
	grace := int64(2)
	rs := testcluster.ReplicaSet(benchNamespace, replicaSetName, int32(b.opts.replicas), &capstanv1.PodSpec{
		Containers: []*capstanv1.Container{{
			Name:      "main",
			Command:   b.opts.command,
			Resources: &capstanv1.ResourceRequirements{Requests: map[string]string{"cpu": "10m", "memory": "16Mi"}},
		}},
		TerminationGracePeriodSeconds: &grace,
	})
	fmt.Fprintf(os.Stderr, "creating a ReplicaSet of %d × %q ...\n", b.opts.replicas, strings.Join(b.opts.command, " "))
	created := time.Now()
	_, err := b.api.Create(ctx, rs)
	if err != nil {
		return podStartResult{}, fmt.Errorf("create the ReplicaSet: %w", err)
	}
	var res podStartResult
	err = tracker.waitFor(ctx, b.opts.timeout, fmt.Sprintf("%d pods Running", b.opts.replicas), func(pods map[string]podTimes, _ map[string]time.Time) error {
		if n := countRunning(pods, ""); n < b.opts.replicas {
			return fmt.Errorf("%d of %d pods Running", n, b.opts.replicas)
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	res.perNode = map[string]int{}
	for _, p := range tracker.snapshot() {
		res.fromReplicaSet = append(res.fromReplicaSet, p.running.Sub(created))
		res.fromPod = append(res.fromPod, p.running.Sub(p.added))
		res.bound = append(res.bound, p.bound.Sub(created))
		res.allRunning = max(res.allRunning, p.running.Sub(created))
		res.perNode[p.node]++
	}
	return res, nil
}

// nodeDeathResult is phase 2's figures.
type nodeDeathResult struct {
	node, agent     string
	pods, processes int
	notReady        time.Duration // kill → node seen not Ready (0: not seen)
	firstEvicted    time.Duration // kill → first of its pods deleted
	allEvicted      time.Duration
	fromKill        []time.Duration // kill → each replacement Running
	fromPod         []time.Duration // replacement seen created → Running
	allRunning      time.Duration   // kill → -replicas pods Running again elsewhere
}

func (b *bench) nodeDeath(ctx context.Context, tracker *tracker) (nodeDeathResult, error) {
	var res nodeDeathResult
	perNode := map[string][]string{}
	for uid, p := range tracker.snapshot() {
		perNode[p.node] = append(perNode[p.node], uid)
	}
	for _, node := range slices.Sorted(maps.Keys(b.agents)) {
		if res.node == "" || len(perNode[node]) > len(perNode[res.node]) {
			res.node = node
		}
	}
	res.agent = b.agents[res.node]
	victims := perNode[res.node]
	res.pods = len(victims)
	groups := podProcessGroups(victims)
	wasNotReady := tracker.notReadySince(res.node)
	fmt.Fprintf(os.Stderr, "SIGKILL %s and the %d process groups of its %d pods ...\n", res.agent, len(groups), len(victims))

	killed := time.Now()
	if err := b.cluster.Signal(res.agent, syscall.SIGKILL); err != nil {
		return res, fmt.Errorf("SIGKILL %s: %w", res.agent, err)
	}
	for _, pgid := range groups {
		if err := syscall.Kill(-pgid, syscall.SIGKILL); err == nil {
			res.processes++
		}
	}
	err := tracker.waitFor(ctx, b.opts.timeout, fmt.Sprintf("%d pods Running again, none on %s", b.opts.replicas, res.node), func(pods map[string]podTimes, notReady map[string]time.Time) error {
		// The first time the watch of nodes saw it not Ready since the kill.
		if at := notReady[res.node]; res.notReady == 0 && at.After(wasNotReady) && at.After(killed) {
			res.notReady = at.Sub(killed)
		}
		left := 0
		for _, uid := range victims {
			if p, ok := pods[uid]; ok && p.deleted.IsZero() {
				left++
			}
		}
		if left > 0 {
			return fmt.Errorf("%d pods still on %s", left, res.node)
		}
		if n := countRunning(pods, res.node); n < b.opts.replicas {
			return fmt.Errorf("%d of %d pods Running", n, b.opts.replicas)
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	pods := tracker.snapshot()
	for _, uid := range victims {
		gone := pods[uid].deleted.Sub(killed)
		if res.firstEvicted == 0 || gone < res.firstEvicted {
			res.firstEvicted = gone
		}
		res.allEvicted = max(res.allEvicted, gone)
	}
	for _, p := range pods {
		if p.added.Before(killed) || p.running.IsZero() || !p.deleted.IsZero() {
			continue
		}
		res.fromKill = append(res.fromKill, p.running.Sub(killed))
		res.fromPod = append(res.fromPod, p.running.Sub(p.added))
		res.allRunning = max(res.allRunning, p.running.Sub(killed))
	}
	return res, nil
}

// countRunning counts the pods that exist and are Running, on a node other
// than avoid.
func countRunning(pods map[string]podTimes, avoid string) int {
	n := 0
	for _, p := range pods {
		if p.deleted.IsZero() && !p.running.IsZero() && p.node != avoid {
			n++
		}
	}
	return n
}

// podProcessGroups are the process groups of the live processes of the
// pods with the given uids (the runtime starts each container in its own
// session and group).
func podProcessGroups(uids []string) []int {
	var groups []int
	for _, p := range localcluster.PodProcesses(func(p localcluster.PodProcess) bool { return slices.Contains(uids, p.PodUID) }) {
		if !slices.Contains(groups, p.Pgid) {
			groups = append(groups, p.Pgid)
		}
	}
	return groups
}

// podTimes is when the watch first saw a pod in each state.
type podTimes struct {
	node                           string
	added, bound, running, deleted time.Time
}

// tracker watches the bench's pods and the nodes, and notes when each pod
// was first seen created, bound, Running and deleted, and when each node
// was last seen turning not Ready: the figures come from the moments the
// watches deliver, not from how often the bench looks.
type tracker struct {
	pods, nodes *client.Watcher
	cancel      context.CancelFunc
	// podsDone and nodesDone are closed when a watch has ended.
	podsDone, nodesDone chan struct{}

	mu         sync.Mutex
	podTimes   map[string]*podTimes // by uid
	notReadyAt map[string]time.Time // by node: when it last turned not Ready
}

func startTracking(ctx context.Context, api *client.Client) *tracker {
	ctx, cancel := context.WithCancel(ctx)
	t := &tracker{
		pods:       api.Watch(ctx, podKind, client.WatchOptions{Namespace: benchNamespace}),
		nodes:      api.Watch(ctx, nodeKind, client.WatchOptions{}),
		cancel:     cancel,
		podsDone:   make(chan struct{}),
		nodesDone:  make(chan struct{}),
		podTimes:   map[string]*podTimes{},
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
			if was, seen := ready[name]; nodeReady(node) != was || !seen {
				ready[name] = nodeReady(node)
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

func (t *tracker) notePod(typ capstanv1.WatchEventType, pod *capstanv1.Pod, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.podTimes[pod.GetMetadata().GetUid()]
	if p == nil {
		p = &podTimes{added: now}
		t.podTimes[pod.GetMetadata().GetUid()] = p
	}
	if node := pod.GetSpec().GetNodeName(); node != "" && p.bound.IsZero() {
		p.node, p.bound = node, now
	}
	if pod.GetStatus().GetPhase() == wellknown.PodRunning && p.running.IsZero() {
		p.running = now
	}
	if (typ == client.Deleted || pod.GetMetadata().GetDeleteTime() != nil) && p.deleted.IsZero() {
		p.deleted = now
	}
}

func (t *tracker) stop() {
	t.pods.Stop()
	t.nodes.Stop()
	t.cancel()
	<-t.podsDone
	<-t.nodesDone
}

// snapshot is a copy of what the tracker knows about the pods, by uid.
func (t *tracker) snapshot() map[string]podTimes {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]podTimes, len(t.podTimes))
	for uid, p := range t.podTimes {
		out[uid] = *p
	}
	return out
}

// notReadySince is when the node last turned not Ready (zero if never).
func (t *tracker) notReadySince(node string) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.notReadyAt[node]
}

// waitFor waits until cond, given what the tracker knows of the pods and
// of when each node last turned not Ready, returns nil.
func (t *tracker) waitFor(ctx context.Context, timeout time.Duration, what string, cond func(pods map[string]podTimes, notReady map[string]time.Time) error) error {
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
		return cond(t.snapshot(), notReady)
	})
}

func printPodStart(w io.Writer, o options, r podStartResult) {
	fmt.Fprintf(w, "\npod start: a ReplicaSet of %d × %q on 3 node agents (process runtime)\n", o.replicas, strings.Join(o.command, " "))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\tpods\tp50 ms\tp99 ms\tmax ms\t")
	row(tw, "ReplicaSet created → pod bound", r.bound)
	row(tw, "pod created → pod Running", r.fromPod)
	row(tw, "ReplicaSet created → pod Running", r.fromReplicaSet)
	tw.Flush()
	var nodes []string
	for _, node := range slices.Sorted(maps.Keys(r.perNode)) {
		nodes = append(nodes, fmt.Sprintf("%s %d", node, r.perNode[node]))
	}
	fmt.Fprintf(w, "all %d Running %.0f ms after the ReplicaSet's creation (pods per node: %s)\n", o.replicas, latency.Ms(r.allRunning), strings.Join(nodes, ", "))
}

func printNodeDeath(w io.Writer, o options, r nodeDeathResult) {
	fmt.Fprintf(w, "\nnode death: SIGKILL of %s (%s) and of its %d pods' processes (%d groups)\n", r.agent, r.node, r.pods, r.processes)
	notReady := "not seen"
	if r.notReady > 0 {
		notReady = fmt.Sprintf("%.0f ms", latency.Ms(r.notReady))
	}
	fmt.Fprintf(w, "node not Ready after %s; its pods evicted after %.0f ms (first) to %.0f ms (last)\n", notReady, latency.Ms(r.firstEvicted), latency.Ms(r.allEvicted))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\tpods\tp50 ms\tp99 ms\tmax ms\t")
	row(tw, "replacement created → Running", r.fromPod)
	row(tw, "node death → replacement Running", r.fromKill)
	tw.Flush()
	fmt.Fprintf(w, "%d pods Running again %.0f ms after the node died\n", o.replicas, latency.Ms(r.allRunning))
}

func row(tw io.Writer, what string, samples []time.Duration) {
	if len(samples) == 0 {
		fmt.Fprintf(tw, "%s\t0\t-\t-\t-\t\n", what)
		return
	}
	s := latency.Summarize(samples)
	fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.0f\t%.0f\t\n", what, s.N, latency.Ms(s.P50), latency.Ms(s.P99), latency.Ms(s.Max))
}

// quoteArgs quotes the arguments that a shell would split, so the printed
// command can be pasted.
func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t'\"$\\") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return out
}
