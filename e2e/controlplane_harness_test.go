package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/testcluster"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// This file is the part of the harness the tests of the lease-gated
// components (controlplane_test.go) share: waits on the components'
// leases, the components' logs, pools of hollow nodes for the tests' pods
// (the real node agent, running no processes), and independent watches
// that record every change so that a test can check an invariant at every
// moment the store passed through.

// Kinds the tests work with.
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
	// poolLabel marks the nodes of one test; its pods select them, so no
	// pod of one test lands on another's nodes.
	poolLabel = "e2e.capstan.dev/pool"
	// sentinelLabel marks the pods a history writes to know that it has
	// seen everything up to a point; the checks skip them.
	sentinelLabel = "e2e.capstan.dev/sentinel"
)

// waitTakeover waits until a candidate other than prev's holder holds the
// lease at an epoch above prev's, and returns that holding.
func (c *cluster) waitTakeover(t *testing.T, lease string, prev testcluster.Holding) testcluster.Holding {
	t.Helper()
	h, err := c.WaitTakeover(t.Context(), lease, prev, takeoverTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// waitSettled waits until a candidate leads — it holds the lease and its
// /healthz says it leads at that epoch — and every other running candidate
// stands by: its /healthz says it does not lead and has seen that holding,
// so it watches the lease and tries to take it the moment it is deleted.
// It returns the holding.
func (c *cluster) waitSettled(t *testing.T, lease string) testcluster.Holding {
	t.Helper()
	h, err := c.WaitSettled(t.Context(), lease, takeoverTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// hollowNodes starts, for the test, count hollow nodes <pool>-0... — the
// real node agent without processes: it registers them Ready with cpu and
// memory allocatable, renews their node leases, reports the pods bound to
// them Running and Ready at once and completes their graceful deletions —
// labelled poolLabel=pool, which the test's pods select. When t ends the
// pool stops and its Nodes and leases are deleted.
func (c *cluster) hollowNodes(t *testing.T, pool string, count int, cpu, memory string) *testcluster.Pool {
	t.Helper()
	p, err := c.StartHollowPool(t.Context(), testcluster.HollowPool{
		Name: pool, Nodes: count, Labels: map[string]string{poolLabel: pool}, CPU: cpu, Memory: memory,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := p.Stop(ctx); err != nil {
			t.Errorf("stop the hollow nodes: %v", err)
		}
	})
	return p
}

// logOffset is the size of the named process's log now: logSince reads
// what the process logs after this moment.
func (c *cluster) logOffset(t *testing.T, name string) int64 {
	t.Helper()
	fi, err := os.Stat(c.LogPath(name))
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
func (c *cluster) logSince(t *testing.T, name string, offset int64) []logRecord {
	t.Helper()
	data, err := os.ReadFile(c.LogPath(name))
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
	// The watch lists first; its first BOOKMARK follows the list. Waiting
	// for it means that every object created after recordHistory returns
	// is recorded from its creation on, not first seen, later, in the list
	// with its current version.
	h.watcher = cl.Watch(context.Background(), kind, client.WatchOptions{Namespace: namespace, Bookmarks: true})
	listed := make(chan struct{})
	markListed := sync.OnceFunc(func() { close(listed) })
	go func() {
		defer close(h.done)
		for ev := range h.watcher.Events() {
			if ev.Object == nil {
				markListed()
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
	select {
	case <-listed:
	case <-h.done:
	case <-time.After(time.Minute):
		t.Fatalf("the history of %s in %s: no list within a minute", kind.Name, namespace)
	}
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

// activePods are the active pods controlled by uid, as the history last
// saw them.
func (h *history) activePods(uid string) []*capstanv1.Pod {
	return slices.DeleteFunc(h.pods(), func(p *capstanv1.Pod) bool { return !controlledBy(p, uid) || !isActive(p) })
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
	poll.For(t, convergeTimeout, fmt.Sprintf("the history of %s in %s to reach revision %d", h.kind.Name, h.namespace, rv), func(context.Context) error {
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
	namespace := h.namespace
	if namespace == resource.AllNamespaces {
		namespace = resource.DefaultNamespace
	}
	meta := &capstanv1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{sentinelLabel: "true"}}
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
			InvolvedObject: &capstanv1.ObjectReference{Kind: "ConfigMap", Namespace: namespace, Name: name},
			Reason:         "E2ESentinel", Type: wellknown.EventNormal, Count: 1,
			Source: &capstanv1.EventSource{Component: "e2e"},
		}
	default:
		t.Fatalf("catchUp: no sentinel for %s", h.kind.Name)
	}
	created, err := cl.Create(ctx, obj)
	if err != nil {
		t.Fatalf("create sentinel %s %s/%s: %v", h.kind.Name, namespace, name, err)
	}
	h.waitThrough(t, created.GetMetadata().GetResourceVersion())
	if _, err := cl.Delete(ctx, h.kind, namespace, name, nil, client.GracePeriod(0)); err != nil {
		t.Fatalf("delete sentinel %s %s/%s: %v", h.kind.Name, namespace, name, err)
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

// testPodSpec is the spec of the test's pods: one container (a hollow
// node runs nothing) that requests cpu and memory, on the pool's nodes
// only.
func testPodSpec(nodes *testcluster.Pool, cpu, memory string, env ...*capstanv1.EnvVar) *capstanv1.PodSpec {
	return &capstanv1.PodSpec{
		Containers: []*capstanv1.Container{{
			Name:      "main",
			Command:   []string{"/bin/sleep", "3600"},
			Env:       env,
			Resources: &capstanv1.ResourceRequirements{Requests: map[string]string{"cpu": cpu, "memory": memory}},
		}},
		NodeSelector: nodes.Labels(),
	}
}

// createReplicaSet creates a ReplicaSet of pods labelled app=name.
func createReplicaSet(t *testing.T, cl *client.Client, namespace, name string, replicas int32, spec *capstanv1.PodSpec) *capstanv1.ReplicaSet {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	created, err := cl.Create(ctx, testcluster.ReplicaSet(namespace, name, replicas, spec))
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
	poll.For(t, convergeTimeout, fmt.Sprintf("an update of %s %s/%s without a conflict", kind.Name, namespace, name), func(ctx context.Context) error {
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
