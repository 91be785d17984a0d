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
// steady state: the end of the node lease — at once when the killed
// agent's session with its API replica breaks, else after the lease's TTL
// (the agents' --lease-duration) — plus --pod-eviction-timeout plus
// scheduling and start. Phase 2 is package podtrack's KillWorker, which
// hack/benchfailover runs too.
//
// Every process is stopped when it ends (also on Ctrl-C): the cluster by
// its pids, then the pods' processes (testcluster's Close). `make
// bench-podstart` runs it. It is a benchmark, not a test: it asserts
// nothing about the figures.
//
//	benchpodstart [-replicas 100] [-command '/bin/sleep 3600'] [-bin-dir bin] [-pod-eviction-timeout 5s] [-node-lease-duration 6s] [-skip-node-death] [-keep-state] [-v]
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
	"syscall"
	"text/tabwriter"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/hack/internal/podtrack"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/latency"
	"github.com/capstan-dev/capstan/internal/localcluster"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/testcluster"
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

var nodeKind = resource.MustLookup("Node")

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
	flag.DurationVar(&o.podEvictionTimeout, "pod-eviction-timeout", 0, "--pod-eviction-timeout of the controller-managers (default: theirs)")
	flag.DurationVar(&o.nodeStartupGrace, "node-startup-grace", defaultNodeStartupGrace, "--node-startup-grace of the controller-managers; the node is killed no earlier than this after the cluster came up")
	flag.DurationVar(&o.nodeLeaseDuration, "node-lease-duration", 0, "--lease-duration of the node agents (default: theirs)")
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
	tracker := podtrack.Start(ctx, api, benchNamespace)
	defer tracker.Stop()

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
		fmt.Fprintln(os.Stderr, "SIGKILL of the node agent with the most pods, and of its pods' processes ...")
		death, err := podtrack.KillWorker(ctx, cluster, tracker, b.agents, o.replicas, o.timeout)
		if err != nil {
			return err
		}
		death.Print(os.Stdout, "node death", o.replicas)
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
			if !podtrack.NodeReady(obj.(*capstanv1.Node)) {
				return fmt.Errorf("node %s is not Ready", node)
			}
		}
		return nil
	})
}

// podStartResult is phase 1's figures.
type podStartResult struct {
	fromReplicaSet []time.Duration // ReplicaSet created → pod Running
	fromPod        []time.Duration // pod seen created → pod Running
	bound          []time.Duration // ReplicaSet created → pod bound
	allRunning     time.Duration
	perNode        map[string]int
}

func (b *bench) podStart(ctx context.Context, tracker *podtrack.Tracker) (podStartResult, error) {
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
	err = tracker.WaitFor(ctx, b.opts.timeout, fmt.Sprintf("%d pods Running", b.opts.replicas), func(pods map[string]podtrack.PodTimes, _ map[string]time.Time) error {
		if n := podtrack.CountRunning(pods, ""); n < b.opts.replicas {
			return fmt.Errorf("%d of %d pods Running", n, b.opts.replicas)
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	res.perNode = map[string]int{}
	for _, p := range tracker.Snapshot() {
		res.fromReplicaSet = append(res.fromReplicaSet, p.Running.Sub(created))
		res.fromPod = append(res.fromPod, p.Running.Sub(p.Added))
		res.bound = append(res.bound, p.Bound.Sub(created))
		res.allRunning = max(res.allRunning, p.Running.Sub(created))
		res.perNode[p.Node]++
	}
	return res, nil
}

func printPodStart(w io.Writer, o options, r podStartResult) {
	fmt.Fprintf(w, "\npod start: a ReplicaSet of %d × %q on 3 node agents (process runtime)\n", o.replicas, strings.Join(o.command, " "))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\tpods\tp50 ms\tp99 ms\tmax ms\t")
	podtrack.Row(tw, "ReplicaSet created → pod bound", r.bound)
	podtrack.Row(tw, "pod created → pod Running", r.fromPod)
	podtrack.Row(tw, "ReplicaSet created → pod Running", r.fromReplicaSet)
	tw.Flush()
	var nodes []string
	for _, node := range slices.Sorted(maps.Keys(r.perNode)) {
		nodes = append(nodes, fmt.Sprintf("%s %d", node, r.perNode[node]))
	}
	fmt.Fprintf(w, "all %d Running %.0f ms after the ReplicaSet's creation (pods per node: %s)\n", o.replicas, latency.Ms(r.allRunning), strings.Join(nodes, ", "))
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
