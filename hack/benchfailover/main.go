// Command benchfailover measures how long Capstan's lease-gated components
// take to fail over. It brings up a full local control plane of real
// processes on free loopback ports (package localcluster: three API servers
// with embedded etcd, three controller-managers, three schedulers), then,
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
// The bench plays the node agent of two nodes (it creates them Ready and
// keeps their node leases), so the scheduler has somewhere to bind.
//
// `make bench-failover` runs it. It is a benchmark, not a test: it asserts
// nothing about the figures.
//
//	benchfailover [-trials 10] [-components controller-manager,scheduler] [-lease-duration 3s] [-bin-dir bin] [-keep-state]
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/localcluster"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// Bounds of the waits of one trial: far above what a failover takes, so
// reaching one means something is broken, and the error says what.
const (
	takeoverTimeout = 30 * time.Second
	standbyTimeout  = 60 * time.Second
	pollInterval    = 20 * time.Millisecond
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
	binDir := flag.String("bin-dir", "", "directory holding the built binaries (default: build them into the state directory)")
	keepState := flag.Bool("keep-state", false, "keep the state directory (data and logs of every process) and print its path")
	verbose := flag.Bool("v", false, "log what the runner does")
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

	stateDir, err := os.MkdirTemp("", "capstan-benchfailover-")
	if err != nil {
		return err
	}
	if *keepState {
		defer fmt.Fprintln(os.Stderr, "state (data and logs) kept in", stateDir)
	} else {
		defer os.RemoveAll(stateDir)
	}
	if *binDir == "" {
		fmt.Fprintln(os.Stderr, "building the binaries ...")
		if *binDir, err = localcluster.FindOrBuildBinaries(ctx, filepath.Join(stateDir, "bin"), localcluster.ControlPlaneBinaries...); err != nil {
			return err
		}
	}
	ports, err := localcluster.FreePorts(3)
	if err != nil {
		return err
	}
	logger := slog.New(slog.DiscardHandler)
	if *verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	topology := localcluster.ControlPlane(*binDir, filepath.Join(stateDir, "cluster"), ports)
	if *leaseDuration != 0 {
		for i, p := range topology.Processes {
			if b := filepath.Base(p.Binary); b == localcluster.ControllerManagerBinary || b == localcluster.SchedulerBinary {
				topology.Processes[i].Args = append(slices.Clone(p.Args), "--lease-duration="+leaseDuration.String())
			}
		}
	}
	cluster, err := localcluster.New(localcluster.Config{Topology: topology, Logger: logger, ReadyTimeout: 2 * time.Minute})
	if err != nil {
		return err
	}
	defer func() {
		downCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := cluster.Down(downCtx, 10*time.Second); err != nil {
			fmt.Fprintln(os.Stderr, "benchfailover: stopping the cluster:", err)
		}
	}()
	fmt.Fprintln(os.Stderr, "starting the control plane (3 API servers, 3 controller-managers, 3 schedulers) ...")
	if err := cluster.Up(ctx); err != nil {
		return err
	}
	api, err := client.New(client.Config{Endpoints: topology.APIAddresses(), UserAgent: "benchfailover", Logger: logger})
	if err != nil {
		return err
	}
	defer api.Close()

	b := &bench{cluster: cluster, topology: cluster.Topology(), api: api, settle: *settle}
	keeperCtx, stopKeepers := context.WithCancel(ctx)
	defer stopKeepers()
	if err := b.prepare(ctx, keeperCtx); err != nil {
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
				work := fmt.Sprintf("%.1f ms", ms(t.work))
				if t.workNote != "" {
					work = "n/a: " + t.workNote
					r.oldLeaderWork++
				} else {
					r.work = append(r.work, t.work)
				}
				fmt.Fprintf(os.Stderr, "%s %-7s trial %2d/%d: %s (epoch %d) -> %s (epoch %d): lease %.1f ms, %s %s\n",
					name, signalName(sig), i, *trials, t.from, t.fromEpoch, t.to, t.toEpoch, ms(t.took), r.what, work)
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
	cluster  *localcluster.Cluster
	topology localcluster.Topology
	api      *client.Client
	// settle (plus up to renewInterval at random) is the least time a
	// leader leads before it is signalled.
	settle time.Duration
	// workloads give each component's new leader something to do.
	workloads map[string]workload
}

// The objects the bench works with.
const (
	benchNamespace   = "default"
	replicaSetName   = "bench-failover"
	replicaSetLabel  = "app=bench-failover"
	scheduledLabel   = "app=bench-failover-sched"
	benchNodes       = 2
	nodeLeaseSeconds = 10
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
	// trigger asks for the work.
	trigger func(ctx context.Context) error
	// done recognises the leader's write in a pod event.
	done func(t capstanv1.WatchEventType, pod *capstanv1.Pod) bool
}

// prepare creates what the workloads need: a ReplicaSet scaled up by one
// at each controller-manager trial; nodes for the scheduler to bind pods to,
// whose node leases the bench keeps renewing until keeperCtx ends (it is
// their node agent).
func (b *bench) prepare(ctx, keeperCtx context.Context) error {
	podSpec := func() *capstanv1.PodSpec {
		return &capstanv1.PodSpec{Containers: []*capstanv1.Container{{
			Name:      "main",
			Command:   []string{"/bin/sleep", "3600"},
			Resources: &capstanv1.ResourceRequirements{Requests: map[string]string{"cpu": "10m", "memory": "16Mi"}},
		}}}
	}
	replicas := int32(0)
	rsLabels := map[string]string{"app": "bench-failover"}
	_, err := b.api.Create(ctx, &capstanv1.ReplicaSet{
		Metadata: &capstanv1.ObjectMeta{Name: replicaSetName, Namespace: benchNamespace},
		Spec: &capstanv1.ReplicaSetSpec{
			Replicas: &replicas,
			Selector: &capstanv1.LabelSelector{MatchLabels: rsLabels},
			Template: &capstanv1.PodTemplateSpec{Metadata: &capstanv1.ObjectMeta{Labels: rsLabels}, Spec: podSpec()},
		},
	})
	if err != nil {
		return fmt.Errorf("create the ReplicaSet: %w", err)
	}
	for i := 1; i <= benchNodes; i++ {
		name := fmt.Sprintf("bench-node-%d", i)
		if err := b.createNode(ctx, name); err != nil {
			return err
		}
		go b.keepNodeLease(keeperCtx, name)
	}
	var podSeq int
	b.workloads = map[string]workload{
		localcluster.ControllerManagerBinary: {
			what:     "pod created",
			selector: replicaSetLabel,
			trigger:  b.scaleUp,
			done: func(t capstanv1.WatchEventType, _ *capstanv1.Pod) bool {
				return t == client.Added
			},
		},
		localcluster.SchedulerBinary: {
			what:     "pod bound",
			selector: scheduledLabel,
			trigger: func(ctx context.Context) error {
				podSeq++
				_, err := b.api.Create(ctx, &capstanv1.Pod{
					Metadata: &capstanv1.ObjectMeta{Name: fmt.Sprintf("bench-sched-%d", podSeq), Namespace: benchNamespace, Labels: map[string]string{"app": "bench-failover-sched"}},
					Spec:     podSpec(),
				})
				return err
			},
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

// createNode registers a Ready node with room for every bench pod.
func (b *bench) createNode(ctx context.Context, name string) error {
	obj, err := b.api.Create(ctx, &capstanv1.Node{Metadata: &capstanv1.ObjectMeta{Name: name, Labels: map[string]string{wellknown.LabelHostname: name}}})
	if err != nil {
		return fmt.Errorf("create node %s: %w", name, err)
	}
	node := resource.Clone(obj.(*capstanv1.Node))
	room := map[string]string{"cpu": "16", "memory": "64Gi"}
	node.Status = &capstanv1.NodeStatus{
		Capacity:    room,
		Allocatable: room,
		Conditions:  []*capstanv1.Condition{{Type: wellknown.NodeReady, Status: wellknown.ConditionTrue, Reason: "BenchNode", LastTransitionTime: timestamppb.Now(), LastHeartbeatTime: timestamppb.Now()}},
	}
	if _, err := b.api.UpdateStatus(ctx, node); err != nil {
		return fmt.Errorf("node %s status: %w", name, err)
	}
	return nil
}

// keepNodeLease holds the node's lease until ctx ends, as its agent would,
// so the NodeLifecycle controller keeps the node Ready.
func (b *bench) keepNodeLease(ctx context.Context, node string) {
	var epoch int64
	for ctx.Err() == nil {
		if epoch == 0 {
			resp, err := b.api.Leases().AcquireLease(ctx, &capstanv1.AcquireLeaseRequest{
				Namespace: wellknown.NodeLeaseNamespace, Name: node, HolderIdentity: node, LeaseDurationSeconds: nodeLeaseSeconds,
			})
			if err == nil && resp.GetAcquired() {
				epoch = resp.GetLease().GetStatus().GetEpoch()
			}
		} else if _, err := b.api.Leases().RenewLease(ctx, &capstanv1.RenewLeaseRequest{
			Namespace: wellknown.NodeLeaseNamespace, Name: node, HolderIdentity: node, Epoch: epoch,
		}); apierrors.Is(err, apierrors.ReasonLeaseNotHeld) {
			epoch = 0
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
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
	candidates := []string{component + "-1", component + "-2", component + "-3"}
	lease, err := b.waitStable(ctx, component, candidates)
	if err != nil {
		return trialResult{}, err
	}
	leader, epoch := lease.GetSpec().GetHolderIdentity(), lease.GetStatus().GetEpoch()

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
	if lease, err = b.stableLease(ctx, component, candidates); err != nil || lease.GetStatus().GetEpoch() != epoch {
		return trialResult{}, fmt.Errorf("the leader changed by itself before the signal: %v", err)
	}

	start := time.Now()
	if err := b.cluster.Signal(leader, sig); err != nil {
		return trialResult{}, err
	}
	if err := w.trigger(ctx); err != nil {
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
			if holder := l.GetSpec().GetHolderIdentity(); holder != leader && l.GetStatus().GetEpoch() > epoch {
				res.took = time.Since(start)
				res.to, res.toEpoch = holder, l.GetStatus().GetEpoch()
			}
		case ev, open := <-podEvents:
			if !open {
				return res, fmt.Errorf("%s: no %s within %v of %v to %s (watch: %v)", component, w.what, takeoverTimeout, sig, leader, podWatch.Err())
			}
			pod, ok := ev.Object.(*capstanv1.Pod)
			if ok && workVersion == 0 && w.done(ev.Type, pod) {
				workAt, workVersion = time.Since(start), ev.ResourceVersion
			}
		}
	}
	if !slices.Contains(candidates, res.to) {
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

	exitCtx, cancelExit := context.WithTimeout(ctx, 30*time.Second)
	defer cancelExit()
	if err := b.cluster.WaitExited(exitCtx, leader); err != nil {
		return res, err
	}
	if _, err := b.cluster.Start(ctx, leader); err != nil {
		return res, err
	}
	return res, nil
}

// waitStable waits until the lease is held by one of the candidates and
// every other candidate runs and stands by — it has seen the current
// holding, so it is watching the lease — and returns the lease.
func (b *bench) waitStable(ctx context.Context, component string, candidates []string) (*capstanv1.Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, standbyTimeout)
	defer cancel()
	var last error
	for {
		lease, err := b.stableLease(ctx, component, candidates)
		if err == nil {
			return lease, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("the %s replicas did not settle within %v: %w", component, standbyTimeout, last)
		case <-time.After(pollInterval):
		}
	}
}

func (b *bench) stableLease(ctx context.Context, component string, candidates []string) (*capstanv1.Lease, error) {
	resp, err := b.api.Leases().GetLease(ctx, &capstanv1.GetLeaseRequest{Namespace: wellknown.SystemNamespace, Name: component})
	if err != nil {
		return nil, err
	}
	lease := resp.GetLease()
	holder, epoch := lease.GetSpec().GetHolderIdentity(), lease.GetStatus().GetEpoch()
	if !slices.Contains(candidates, holder) {
		return nil, fmt.Errorf("lease held by %q", holder)
	}
	for _, name := range candidates {
		if name == holder {
			continue
		}
		seen, seenEpoch, err := b.observedLeader(ctx, name)
		if err != nil {
			return nil, err
		}
		if seen != holder || seenEpoch != epoch {
			return nil, fmt.Errorf("%s has seen %s at epoch %d, not %s at %d", name, seen, seenEpoch, holder, epoch)
		}
	}
	return lease, nil
}

// observedLeader reads the holding a replica last saw from its /healthz.
func (b *bench) observedLeader(ctx context.Context, name string) (string, int64, error) {
	var url string
	for _, p := range b.topology.Processes {
		if p.Name == name {
			url = p.HealthURL
		}
	}
	if url == "" {
		return "", 0, fmt.Errorf("%s has no health URL", name)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", 0, fmt.Errorf("%s: %w", name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("%s /healthz: %s", name, resp.Status)
	}
	fields, err := readFields(resp.Body)
	if err != nil {
		return "", 0, fmt.Errorf("%s /healthz: %w", name, err)
	}
	epoch, _ := strconv.ParseInt(fields["leader-epoch"], 10, 64)
	return fields["leader"], epoch, nil
}

// readFields parses "key: value" lines.
func readFields(r io.Reader) (map[string]string, error) {
	fields := map[string]string{}
	sc := bufio.NewScanner(io.LimitReader(r, 64<<10))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
			fields[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if _, ok := fields["leader"]; !ok {
		return nil, errors.New("no leader line (an older binary?)")
	}
	return fields, nil
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
		s := slices.Clone(samples)
		slices.Sort(s)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t\n", r.component, signalName(r.signal), until, len(s),
			ms(s[0]), ms(percentile(s, 50)), ms(percentile(s, 99)), ms(s[len(s)-1]))
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

// percentile is the nearest-rank percentile of sorted samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[max(rank, 1)-1]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func signalName(sig syscall.Signal) string {
	switch sig {
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return sig.String()
}
