// Command benchfailover measures how long Capstan's lease-gated components
// take to fail over. It brings up a full local control plane of real
// processes on free loopback ports (three API servers with embedded etcd,
// three controller-managers, three schedulers), then,
// for each component, runs -trials trials of SIGKILL and -trials of SIGTERM
// of the active replica (the lease holder). Each trial measures, from the
// signal, the time until the new leader's first committed write — its
// AcquireLease, seen by a watch on the lease — and until its first write of
// its own work, asked for right after the signal: for the controller-manager
// a pod created by its ReplicaSet controller (the bench scales a ReplicaSet
// up by one), for the scheduler a pod bound (the bench creates a pod). A
// write at a revision above the new holding's epoch can only be the new
// leader's: fencing refuses the old one's. The killed replica is started
// again and the next trial waits until it stands by, and until the new
// leader has led for -settle plus a random part of a renewal interval. It
// prints min, p50, p99 and max in milliseconds per component and signal.
//
// Two hollow nodes (the real node agent in --hollow-nodes mode, which
// runs no processes) give the scheduler somewhere to bind. The cluster is
// package testcluster's, and so are the waits on the leases.
//
// `make bench-failover` runs it. It is a benchmark, not a test: it asserts
// nothing about the figures.
//
//	benchfailover [-trials 10] [-components controller-manager,scheduler] [-lease-duration 3s] [-bin-dir bin] [-keep-state]
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
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/testcluster"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Bounds of the waits of one trial: far above what a failover takes, so
// reaching one means something is broken, and the error says what.
const (
	takeoverTimeout = 30 * time.Second
	standbyTimeout  = 60 * time.Second
)

var leaseKind = resource.MustLookup("Lease")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "benchfailover:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	trials := flag.Int("trials", 10, "trials per component and signal")
	components := flag.String("components", localcluster.ControllerManagerBinary+","+localcluster.SchedulerBinary, "lease-gated components to fail over, comma-separated")
	var program testcluster.ProgramFlags
	program.AddFlags(flag.CommandLine)
	leaseDuration := flag.Duration("lease-duration", 0, "--lease-duration of the controller-managers and schedulers (default: theirs, 3s)")
	settle := flag.Duration("settle", time.Second, "how long a new leader leads before the next trial signals it, plus a random part of up to one renewal interval (1s), so that signals fall at every phase of the renewal cycle")
	flag.Parse()
	if *trials < 1 {
		return fmt.Errorf("-trials must be at least 1, not %d", *trials)
	}
	var names []string
	for _, name := range strings.Split(*components, ",") {
		if name = strings.TrimSpace(name); name != "" {
			if name != localcluster.ControllerManagerBinary && name != localcluster.SchedulerBinary {
				return fmt.Errorf("-components: %q is not a lease-gated component (controller-manager, scheduler)", name)
			}
			names = append(names, name)
		}
	}

	var args map[string][]string
	if *leaseDuration != 0 {
		lease := "--lease-duration=" + leaseDuration.String()
		args = map[string][]string{localcluster.ControllerManagerBinary: {lease}, localcluster.SchedulerBinary: {lease}}
	}
	fmt.Fprintln(os.Stderr, "starting the control plane (3 API servers, 3 controller-managers, 3 schedulers) and 2 hollow nodes ...")
	cluster, err := program.Start(ctx, testcluster.Config{
		Name:         "benchfailover",
		Args:         args,
		HollowPools:  []testcluster.HollowPool{{Name: "bench-node", Nodes: benchNodes, CPU: "16", Memory: "64Gi"}},
		ReadyTimeout: 2 * time.Minute,
	})
	if err != nil {
		return err
	}
	defer program.Close(cluster)
	api, err := cluster.NewClient(client.Config{Logger: program.Logger()})
	if err != nil {
		return err
	}
	defer api.Close()

	b := &bench{cluster: cluster, api: api, settle: *settle}
	if err := b.prepare(ctx); err != nil {
		return err
	}
	var results []result
	for _, name := range names {
		for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
			r := result{component: name, signal: sig, what: b.workloads[name].what}
			for i := 1; i <= *trials; i++ {
				t, err := b.trial(ctx, name, sig)
				if err != nil {
					return fmt.Errorf("%s %v trial %d: %w", name, sig, i, err)
				}
				work := fmt.Sprintf("%.1f ms", latency.Ms(t.work))
				if t.workNote != "" {
					work = "n/a: " + t.workNote
					r.oldLeaderWork++
				} else {
					r.work = append(r.work, t.work)
				}
				fmt.Fprintf(os.Stderr, "%s %-7s trial %2d/%d: %s (epoch %d) -> %s (epoch %d): lease %.1f ms, %s %s\n",
					name, signalName(sig), i, *trials, t.from, t.fromEpoch, t.to, t.toEpoch, latency.Ms(t.took), r.what, work)
				r.lease = append(r.lease, t.took)
			}
			results = append(results, r)
		}
	}
	printResults(os.Stdout, results)
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

// prepare creates what the workloads need: a ReplicaSet, scaled up by one
// at each controller-manager trial; each scheduler trial creates a pod for
// the scheduler to bind to a hollow node.
func (b *bench) prepare(ctx context.Context) error {
	podSpec := func() *capstanv1.PodSpec {
		return &capstanv1.PodSpec{Containers: []*capstanv1.Container{{
			Name:      "main",
			Command:   []string{"/bin/sleep", "3600"},
			Resources: &capstanv1.ResourceRequirements{Requests: map[string]string{"cpu": "10m", "memory": "16Mi"}},
		}}}
	}
	// Its pods are labelled app=<its name>: replicaSetLabel.
	if _, err := b.api.Create(ctx, testcluster.ReplicaSet(benchNamespace, replicaSetName, 0, podSpec())); err != nil {
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
					Spec:     podSpec(),
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

// renewInterval is about how often a leader renews (TTL/3: 1 s with the
// default 3 s lease).
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
// first write of its own, then restarts the signalled process.
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

	// The signalled process is gone, or on its way out: start it again.
	if err := b.cluster.Start(ctx, leader); err != nil {
		return res, err
	}
	return res, nil
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
	}
	return sig.String()
}
