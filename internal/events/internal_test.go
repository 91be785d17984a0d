package events

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	k8svalidation "k8s.io/apimachinery/pkg/util/validation"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/wellknown"
)

// The tests of this file need the Recorder's insides and no API server;
// those in recorder_test.go run against real API servers, from outside the
// package (the API server records events with this package).

// Eventf must not wait for the API: with no replica reachable, calls return
// at once, events beyond the queue's bound are dropped with a log line.
func TestEventfDropsWhenTheQueueIsFull(t *testing.T) {
	c, err := client.New(client.Config{Endpoints: []string{"127.0.0.1:1"}}) // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	logs := &logRecorder{}
	r := NewRecorder(c, &capstanv1.EventSource{Component: "events-test"}, slog.New(logs))
	r.maxPending = 3
	r.writeTimeout = 50 * time.Millisecond
	t.Cleanup(func() { drain(t, r) })
	cm := &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Namespace: "default", Name: "x", Uid: "u1"}}

	for i := range 20 {
		r.Eventf(context.Background(), cm, wellknown.EventNormal, "Spam", "message %d", i)
	}
	if n := logs.count("event dropped"); n < 20-3-1 {
		t.Errorf("%d drops logged, want at least %d", n, 20-3-1)
	}
	drain(t, r)
	if logs.count("event not written") == 0 {
		t.Error("the failed writes were not logged")
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

func drain(t *testing.T, r *Recorder) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !r.Flush(ctx) {
		t.Fatal("Flush: the queue did not drain")
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
