// Command benchpodstart measures how fast pods start on real node agents,
// and how fast a dead node's pods run again elsewhere. It brings up a local
// cluster of real processes on free loopback ports (package localcluster:
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
// its pids (Down), then the pods' processes (KillPods). `make
// bench-podstart` runs it. It is a benchmark, not a test: it asserts
// nothing about the figures.
//
//	benchpodstart [-replicas 100] [-command '/bin/sleep 3600'] [-bin-dir bin] [-pod-eviction-timeout 10s] [-node-lease-duration 6s] [-skip-node-death] [-keep-state] [-v]
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/localcluster"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// The objects the bench works with.
const (
	benchNamespace = "bench-podstart"
	replicaSetName = "bench-podstart"
	// podEnvUID is set by the node agent's process runtime in every
	// container's environment: it tells which processes are a pod's.
	podEnvUID = "CAPSTAN_POD_UID"
	// defaultNodeStartupGrace is the controller-manager's own default.
	defaultNodeStartupGrace = 20 * time.Second
	pollInterval            = 20 * time.Millisecond
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
	replicas           int
	command            []string
	binDir             string
	keepState          bool
	verbose            bool
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
	flag.StringVar(&o.binDir, "bin-dir", "", "directory holding the built binaries (default: build them into the state directory)")
	flag.BoolVar(&o.keepState, "keep-state", false, "keep the state directory (data and logs of every process) and print its path")
	flag.BoolVar(&o.verbose, "v", false, "log what the runner does")
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
	stateDir, err := os.MkdirTemp("", "capstan-benchpodstart-")
	if err != nil {
		return err
	}
	if o.keepState {
		defer fmt.Fprintln(os.Stderr, "state (data and logs) kept in", stateDir)
	} else {
		defer os.RemoveAll(stateDir)
	}
	if o.binDir == "" {
		fmt.Fprintln(os.Stderr, "building the binaries ...")
		if o.binDir, err = localcluster.FindOrBuildBinaries(ctx, filepath.Join(stateDir, "bin"), localcluster.ControlPlaneBinaries...); err != nil {
			return err
		}
	}
	ports, err := localcluster.FreePorts(3)
	if err != nil {
		return err
	}
	logger := slog.New(slog.DiscardHandler)
	if o.verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	topology := localcluster.ControlPlane(o.binDir, filepath.Join(stateDir, "cluster"), ports)
	for i, p := range topology.Processes {
		var extra []string
		switch filepath.Base(p.Binary) {
		case localcluster.ControllerManagerBinary:
			extra = append(extra, "--node-startup-grace="+o.nodeStartupGrace.String())
			if o.podEvictionTimeout != 0 {
				extra = append(extra, "--pod-eviction-timeout="+o.podEvictionTimeout.String())
			}
		case localcluster.NodeAgentBinary:
			if o.nodeLeaseDuration != 0 {
				extra = append(extra, "--lease-duration="+o.nodeLeaseDuration.String())
			}
		}
		topology.Processes[i].Args = append(slices.Clone(p.Args), extra...)
	}
	cluster, err := localcluster.New(localcluster.Config{Topology: topology, Logger: logger, ReadyTimeout: 2 * time.Minute})
	if err != nil {
		return err
	}
	defer func() {
		// The pods outlive their node agents by design: Down stops the
		// cluster, KillPods the pods' processes.
		downCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := cluster.Down(downCtx, 10*time.Second); err != nil {
			fmt.Fprintln(os.Stderr, "benchpodstart: stopping the cluster:", err)
		}
		killed, err := cluster.KillPods()
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchpodstart: stopping the pods:", err)
		}
		if o.verbose {
			fmt.Fprintf(os.Stderr, "stopped the cluster and %d pod processes\n", killed)
		}
	}()
	fmt.Fprintln(os.Stderr, "starting the cluster (3 API servers, 3 controller-managers, 3 schedulers, 3 node agents) ...")
	if err := cluster.Up(ctx); err != nil {
		return err
	}
	upAt := time.Now()
	api, err := client.New(client.Config{Endpoints: topology.APIAddresses(), UserAgent: "benchpodstart", Logger: logger})
	if err != nil {
		return err
	}
	defer api.Close()

	b := &bench{opts: o, cluster: cluster, api: api, agents: map[string]string{}}
	for _, p := range cluster.Topology().Processes {
		if filepath.Base(p.Binary) != localcluster.NodeAgentBinary {
			continue
		}
		for _, arg := range p.Args {
			if node, ok := strings.CutPrefix(arg, "--node-name="); ok {
				b.agents[node] = p.Name
			}
		}
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
	cluster *localcluster.Cluster
	api     *client.Client
	agents  map[string]string // node name → node agent process
}

func (b *bench) waitNodesReady(ctx context.Context) error {
	return poll(ctx, 2*time.Minute, "every node Ready", func(ctx context.Context) error {
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

func (b *bench) podStart(ctx context.Context, tracker *podTracker) (podStartResult, error) {
	replicas := int32(b.opts.replicas)
	labels := map[string]string{"app": replicaSetName}
	grace := int64(2)
	fmt.Fprintf(os.Stderr, "creating a ReplicaSet of %d × %q ...\n", replicas, strings.Join(b.opts.command, " "))
	created := time.Now()
	_, err := b.api.Create(ctx, &capstanv1.ReplicaSet{
		Metadata: &capstanv1.ObjectMeta{Namespace: benchNamespace, Name: replicaSetName},
		Spec: &capstanv1.ReplicaSetSpec{
			Replicas: &replicas,
			Selector: &capstanv1.LabelSelector{MatchLabels: labels},
			Template: &capstanv1.PodTemplateSpec{
				Metadata: &capstanv1.ObjectMeta{Labels: labels},
				Spec: &capstanv1.PodSpec{
					Containers: []*capstanv1.Container{{
						Name:      "main",
						Command:   b.opts.command,
						Resources: &capstanv1.ResourceRequirements{Requests: map[string]string{"cpu": "10m", "memory": "16Mi"}},
					}},
					TerminationGracePeriodSeconds: &grace,
				},
			},
		},
	})
	if err != nil {
		return podStartResult{}, fmt.Errorf("create the ReplicaSet: %w", err)
	}
	var res podStartResult
	err = tracker.waitFor(ctx, b.opts.timeout, fmt.Sprintf("%d pods Running", replicas), func(pods map[string]*podTimes) error {
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

func (b *bench) nodeDeath(ctx context.Context, tracker *podTracker) (nodeDeathResult, error) {
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
	err := tracker.waitFor(ctx, b.opts.timeout, fmt.Sprintf("%d pods Running again, none on %s", b.opts.replicas, res.node), func(pods map[string]*podTimes) error {
		if res.notReady == 0 {
			// The node's status, read as the wait goes (every poll).
			callCtx, cancel := context.WithTimeout(ctx, time.Second)
			obj, err := b.api.Get(callCtx, nodeKind, "", res.node)
			cancel()
			if err == nil && !nodeReady(obj.(*capstanv1.Node)) {
				res.notReady = time.Since(killed)
			}
		}
		left := 0
		for _, uid := range victims {
			if p := pods[uid]; p != nil && p.deleted.IsZero() {
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
func countRunning(pods map[string]*podTimes, avoid string) int {
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
// session and group, and gives it its pod's uid in the environment).
func podProcessGroups(uids []string) []int {
	want := map[string]bool{}
	for _, uid := range uids {
		want[uid] = true
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	prefix := []byte(podEnvUID + "=")
	seen := map[int]bool{}
	var groups []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		environ, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(environ, []byte{0}) {
			if uid, ok := bytes.CutPrefix(kv, prefix); ok && want[string(uid)] {
				if pgid, err := syscall.Getpgid(pid); err == nil && !seen[pgid] {
					seen[pgid] = true
					groups = append(groups, pgid)
				}
				break
			}
		}
	}
	return groups
}

// podTimes is when the watch first saw a pod in each state.
type podTimes struct {
	node                           string
	added, bound, running, deleted time.Time
}

// podTracker watches the bench's pods and notes when each was first seen
// created, bound, Running and deleted.
type podTracker struct {
	watcher *client.Watcher
	cancel  context.CancelFunc
	done    chan struct{}

	mu      sync.Mutex
	pods    map[string]*podTimes // by uid
	changed chan struct{}        // closed and replaced on every event
}

func startTracking(ctx context.Context, api *client.Client) *podTracker {
	ctx, cancel := context.WithCancel(ctx)
	t := &podTracker{
		watcher: api.Watch(ctx, podKind, client.WatchOptions{Namespace: benchNamespace}),
		cancel:  cancel,
		done:    make(chan struct{}),
		pods:    map[string]*podTimes{},
		changed: make(chan struct{}),
	}
	go func() {
		defer close(t.done)
		for ev := range t.watcher.Events() {
			now := time.Now()
			pod, ok := ev.Object.(*capstanv1.Pod)
			if !ok {
				continue
			}
			t.mu.Lock()
			p := t.pods[pod.GetMetadata().GetUid()]
			if p == nil {
				p = &podTimes{added: now}
				t.pods[pod.GetMetadata().GetUid()] = p
			}
			if node := pod.GetSpec().GetNodeName(); node != "" && p.bound.IsZero() {
				p.node, p.bound = node, now
			}
			if pod.GetStatus().GetPhase() == wellknown.PodRunning && p.running.IsZero() {
				p.running = now
			}
			if (ev.Type == client.Deleted || pod.GetMetadata().GetDeleteTime() != nil) && p.deleted.IsZero() {
				p.deleted = now
			}
			close(t.changed)
			t.changed = make(chan struct{})
			t.mu.Unlock()
		}
	}()
	return t
}

func (t *podTracker) stop() {
	t.watcher.Stop()
	t.cancel()
	<-t.done
}

// snapshot is a copy of what the tracker knows, by uid.
func (t *podTracker) snapshot() map[string]podTimes {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]podTimes, len(t.pods))
	for uid, p := range t.pods {
		out[uid] = *p
	}
	return out
}

// waitFor evaluates cond after every change (and every pollInterval, for
// conditions that read more than the pods) until it returns nil.
func (t *podTracker) waitFor(ctx context.Context, timeout time.Duration, what string, cond func(map[string]*podTimes) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		t.mu.Lock()
		changed := t.changed
		pods := make(map[string]*podTimes, len(t.pods))
		for uid, p := range t.pods {
			c := *p
			pods[uid] = &c
		}
		t.mu.Unlock()
		err := cond(pods)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %v)", what, ctx.Err(), err)
		case <-t.done:
			return fmt.Errorf("waiting for %s: the watch of pods ended: %v", what, t.watcher.Err())
		case <-changed:
		case <-time.After(pollInterval):
		}
	}
}

// poll calls cond every pollInterval until it returns nil or timeout
// passes.
func poll(ctx context.Context, timeout time.Duration, what string, cond func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := cond(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %v)", what, ctx.Err(), err)
		case <-time.After(pollInterval):
		}
	}
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
	fmt.Fprintf(w, "all %d Running %.0f ms after the ReplicaSet's creation (pods per node: %s)\n", o.replicas, ms(r.allRunning), strings.Join(nodes, ", "))
}

func printNodeDeath(w io.Writer, o options, r nodeDeathResult) {
	fmt.Fprintf(w, "\nnode death: SIGKILL of %s (%s) and of its %d pods' processes (%d groups)\n", r.agent, r.node, r.pods, r.processes)
	notReady := "not seen"
	if r.notReady > 0 {
		notReady = fmt.Sprintf("%.0f ms", ms(r.notReady))
	}
	fmt.Fprintf(w, "node not Ready after %s; its pods evicted after %.0f ms (first) to %.0f ms (last)\n", notReady, ms(r.firstEvicted), ms(r.allEvicted))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\tpods\tp50 ms\tp99 ms\tmax ms\t")
	row(tw, "replacement created → Running", r.fromPod)
	row(tw, "node death → replacement Running", r.fromKill)
	tw.Flush()
	fmt.Fprintf(w, "%d pods Running again %.0f ms after the node died\n", o.replicas, ms(r.allRunning))
}

func row(tw io.Writer, what string, samples []time.Duration) {
	if len(samples) == 0 {
		fmt.Fprintf(tw, "%s\t0\t-\t-\t-\t\n", what)
		return
	}
	s := slices.Sorted(slices.Values(samples))
	fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.0f\t%.0f\t\n", what, len(s), ms(percentile(s, 50)), ms(percentile(s, 99)), ms(s[len(s)-1]))
}

// percentile is the nearest-rank percentile of sorted samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[max(rank, 1)-1]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

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
