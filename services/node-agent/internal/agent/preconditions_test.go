package agent_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/node-agent/internal/agent"
	"github.com/capstan-dev/capstan/services/node-agent/internal/hollow"
)

// lagView gives an agent a view of the API that can fall behind: its
// caches read through API replica 1 only while its writes go through
// replica 0, so e.api.StopReplica(1) freezes the caches and the agent's
// writes still land, as with a cache that is behind. configure puts that,
// and a logger whose lines the test can wait for, into a config. The
// caches run until the test ends (after the agent, whose stop is
// registered later).
func (e *env) lagView(node string) (configure func(*agent.Config), caches *agent.Caches, logs *logLines) {
	e.t.Helper()
	if len(e.api.Addrs()) < 2 {
		e.t.Fatal("lagView needs two API replicas")
	}
	newClient := func(addr string) *client.Client {
		c, err := client.New(client.Config{Endpoints: []string{addr}, UserAgent: "node-agent-test"})
		if err != nil {
			e.t.Fatal(err)
		}
		e.t.Cleanup(func() { c.Close() })
		return c
	}
	writes, reads := newClient(e.api.Addrs()[0]), newClient(e.api.Addrs()[1])
	caches, err := agent.NewCaches(reads, "", testLogger(e.t, node).With("subsystem", "informer"))
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = caches.Run(ctx)
	}()
	e.t.Cleanup(func() {
		cancel()
		<-done
	})
	logs = &logLines{}
	logger := slog.New(&lineRecorder{next: testLogger(e.t, node).Handler(), lines: logs})
	return func(cfg *agent.Config) {
		cfg.Client, cfg.Caches, cfg.Logger = writes, caches, logger
	}, caches, logs
}

// logLines keeps the log lines of an agent: message, then key=value for
// each attribute (the logger's own too).
type logLines struct {
	mu    sync.Mutex
	lines []string
}

// count is how many lines contain every one of parts.
func (l *logLines) count(parts ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		if !slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(line, p) }) {
			n++
		}
	}
	return n
}

// lineRecorder is a slog.Handler that keeps each record's line in lines and
// passes the record on to next.
type lineRecorder struct {
	next  slog.Handler
	attrs []slog.Attr
	lines *logLines
}

func (h *lineRecorder) Enabled(ctx context.Context, level slog.Level) bool {
	return h.next.Enabled(ctx, level)
}

func (h *lineRecorder) Handle(ctx context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(rec.Message)
	add := func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	rec.Attrs(add)
	h.lines.mu.Lock()
	h.lines.lines = append(h.lines.lines, b.String())
	h.lines.mu.Unlock()
	return h.next.Handle(ctx, rec)
}

func (h *lineRecorder) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &lineRecorder{next: h.next.WithAttrs(attrs), attrs: append(slices.Clone(h.attrs), attrs...), lines: h.lines}
}

func (h *lineRecorder) WithGroup(name string) slog.Handler {
	return &lineRecorder{next: h.next.WithGroup(name), attrs: h.attrs, lines: h.lines}
}

// A pod status composed over a version of the pod older than the API's (a
// cache that is behind; a request that sat in a frozen replica is the same
// write arriving late) is refused and does not overwrite the newer status.
// Once the cache has the newer pod, the status is composed over it and
// written: nothing is stuck.
func TestPodStatusFromAStaleCacheIsRefusedThenWritten(t *testing.T) {
	e := newEnv(t, 2)
	configure, caches, logs := e.lagView("lag-pod")
	n := e.newProcessNodeWith("lag-pod", configure)
	done := filepath.Join(t.TempDir(), "done")
	pod := e.createPod("job", n.name, wellknown.RestartNever,
		[]string{"/bin/sh", "-c", "until [ -e " + done + " ]; do sleep 0.05; done"})
	uid := pod.GetMetadata().GetUid()
	e.waitPodRunningReady("job")
	var running *capstanv1.Pod
	poll.For(t, testDeadline, "the agent's cache to hold the Running pod as the API has it", func(context.Context) error {
		now, err := e.pod("job")
		if err != nil {
			return err
		}
		cached, ok := caches.CachedPod(n.name, uid)
		if !ok || cached.GetMetadata().GetResourceVersion() != now.GetMetadata().GetResourceVersion() {
			return fmt.Errorf("cached %v, API at %d", cached.GetMetadata(), now.GetMetadata().GetResourceVersion())
		}
		running = now
		return nil
	})
	e.api.StopReplica(1) // the agent's caches are frozen from here on

	// Someone else's newer status, at the version the agent's cache holds.
	newer := resource.Clone(running)
	newer.Status.Message = "a newer status"
	obj, err := e.c.UpdateStatus(e.ctx(), newer)
	if err != nil {
		t.Fatal(err)
	}
	stored := obj.(*capstanv1.Pod)

	// The container exits 0: the agent composes Succeeded over the pod its
	// cache holds, a version the API has moved past.
	refused := []string{"sync raced a change", "loop=pod-status", "key=" + uid}
	before := logs.count(refused...)
	if err := os.WriteFile(done, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	poll.For(t, testDeadline, "the agent's status write composed over the old pod refused", func(context.Context) error {
		now, err := e.pod("job")
		if err != nil {
			return err
		}
		if now.GetMetadata().GetResourceVersion() != stored.GetMetadata().GetResourceVersion() {
			t.Fatalf("the pod was written while the agent's cache was behind: status %v, want the newer status kept", now.GetStatus())
		}
		if logs.count(refused...) == before {
			return errors.New("no status write refused yet")
		}
		return nil
	})

	e.api.StartReplica(1)
	poll.For(t, testDeadline, "Succeeded, composed over the newer pod", func(context.Context) error {
		now, err := e.pod("job")
		if err != nil {
			return err
		}
		if ph := now.GetStatus().GetPhase(); ph != wellknown.PodSucceeded {
			return fmt.Errorf("phase %q, message %q", ph, now.GetStatus().GetMessage())
		}
		return nil
	})
}

// A Node status composed over a cached Node older than the API's is not
// written over the newer one: it is composed again over the Node read from
// the API. Here the newer Node says Ready=Unknown (as the node lifecycle
// controller writes it while the lease is gone): the agent's Ready=True is
// a new transition, not the cached Node's old one carried over.
func TestNodeStatusFromAStaleCacheIsComposedAgain(t *testing.T) {
	e := newEnv(t, 2)
	configure, caches, logs := e.lagView("lag-node")
	cfg := e.config("lag-node")
	cfg.Runtime = hollow.NewRuntime(nil)
	configure(&cfg)
	r := e.start(cfg)
	r.waitRegistered(t)
	var held *capstanv1.Lease
	poll.For(t, testDeadline, "node lease held", func(context.Context) error {
		var err error
		held, err = e.lease("lag-node")
		return err
	})
	var readySince *timestamppb.Timestamp
	poll.For(t, testDeadline, "the agent's cache to hold the Node as the API has it", func(context.Context) error {
		node, err := e.node("lag-node")
		if err != nil {
			return err
		}
		ready := condition(node.GetStatus().GetConditions(), wellknown.NodeReady)
		if ready.GetStatus() != wellknown.ConditionTrue {
			return fmt.Errorf("Ready %v", ready)
		}
		cached, ok := caches.CachedNode("lag-node")
		if !ok || cached.GetMetadata().GetResourceVersion() != node.GetMetadata().GetResourceVersion() {
			return fmt.Errorf("cached %v, API at %d", cached.GetMetadata(), node.GetMetadata().GetResourceVersion())
		}
		readySince = ready.GetLastTransitionTime()
		return nil
	})
	e.api.StopReplica(1) // the agent's caches are frozen from here on

	// As the controller does it: conditional on the version it read.
	unknownAt := timestamppb.Now()
	poll.For(t, testDeadline, "Ready=Unknown written", func(context.Context) error {
		node, err := e.node("lag-node")
		if err != nil {
			return err
		}
		ready := condition(node.GetStatus().GetConditions(), wellknown.NodeReady)
		ready.Status, ready.Reason, ready.LastTransitionTime = wellknown.ConditionUnknown, "NodeStatusUnknown", unknownAt
		_, err = e.c.UpdateStatus(e.ctx(), node)
		if err != nil && !apierrors.IsConflict(err) {
			t.Fatal(err)
		}
		return err
	})
	// The lease taken away: the agent acquires it again and writes its
	// status, composed over the Node its cache holds (Ready=True since
	// readySince).
	if _, err := e.c.Leases().ReleaseLease(e.ctx(), &capstanv1.ReleaseLeaseRequest{
		Namespace: wellknown.NodeLeaseNamespace, Name: "lag-node", HolderIdentity: held.GetSpec().GetHolderIdentity(), Epoch: held.GetStatus().GetEpoch(),
	}); err != nil {
		t.Fatal(err)
	}
	var ready *capstanv1.Condition
	poll.For(t, testDeadline, "Ready=True again", func(context.Context) error {
		node, err := e.node("lag-node")
		if err != nil {
			return err
		}
		if ready = condition(node.GetStatus().GetConditions(), wellknown.NodeReady); ready.GetStatus() != wellknown.ConditionTrue {
			return fmt.Errorf("Ready %v", ready)
		}
		return nil
	})
	if ready.GetLastTransitionTime().AsTime().Equal(readySince.AsTime()) || ready.GetLastTransitionTime().AsTime().Before(unknownAt.AsTime()) {
		t.Errorf("Ready=True since %v, the cached Node's transition (%v) written over Unknown (since %v): want a new transition",
			ready.GetLastTransitionTime().AsTime(), readySince.AsTime(), unknownAt.AsTime())
	}
	if logs.count("the node changed since the agent read it") == 0 {
		t.Error("no node status write was refused: the write composed over the stale Node was not conditional")
	}
}

// The last step of a graceful deletion removes the pod only at the version
// whose deletion the agent carried out: a pod that changed since (here a
// second delete shortened its grace period), as a cache that is behind does
// not show, is not removed at the old version; it is removed once the cache
// has the change.
func TestPodRemovalFromAStaleCacheWaitsForTheChange(t *testing.T) {
	e := newEnv(t, 2)
	configure, caches, logs := e.lagView("lag-del")
	n := e.newProcessNodeWith("lag-del", configure)
	// The container holds SIGTERM until the test lets it go.
	release := filepath.Join(t.TempDir(), "release")
	wait := "until [ -e " + release + " ]; do sleep 0.05; done"
	pod := e.createPod("web", n.name, "", []string{"/bin/sh", "-c", "trap '" + wait + "; exit 0' TERM; while :; do sleep 0.05; done"})
	uid := pod.GetMetadata().GetUid()
	e.waitPodRunningReady("web")
	if _, err := e.c.Delete(e.ctx(), podKind, "default", "web", nil, client.GracePeriod(60)); err != nil {
		t.Fatal(err)
	}
	poll.For(t, testDeadline, "the agent's cache to hold the pod's deletion", func(context.Context) error {
		if cached, ok := caches.CachedPod(n.name, uid); !ok || cached.GetMetadata().GetDeleteTime() == nil {
			return fmt.Errorf("cached %v", cached.GetMetadata())
		}
		return nil
	})
	e.api.StopReplica(1) // the agent's caches are frozen from here on

	if _, err := e.c.Delete(e.ctx(), podKind, "default", "web", nil, client.GracePeriod(30)); err != nil {
		t.Fatal(err)
	}
	changed, err := e.pod("web")
	if err != nil {
		t.Fatal(err)
	}
	if changed.GetMetadata().GetDeleteGracePeriodSeconds() != 30 {
		t.Fatalf("metadata %v: want the grace period shortened to 30", changed.GetMetadata())
	}
	refused := []string{"sync raced a change", "loop=pod-sync", "key=" + uid}
	before := logs.count(refused...)
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	poll.For(t, testDeadline, "the removal at the version the agent stopped refused", func(context.Context) error {
		now, err := e.pod("web")
		if err != nil {
			t.Fatalf("the pod was removed at a version the API had moved past: %v", err)
		}
		if now.GetMetadata().GetResourceVersion() != changed.GetMetadata().GetResourceVersion() {
			return fmt.Errorf("the pod changed again: %v", now.GetMetadata())
		}
		if logs.count(refused...) == before {
			return errors.New("no removal refused yet")
		}
		return nil
	})

	e.api.StartReplica(1)
	e.waitPodGone("web")
}
