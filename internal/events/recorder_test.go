package events

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	k8svalidation "k8s.io/apimachinery/pkg/util/validation"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
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

var source = &capstanv1.EventSource{Component: "events-test", Host: "host-1"}

// newRecorder returns a Recorder whose queue is drained when the test ends.
func newRecorder(t *testing.T, c *client.Client, logger *slog.Logger) *Recorder {
	r := NewRecorder(c, source, logger)
	t.Cleanup(func() { flush(t, r) })
	return r
}

func flush(t *testing.T, r *Recorder) {
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

// Eventf must not wait for the API: with no replica reachable, calls return
// at once, events beyond the queue's bound are dropped with a log line.
func TestEventfDropsWhenTheQueueIsFull(t *testing.T) {
	c := newClient(t, "127.0.0.1:1") // nothing listens there
	logs := &logRecorder{}
	r := NewRecorder(c, source, slog.New(logs))
	r.maxPending = 3
	r.writeTimeout = 50 * time.Millisecond
	t.Cleanup(func() { flush(t, r) })
	cm := &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Namespace: "default", Name: "x", Uid: "u1"}}

	for i := range 20 {
		r.Eventf(context.Background(), cm, wellknown.EventNormal, "Spam", "message %d", i)
	}
	if n := logs.count("event dropped"); n < 20-3-1 {
		t.Errorf("%d drops logged, want at least %d", n, 20-3-1)
	}
	flush(t, r)
	if logs.count("event not written") == 0 {
		t.Error("the failed writes were not logged")
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

func TestEventName(t *testing.T) {
	long := strings.Repeat("a", 250)
	dotted := strings.Repeat("a", 253-1-hashLength-1) + ".b" // cut right after the '.'
	tests := []struct {
		name       string
		objectName string
		wantPrefix string
	}{
		{"short", "web-1", "web-1."},
		{"long name is cut", long, long[:253-1-hashLength] + "."},
		{"cut does not end on a dot", dotted, dotted[:253-1-hashLength-1] + "."},
		{"empty object name", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := EventName(tt.objectName, "uid", "Normal", "Reason", "message")
			if !strings.HasPrefix(got, tt.wantPrefix) {
				t.Errorf("EventName = %q, want prefix %q", got, tt.wantPrefix)
			}
			if errs := k8svalidation.IsDNS1123Subdomain(got); len(errs) > 0 {
				t.Errorf("EventName = %q is not a valid name: %v", got, errs)
			}
		})
	}
	base := EventName("x", "uid", "Normal", "Reason", "message")
	for _, other := range []string{
		EventName("x", "uid2", "Normal", "Reason", "message"),
		EventName("x", "uid", "Warning", "Reason", "message"),
		EventName("x", "uid", "Normal", "Reason2", "message"),
		EventName("x", "uid", "Normal", "Reason", "message2"),
		EventName("x", "ui", "dNormal", "Reason", "message"),
	} {
		if other == base {
			t.Errorf("two different events share the name %q", base)
		}
	}
}

func TestTruncateMessage(t *testing.T) {
	short := "fine"
	if got := truncateMessage(short); got != short {
		t.Errorf("truncateMessage(%q) = %q", short, got)
	}
	long := strings.Repeat("é", MaxMessageLength) // 2 bytes each
	got := truncateMessage(long)
	if len(got) > MaxMessageLength || !strings.HasSuffix(got, "...") {
		t.Errorf("truncated message is %d bytes, ends %q", len(got), got[len(got)-5:])
	}
	if !strings.HasPrefix(long, strings.TrimSuffix(got, "...")) || strings.ContainsRune(got, '\uFFFD') {
		t.Error("the cut split a UTF-8 sequence")
	}
}

func TestRecentCacheEvictsTheLeastRecentlyUsed(t *testing.T) {
	c := newRecentCache(2)
	ev := func(n int) *capstanv1.Event { return &capstanv1.Event{Count: int32(n)} }
	c.put("a", ev(1))
	c.put("b", ev(2))
	c.get("a") // b is now the oldest
	c.put("c", ev(3))
	if _, ok := c.get("b"); ok {
		t.Error("b was not evicted")
	}
	for _, k := range []string{"a", "c"} {
		if _, ok := c.get(k); !ok {
			t.Errorf("%s was evicted", k)
		}
	}
	c.remove("a")
	if _, ok := c.get("a"); ok {
		t.Error("a is still there after remove")
	}
}

// logRecorder is a slog.Handler that keeps the messages it receives.
type logRecorder struct {
	mu       sync.Mutex
	messages []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.messages = append(l.messages, rec.Message)
	return nil
}
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

func (l *logRecorder) count(prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.messages {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}
