package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// This file is the part of the harness the tests of the lease-gated
// components (controlplane_test.go) share: reading leases and the
// components' /healthz and logs, nodes that the tests keep alive as their
// node agents would, a stand-in for the node agent's handling of pods, and
// independent watches that record every change so that a test can check an
// invariant at every moment the store passed through.

// Kinds the control-plane tests work with.
var (
	podKind        = resource.MustLookup("Pod")
	nodeKind       = resource.MustLookup("Node")
	replicaSetKind = resource.MustLookup("ReplicaSet")
	deploymentKind = resource.MustLookup("Deployment")
	leaseKind      = resource.MustLookup("Lease")
	eventKind      = resource.MustLookup("Event")
)

// leaseGated are the lease-gated components by the name of their lease,
// which is also the name of their binary.
var leaseGated = []string{wellknown.ControllerManagerLease, wellknown.SchedulerLease}

const (
	// takeoverTimeout bounds each wait for a lease to change hands: far
	// above the components' 3 s TTL, so reaching it means that a takeover
	// failed, not that it was slow.
	takeoverTimeout = 30 * time.Second
	// convergeTimeout bounds each wait for the controllers and the
	// scheduler to bring the objects to a wanted state.
	convergeTimeout = 60 * time.Second
	// cleanupTimeout bounds a test's clean-up calls.
	cleanupTimeout = 30 * time.Second
	// nodeLeaseSeconds and nodeLeaseRenewal are the node leases the tests
	// hold for their nodes: NodeLifecycle judges a node by its lease.
	nodeLeaseSeconds = 6
	nodeLeaseRenewal = 2 * time.Second
	// poolLabel marks the nodes of one test; its pods select them, so no
	// pod of one test lands on another's nodes.
	poolLabel = "e2e.capstan.dev/pool"
	// sentinelLabel marks the pods a history writes to know that it has
	// seen everything up to a point; the checks skip them.
	sentinelLabel = "e2e.capstan.dev/sentinel"
)

// holding is one holding of a lease: its holder and its epoch, the
// fencing token every write of the holder carries.
type holding struct {
	holder string
	epoch  int64
}

func (h holding) String() string { return fmt.Sprintf("%s at epoch %d", h.holder, h.epoch) }

// leaseHolding reads the current holding of a component's lease.
func leaseHolding(ctx context.Context, cl *client.Client, lease string) (holding, error) {
	resp, err := cl.Leases().GetLease(ctx, &capstanv1.GetLeaseRequest{Namespace: wellknown.SystemNamespace, Name: lease})
	if err != nil {
		return holding{}, err
	}
	l := resp.GetLease()
	return holding{holder: l.GetSpec().GetHolderIdentity(), epoch: l.GetStatus().GetEpoch()}, nil
}

// waitTakeover waits until a candidate other than prev's holder holds the
// lease at an epoch above prev's, and returns that holding.
func (c *testCluster) waitTakeover(t *testing.T, cl *client.Client, lease string, prev holding) holding {
	t.Helper()
	var got holding
	waitFor(t, takeoverTimeout, fmt.Sprintf("another %s to take the lease over from %v", lease, prev), func(ctx context.Context) error {
		h, err := leaseHolding(ctx, cl, lease)
		if err != nil {
			return err
		}
		if h.holder == prev.holder || h.epoch <= prev.epoch || !slices.Contains(c.candidates[lease], h.holder) {
			return fmt.Errorf("the lease is held by %v", h)
		}
		got = h
		return nil
	})
	return got
}

// waitSettled waits until a candidate leads — it holds the lease and its
// /healthz says it leads at that epoch — and every other running candidate
// stands by: its /healthz says it does not lead and has seen that holding,
// so it watches the lease and tries to take it the moment it is deleted.
// It returns the holding.
func (c *testCluster) waitSettled(t *testing.T, cl *client.Client, lease string) holding {
	t.Helper()
	var got holding
	waitFor(t, takeoverTimeout, "the "+lease+" candidates to settle: one leads, the others stand by", func(ctx context.Context) error {
		h, err := leaseHolding(ctx, cl, lease)
		if err != nil {
			return err
		}
		if !slices.Contains(c.candidates[lease], h.holder) {
			return fmt.Errorf("the lease is held by %v, not by a candidate", h)
		}
		for _, name := range c.running(c.candidates[lease]) {
			hz, err := c.health(ctx, name)
			if err != nil {
				return err
			}
			if leads := name == h.holder; hz.leading != leads || hz.leader != h.holder || hz.leaderEpoch != h.epoch {
				return fmt.Errorf("the lease is held by %v; %s reports %+v", h, name, hz)
			}
		}
		got = h
		return nil
	})
	return got
}

// running are the processes of names that run.
func (c *testCluster) running(names []string) []string {
	var out []string
	for _, st := range c.lc.Status() {
		if st.Running && slices.Contains(names, st.Name) {
			out = append(out, st.Name)
		}
	}
	return out
}

// standbys are the standbys of a lease that the cluster status lists.
func standbys(ctx context.Context, cl *client.Client, lease string) ([]string, holding, error) {
	st, err := cl.Cluster().GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{})
	if err != nil {
		return nil, holding{}, err
	}
	for _, l := range st.GetLeases() {
		if l.GetNamespace() == wellknown.SystemNamespace && l.GetName() == lease {
			return l.GetStandbys(), holding{holder: l.GetHolderIdentity(), epoch: l.GetEpoch()}, nil
		}
	}
	return nil, holding{}, fmt.Errorf("the cluster status lists no lease %s: %v", lease, st.GetLeases())
}

// componentHealth is what a lease-gated component's /healthz says.
type componentHealth struct {
	identity    string
	leading     bool
	leader      string
	leaderEpoch int64
}

// health reads the named component's /healthz.
func (c *testCluster) health(ctx context.Context, name string) (componentHealth, error) {
	url := c.healthURLs[name]
	if url == "" {
		return componentHealth{}, fmt.Errorf("%s has no health URL", name)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return componentHealth{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return componentHealth{}, fmt.Errorf("%s /healthz: %w", name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return componentHealth{}, fmt.Errorf("%s /healthz: %s", name, resp.Status)
	}
	fields := map[string]string{}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 64<<10))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
			fields[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	if err := sc.Err(); err != nil {
		return componentHealth{}, fmt.Errorf("%s /healthz: %w", name, err)
	}
	epoch, _ := strconv.ParseInt(fields["leader-epoch"], 10, 64)
	return componentHealth{
		identity:    fields["identity"],
		leading:     fields["leading"] == "true",
		leader:      fields["leader"],
		leaderEpoch: epoch,
	}, nil
}

// logOffset is the size of the named process's log now: logSince reads
// what the process logs after this moment.
func (c *testCluster) logOffset(t *testing.T, name string) int64 {
	t.Helper()
	fi, err := os.Stat(c.lc.Topology().LogPath(name))
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatalf("log of %s: %v", name, err)
	}
	return fi.Size()
}

// logSince is what the named process has logged after offset, one record
// per line.
func (c *testCluster) logSince(t *testing.T, name string, offset int64) []logRecord {
	t.Helper()
	data, err := os.ReadFile(c.lc.Topology().LogPath(name))
	if err != nil {
		t.Fatalf("log of %s: %v", name, err)
	}
	var records []logRecord
	for _, line := range strings.Split(string(data[min(offset, int64(len(data))):]), "\n") {
		if line != "" {
			records = append(records, parseLogLine(line))
		}
	}
	return records
}

// logRecord is one line of a component's log: log/slog's text format,
// key=value pairs with quoted values where needed. A line that is not in
// that format (a panic, localcluster's start marker) has only "line".
type logRecord map[string]string

func parseLogLine(line string) logRecord {
	r := logRecord{"line": line}
	rest := line
	for rest != "" {
		key, after, ok := strings.Cut(rest, "=")
		if !ok || key == "" || strings.ContainsAny(key, " \"") {
			return logRecord{"line": line}
		}
		var value string
		if strings.HasPrefix(after, `"`) {
			quoted, err := strconv.QuotedPrefix(after)
			if err != nil {
				return logRecord{"line": line}
			}
			value, _ = strconv.Unquote(quoted)
			after = after[len(quoted):]
		} else {
			value, after, _ = strings.Cut(after, " ")
			after = " " + after
		}
		r[key] = value
		rest = strings.TrimLeft(after, " ")
	}
	return r
}

// is reports whether the record has message msg and every given attribute
// (key, value, key, value ...).
func (r logRecord) is(msg string, attrs ...string) bool {
	if r["msg"] != msg {
		return false
	}
	for i := 0; i+1 < len(attrs); i += 2 {
		if r[attrs[i]] != attrs[i+1] {
			return false
		}
	}
	return true
}

// find returns the first record with message msg and the given attributes.
func find(records []logRecord, msg string, attrs ...string) (logRecord, bool) {
	for _, r := range records {
		if r.is(msg, attrs...) {
			return r, true
		}
	}
	return nil, false
}

// containing are the records whose line contains substr.
func containing(records []logRecord, substr string) []logRecord {
	var out []logRecord
	for _, r := range records {
		if strings.Contains(r["line"], substr) {
			out = append(out, r)
		}
	}
	return out
}

func lines(records []logRecord) string {
	var b strings.Builder
	for _, r := range records {
		b.WriteString(r["line"])
		b.WriteByte('\n')
	}
	return b.String()
}

// reap waits until the named process, which this test process started,
// has exited, and returns its wait status. localcluster starts every
// process and never waits for it, so the exit status is the parent's to
// collect, and only once: localcluster reaps an exited process when it
// next checks whether it runs and drops the status, so nothing may ask it
// about the process between the signal and this call.
func reap(t *testing.T, name string, pid int) syscall.WaitStatus {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		switch {
		case err != nil:
			t.Fatalf("wait for %s (pid %d): %v", name, pid, err)
		case got == pid:
			return ws
		case time.Now().After(deadline):
			t.Fatalf("%s (pid %d) did not exit within 30 s", name, pid)
		}
		// A blocking wait could not be given up at the deadline.
		time.Sleep(pollInterval)
	}
}

// workerNodes are Nodes a test registers through the API, as node agents
// would (the node agent is the next issue): Ready=True with allocatable
// resources, labelled with the test's pool, and each with a node lease that
// the test renews as long as it runs, so that NodeLifecycle finds them
// alive. The test's pods select the pool.
type workerNodes struct {
	pool  string
	names []string
}

// selector is the node selector of the pool's nodes.
func (n *workerNodes) selector() map[string]string { return map[string]string{poolLabel: n.pool} }

func (n *workerNodes) has(name string) bool { return slices.Contains(n.names, name) }

// startWorkerNodes registers count nodes of the pool with the given
// allocatable resources and starts renewing their leases (a 6 s TTL
// renewed every 2 s, holder the node's name). When t ends the renewals
// stop, and the leases and the nodes are deleted.
func startWorkerNodes(t *testing.T, cl *client.Client, pool string, count int, allocatable map[string]string) *workerNodes {
	t.Helper()
	nodes := &workerNodes{pool: pool}
	epochs := map[string]int64{}
	ctx, cancel := callCtx(t)
	defer cancel()
	for i := 1; i <= count; i++ {
		name := fmt.Sprintf("%s-node-%d", pool, i)
		created, err := cl.Create(ctx, &capstanv1.Node{Metadata: &capstanv1.ObjectMeta{
			Name:   name,
			Labels: map[string]string{wellknown.LabelHostname: name, poolLabel: pool},
		}})
		if err != nil {
			t.Fatalf("create node %s: %v", name, err)
		}
		nodes.names = append(nodes.names, name)
		node := resource.Clone(created.(*capstanv1.Node))
		now := timestamppb.Now()
		node.Status = &capstanv1.NodeStatus{
			Capacity:    allocatable,
			Allocatable: allocatable,
			Conditions: []*capstanv1.Condition{{
				Type: wellknown.NodeReady, Status: wellknown.ConditionTrue, Reason: "E2ENodeReady",
				LastTransitionTime: now, LastHeartbeatTime: now,
			}},
		}
		if _, err := cl.UpdateStatus(ctx, node); err != nil {
			t.Fatalf("report node %s Ready: %v", name, err)
		}
		resp, err := cl.Leases().AcquireLease(ctx, &capstanv1.AcquireLeaseRequest{
			Namespace: wellknown.NodeLeaseNamespace, Name: name, HolderIdentity: name, LeaseDurationSeconds: nodeLeaseSeconds,
		})
		if err != nil || !resp.GetAcquired() {
			t.Fatalf("acquire the node lease of %s: acquired=%v, %v", name, resp.GetAcquired(), err)
		}
		epochs[name] = resp.GetLease().GetStatus().GetEpoch()
	}

	keeperCtx, stopKeeper := context.WithCancel(context.Background())
	var failures []error // read after the keeper ends
	done := make(chan struct{})
	go func() {
		defer close(done)
		ticker := time.NewTicker(nodeLeaseRenewal)
		defer ticker.Stop()
		for {
			select {
			case <-keeperCtx.Done():
				return
			case <-ticker.C:
			}
			for _, name := range nodes.names {
				if err := keepNodeLease(keeperCtx, cl, name, epochs); err != nil && keeperCtx.Err() == nil {
					failures = append(failures, fmt.Errorf("%s: %w", name, err))
				}
			}
		}
	}()
	t.Cleanup(func() {
		stopKeeper()
		<-done
		for _, err := range failures {
			t.Logf("renewing a node lease failed (NodeLifecycle may have found the node dead): %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		for _, name := range nodes.names {
			if _, err := cl.Delete(ctx, leaseKind, wellknown.NodeLeaseNamespace, name, nil); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("delete the node lease of %s: %v", name, err)
			}
			if _, err := cl.Delete(ctx, nodeKind, "", name, nil); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("delete node %s: %v", name, err)
			}
		}
	})
	return nodes
}

// keepNodeLease renews the node's lease, or acquires it again if it was
// lost (epochs[name] is then updated).
func keepNodeLease(ctx context.Context, cl *client.Client, name string, epochs map[string]int64) error {
	ctx, cancel := context.WithTimeout(ctx, nodeLeaseRenewal)
	defer cancel()
	_, err := cl.Leases().RenewLease(ctx, &capstanv1.RenewLeaseRequest{
		Namespace: wellknown.NodeLeaseNamespace, Name: name, HolderIdentity: name, Epoch: epochs[name],
	})
	if !apierrors.Is(err, apierrors.ReasonLeaseNotHeld) {
		return err
	}
	resp, err := cl.Leases().AcquireLease(ctx, &capstanv1.AcquireLeaseRequest{
		Namespace: wellknown.NodeLeaseNamespace, Name: name, HolderIdentity: name, LeaseDurationSeconds: nodeLeaseSeconds,
	})
	if err != nil {
		return fmt.Errorf("the lease expired and acquiring it again failed: %w", err)
	}
	if !resp.GetAcquired() {
		return fmt.Errorf("the lease expired and is now held by %q", resp.GetLease().GetSpec().GetHolderIdentity())
	}
	epochs[name] = resp.GetLease().GetStatus().GetEpoch()
	return errors.New("the lease had expired; acquired it again")
}

// startNodeAgentStandIn plays the node agent of the test's nodes for the
// pods of namespace bound to them. The node agent is the next issue and is
// not the subject of these tests: the stand-in only does the part of its
// job that the control plane waits for.
//   - A pod marked for deletion (a bound pod is deleted gracefully: only
//     metadata.delete_time is set) is removed with a grace period of 0, as
//     the agent does once its containers have stopped, so the scheduler
//     frees its resources.
//   - If markReady, a bound pod is reported Running with Ready=True, as the
//     agent does once its containers run (they have no readiness probe), so
//     the pods of a Deployment become available.
//
// It stops when t ends.
func startNodeAgentStandIn(t *testing.T, cl *client.Client, namespace string, nodes *workerNodes, markReady bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	watcher := cl.Watch(ctx, podKind, client.WatchOptions{Namespace: namespace})
	var failures []error // read after the loop ends
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range watcher.Events() {
			pod, ok := ev.Object.(*capstanv1.Pod)
			if !ok || ev.Type == client.Deleted || !nodes.has(pod.GetSpec().GetNodeName()) {
				continue
			}
			if err := actAsNodeAgent(ctx, cl, pod, markReady); err != nil && ctx.Err() == nil {
				failures = append(failures, err)
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		watcher.Stop()
		<-done
		if err := watcher.Err(); err != nil {
			t.Errorf("the node agent stand-in's watch ended with %v", err)
		}
		for _, err := range failures {
			t.Logf("the node agent stand-in: %v", err)
		}
	})
}

// actAsNodeAgent does what the node agent would do with pod as it is now.
// A write that meets a newer version of the pod is dropped: the watch
// brings that version, and the stand-in looks at it again.
func actAsNodeAgent(ctx context.Context, cl *client.Client, pod *capstanv1.Pod, markReady bool) error {
	meta := pod.GetMetadata()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var err error
	switch {
	case meta.GetDeleteTime() != nil:
		_, err = cl.Delete(ctx, podKind, meta.GetNamespace(), meta.GetName(), &capstanv1.Preconditions{Uid: meta.GetUid()}, client.GracePeriod(0))
	case markReady && isActive(pod) && !isReady(pod):
		next := resource.Clone(pod)
		now := timestamppb.Now()
		status := next.Status
		if status == nil {
			status = &capstanv1.PodStatus{}
			next.Status = status
		}
		status.Phase = wellknown.PodRunning
		status.HostIp = "127.0.0.1"
		status.StartTime = now
		for _, condType := range []string{wellknown.ContainersReady, wellknown.PodReady} {
			setPodCondition(status, &capstanv1.Condition{Type: condType, Status: wellknown.ConditionTrue, LastTransitionTime: now})
		}
		status.ContainerStatuses = nil
		for _, container := range next.GetSpec().GetContainers() {
			status.ContainerStatuses = append(status.ContainerStatuses, &capstanv1.ContainerStatus{
				Name: container.GetName(), Ready: true, Started: true,
				State: &capstanv1.ContainerState{Running: &capstanv1.ContainerStateRunning{StartedAt: now}},
			})
		}
		_, err = cl.UpdateStatus(ctx, next)
	default:
		return nil
	}
	if err == nil || apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return fmt.Errorf("pod %s/%s: %w", meta.GetNamespace(), meta.GetName(), err)
}

func setPodCondition(status *capstanv1.PodStatus, c *capstanv1.Condition) {
	for i, old := range status.Conditions {
		if old.GetType() == c.GetType() {
			status.Conditions[i] = c
			return
		}
	}
	status.Conditions = append(status.Conditions, c)
}

// isActive: the pod counts towards its owner's replicas — not finished
// and not being deleted — as the ReplicaSet controller counts.
func isActive(pod *capstanv1.Pod) bool {
	phase := pod.GetStatus().GetPhase()
	return phase != wellknown.PodSucceeded && phase != wellknown.PodFailed && pod.GetMetadata().GetDeleteTime() == nil
}

// isReady: the pod's Ready condition is True.
func isReady(pod *capstanv1.Pod) bool {
	for _, c := range pod.GetStatus().GetConditions() {
		if c.GetType() == wellknown.PodReady {
			return c.GetStatus() == wellknown.ConditionTrue
		}
	}
	return false
}

// isAvailable: active and Ready (the workloads here have no
// min_ready_seconds).
func isAvailable(pod *capstanv1.Pod) bool { return isActive(pod) && isReady(pod) }

// controlledBy reports whether uid is the pod's controller.
func controlledBy(pod *capstanv1.Pod, uid string) bool {
	for _, ref := range pod.GetMetadata().GetOwnerReferences() {
		if ref.GetController() && ref.GetUid() == uid {
			return true
		}
	}
	return false
}

func isSentinel(obj resource.Object) bool {
	_, ok := obj.GetMetadata().GetLabels()[sentinelLabel]
	return ok
}

// change is one change a history saw.
type change struct {
	typ capstanv1.WatchEventType
	obj resource.Object
	rv  int64
}

// history is an independent observer: a watch of one kind in one
// namespace, opened before the test changes anything there, that keeps
// every change in the order the store made them. The client's watch
// resumes on another replica from the last version delivered, so the
// record has no gaps; each change is one moment of the store, and the
// checks replay the record to look at every one of them.
type history struct {
	kind      *resource.Kind
	namespace string
	watcher   *client.Watcher
	done      chan struct{}

	mu      sync.Mutex
	changes []change
	current map[string]resource.Object
	lastRV  int64
	// changed is closed at the next change (and replaced).
	changed chan struct{}
}

// recordHistory starts recording every change of kind in namespace,
// beginning with the objects there now (as ADDED changes). It stops when t
// ends.
func recordHistory(t *testing.T, cl *client.Client, kind *resource.Kind, namespace string) *history {
	t.Helper()
	h := &history{kind: kind, namespace: namespace, done: make(chan struct{}), current: map[string]resource.Object{}, changed: make(chan struct{})}
	h.watcher = cl.Watch(context.Background(), kind, client.WatchOptions{Namespace: namespace})
	go func() {
		defer close(h.done)
		for ev := range h.watcher.Events() {
			if ev.Object == nil {
				continue
			}
			h.mu.Lock()
			h.changes = append(h.changes, change{typ: ev.Type, obj: ev.Object, rv: ev.ResourceVersion})
			name := ev.Object.GetMetadata().GetName()
			if ev.Type == client.Deleted {
				delete(h.current, name)
			} else {
				h.current[name] = ev.Object
			}
			h.lastRV = max(h.lastRV, ev.ResourceVersion)
			close(h.changed)
			h.changed = make(chan struct{})
			h.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		h.watcher.Stop()
		<-h.done
		if err := h.watcher.Err(); err != nil {
			t.Errorf("the history of %s in %s ended with %v", kind.Name, namespace, err)
		}
	})
	return h
}

// record is every change seen so far, in order.
func (h *history) record() []change {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.changes)
}

// objects are the objects as the history last saw them, by name.
func (h *history) objects() map[string]resource.Object {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]resource.Object, len(h.current))
	for name, obj := range h.current {
		if !isSentinel(obj) {
			out[name] = obj
		}
	}
	return out
}

// pods are the pods as the history last saw them.
func (h *history) pods() []*capstanv1.Pod {
	var out []*capstanv1.Pod
	for _, obj := range h.objects() {
		out = append(out, obj.(*capstanv1.Pod))
	}
	return out
}

// waitUntil waits until cond returns nil, evaluating it again after every
// change the history sees: it returns within moments of the change that
// makes cond true, where polling would let tens of changes pass (a test
// that must signal a process in the middle of its work needs that).
func (h *history) waitUntil(t *testing.T, what string, cond func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), convergeTimeout)
	defer cancel()
	for {
		h.mu.Lock()
		changed := h.changed // taken before cond looks, so no change is missed
		h.mu.Unlock()
		err := cond()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after %v waiting for %s: %v", convergeTimeout, what, err)
		case <-h.done:
			t.Fatalf("waiting for %s: the history's watch ended (%v); last: %v", what, h.watcher.Err(), err)
		case <-changed:
		}
	}
}

// waitThrough waits until the history has seen every change up to
// revision rv.
func (h *history) waitThrough(t *testing.T, rv int64) {
	t.Helper()
	waitFor(t, convergeTimeout, fmt.Sprintf("the history of %s in %s to reach revision %d", h.kind.Name, h.namespace, rv), func(context.Context) error {
		h.mu.Lock()
		defer h.mu.Unlock()
		select {
		case <-h.done:
			return fmt.Errorf("the watch ended: %v", h.watcher.Err())
		default:
		}
		if h.lastRV < rv {
			return fmt.Errorf("seen up to revision %d", h.lastRV)
		}
		return nil
	})
}

// catchUp makes sure the history has seen every change made before now: it
// writes a sentinel (a pod or an event, marked with sentinelLabel, that
// nothing acts on) in its namespace and waits until the history has seen
// it; the watch delivers in order, so everything before it has been seen.
func (h *history) catchUp(t *testing.T, cl *client.Client, name string) {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	meta := &capstanv1.ObjectMeta{Namespace: h.namespace, Name: name, Labels: map[string]string{sentinelLabel: "true"}}
	var obj resource.Object
	switch h.kind {
	case podKind:
		// Unschedulable by its node selector, and deleted at once.
		obj = &capstanv1.Pod{Metadata: meta, Spec: &capstanv1.PodSpec{
			Containers:   []*capstanv1.Container{{Name: "main", Command: []string{"/bin/true"}}},
			NodeSelector: map[string]string{sentinelLabel: "no-such-node"},
		}}
	case eventKind:
		obj = &capstanv1.Event{
			Metadata:       meta,
			InvolvedObject: &capstanv1.ObjectReference{Kind: "ConfigMap", Namespace: h.namespace, Name: name},
			Reason:         "E2ESentinel", Type: wellknown.EventNormal, Count: 1,
			Source: &capstanv1.EventSource{Component: "e2e"},
		}
	default:
		t.Fatalf("catchUp: no sentinel for %s", h.kind.Name)
	}
	created, err := cl.Create(ctx, obj)
	if err != nil {
		t.Fatalf("create sentinel %s %s/%s: %v", h.kind.Name, h.namespace, name, err)
	}
	h.waitThrough(t, created.GetMetadata().GetResourceVersion())
	if _, err := cl.Delete(ctx, h.kind, h.namespace, name, nil, client.GracePeriod(0)); err != nil {
		t.Fatalf("delete sentinel %s %s/%s: %v", h.kind.Name, h.namespace, name, err)
	}
}

// replayPods replays a record of pod changes and calls visit after each,
// with its revision and every pod as it was at that moment (sentinels
// left out). visit must not keep the map.
func replayPods(record []change, visit func(rv int64, pods map[string]*capstanv1.Pod)) {
	state := map[string]*capstanv1.Pod{}
	for _, ch := range record {
		if isSentinel(ch.obj) {
			continue
		}
		pod := ch.obj.(*capstanv1.Pod)
		if ch.typ == client.Deleted {
			delete(state, pod.GetMetadata().GetName())
		} else {
			state[pod.GetMetadata().GetName()] = pod
		}
		visit(ch.rv, state)
	}
}

// bindingViolations checks every pod's bindings in a record: a pod (one
// uid) goes from unbound to bound at most once and then stays on that
// node. It returns what broke that rule, and the node each pod was bound
// to.
func bindingViolations(record []change) (violations []string, boundTo map[string]string) {
	boundTo = map[string]string{}
	for _, ch := range record {
		pod, ok := ch.obj.(*capstanv1.Pod)
		if !ok || isSentinel(pod) {
			continue
		}
		uid, node := pod.GetMetadata().GetUid(), pod.GetSpec().GetNodeName()
		prev, seen := boundTo[uid]
		switch {
		case seen && prev != "" && node != prev:
			violations = append(violations, fmt.Sprintf("pod %s (uid %s) was bound to %q, then to %q at revision %d",
				pod.GetMetadata().GetName(), uid, prev, node, ch.rv))
		default:
			boundTo[uid] = node
		}
	}
	return violations, boundTo
}

// replicasTimeline returns the spec.replicas of the named ReplicaSet at
// any revision, from a record of ReplicaSet changes (0 before it exists).
func replicasTimeline(record []change, name string) func(rv int64) int32 {
	type point struct {
		rv       int64
		replicas int32
	}
	var points []point
	for _, ch := range record {
		rs := ch.obj.(*capstanv1.ReplicaSet)
		if rs.GetMetadata().GetName() != name {
			continue
		}
		replicas := rs.GetSpec().GetReplicas()
		if ch.typ == client.Deleted {
			replicas = 0
		}
		points = append(points, point{ch.rv, replicas})
	}
	return func(rv int64) int32 {
		var replicas int32
		for _, p := range points {
			if p.rv > rv {
				break
			}
			replicas = p.replicas
		}
		return replicas
	}
}

// eventsBy are the changes of Events in a record that identity wrote (the
// recorder of a component names it as the event's source host) at
// revision from or later.
func eventsBy(record []change, identity string, from int64) []change {
	var out []change
	for _, ch := range record {
		ev, ok := ch.obj.(*capstanv1.Event)
		if ok && ch.typ != client.Deleted && ev.GetSource().GetHost() == identity && ch.rv >= from {
			out = append(out, ch)
		}
	}
	return out
}

// holdingEnd is the revision at which the holding of lease at epoch ended
// (its key was deleted: released or expired), from a record of the leases
// of the system namespace; 0 if the record does not show it.
func holdingEnd(record []change, lease string, epoch int64) int64 {
	for _, ch := range record {
		l, ok := ch.obj.(*capstanv1.Lease)
		if ok && ch.typ == client.Deleted && l.GetMetadata().GetName() == lease && l.GetStatus().GetEpoch() == epoch {
			return ch.rv
		}
	}
	return 0
}

// testPodSpec is the spec of the test's pods: one container (nothing runs
// it) that requests cpu and memory, on the pool's nodes only.
func testPodSpec(nodes *workerNodes, cpu, memory string, env ...*capstanv1.EnvVar) *capstanv1.PodSpec {
	return &capstanv1.PodSpec{
		Containers: []*capstanv1.Container{{
			Name:      "main",
			Command:   []string{"/bin/sleep", "3600"},
			Env:       env,
			Resources: &capstanv1.ResourceRequirements{Requests: map[string]string{"cpu": cpu, "memory": memory}},
		}},
		NodeSelector: nodes.selector(),
	}
}

// createReplicaSet creates a ReplicaSet of pods labelled app=name.
func createReplicaSet(t *testing.T, cl *client.Client, namespace, name string, replicas int32, spec *capstanv1.PodSpec) *capstanv1.ReplicaSet {
	t.Helper()
	labels := map[string]string{"app": name}
	ctx, cancel := callCtx(t)
	defer cancel()
	created, err := cl.Create(ctx, &capstanv1.ReplicaSet{
		Metadata: &capstanv1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: &capstanv1.ReplicaSetSpec{
			Replicas: &replicas,
			Selector: &capstanv1.LabelSelector{MatchLabels: labels},
			Template: &capstanv1.PodTemplateSpec{Metadata: &capstanv1.ObjectMeta{Labels: labels}, Spec: spec},
		},
	})
	if err != nil {
		t.Fatalf("create ReplicaSet %s/%s: %v", namespace, name, err)
	}
	return created.(*capstanv1.ReplicaSet)
}

// updateObject reads an object, lets change modify a copy, and updates it
// at the version read, again on a conflict; it returns what was stored.
func updateObject[T resource.Object](t *testing.T, cl *client.Client, kind *resource.Kind, namespace, name string, change func(T)) T {
	t.Helper()
	var stored T
	waitFor(t, convergeTimeout, fmt.Sprintf("an update of %s %s/%s without a conflict", kind.Name, namespace, name), func(ctx context.Context) error {
		obj, err := cl.Get(ctx, kind, namespace, name)
		if err != nil {
			return err
		}
		next := resource.Clone(obj.(T))
		change(next)
		updated, err := cl.Update(ctx, next)
		if apierrors.IsConflict(err) {
			return err
		}
		if err != nil {
			t.Fatalf("update %s %s/%s: %v", kind.Name, namespace, name, err)
		}
		stored = updated.(T)
		return nil
	})
	return stored
}

// deleteWorkloadsAfter removes, when t ends, the Deployments, ReplicaSets
// and pods of namespace — the owners first, so nothing creates pods again;
// the pods with a grace period of 0, as the nodes go too.
func deleteWorkloadsAfter(t *testing.T, cl *client.Client, namespace string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		for _, kind := range []*resource.Kind{deploymentKind, replicaSetKind, podKind} {
			list, err := cl.ListAll(ctx, kind, client.ListOptions{Namespace: namespace})
			if err != nil {
				t.Errorf("clean up: list %s in %s: %v", kind.Name, namespace, err)
				continue
			}
			for _, obj := range list.Items {
				_, err := cl.Delete(ctx, kind, namespace, obj.GetMetadata().GetName(), nil, client.GracePeriod(0))
				if err != nil && !apierrors.IsNotFound(err) {
					t.Errorf("clean up: delete %s %s/%s: %v", kind.Name, namespace, obj.GetMetadata().GetName(), err)
				}
			}
		}
	})
}

// describePods is a one-line summary of pods for a failure message.
func describePods(pods []*capstanv1.Pod) string {
	var b bytes.Buffer
	slices.SortFunc(pods, func(a, b *capstanv1.Pod) int {
		return strings.Compare(a.GetMetadata().GetName(), b.GetMetadata().GetName())
	})
	for _, p := range pods {
		state := "active"
		if !isActive(p) {
			state = "terminating"
		}
		fmt.Fprintf(&b, "%s(%s node=%q ready=%v) ", p.GetMetadata().GetName(), state, p.GetSpec().GetNodeName(), isReady(p))
	}
	return b.String()
}

// stopwatch notes how long each phase of a test took and logs them when
// the test ends: the tests assert no timing, but a phase that took long is
// worth seeing.
type stopwatch struct {
	last   time.Time
	phases []string
}

func startStopwatch(t *testing.T) *stopwatch {
	s := &stopwatch{last: time.Now()}
	t.Cleanup(func() { t.Logf("phases: %s", strings.Join(s.phases, ", ")) })
	return s
}

// lap ends the phase that began at the previous lap (or the start).
func (s *stopwatch) lap(phase string) {
	now := time.Now()
	s.phases = append(s.phases, fmt.Sprintf("%s %v", phase, now.Sub(s.last).Round(time.Millisecond)))
	s.last = now
}
