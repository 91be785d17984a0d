// Command benchfailover measures what faults cost Capstan's lease-gated
// components. It brings up a full local control plane of real processes on
// free loopback ports (three API servers with embedded etcd, three
// controller-managers, three schedulers, a pool of hollow nodes and, for
// the worker kill, three real node agents) and runs three parts, each of
// which can be left out:
//
//   - Leader failover (-signals, -trials): for each component, -trials
//     trials of each signal to the active replica (the lease holder):
//     SIGKILL, SIGTERM and SIGSTOP. Each trial measures, from the signal,
//     the time until the new leader's first committed write — its
//     AcquireLease, seen by a watch on the lease — and until its first
//     write of its own work, asked for right after the signal: for the
//     controller-manager a pod created by its ReplicaSet controller (the
//     bench scales a ReplicaSet up by one), for the scheduler a pod bound
//     (the bench creates a pod). A write at a revision above the new
//     holding's epoch can only be the new leader's: fencing refuses the
//     old one's. A killed or stopped replica is started again; a frozen
//     one is thawed once the new leader holds the lease, and must step
//     down and stand by. The next trial waits until every candidate stands
//     by, and until the new leader has led for -settle plus a random part
//     of a renewal interval. It prints min, p50, p99 and max in
//     milliseconds per component and signal.
//   - API-fault run (-api-faults): faults of API server processes only —
//     cycling SIGKILL, SIGTERM stop and SIGSTOP pause, every other one on
//     the replica whose etcd member leads, each lasting -api-fault-hold
//     and restored before the next (testcluster.RunAPIFaults) — while a
//     watch of the components' leases records every change of holding (a
//     new epoch, or a holding that ended). A dead or frozen API replica,
//     or an etcd leader election, should cost a lease-gated component
//     nothing: it prints "transitions: N in M faults" per component, and
//     which faults moved a lease.
//   - Worker kill (-worker-pods): a ReplicaSet of that many pods of
//     /bin/sleep on the three real node agents; once they run, SIGKILL of
//     the node agent with the most of them and of its pods' processes, and
//     the time until their replacements run on the other nodes (package
//     podtrack, as hack/benchpodstart measures it). The controller-manager
//     gives every node --node-startup-grace after it becomes the leader,
//     so the kill waits until its leader has led that long.
//
// The hollow nodes (the real node agent in --hollow-nodes mode, which runs
// no processes) give the scheduler somewhere to bind the pods of the
// failover trials. The cluster is package testcluster's, and so are the
// waits on the leases and the faults.
//
// `make bench-failover` runs it. It is a benchmark, not a test: it asserts
// nothing about the figures.
//
//	benchfailover [-trials 10] [-signals SIGKILL,SIGTERM,SIGSTOP] [-components controller-manager,scheduler]
//	              [-api-faults 30] [-api-fault-hold 2s] [-worker-pods 12]
//	              [-lease-duration 6s] [-bin-dir bin] [-keep-state] [-v]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/latency"
	"github.com/capstan-dev/capstan/internal/localcluster"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/testcluster"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Bounds of the waits of one trial: far above what a failover takes, so
// reaching one means something is broken, and the error says what.
const (
	takeoverTimeout = 30 * time.Second
	standbyTimeout  = 60 * time.Second
	// workerKillTimeout bounds the wait for a dead worker's pods to run
	// elsewhere, and readyTimeout every wait for processes and pods to
	// be ready.
	workerKillTimeout = 2 * time.Minute
	readyTimeout      = 2 * time.Minute
)

var (
	leaseKind = resource.MustLookup("Lease")
	eventKind = resource.MustLookup("Event")
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "benchfailover:", err)
		os.Exit(1)
	}
}

// options are the bench's flags.
type options struct {
	program          testcluster.ProgramFlags
	trials           int
	components       []string
	signals          []syscall.Signal
	apiFaults        int
	apiFaultHold     time.Duration
	workerPods       int
	leaseDuration    time.Duration
	nodeStartupGrace time.Duration
	settle           time.Duration
}

// signalNames are the signals a trial can send, by the names -signals takes.
var signalNames = map[string]syscall.Signal{"SIGKILL": syscall.SIGKILL, "SIGTERM": syscall.SIGTERM, "SIGSTOP": syscall.SIGSTOP}

func parseFlags() (options, error) {
	var o options
	flag.IntVar(&o.trials, "trials", 10, "trials per component and signal")
	components := flag.String("components", localcluster.ControllerManagerBinary+","+localcluster.SchedulerBinary, "lease-gated components to fail over and to watch during the API-fault run, comma-separated")
	signals := flag.String("signals", "SIGKILL,SIGTERM,SIGSTOP", "signals to send the leader in the failover trials, comma-separated (empty: no failover trials)")
	flag.IntVar(&o.apiFaults, "api-faults", 30, "faults of API server processes in the API-fault run (0: no run)")
	flag.DurationVar(&o.apiFaultHold, "api-fault-hold", 2*time.Second, "how long each fault of the API-fault run lasts (the replica dead or frozen) before it is restored")
	flag.IntVar(&o.workerPods, "worker-pods", 12, "pods on the real node agents for the worker kill (0: no worker kill, and no real node agents)")
	o.program.AddFlags(flag.CommandLine)
	flag.DurationVar(&o.leaseDuration, "lease-duration", 0, "--lease-duration of the controller-managers and schedulers (default: theirs)")
	flag.DurationVar(&o.nodeStartupGrace, "node-startup-grace", 20*time.Second, "--node-startup-grace of the controller-managers; the worker kill waits until their leader has led this long")
	flag.DurationVar(&o.settle, "settle", time.Second, "how long a new leader leads before the next trial signals it, plus a random part of up to one renewal interval (1s), so that signals fall at every phase of the renewal cycle")
	flag.Parse()
	switch {
	case o.trials < 1:
		return o, fmt.Errorf("-trials must be at least 1, not %d", o.trials)
	case o.apiFaults < 0 || o.workerPods < 0:
		return o, fmt.Errorf("-api-faults %d and -worker-pods %d must not be negative", o.apiFaults, o.workerPods)
	case o.apiFaultHold < 0 || o.nodeStartupGrace <= 0:
		return o, fmt.Errorf("-api-fault-hold %v must not be negative and -node-startup-grace %v must be positive", o.apiFaultHold, o.nodeStartupGrace)
	}
	for _, name := range strings.Split(*components, ",") {
		if name = strings.TrimSpace(name); name != "" {
			if name != localcluster.ControllerManagerBinary && name != localcluster.SchedulerBinary {
				return o, fmt.Errorf("-components: %q is not a lease-gated component (controller-manager, scheduler)", name)
			}
			o.components = append(o.components, name)
		}
	}
	for _, name := range strings.Split(*signals, ",") {
		if name = strings.ToUpper(strings.TrimSpace(name)); name != "" {
			sig, ok := signalNames[name]
			if !ok {
				return o, fmt.Errorf("-signals: %q is not one of SIGKILL, SIGTERM, SIGSTOP", name)
			}
			o.signals = append(o.signals, sig)
		}
	}
	return o, nil
}

// Labels that keep each part's pods on its own nodes: the failover trials'
// on the hollow nodes, the worker kill's on the real node agents.
const (
	hollowLabel = "bench.capstan.dev/hollow"
	workerLabel = "bench.capstan.dev/worker"
)

func run(ctx context.Context) error {
	o, err := parseFlags()
	if err != nil {
		return err
	}
	args := map[string][]string{localcluster.ControllerManagerBinary: {"--node-startup-grace=" + o.nodeStartupGrace.String()}}
	if o.leaseDuration != 0 {
		lease := "--lease-duration=" + o.leaseDuration.String()
		args[localcluster.ControllerManagerBinary] = append(args[localcluster.ControllerManagerBinary], lease)
		args[localcluster.SchedulerBinary] = []string{lease}
	}
	workers := 0
	if o.workerPods > 0 {
		workers = 3
		args[localcluster.NodeAgentBinary] = []string{"--labels=" + workerLabel + "=true"}
	}
	fmt.Fprintf(os.Stderr, "starting the control plane (3 API servers, 3 controller-managers, 3 schedulers), %d hollow nodes and %d node agents ...\n", benchNodes, workers)
	cluster, err := o.program.Start(ctx, testcluster.Config{
		Name:    "benchfailover",
		Args:    args,
		Workers: workers,
		HollowPools: []testcluster.HollowPool{{Name: "bench-node", Nodes: benchNodes, CPU: "16", Memory: "64Gi",
			Labels: map[string]string{hollowLabel: "true"}}},
		ReadyTimeout: readyTimeout,
	})
	if err != nil {
		return err
	}
	defer o.program.Close(cluster)
	api, err := cluster.NewClient(client.Config{Logger: o.program.Logger()})
	if err != nil {
		return err
	}
	defer api.Close()

	b := &bench{cluster: cluster, api: api, settle: o.settle}
	if err := b.prepare(ctx); err != nil {
		return err
	}
	var results []result
	for _, name := range o.components {
		for _, sig := range o.signals {
			r := result{component: name, signal: sig, what: b.workloads[name].what}
			for i := 1; i <= o.trials; i++ {
				t, err := b.trial(ctx, name, sig)
				if err != nil {
					return fmt.Errorf("%s %v trial %d: %w", name, signalName(sig), i, err)
				}
				work := fmt.Sprintf("%.1f ms", latency.Ms(t.work))
				if t.workNote != "" {
					work = "n/a: " + t.workNote
					r.oldLeaderWork++
				} else {
					r.work = append(r.work, t.work)
				}
				fmt.Fprintf(os.Stderr, "%s %-7s trial %2d/%d: %s (epoch %d) -> %s (epoch %d): lease %.1f ms, %s %s\n",
					name, signalName(sig), i, o.trials, t.from, t.fromEpoch, t.to, t.toEpoch, latency.Ms(t.took), r.what, work)
				r.lease = append(r.lease, t.took)
			}
			results = append(results, r)
		}
	}
	if len(results) > 0 {
		printResults(os.Stdout, results)
	}
	if o.apiFaults > 0 {
		run, err := b.apiFaultRun(ctx, o.components, o.apiFaults, o.apiFaultHold)
		if err != nil {
			return err
		}
		run.print(os.Stdout)
	}
	if o.workerPods > 0 {
		res, err := b.workerKill(ctx, o.workerPods, o.nodeStartupGrace)
		if err != nil {
			return err
		}
		res.Print(os.Stdout, "worker kill", o.workerPods)
	}
	return nil
}

// bench is the cluster the trials run on.
type bench struct {
	cluster *testcluster.Cluster
	api     *client.Client
	// settle (plus up to renewInterval at random) is the least time a
	// leader leads before it is signalled.
	settle time.Duration
	// workloads give each component's new leader something to do.
	workloads map[string]workload
}

// The objects the bench works with.
const (
	benchNamespace  = "default"
	replicaSetName  = "bench-failover"
	replicaSetLabel = "app=bench-failover"
	scheduledLabel  = "app=bench-failover-sched"
	benchNodes      = 2
	// The worker kill's pods, in a namespace of their own.
	workerNamespace  = "bench-failover-workers"
	workerReplicaSet = "bench-workers"
)

var (
	podKind        = resource.MustLookup("Pod")
	replicaSetKind = resource.MustLookup("ReplicaSet")
)

// workload is work only a component's leader does, which the bench asks
// for right after the signal and recognises in a watch of pods.
type workload struct {
	// what names the leader's first write, for the report.
	what string
	// selector selects the pods to watch.
	selector string
	// trigger asks for the work; it returns the name of the pod to watch
	// for, or "" for any pod the selector selects.
	trigger func(ctx context.Context) (string, error)
	// done recognises the leader's write in a pod event.
	done func(t capstanv1.WatchEventType, pod *capstanv1.Pod) bool
}

// podSpec is the spec of the bench's pods: a light process that requests
// little, on the nodes with the label.
func podSpec(label string) *capstanv1.PodSpec {
	grace := int64(2)
	return &capstanv1.PodSpec{
		Containers: []*capstanv1.Container{{
			Name:      "main",
			Command:   []string{"/bin/sleep", "3600"},
			Resources: &capstanv1.ResourceRequirements{Requests: map[string]string{"cpu": "10m", "memory": "16Mi"}},
		}},
		NodeSelector:                  map[string]string{label: "true"},
		TerminationGracePeriodSeconds: &grace,
	}
}

// prepare creates what the workloads need: a ReplicaSet, scaled up by one
// at each controller-manager trial; each scheduler trial creates a pod for
// the scheduler to bind to a hollow node.
func (b *bench) prepare(ctx context.Context) error {
	// Its pods are labelled app=<its name>: replicaSetLabel.
	if _, err := b.api.Create(ctx, testcluster.ReplicaSet(benchNamespace, replicaSetName, 0, podSpec(hollowLabel))); err != nil {
		return fmt.Errorf("create the ReplicaSet: %w", err)
	}
	var podSeq int
	b.workloads = map[string]workload{
		localcluster.ControllerManagerBinary: {
			what:     "pod created",
			selector: replicaSetLabel,
			trigger:  func(ctx context.Context) (string, error) { return "", b.scaleUp(ctx) },
			done: func(t capstanv1.WatchEventType, _ *capstanv1.Pod) bool {
				return t == client.Added
			},
		},
		localcluster.SchedulerBinary: {
			what:     "pod bound",
			selector: scheduledLabel,
			trigger: func(ctx context.Context) (string, error) {
				podSeq++
				name := fmt.Sprintf("bench-sched-%d", podSeq)
				_, err := b.api.Create(ctx, &capstanv1.Pod{
					Metadata: &capstanv1.ObjectMeta{Name: name, Namespace: benchNamespace, Labels: map[string]string{"app": "bench-failover-sched"}},
					Spec:     podSpec(hollowLabel),
				})
				return name, err
			},
			// The bound pod's first change: the hollow node then reports
			// it Running, a change that is the node's, not the
			// scheduler's.
			done: func(t capstanv1.WatchEventType, pod *capstanv1.Pod) bool {
				return t == client.Modified && pod.GetSpec().GetNodeName() != ""
			},
		},
	}
	return nil
}

// scaleUp adds one replica to the bench's ReplicaSet.
func (b *bench) scaleUp(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		obj, err := b.api.Get(ctx, replicaSetKind, benchNamespace, replicaSetName)
		if err != nil {
			return err
		}
		rs := resource.Clone(obj.(*capstanv1.ReplicaSet))
		replicas := rs.GetSpec().GetReplicas() + 1
		rs.Spec.Replicas = &replicas
		_, err = b.api.Update(ctx, rs)
		if err == nil || !apierrors.IsConflict(err) || attempt == 5 {
			return err
		}
	}
}

// renewInterval is about how often a leader renews (1 s with the default
// lease).
const renewInterval = time.Second

// trialResult is one failover.
type trialResult struct {
	from, to           string
	fromEpoch, toEpoch int64
	// took is the time from the signal to the new holding's commit.
	took time.Duration
	// work is the time from the signal to the new leader's first write of
	// its own (a pod created by the ReplicaSet controller, a pod bound by
	// the scheduler); 0 if the old leader did that work before it
	// stopped (workNote says so).
	work     time.Duration
	workNote string
}

// trial signals the leader of the component's lease and measures the time
// until another candidate's holding is committed and until that leader's
// first write of its own; then it starts the signalled process again, or
// thaws it (SIGSTOP) and waits until it has stepped down.
func (b *bench) trial(ctx context.Context, component string, sig syscall.Signal) (trialResult, error) {
	settled, err := b.cluster.WaitSettled(ctx, component, standbyTimeout)
	if err != nil {
		return trialResult{}, err
	}
	lease, err := b.cluster.Lease(ctx, component)
	if err != nil {
		return trialResult{}, err
	}
	if testcluster.HoldingOf(lease) != settled {
		return trialResult{}, fmt.Errorf("the lease moved on from %v to %v by itself", settled, testcluster.HoldingOf(lease))
	}
	leader, epoch := settled.Holder, settled.Epoch

	// Both watches start from versions read now, so nothing after the
	// signal can slip past, and well before it: etcd catches a watch that
	// starts in the past up with the present only every 100 ms, and the
	// figures must not include that.
	watchCtx, cancel := context.WithTimeout(ctx, takeoverTimeout+b.settle+renewInterval)
	defer cancel()
	leaseWatch := b.api.Watch(watchCtx, leaseKind, client.WatchOptions{
		Namespace:       wellknown.SystemNamespace,
		FieldSelector:   "metadata.name=" + component,
		ResourceVersion: lease.GetMetadata().GetResourceVersion(),
	})
	defer leaseWatch.Stop()
	w := b.workloads[component]
	pods, err := b.api.List(ctx, podKind, client.ListOptions{Namespace: benchNamespace, LabelSelector: w.selector})
	if err != nil {
		return trialResult{}, err
	}
	podWatch := b.api.Watch(watchCtx, podKind, client.WatchOptions{
		Namespace:       benchNamespace,
		LabelSelector:   w.selector,
		ResourceVersion: pods.ResourceVersion,
	})
	defer podWatch.Stop()

	// A SIGKILL right after an acquisition or a renewal would always meet
	// the longest wait for etcd's expiry; a random phase measures what a
	// crash at any moment costs.
	wait := b.settle + rand.N(renewInterval) - time.Since(lease.GetStatus().GetAcquireTime().AsTime())
	select {
	case <-ctx.Done():
		return trialResult{}, ctx.Err()
	case <-time.After(max(wait, 200*time.Millisecond)):
	}
	if now, err := b.cluster.CheckSettled(ctx, component); err != nil || now != settled {
		return trialResult{}, fmt.Errorf("the leader changed by itself before the signal: %v, %v", now, err)
	}

	start := time.Now()
	if err := b.cluster.Signal(leader, sig); err != nil {
		return trialResult{}, err
	}
	want, err := w.trigger(ctx)
	if err != nil {
		return trialResult{}, fmt.Errorf("giving the new leader work: %w", err)
	}

	res := trialResult{from: leader, fromEpoch: epoch}
	// The first write of the workload after the signal, and its version.
	var workAt time.Duration
	var workVersion int64
	leaseEvents, podEvents := leaseWatch.Events(), podWatch.Events()
	for res.to == "" || workVersion == 0 {
		select {
		case ev, open := <-leaseEvents:
			if !open {
				return res, fmt.Errorf("no new holder of lease %s within %v of %v to %s (watch: %v)", component, takeoverTimeout, sig, leader, leaseWatch.Err())
			}
			l, ok := ev.Object.(*capstanv1.Lease)
			if !ok || ev.Type == client.Deleted || res.to != "" {
				continue
			}
			if h := testcluster.HoldingOf(l); h.Holder != leader && h.Epoch > epoch {
				res.took = time.Since(start)
				res.to, res.toEpoch = h.Holder, h.Epoch
			}
		case ev, open := <-podEvents:
			if !open {
				return res, fmt.Errorf("%s: no %s within %v of %v to %s (watch: %v)", component, w.what, takeoverTimeout, sig, leader, podWatch.Err())
			}
			pod, ok := ev.Object.(*capstanv1.Pod)
			if ok && workVersion == 0 && (want == "" || pod.GetMetadata().GetName() == want) && w.done(ev.Type, pod) {
				workAt, workVersion = time.Since(start), ev.ResourceVersion
			}
		}
	}
	if !slices.Contains(b.cluster.Candidates(component), res.to) {
		return res, fmt.Errorf("lease %s taken by %q, not a candidate", component, res.to)
	}
	// The new holding's epoch is the revision it was created at: a later
	// write is the new leader's (fencing refuses the old one's), an earlier
	// one the old leader's, made before it stopped.
	if workVersion > res.toEpoch {
		res.work = workAt
	} else {
		res.workNote = fmt.Sprintf("the old leader did the %s (revision %d) before the new holding (revision %d)", w.what, workVersion, res.toEpoch)
	}

	if sig == syscall.SIGSTOP {
		return res, b.thawSteppedDown(ctx, component, leader, testcluster.Holding{Holder: res.to, Epoch: res.toEpoch})
	}
	// The signalled process is gone, or on its way out: start it again.
	if err := b.cluster.Start(ctx, leader); err != nil {
		return res, err
	}
	return res, nil
}

// thawSteppedDown thaws the frozen old leader and waits until it has
// stepped down: its /healthz says that it does not lead and names the new
// holding.
func (b *bench) thawSteppedDown(ctx context.Context, component, old string, next testcluster.Holding) error {
	if err := b.cluster.Resume(old); err != nil {
		return err
	}
	return poll.Until(ctx, standbyTimeout, fmt.Sprintf("the thawed %s to step down for %v", old, next), func(ctx context.Context) error {
		hz, err := b.cluster.Health(ctx, old)
		if err != nil {
			return err
		}
		if hz.Leading || hz.Leader != next.Holder || hz.LeaderEpoch != next.Epoch {
			return fmt.Errorf("%s reports %+v", old, hz)
		}
		return nil
	})
}

// result is the samples of one component and signal.
type result struct {
	component string
	signal    syscall.Signal
	// what names the new leader's first write of its own.
	what string
	// lease: signal to the new holding's commit; work: signal to the new
	// leader's first write of its own.
	lease, work []time.Duration
	// oldLeaderWork counts trials whose work the old leader did before it
	// stopped (no work sample then).
	oldLeaderWork int
}

func printResults(w io.Writer, results []result) {
	fmt.Fprintln(w, "\nfailover, ms from the signal to the active replica until, seen by a watch:")
	fmt.Fprintln(w, "  lease: the new leader's AcquireLease is committed")
	fmt.Fprintln(w, "  pod created / pod bound: the new leader's first write of its own (its ReplicaSet controller creates a pod / it binds a pod), asked for right after the signal")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "component\tsignal\tuntil\ttrials\tmin\tp50\tp99\tmax\t")
	row := func(r result, until string, samples []time.Duration) {
		if len(samples) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t%s\t0\t-\t-\t-\t-\t\n", r.component, signalName(r.signal), until)
			return
		}
		s := latency.Summarize(samples)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t\n", r.component, signalName(r.signal), until, s.N,
			latency.Ms(s.Min), latency.Ms(s.P50), latency.Ms(s.P99), latency.Ms(s.Max))
	}
	for _, r := range results {
		row(r, "lease", r.lease)
		row(r, r.what, r.work)
	}
	tw.Flush()
	for _, r := range results {
		if r.oldLeaderWork > 0 {
			fmt.Fprintf(w, "%s %s: in %d trials the old leader did the work before it stopped (not counted)\n", r.component, signalName(r.signal), r.oldLeaderWork)
		}
	}
}

func signalName(sig syscall.Signal) string {
	switch sig {
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGSTOP:
		return "SIGSTOP"
	}
	return sig.String()
}
