package events_test

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/events"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/wellknown"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newClient(t *testing.T, endpoints ...string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Endpoints: endpoints, UserAgent: "events-test"})
	if err != nil {
		t.Fatalf("client.New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var (
	source    = &capstanv1.EventSource{Component: "events-test", Host: "host-1"}
	eventKind = resource.MustLookup("Event")
)

// newRecorder returns a Recorder whose queue is drained when the test ends.
func newRecorder(t *testing.T, c *client.Client, logger *slog.Logger) *events.Recorder {
	r := events.NewRecorder(c, source, logger)
	t.Cleanup(func() { flush(t, r) })
	return r
}

func flush(t *testing.T, r *events.Recorder) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !r.Flush(ctx) {
		t.Fatal("Flush: the queue did not drain")
	}
}

func createConfigMap(t *testing.T, ctx context.Context, c *client.Client, name string) *capstanv1.ConfigMap {
	t.Helper()
	obj, err := c.Create(ctx, &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Namespace: "default", Name: name}})
	if err != nil {
		t.Fatalf("create config map %s: %v", name, err)
	}
	return obj.(*capstanv1.ConfigMap)
}

func listEvents(t *testing.T, ctx context.Context, c *client.Client, namespace string) []*capstanv1.Event {
	t.Helper()
	res, err := c.ListAll(ctx, eventKind, client.ListOptions{Namespace: namespace})
	if err != nil {
		t.Fatalf("list events: %v", err)
	}
	var out []*capstanv1.Event
	for _, obj := range res.Items {
		out = append(out, obj.(*capstanv1.Event))
	}
	return out
}

// eventsByMessage lists the events of namespace as message → count.
func eventsByMessage(t *testing.T, ctx context.Context, c *client.Client, namespace string) map[string]int32 {
	t.Helper()
	out := map[string]int32{}
	for _, e := range listEvents(t, ctx, c, namespace) {
		out[e.GetMessage()] = e.GetCount()
	}
	return out
}

func TestEventfCreatesAndAggregates(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)
	cm := createConfigMap(t, ctx, c, "subject")
	r := newRecorder(t, c, nil)

	r.Eventf(ctx, cm, wellknown.EventNormal, "Touched", "touched %d times", 1)
	r.Eventf(ctx, cm, wellknown.EventNormal, "Touched", "touched %d times", 1)
	r.Eventf(ctx, cm, wellknown.EventNormal, "Touched", "touched %d times", 1)
	r.Eventf(ctx, cm, wellknown.EventWarning, "Touched", "touched %d times", 2)
	flush(t, r)

	events := listEvents(t, ctx, c, "default")
	if len(events) != 2 {
		t.Fatalf("got %d events, want 2: %v", len(events), events)
	}
	for _, e := range events {
		wantCount, wantType := int32(3), wellknown.EventNormal
		if e.GetMessage() == "touched 2 times" {
			wantCount, wantType = 1, wellknown.EventWarning
		}
		if e.GetCount() != wantCount || e.GetType() != wantType {
			t.Errorf("event %q: count %d type %s, want %d %s", e.GetMessage(), e.GetCount(), e.GetType(), wantCount, wantType)
		}
		ref := e.GetInvolvedObject()
		if ref.GetKind() != "ConfigMap" || ref.GetName() != "subject" || ref.GetUid() != cm.GetMetadata().GetUid() || ref.GetNamespace() != "default" {
			t.Errorf("involved object = %v, want the config map", ref)
		}
		if e.GetReason() != "Touched" || e.GetSource().GetComponent() != "events-test" || e.GetSource().GetHost() != "host-1" {
			t.Errorf("event = %v: wrong reason or source", e)
		}
		if !strings.HasPrefix(e.GetMetadata().GetName(), "subject.") {
			t.Errorf("event name %q does not start with the object's name", e.GetMetadata().GetName())
		}
		if e.GetFirstTime() == nil || e.GetLastTime().AsTime().Before(e.GetFirstTime().AsTime()) {
			t.Errorf("event %q: first_time %v, last_time %v", e.GetMessage(), e.GetFirstTime(), e.GetLastTime())
		}
	}
}

// Recorders in different processes share the stored events: a recorder that
// has never seen an event bumps it, and one whose memory of it is stale
// re-reads it.
func TestEventfAggregatesAcrossRecorders(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)
	cm := createConfigMap(t, ctx, c, "shared")
	a, b := newRecorder(t, c, nil), newRecorder(t, c, nil)

	a.Eventf(ctx, cm, wellknown.EventNormal, "Seen", "seen")
	flush(t, a)
	b.Eventf(ctx, cm, wellknown.EventNormal, "Seen", "seen") // ALREADY_EXISTS, then a bump
	flush(t, b)
	a.Eventf(ctx, cm, wellknown.EventNormal, "Seen", "seen") // a's copy is stale: ABORTED, re-read, bump
	flush(t, a)

	if got := eventsByMessage(t, ctx, c, "default"); len(got) != 1 || got["seen"] != 3 {
		t.Fatalf("events = %v, want one with count 3", got)
	}
}

func TestEventfRecreatesADeletedEvent(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)
	cm := createConfigMap(t, ctx, c, "subject")
	r := newRecorder(t, c, nil)

	r.Eventf(ctx, cm, wellknown.EventNormal, "Seen", "seen")
	r.Eventf(ctx, cm, wellknown.EventNormal, "Seen", "seen")
	flush(t, r)
	events := listEvents(t, ctx, c, "default")
	if len(events) != 1 {
		t.Fatalf("got %d events, want 1", len(events))
	}
	if _, err := c.Delete(ctx, eventKind, "default", events[0].GetMetadata().GetName(), nil); err != nil {
		t.Fatalf("delete event: %v", err)
	}
	r.Eventf(ctx, cm, wellknown.EventNormal, "Seen", "seen")
	flush(t, r)
	if got := eventsByMessage(t, ctx, c, "default"); got["seen"] != 1 {
		t.Fatalf("events = %v, want the event stored again with count 1", got)
	}
}

func TestEventfOnClusterScopedObjectGoesToDefaultNamespace(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)
	node, err := c.Create(ctx, &capstanv1.Node{Metadata: &capstanv1.ObjectMeta{Name: "node-1"}})
	if err != nil {
		t.Fatalf("create node: %v", err)
	}
	r := newRecorder(t, c, nil)
	r.Eventf(ctx, node, wellknown.EventWarning, "NodeNotReady", "node %s is not ready", "node-1")
	flush(t, r)

	events := listEvents(t, ctx, c, "default")
	if len(events) != 1 {
		t.Fatalf("got %d events in default, want 1", len(events))
	}
	ref := events[0].GetInvolvedObject()
	if ref.GetKind() != "Node" || ref.GetName() != "node-1" || ref.GetNamespace() != "" {
		t.Errorf("involved object = %v, want Node node-1 without namespace", ref)
	}
}

// The write carries the caller's fence even after the caller's context is
// cancelled, so a deposed leader's events are refused like its other writes.
func TestEventfCarriesTheFence(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)
	cm := createConfigMap(t, ctx, c, "subject")
	r := newRecorder(t, c, nil)

	var lost atomic.Int32
	fenced, cancel := context.WithCancel(client.WithFence(ctx,
		client.Fence{Namespace: wellknown.SystemNamespace, Name: wellknown.ControllerManagerLease, Epoch: 1 << 40},
		func() { lost.Add(1) }))
	r.Eventf(fenced, cm, wellknown.EventNormal, "Fenced", "from a deposed leader")
	cancel()
	flush(t, r)

	if got := listEvents(t, ctx, c, "default"); len(got) != 0 {
		t.Fatalf("a fenced event with a stale epoch was stored: %v", got)
	}
	if lost.Load() == 0 {
		t.Error("the fence's onLost was not called: the write did not carry the fence")
	}
}
