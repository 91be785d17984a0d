package informer_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/client"
	"github.com/capstan-dev/capstan/internal/informer"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var configMapKind = resource.MustLookup("ConfigMap")

func newClient(t *testing.T, endpoints ...string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Endpoints: endpoints, UserAgent: "informer-test"})
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

func configMap(namespace, name string, labels, data map[string]string) *capstanv1.ConfigMap {
	return &capstanv1.ConfigMap{
		Metadata: &capstanv1.ObjectMeta{Namespace: namespace, Name: name, Labels: labels},
		Data:     data,
	}
}

// run starts inf and stops it (waiting for Run to return) when the test ends.
func run(t *testing.T, inf interface{ Run(context.Context) error }) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- inf.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// recorder notes every handler call as "add ns/name", "update ns/name",
// "delete ns/name".
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) note(what string, obj resource.Object) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, what+" "+informer.Key(obj))
}

func (r *recorder) handler() informer.Handler {
	return informer.Handler{
		OnAdd: func(obj resource.Object) { r.note("add", obj) },
		OnUpdate: func(old, new resource.Object) {
			if old.GetMetadata().GetResourceVersion() >= new.GetMetadata().GetResourceVersion() {
				return // a resync: tested on its own
			}
			r.note("update", new)
		},
		OnDelete: func(obj resource.Object) { r.note("delete", obj) },
	}
}

func (r *recorder) snapshot() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// waitEvents waits until n events are recorded and returns them.
func (r *recorder) waitEvents(t *testing.T, n int) []string {
	t.Helper()
	var evs []string
	poll.For(t, 60*time.Second, fmt.Sprintf("%d events", n), func(context.Context) error {
		if evs = r.snapshot(); len(evs) < n {
			return fmt.Errorf("%d events: %q", len(evs), evs)
		}
		return nil
	})
	return evs
}

func waitSynced(t *testing.T, inf *informer.Informer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if !informer.WaitForCacheSync(ctx, inf) {
		t.Fatal("informer did not sync")
	}
}

func names(objs []resource.Object) []string {
	var out []string
	for _, obj := range objs {
		out = append(out, informer.Key(obj))
	}
	slices.Sort(out)
	return out
}

func TestSyncAndEventsInOrder(t *testing.T) {
	cluster := apiservertest.Start(t, 3)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)
	for _, n := range []string{"a", "b", "c"} {
		if _, err := c.Create(ctx, configMap("ns", n, nil, map[string]string{"v": "1"})); err != nil {
			t.Fatal(err)
		}
	}
	// A config map elsewhere stays out of a one-namespace informer.
	if _, err := c.Create(ctx, configMap("other", "x", nil, nil)); err != nil {
		t.Fatal(err)
	}

	inf, err := informer.New(c, configMapKind, informer.Options{Namespace: "ns"})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	inf.AddEventHandler(rec.handler())
	if inf.HasSynced() {
		t.Fatal("synced before Run")
	}
	run(t, inf)
	waitSynced(t, inf)
	if got, want := rec.snapshot(), []string{"add ns/a", "add ns/b", "add ns/c"}; !slices.Equal(got, want) {
		t.Fatalf("after sync the handler saw %q, want %q", got, want)
	}
	if got := names(inf.List()); !slices.Equal(got, []string{"ns/a", "ns/b", "ns/c"}) {
		t.Fatalf("List = %q", got)
	}

	if _, err := c.Create(ctx, configMap("ns", "d", nil, nil)); err != nil {
		t.Fatal(err)
	}
	a, _ := inf.Get("ns", "a")
	changed := resource.Clone(a.(*capstanv1.ConfigMap))
	changed.Data["v"] = "2"
	if _, err := c.Update(ctx, changed); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Delete(ctx, configMapKind, "ns", "b", nil); err != nil {
		t.Fatal(err)
	}
	want := []string{"add ns/a", "add ns/b", "add ns/c", "add ns/d", "update ns/a", "delete ns/b"}
	if got := rec.waitEvents(t, len(want)); !slices.Equal(got, want) {
		t.Fatalf("handler saw %q, want %q", got, want)
	}
	if got, ok := inf.Get("ns", "a"); !ok || got.(*capstanv1.ConfigMap).GetData()["v"] != "2" {
		t.Errorf("Get(ns, a) = %v, %v; want the update", got, ok)
	}
	if _, ok := inf.Get("ns", "b"); ok {
		t.Error("Get(ns, b) found a deleted object")
	}
	if got := names(inf.ByIndex(informer.NamespaceIndex, "ns")); !slices.Equal(got, []string{"ns/a", "ns/c", "ns/d"}) {
		t.Errorf("namespace index = %q", got)
	}
	if inf.ResourceVersion() == 0 {
		t.Error("ResourceVersion is 0")
	}
}

// logCounter counts log records with one message.
type logCounter struct {
	message string
	count   atomic.Int64
}

func (h *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *logCounter) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.message {
		h.count.Add(1)
	}
	return nil
}
func (h *logCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logCounter) WithGroup(string) slog.Handler      { return h }

func TestRelistAfterCompaction(t *testing.T) {
	cluster := apiservertest.Start(t, 2)
	addrs := cluster.Addrs()
	writer := newClient(t, addrs[1])
	ctx := testContext(t)
	for _, n := range []string{"a", "b", "c"} {
		if _, err := writer.Create(ctx, configMap("ns", n, nil, map[string]string{"v": "1"})); err != nil {
			t.Fatal(err)
		}
	}
	relists := &logCounter{message: "watch version compacted, listing again"}
	// The informer's only replica will be away while history is compacted.
	inf, err := informer.New(newClient(t, addrs[0]), configMapKind, informer.Options{Namespace: "ns", Logger: slog.New(relists)})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	inf.AddEventHandler(rec.handler())
	run(t, inf)
	waitSynced(t, inf)

	cluster.StopReplica(0)
	if _, err := writer.Create(ctx, configMap("ns", "d", nil, nil)); err != nil {
		t.Fatal(err)
	}
	b, err := writer.Get(ctx, configMapKind, "ns", "b")
	if err != nil {
		t.Fatal(err)
	}
	changed := resource.Clone(b.(*capstanv1.ConfigMap))
	changed.Data["v"] = "2"
	if _, err := writer.Update(ctx, changed); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.Delete(ctx, configMapKind, "ns", "c", nil); err != nil {
		t.Fatal(err)
	}
	// Created and deleted while away: the informer never knows of it.
	if _, err := writer.Create(ctx, configMap("ns", "e", nil, nil)); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.Delete(ctx, configMapKind, "ns", "e", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	cluster.StartReplica(0)

	// The relist delivers the difference: changes in list order, then deletes.
	want := []string{"add ns/a", "add ns/b", "add ns/c", "update ns/b", "add ns/d", "delete ns/c"}
	if got := rec.waitEvents(t, len(want)); !slices.Equal(got, want) {
		t.Fatalf("handler saw %q, want %q", got, want)
	}
	if got := names(inf.List()); !slices.Equal(got, []string{"ns/a", "ns/b", "ns/d"}) {
		t.Errorf("cache after relist = %q", got)
	}
	if relists.count.Load() == 0 {
		t.Error("the informer never relisted after a compaction")
	}

	// And it watches again afterwards.
	if _, err := writer.Create(ctx, configMap("ns", "f", nil, nil)); err != nil {
		t.Fatal(err)
	}
	if got := rec.waitEvents(t, len(want)+1); got[len(want)] != "add ns/f" {
		t.Fatalf("after relist the handler saw %q", got[len(want):])
	}
}

func TestIndexes(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)
	inf, err := informer.NewTyped[*capstanv1.ConfigMap](c, informer.Options{Namespace: resource.AllNamespaces})
	if err != nil {
		t.Fatal(err)
	}
	byTeam := func(cm *capstanv1.ConfigMap) []string {
		if team, ok := cm.GetMetadata().GetLabels()["team"]; ok {
			return []string{team}
		}
		return nil
	}
	if err := inf.AddIndexer("team", byTeam); err != nil {
		t.Fatal(err)
	}
	if err := inf.AddIndexer("team", byTeam); err == nil {
		t.Error("a second index with the same name was accepted")
	}
	run(t, inf)
	waitSynced(t, inf.Informer)
	if err := inf.AddIndexer("late", byTeam); err == nil {
		t.Error("AddIndexer after Run was accepted")
	}

	for _, cm := range []*capstanv1.ConfigMap{
		configMap("ns1", "a", map[string]string{"team": "red"}, nil),
		configMap("ns2", "b", map[string]string{"team": "red"}, nil),
		configMap("ns2", "c", map[string]string{"team": "blue"}, nil),
		configMap("ns2", "d", nil, nil),
	} {
		if _, err := c.Create(ctx, cm); err != nil {
			t.Fatal(err)
		}
	}
	teamOf := func(team string) []string {
		var out []string
		for _, cm := range inf.ByIndex("team", team) {
			out = append(out, informer.Key(cm))
		}
		slices.Sort(out)
		return out
	}
	poll.For(t, 60*time.Second, "four cached objects", func(context.Context) error {
		if got := len(inf.List()); got != 4 {
			return fmt.Errorf("%d cached", got)
		}
		return nil
	})
	if got := teamOf("red"); !slices.Equal(got, []string{"ns1/a", "ns2/b"}) {
		t.Errorf("team red = %q", got)
	}
	if got := names(inf.Informer.ByIndex(informer.NamespaceIndex, "ns2")); !slices.Equal(got, []string{"ns2/b", "ns2/c", "ns2/d"}) {
		t.Errorf("namespace ns2 = %q", got)
	}

	// Moving b to team blue moves it in the index.
	b, ok := inf.Get("ns2", "b")
	if !ok {
		t.Fatal("b not cached")
	}
	moved := resource.Clone(b)
	moved.Metadata.Labels["team"] = "blue"
	if _, err := c.Update(ctx, moved); err != nil {
		t.Fatal(err)
	}
	poll.For(t, 60*time.Second, "b in team blue", func(context.Context) error {
		if got := teamOf("blue"); !slices.Equal(got, []string{"ns2/b", "ns2/c"}) {
			return fmt.Errorf("team blue = %q", got)
		}
		return nil
	})
	if got := teamOf("red"); !slices.Equal(got, []string{"ns1/a"}) {
		t.Errorf("team red after the move = %q", got)
	}
	if _, err := c.Delete(ctx, configMapKind, "ns1", "a", nil); err != nil {
		t.Fatal(err)
	}
	poll.For(t, 60*time.Second, "team red empty", func(context.Context) error {
		if got := teamOf("red"); len(got) != 0 {
			return fmt.Errorf("team red = %q", got)
		}
		return nil
	})
}

func TestReplicaStopLosesNoEvents(t *testing.T) {
	cluster := apiservertest.Start(t, 3)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)
	inf, err := informer.New(c, configMapKind, informer.Options{Namespace: "seq"})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	inf.AddEventHandler(rec.handler())
	run(t, inf)
	waitSynced(t, inf)

	var want []string
	write := func(count int) {
		for range count {
			name := fmt.Sprintf("seq-%03d", len(want))
			if _, err := c.Create(ctx, configMap("seq", name, nil, nil)); err != nil {
				t.Fatalf("create %s: %v", name, err)
			}
			want = append(want, "add seq/"+name)
		}
	}
	write(5)
	for i := range 3 {
		cluster.StopReplica(i)
		write(10)
		cluster.StartReplica(i)
		write(5)
	}
	if got := rec.waitEvents(t, len(want)); !slices.Equal(got, want) {
		t.Fatalf("handler saw %d events, want %d in order; first difference at %d", len(got), len(want), firstDifference(got, want))
	}
	if got := len(inf.List()); got != len(want) {
		t.Errorf("cache holds %d objects, want %d", got, len(want))
	}
}

func firstDifference(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestResyncAndLateHandler(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)
	for _, n := range []string{"a", "b"} {
		if _, err := c.Create(ctx, configMap("ns", n, nil, nil)); err != nil {
			t.Fatal(err)
		}
	}
	inf, err := informer.New(c, configMapKind, informer.Options{Namespace: "ns", ResyncPeriod: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	resynced := map[string]bool{}
	inf.AddEventHandler(informer.Handler{OnUpdate: func(old, new resource.Object) {
		if old == new {
			mu.Lock()
			resynced[informer.Key(new)] = true
			mu.Unlock()
		}
	}})
	run(t, inf)
	waitSynced(t, inf)
	poll.For(t, 60*time.Second, "a resync of both objects", func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		if !resynced["ns/a"] || !resynced["ns/b"] {
			return fmt.Errorf("resynced %v", resynced)
		}
		return nil
	})

	late := &recorder{}
	inf.AddEventHandler(late.handler())
	if got := late.waitEvents(t, 2); !slices.Equal(got[:2], []string{"add ns/a", "add ns/b"}) {
		t.Fatalf("late handler first saw %q, want the cached objects", got)
	}
	if _, err := c.Create(ctx, configMap("ns", "c", nil, nil)); err != nil {
		t.Fatal(err)
	}
	if got := late.waitEvents(t, 3); !slices.Equal(got, []string{"add ns/a", "add ns/b", "add ns/c"}) {
		t.Fatalf("late handler saw %q", got)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	tests := []struct {
		name string
		c    *client.Client
		kind *resource.Kind
		opts informer.Options
		want string
	}{
		{"no client", nil, configMapKind, informer.Options{}, "client is nil"},
		{"no kind", c, nil, informer.Options{}, "kind is nil"},
		{"negative resync", c, configMapKind, informer.Options{ResyncPeriod: -time.Second}, "ResyncPeriod"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := informer.New(tt.c, tt.kind, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New = %v, want an error about %q", err, tt.want)
			}
		})
	}
	inf, err := informer.New(c, configMapKind, informer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := inf.Run(ctx); err != nil {
		t.Fatalf("Run with a cancelled context: %v", err)
	}
	if err := inf.Run(ctx); err == nil {
		t.Error("a second Run was accepted")
	}
}

func TestKeys(t *testing.T) {
	tests := []struct {
		obj       resource.Object
		key       string
		namespace string
		name      string
	}{
		{configMap("ns", "a", nil, nil), "ns/a", "ns", "a"},
		{&capstanv1.Node{Metadata: &capstanv1.ObjectMeta{Name: "n1"}}, "n1", "", "n1"},
	}
	for _, tt := range tests {
		if got := informer.Key(tt.obj); got != tt.key {
			t.Errorf("Key = %q, want %q", got, tt.key)
		}
		if ns, name := informer.SplitKey(tt.key); ns != tt.namespace || name != tt.name {
			t.Errorf("SplitKey(%q) = %q, %q", tt.key, ns, name)
		}
	}
}
