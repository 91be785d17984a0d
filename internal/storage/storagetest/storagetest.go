// Package storagetest is the conformance suite of storage.Interface: the
// behaviour the API server relies on, checked against a real store. Every
// implementation runs RunConformance from its own tests.
//
// The subtests run one after another (never in parallel: the compaction
// tests compact the whole store). Each works in a namespace of its own, so
// stores returned by newStore may share one backend. Subtests start
// goroutines of their own (concurrent writers, watch consumers) and wait for
// all of them before they return.
package storagetest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/storage"
)

// Options adapt the suite to an implementation.
type Options struct {
	// Compact discards the store's history before rev, so that reads and
	// watches at older revisions fail. Nil skips the subtests that need it.
	Compact func(ctx context.Context, rev int64) error
}

const (
	// testTimeout bounds each subtest's calls; far above what they need.
	testTimeout = 60 * time.Second
	// eventTimeout is how long a subtest waits for an event it expects.
	eventTimeout = 15 * time.Second
)

var (
	configMaps = resource.MustLookup("ConfigMap")
	pods       = resource.MustLookup("Pod")
	leases     = resource.MustLookup("Lease")
	nodes      = resource.MustLookup("Node")
)

func newConfigMap() storage.Object { return &capstanv1.ConfigMap{} }
func newPod() storage.Object       { return &capstanv1.Pod{} }
func newLease() storage.Object     { return &capstanv1.Lease{} }
func newNode() storage.Object      { return &capstanv1.Node{} }

// namespaceSeq gives each subtest its own namespace.
var namespaceSeq atomic.Int64

// RunConformance runs the suite; newStore returns the store a subtest uses.
func RunConformance(t *testing.T, newStore func(t *testing.T) storage.Interface, opts Options) {
	tests := []struct {
		name string
		run  func(*suite)
	}{
		{"CreateGetRoundTrip", testCreateGetRoundTrip},
		{"CreateAlreadyExists", testCreateAlreadyExists},
		{"NotFound", testNotFound},
		{"UpdateWithResourceVersion", testUpdateWithResourceVersion},
		{"UpdateStaleResourceVersion", testUpdateStaleResourceVersion},
		{"UIDPrecondition", testUIDPrecondition},
		{"UpdateSameVersionConcurrently", testUpdateSameVersionConcurrently},
		{"UpdateLosesNoIncrement", testUpdateLosesNoIncrement},
		{"UpdateRetriesAfterLostRace", testUpdateRetriesAfterLostRace},
		{"UpdateWithoutChange", testUpdateWithoutChange},
		{"UpdateFuncError", testUpdateFuncError},
		{"Delete", testDelete},
		{"ListOrderAndRevision", testListOrderAndRevision},
		{"ListPagination", testListPagination},
		{"ListPagesAtFirstRevision", testListPagesAtFirstRevision},
		{"ListBadPageToken", testListBadPageToken},
		{"ListCompactedPageToken", testListCompactedPageToken},
		{"WatchFromRevision", testWatchFromRevision},
		{"WatchFromZero", testWatchFromZero},
		{"ListThenWatch", testListThenWatch},
		{"WatchPredicateTransitions", testWatchPredicateTransitions},
		{"WatchBookmarks", testWatchBookmarks},
		{"WatchCompacted", testWatchCompacted},
		{"WatchStop", testWatchStop},
		{"WatchContextCancel", testWatchContextCancel},
		{"Fence", testFence},
		{"FenceWithLostRace", testFenceWithLostRace},
		{"FenceOnUnchangedUpdate", testFenceOnUnchangedUpdate},
		{"RequestRecordedCreate", testRequestRecordedCreate},
		{"RequestRecordedUpdate", testRequestRecordedUpdate},
		{"RequestRecordedDelete", testRequestRecordedDelete},
		{"RequestRecordedConcurrently", testRequestRecordedConcurrently},
		{"RequestIDOfAnotherObject", testRequestIDOfAnotherObject},
		{"DeadlinePassedBeforeWrite", testDeadlinePassedBeforeWrite},
		{"CanceledContext", testCanceledContext},
		{"Revision", testRevision},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
			defer cancel()
			tc.run(&suite{
				t:     t,
				ctx:   ctx,
				store: newStore(t),
				ns:    fmt.Sprintf("conformance-%d", namespaceSeq.Add(1)),
				opts:  opts,
			})
		})
	}
}

// suite is one subtest's store, namespace and context.
type suite struct {
	t     *testing.T
	ctx   context.Context
	store storage.Interface
	ns    string
	opts  Options
}

func (s *suite) key(name string) string { return configMaps.Key(s.ns, name) }
func (s *suite) prefix() string         { return configMaps.Prefix(s.ns) }

func (s *suite) configMap(name string, data, labels map[string]string) *capstanv1.ConfigMap {
	return &capstanv1.ConfigMap{
		Metadata: &capstanv1.ObjectMeta{Name: name, Namespace: s.ns, Uid: "uid-" + name, Labels: labels},
		Data:     data,
	}
}

// create stores a config map and returns the stored object.
func (s *suite) create(name string, data, labels map[string]string) *capstanv1.ConfigMap {
	s.t.Helper()
	out, err := s.store.Create(s.ctx, s.key(name), s.configMap(name, data, labels), storage.WriteOptions{})
	if err != nil {
		s.t.Fatalf("create %s: %v", name, err)
	}
	return out.(*capstanv1.ConfigMap)
}

func (s *suite) get(name string) *capstanv1.ConfigMap {
	s.t.Helper()
	out, err := s.store.Get(s.ctx, s.key(name), newConfigMap)
	if err != nil {
		s.t.Fatalf("get %s: %v", name, err)
	}
	return out.(*capstanv1.ConfigMap)
}

// set replaces a config map's data (and labels, if not nil) with no precondition.
func (s *suite) set(name string, data, labels map[string]string) *capstanv1.ConfigMap {
	s.t.Helper()
	out, err := s.store.Update(s.ctx, s.key(name), newConfigMap, storage.Preconditions{},
		func(cur storage.Object) (storage.Object, error) {
			cm := cur.(*capstanv1.ConfigMap)
			cm.Data = data
			if labels != nil {
				cm.Metadata.Labels = labels
			}
			return cm, nil
		}, storage.WriteOptions{})
	if err != nil {
		s.t.Fatalf("update %s: %v", name, err)
	}
	return out.(*capstanv1.ConfigMap)
}

func (s *suite) remove(name string) *capstanv1.ConfigMap {
	s.t.Helper()
	out, err := s.store.Delete(s.ctx, s.key(name), newConfigMap, storage.Preconditions{}, storage.WriteOptions{})
	if err != nil {
		s.t.Fatalf("delete %s: %v", name, err)
	}
	return out.(*capstanv1.ConfigMap)
}

func (s *suite) revision() int64 {
	s.t.Helper()
	rev, err := s.store.Revision(s.ctx)
	if err != nil {
		s.t.Fatalf("revision: %v", err)
	}
	return rev
}

func (s *suite) watch(opts storage.WatchOptions) storage.Watcher {
	s.t.Helper()
	w, err := s.store.Watch(s.ctx, s.prefix(), newConfigMap, opts)
	if err != nil {
		s.t.Fatalf("watch %s from %d: %v", s.prefix(), opts.ResourceVersion, err)
	}
	s.t.Cleanup(w.Stop)
	return w
}

func (s *suite) list(opts storage.ListOptions) storage.ListResult {
	s.t.Helper()
	res, err := s.store.List(s.ctx, s.prefix(), newConfigMap, opts)
	if err != nil {
		s.t.Fatalf("list %s: %v", s.prefix(), err)
	}
	return res
}

func rv(obj storage.Object) int64 { return resource.Meta(obj).GetResourceVersion() }

func names(objs []storage.Object) []string {
	out := make([]string, len(objs))
	for i, o := range objs {
		out[i] = resource.Meta(o).GetName()
	}
	return out
}

// expectCode fails unless err has the gRPC code (and, if given, the reason).
func expectCode(t *testing.T, what string, err error, code codes.Code, reason string) {
	t.Helper()
	if apierrors.Code(err) != code {
		t.Fatalf("%s: error %v, want code %v", what, err, code)
	}
	if reason != "" && apierrors.Reason(err) != reason {
		t.Fatalf("%s: error %v has reason %q, want %q", what, err, apierrors.Reason(err), reason)
	}
}

// expectNames fails unless err's ErrorInfo names this kind and object.
func expectNames(t *testing.T, what string, err error, kind, namespace, name string) {
	t.Helper()
	md := apierrors.ErrorInfo(err).GetMetadata()
	if md["kind"] != kind || md["namespace"] != namespace || md["name"] != name {
		t.Fatalf("%s: error %v names %v, want kind=%s namespace=%q name=%s", what, err, md, kind, namespace, name)
	}
}

func expectEqual(t *testing.T, what string, got, want proto.Message) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Fatalf("%s:\n got %v\nwant %v", what, got, want)
	}
}

// nextEvent returns the watch's next event, failing if none comes in time or
// the watch ends.
func nextEvent(t *testing.T, w storage.Watcher) storage.Event {
	t.Helper()
	timer := time.NewTimer(eventTimeout)
	defer timer.Stop()
	select {
	case ev, ok := <-w.Events():
		if !ok {
			t.Fatalf("watch ended early: %v", w.Err())
		}
		return ev
	case <-timer.C:
		t.Fatalf("no watch event within %v", eventTimeout)
	}
	return storage.Event{}
}

// expectEvent fails unless the next event is of this type, for the named
// object at revision rev, with metadata.resource_version == rev.
func expectEvent(t *testing.T, w storage.Watcher, typ storage.EventType, name string, rev int64) storage.Event {
	t.Helper()
	ev := nextEvent(t, w)
	if ev.Type != typ || ev.Object == nil || resource.Meta(ev.Object).GetName() != name || ev.Revision != rev || rv(ev.Object) != rev {
		var got string
		if ev.Object != nil {
			got = fmt.Sprintf("%s rv %d", resource.Meta(ev.Object).GetName(), rv(ev.Object))
		}
		t.Fatalf("event = %v %s at %d, want %v %s at %d", ev.Type, got, ev.Revision, typ, name, rev)
	}
	return ev
}

// waitClosed drains the watch until its channel closes and returns Err.
func waitClosed(t *testing.T, w storage.Watcher) error {
	t.Helper()
	timer := time.NewTimer(eventTimeout)
	defer timer.Stop()
	for {
		select {
		case _, ok := <-w.Events():
			if !ok {
				return w.Err()
			}
		case <-timer.C:
			t.Fatalf("watch channel not closed within %v", eventTimeout)
		}
	}
}

func testCreateGetRoundTrip(s *suite) {
	in := s.configMap("a", map[string]string{"k": "v"}, map[string]string{"app": "web"})
	in.Metadata.ResourceVersion = 1 << 40 // a client's value means nothing
	out, err := s.store.Create(s.ctx, s.key("a"), in, storage.WriteOptions{})
	if err != nil {
		s.t.Fatalf("create: %v", err)
	}
	if rv(out) <= 0 || rv(out) == 1<<40 {
		s.t.Fatalf("created resource_version = %d, want the store's revision", rv(out))
	}
	if in.Metadata.ResourceVersion != 1<<40 {
		s.t.Fatalf("create changed its argument's resource_version to %d", in.Metadata.ResourceVersion)
	}
	want := proto.Clone(in).(*capstanv1.ConfigMap)
	want.Metadata.ResourceVersion = rv(out)
	expectEqual(s.t, "created object", out, want)
	expectEqual(s.t, "read object", s.get("a"), want)
	if rev := s.revision(); rev < rv(out) {
		s.t.Fatalf("revision %d is before the create at %d", rev, rv(out))
	}

	pod := &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Name: "p", Namespace: s.ns, Uid: "uid-p"},
		Spec: &capstanv1.PodSpec{
			Containers:    []*capstanv1.Container{{Name: "main", Command: []string{"/bin/true"}}},
			RestartPolicy: "Never",
		},
	}
	podOut, err := s.store.Create(s.ctx, pods.Key(s.ns, "p"), pod, storage.WriteOptions{})
	if err != nil {
		s.t.Fatalf("create pod: %v", err)
	}
	podGot, err := s.store.Get(s.ctx, pods.Key(s.ns, "p"), newPod)
	if err != nil {
		s.t.Fatalf("get pod: %v", err)
	}
	expectEqual(s.t, "read pod", podGot, podOut)

	// A cluster-scoped kind: its key has no namespace.
	nodeName := "node-" + s.ns
	node := &capstanv1.Node{Metadata: &capstanv1.ObjectMeta{Name: nodeName}}
	nodeOut, err := s.store.Create(s.ctx, nodes.Key("", nodeName), node, storage.WriteOptions{})
	if err != nil {
		s.t.Fatalf("create node: %v", err)
	}
	nodeGot, err := s.store.Get(s.ctx, nodes.Key("", nodeName), newNode)
	if err != nil {
		s.t.Fatalf("get node: %v", err)
	}
	expectEqual(s.t, "read node", nodeGot, nodeOut)
	_, err = s.store.Create(s.ctx, nodes.Key("", nodeName), node, storage.WriteOptions{})
	expectCode(s.t, "create node twice", err, codes.AlreadyExists, apierrors.ReasonAlreadyExists)
	expectNames(s.t, "create node twice", err, "Node", "", nodeName)
}

func testCreateAlreadyExists(s *suite) {
	first := s.create("a", map[string]string{"v": "1"}, nil)
	_, err := s.store.Create(s.ctx, s.key("a"), s.configMap("a", map[string]string{"v": "2"}, nil), storage.WriteOptions{})
	expectCode(s.t, "second create", err, codes.AlreadyExists, apierrors.ReasonAlreadyExists)
	expectNames(s.t, "second create", err, "ConfigMap", s.ns, "a")
	expectEqual(s.t, "object after failed create", s.get("a"), first)
}

func testNotFound(s *suite) {
	check := func(what string, err error) {
		s.t.Helper()
		expectCode(s.t, what, err, codes.NotFound, apierrors.ReasonNotFound)
		expectNames(s.t, what, err, "ConfigMap", s.ns, "missing")
	}
	_, err := s.store.Get(s.ctx, s.key("missing"), newConfigMap)
	check("get", err)
	called := false
	_, err = s.store.Update(s.ctx, s.key("missing"), newConfigMap, storage.Preconditions{},
		func(cur storage.Object) (storage.Object, error) { called = true; return cur, nil }, storage.WriteOptions{})
	check("update", err)
	if called {
		s.t.Fatal("update function called for a missing object")
	}
	_, err = s.store.Delete(s.ctx, s.key("missing"), newConfigMap, storage.Preconditions{}, storage.WriteOptions{})
	check("delete", err)
	if len(s.list(storage.ListOptions{}).Items) != 0 {
		s.t.Fatal("a failed update or delete created an object")
	}
}

func testUpdateWithResourceVersion(s *suite) {
	created := s.create("a", map[string]string{"v": "1"}, nil)
	out, err := s.store.Update(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{ResourceVersion: rv(created)},
		func(cur storage.Object) (storage.Object, error) {
			if rv(cur) != rv(created) {
				return nil, fmt.Errorf("update function got resource_version %d, want %d", rv(cur), rv(created))
			}
			cm := cur.(*capstanv1.ConfigMap)
			cm.Data["v"] = "2"
			cm.Metadata.ResourceVersion = 1 << 40 // ignored: the store sets it
			return cm, nil
		}, storage.WriteOptions{})
	if err != nil {
		s.t.Fatalf("update: %v", err)
	}
	if rv(out) <= rv(created) || rv(out) == 1<<40 {
		s.t.Fatalf("updated resource_version %d, want a revision after %d", rv(out), rv(created))
	}
	if got := out.(*capstanv1.ConfigMap).Data["v"]; got != "2" {
		s.t.Fatalf("updated data v = %q, want 2", got)
	}
	expectEqual(s.t, "read after update", s.get("a"), out)
	if created.Data["v"] != "1" {
		s.t.Fatal("update changed the object Create returned")
	}
}

func testUpdateStaleResourceVersion(s *suite) {
	created := s.create("a", map[string]string{"v": "1"}, nil)
	current := s.set("a", map[string]string{"v": "2"}, nil)
	_, err := s.store.Update(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{ResourceVersion: rv(created)},
		func(cur storage.Object) (storage.Object, error) {
			cur.(*capstanv1.ConfigMap).Data["v"] = "stale"
			return cur, nil
		}, storage.WriteOptions{})
	expectCode(s.t, "update with a stale version", err, codes.Aborted, apierrors.ReasonConflict)
	expectNames(s.t, "update with a stale version", err, "ConfigMap", s.ns, "a")
	expectEqual(s.t, "object after a stale update", s.get("a"), current)
}

func testUIDPrecondition(s *suite) {
	created := s.create("a", map[string]string{"v": "1"}, nil)
	touch := func(cur storage.Object) (storage.Object, error) {
		cur.(*capstanv1.ConfigMap).Data["v"] = "2"
		return cur, nil
	}
	_, err := s.store.Update(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{UID: "another"}, touch, storage.WriteOptions{})
	expectCode(s.t, "update with another uid", err, codes.Aborted, apierrors.ReasonConflict)
	_, err = s.store.Delete(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{UID: "another"}, storage.WriteOptions{})
	expectCode(s.t, "delete with another uid", err, codes.Aborted, apierrors.ReasonConflict)
	expectEqual(s.t, "object after uid mismatches", s.get("a"), created)

	if _, err := s.store.Update(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{UID: "uid-a"}, touch, storage.WriteOptions{}); err != nil {
		s.t.Fatalf("update with the right uid: %v", err)
	}
	if _, err := s.store.Delete(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{UID: "uid-a"}, storage.WriteOptions{}); err != nil {
		s.t.Fatalf("delete with the right uid: %v", err)
	}
}

func testUpdateSameVersionConcurrently(s *suite) {
	const writers = 10
	created := s.create("a", map[string]string{"init": "1"}, nil)
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := range writers {
		wg.Go(func() {
			_, errs[i] = s.store.Update(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{ResourceVersion: rv(created)},
				func(cur storage.Object) (storage.Object, error) {
					cur.(*capstanv1.ConfigMap).Data["winner"] = strconv.Itoa(i)
					return cur, nil
				}, storage.WriteOptions{})
		})
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			s.t.Fatalf("writers %d and %d both updated version %d", winner, i, rv(created))
		case err == nil:
			winner = i
		default:
			expectCode(s.t, fmt.Sprintf("writer %d", i), err, codes.Aborted, apierrors.ReasonConflict)
		}
	}
	if winner < 0 {
		s.t.Fatal("no writer updated the object")
	}
	if got := s.get("a").Data["winner"]; got != strconv.Itoa(winner) {
		s.t.Fatalf("stored winner = %q, want %d", got, winner)
	}
}

func testUpdateLosesNoIncrement(s *suite) {
	const writers, increments = 8, 5
	s.create("counter", map[string]string{"n": "0"}, nil)
	var wg sync.WaitGroup
	var mu sync.Mutex
	versions := map[int64]bool{}
	var failed atomic.Pointer[error]
	for range writers {
		wg.Go(func() {
			for range increments {
				out, err := s.store.Update(s.ctx, s.key("counter"), newConfigMap, storage.Preconditions{},
					func(cur storage.Object) (storage.Object, error) {
						cm := cur.(*capstanv1.ConfigMap)
						n, err := strconv.Atoi(cm.Data["n"])
						if err != nil {
							return nil, err
						}
						cm.Data["n"] = strconv.Itoa(n + 1)
						return cm, nil
					}, storage.WriteOptions{})
				if err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
				mu.Lock()
				versions[rv(out)] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		s.t.Fatalf("increment: %v", *err)
	}
	if got := s.get("counter").Data["n"]; got != strconv.Itoa(writers*increments) {
		s.t.Fatalf("counter = %s after %d increments", got, writers*increments)
	}
	if len(versions) != writers*increments {
		s.t.Fatalf("%d increments returned %d distinct versions", writers*increments, len(versions))
	}
}

func testUpdateRetriesAfterLostRace(s *suite) {
	s.create("a", map[string]string{"base": "1"}, nil)
	calls := 0
	out, err := s.store.Update(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{},
		func(cur storage.Object) (storage.Object, error) {
			calls++
			if calls == 1 {
				// Another writer gets in between this read and its write.
				s.set("a", map[string]string{"base": "1", "other": "x"}, nil)
			}
			cur.(*capstanv1.ConfigMap).Data["mine"] = "y"
			return cur, nil
		}, storage.WriteOptions{})
	if err != nil {
		s.t.Fatalf("update: %v", err)
	}
	if calls != 2 {
		s.t.Fatalf("update function called %d times, want 2 (once more after the lost race)", calls)
	}
	want := map[string]string{"base": "1", "other": "x", "mine": "y"}
	if got := s.get("a").Data; !maps.Equal(got, want) {
		s.t.Fatalf("data = %v, want %v (both writes)", got, want)
	}
	if got := out.(*capstanv1.ConfigMap).Data; !maps.Equal(got, want) {
		s.t.Fatalf("returned data = %v, want %v", got, want)
	}
}

func testUpdateWithoutChange(s *suite) {
	created := s.create("a", map[string]string{"v": "1"}, map[string]string{"l": "x"})
	before := s.revision()
	out, err := s.store.Update(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{ResourceVersion: rv(created)},
		func(cur storage.Object) (storage.Object, error) {
			cm := cur.(*capstanv1.ConfigMap)
			cm.Data["v"] = "1"                                                     // the same value
			cm.Metadata.Labels = map[string]string{"l": "x"}                       // an equal map
			return &capstanv1.ConfigMap{Metadata: cm.Metadata, Data: cm.Data}, nil // a new message
		}, storage.WriteOptions{})
	if err != nil {
		s.t.Fatalf("no-op update: %v", err)
	}
	if rv(out) != rv(created) {
		s.t.Fatalf("no-op update returned resource_version %d, want the unchanged %d", rv(out), rv(created))
	}
	if after := s.revision(); after != before {
		s.t.Fatalf("no-op update moved the store from revision %d to %d", before, after)
	}
	expectEqual(s.t, "object after a no-op update", s.get("a"), created)
}

func testUpdateFuncError(s *suite) {
	created := s.create("a", map[string]string{"v": "1"}, nil)
	errRefused := errors.New("refused by the update function")
	_, err := s.store.Update(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{},
		func(cur storage.Object) (storage.Object, error) {
			cur.(*capstanv1.ConfigMap).Data["v"] = "2"
			return nil, errRefused
		}, storage.WriteOptions{})
	if !errors.Is(err, errRefused) {
		s.t.Fatalf("update = %v, want the update function's error", err)
	}
	expectEqual(s.t, "object after a refused update", s.get("a"), created)
}

func testDelete(s *suite) {
	created := s.create("a", map[string]string{"v": "1"}, nil)
	last := s.set("a", map[string]string{"v": "2"}, nil)

	_, err := s.store.Delete(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{ResourceVersion: rv(created)}, storage.WriteOptions{})
	expectCode(s.t, "delete with a stale version", err, codes.Aborted, apierrors.ReasonConflict)
	expectEqual(s.t, "object after a stale delete", s.get("a"), last)

	out, err := s.store.Delete(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{ResourceVersion: rv(last)}, storage.WriteOptions{})
	if err != nil {
		s.t.Fatalf("delete: %v", err)
	}
	if rv(out) <= rv(last) {
		s.t.Fatalf("deleted object has resource_version %d, want the deletion's revision after %d", rv(out), rv(last))
	}
	want := proto.Clone(last).(*capstanv1.ConfigMap)
	want.Metadata.ResourceVersion = rv(out)
	expectEqual(s.t, "deleted object", out, want)
	_, err = s.store.Get(s.ctx, s.key("a"), newConfigMap)
	expectCode(s.t, "get after delete", err, codes.NotFound, "")
	_, err = s.store.Delete(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{}, storage.WriteOptions{})
	expectCode(s.t, "second delete", err, codes.NotFound, "")

	// A deleted name can be created again, with a new version.
	again := s.create("a", map[string]string{"v": "3"}, nil)
	if rv(again) <= rv(out) {
		s.t.Fatalf("re-created object has resource_version %d, not after the deletion at %d", rv(again), rv(out))
	}
}

func testListOrderAndRevision(s *suite) {
	versions := map[string]int64{}
	for _, name := range []string{"c", "a", "e", "b", "d"} {
		versions[name] = rv(s.create(name, map[string]string{"name": name}, nil))
	}
	// A neighbouring namespace whose name extends this one stays out.
	other := configMaps.Key(s.ns+"x", "a")
	if _, err := s.store.Create(s.ctx, other, s.configMap("a", nil, nil), storage.WriteOptions{}); err != nil {
		s.t.Fatalf("create in another namespace: %v", err)
	}
	res := s.list(storage.ListOptions{})
	if got, want := names(res.Items), []string{"a", "b", "c", "d", "e"}; !slices.Equal(got, want) {
		s.t.Fatalf("list = %v, want %v", got, want)
	}
	for _, item := range res.Items {
		name := resource.Meta(item).GetName()
		if rv(item) != versions[name] {
			s.t.Fatalf("listed %s at resource_version %d, want %d", name, rv(item), versions[name])
		}
	}
	if res.Revision < slices.Max(slices.Collect(maps.Values(versions))) {
		s.t.Fatalf("list revision %d is before the last create", res.Revision)
	}
	if res.Continue != "" {
		s.t.Fatalf("a list without limit returned a page token %q", res.Continue)
	}
	if empty := s.list(storage.ListOptions{Predicate: func(storage.Object) bool { return false }}); len(empty.Items) != 0 || empty.Revision < res.Revision {
		s.t.Fatalf("list matching nothing = %d items at %d", len(empty.Items), empty.Revision)
	}
}

func testListPagination(s *suite) {
	const total = 7
	var all []string
	for i := range total {
		name := fmt.Sprintf("obj-%02d", i)
		s.create(name, nil, map[string]string{"even": strconv.FormatBool(i%2 == 0)})
		all = append(all, name)
	}
	even := func(o storage.Object) bool { return resource.Meta(o).GetLabels()["even"] == "true" }
	var evens []string
	for i, n := range all {
		if i%2 == 0 {
			evens = append(evens, n)
		}
	}
	for _, tc := range []struct {
		limit     int64
		predicate storage.Predicate
		want      []string
	}{
		{1, nil, all}, {2, nil, all}, {3, nil, all}, {total, nil, all}, {total + 5, nil, all},
		{1, even, evens}, {2, even, evens}, {3, even, evens}, {total + 5, even, evens},
	} {
		s.t.Run(fmt.Sprintf("limit=%d,filtered=%v", tc.limit, tc.predicate != nil), func(t *testing.T) {
			var got []string
			var firstRev int64
			token := ""
			for page := 0; ; page++ {
				if page > total+1 {
					t.Fatalf("more than %d pages", page)
				}
				res, err := s.store.List(s.ctx, s.prefix(), newConfigMap, storage.ListOptions{Predicate: tc.predicate, Limit: tc.limit, Continue: token})
				if err != nil {
					t.Fatalf("page %d: %v", page, err)
				}
				if page == 0 {
					firstRev = res.Revision
				} else if res.Revision != firstRev {
					t.Fatalf("page %d at revision %d, the first at %d", page, res.Revision, firstRev)
				}
				if int64(len(res.Items)) > tc.limit {
					t.Fatalf("page %d has %d items, limit %d", page, len(res.Items), tc.limit)
				}
				if res.Continue != "" && int64(len(res.Items)) != tc.limit {
					t.Fatalf("page %d has %d items and a next page; want full pages of %d", page, len(res.Items), tc.limit)
				}
				for _, item := range res.Items {
					if !tc.predicate.Matches(item) {
						t.Fatalf("page %d has %s, which does not match", page, resource.Meta(item).GetName())
					}
				}
				got = append(got, names(res.Items)...)
				if res.Continue == "" {
					break
				}
				token = res.Continue
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("pages = %v, want %v", got, tc.want)
			}
		})
	}
}

func testListPagesAtFirstRevision(s *suite) {
	original := map[string]*capstanv1.ConfigMap{}
	for _, name := range []string{"a", "b", "c", "d", "e", "f"} {
		original[name] = s.create(name, map[string]string{"v": "1"}, nil)
	}
	first := s.list(storage.ListOptions{Limit: 2})
	if got := names(first.Items); !slices.Equal(got, []string{"a", "b"}) || first.Continue == "" {
		s.t.Fatalf("first page = %v (next %q), want [a b] and a next page", got, first.Continue)
	}
	s.create("c1", nil, nil) // sorts into a later page
	s.set("e", map[string]string{"v": "2"}, nil)
	s.remove("f")

	var rest []storage.Object
	token := first.Continue
	for token != "" {
		page := s.list(storage.ListOptions{Limit: 2, Continue: token})
		if page.Revision != first.Revision {
			s.t.Fatalf("later page at revision %d, the first at %d", page.Revision, first.Revision)
		}
		rest = append(rest, page.Items...)
		token = page.Continue
	}
	if got, want := names(rest), []string{"c", "d", "e", "f"}; !slices.Equal(got, want) {
		s.t.Fatalf("later pages = %v, want %v (the state at the first page's revision)", got, want)
	}
	for _, item := range rest {
		expectEqual(s.t, "item of a later page", item, original[resource.Meta(item).GetName()])
	}
	if got, want := names(s.list(storage.ListOptions{}).Items), []string{"a", "b", "c", "c1", "d", "e"}; !slices.Equal(got, want) {
		s.t.Fatalf("fresh list = %v, want %v", got, want)
	}
}

func testListBadPageToken(s *suite) {
	s.create("a", nil, nil)
	s.create("b", nil, nil)
	// A genuine token of another namespace's list must not read this one.
	otherNS := s.ns + "-other"
	for _, name := range []string{"a", "b"} {
		if _, err := s.store.Create(s.ctx, configMaps.Key(otherNS, name), s.configMap(name, nil, nil), storage.WriteOptions{}); err != nil {
			s.t.Fatalf("create in %s: %v", otherNS, err)
		}
	}
	foreign, err := s.store.List(s.ctx, configMaps.Prefix(otherNS), newConfigMap, storage.ListOptions{Limit: 1})
	if err != nil || foreign.Continue == "" {
		s.t.Fatalf("list %s = %v, %v; want a next page", otherNS, foreign.Continue, err)
	}
	for _, token := range []string{"not a token!", "bm90IGEgdG9rZW4", "e30", foreign.Continue} {
		_, err := s.store.List(s.ctx, s.prefix(), newConfigMap, storage.ListOptions{Limit: 1, Continue: token})
		expectCode(s.t, fmt.Sprintf("list with token %q", token), err, codes.InvalidArgument, apierrors.ReasonFieldInvalid)
		if f := apierrors.Field(err); f != resource.FieldPageToken {
			s.t.Fatalf("bad token error names field %q, want %q", f, resource.FieldPageToken)
		}
	}
}

func testListCompactedPageToken(s *suite) {
	if s.opts.Compact == nil {
		s.t.Skip("no Compact in Options")
	}
	for _, name := range []string{"a", "b", "c"} {
		s.create(name, nil, nil)
	}
	first := s.list(storage.ListOptions{Limit: 1})
	s.set("b", map[string]string{"v": "2"}, nil)
	if err := s.opts.Compact(s.ctx, s.revision()); err != nil {
		s.t.Fatalf("compact: %v", err)
	}
	_, err := s.store.List(s.ctx, s.prefix(), newConfigMap, storage.ListOptions{Limit: 1, Continue: first.Continue})
	expectCode(s.t, "next page after compaction", err, codes.OutOfRange, apierrors.ReasonResourceVersionExpired)
}

func testWatchFromRevision(s *suite) {
	start := s.revision()
	w := s.watch(storage.WatchOptions{ResourceVersion: start})
	a1 := s.create("a", map[string]string{"v": "1"}, nil)
	a2 := s.set("a", map[string]string{"v": "2"}, nil)
	b1 := s.create("b", nil, nil)
	aGone := s.remove("a")
	b2 := s.set("b", map[string]string{"v": "2"}, nil)

	expectEqual(s.t, "added object", expectEvent(s.t, w, storage.Added, "a", rv(a1)).Object, a1)
	expectEqual(s.t, "modified object", expectEvent(s.t, w, storage.Modified, "a", rv(a2)).Object, a2)
	expectEvent(s.t, w, storage.Added, "b", rv(b1))
	deleted := expectEvent(s.t, w, storage.Deleted, "a", rv(aGone))
	expectEqual(s.t, "deleted object", deleted.Object, aGone)
	if deleted.Object.(*capstanv1.ConfigMap).Data["v"] != "2" {
		s.t.Fatal("Deleted event does not carry the last state")
	}
	expectEvent(s.t, w, storage.Modified, "b", rv(b2))
	// Exactly once: the next event is the next write.
	sentinel := s.create("sentinel", nil, nil)
	expectEvent(s.t, w, storage.Added, "sentinel", rv(sentinel))

	// A watch from a later revision starts right after it.
	later := s.watch(storage.WatchOptions{ResourceVersion: rv(a2)})
	expectEvent(s.t, later, storage.Added, "b", rv(b1))
	expectEvent(s.t, later, storage.Deleted, "a", rv(aGone))
}

func testWatchFromZero(s *suite) {
	a := s.create("a", map[string]string{"v": "1"}, nil)
	b := s.create("b", nil, nil)
	w := s.watch(storage.WatchOptions{})
	expectEqual(s.t, "initial a", expectEvent(s.t, w, storage.Added, "a", rv(a)).Object, a)
	expectEvent(s.t, w, storage.Added, "b", rv(b))
	a2 := s.set("a", map[string]string{"v": "2"}, nil)
	expectEvent(s.t, w, storage.Modified, "a", rv(a2))
	bGone := s.remove("b")
	expectEvent(s.t, w, storage.Deleted, "b", rv(bGone))
}

func testListThenWatch(s *suite) {
	const writes = 60
	for i := range 5 {
		s.create(fmt.Sprintf("seed-%d", i), map[string]string{"n": "0"}, nil)
	}
	writerDone := make(chan struct{})
	var writerErr error
	go func() {
		defer close(writerDone)
		for i := range writes {
			name := fmt.Sprintf("seed-%d", i%5)
			var err error
			switch i % 3 {
			case 0:
				_, err = s.store.Create(s.ctx, s.key(fmt.Sprintf("new-%03d", i)), s.configMap(fmt.Sprintf("new-%03d", i), nil, nil), storage.WriteOptions{})
			case 1:
				_, err = s.store.Update(s.ctx, s.key(name), newConfigMap, storage.Preconditions{},
					func(cur storage.Object) (storage.Object, error) {
						cur.(*capstanv1.ConfigMap).Data["n"] = strconv.Itoa(i)
						return cur, nil
					}, storage.WriteOptions{})
			case 2:
				victim := fmt.Sprintf("new-%03d", i-2)
				_, err = s.store.Delete(s.ctx, s.key(victim), newConfigMap, storage.Preconditions{}, storage.WriteOptions{})
			}
			if err != nil {
				writerErr = err
				return
			}
		}
	}()
	// List in small pages while the writer runs, then watch from the list.
	state := map[string]int64{}
	var listRev int64
	token := ""
	for {
		page := s.list(storage.ListOptions{Limit: 2, Continue: token})
		listRev = page.Revision
		for _, item := range page.Items {
			state[resource.Meta(item).GetName()] = rv(item)
		}
		if token = page.Continue; token == "" {
			break
		}
	}
	w := s.watch(storage.WatchOptions{ResourceVersion: listRev})
	<-writerDone
	if writerErr != nil {
		s.t.Fatalf("writer: %v", writerErr)
	}
	sentinel := s.create("zz-sentinel", nil, nil)
	last := listRev
	for {
		ev := nextEvent(s.t, w)
		if ev.Revision <= last {
			s.t.Fatalf("event %v %s at %d after one at %d (list at %d)", ev.Type, resource.Meta(ev.Object).GetName(), ev.Revision, last, listRev)
		}
		last = ev.Revision
		name := resource.Meta(ev.Object).GetName()
		switch ev.Type {
		case storage.Added, storage.Modified:
			if _, had := state[name]; had == (ev.Type == storage.Added) {
				s.t.Fatalf("%v for %s, which the client had=%v", ev.Type, name, had)
			}
			state[name] = ev.Revision
		case storage.Deleted:
			if _, had := state[name]; !had {
				s.t.Fatalf("Deleted for %s, which the client never had", name)
			}
			delete(state, name)
		}
		if ev.Revision == rv(sentinel) {
			break
		}
	}
	want := map[string]int64{}
	for _, item := range s.list(storage.ListOptions{}).Items {
		want[resource.Meta(item).GetName()] = rv(item)
	}
	if !maps.Equal(state, want) {
		s.t.Fatalf("list + watch state = %v\nwant the store's %v", state, want)
	}
}

func testWatchPredicateTransitions(s *suite) {
	matching := func(o storage.Object) bool { return resource.Meta(o).GetLabels()["match"] == "yes" }
	yes, no := map[string]string{"match": "yes"}, map[string]string{"match": "no"}
	w := s.watch(storage.WatchOptions{ResourceVersion: s.revision(), Predicate: matching})

	s.create("p", map[string]string{"v": "1"}, no)       // never seen
	p2 := s.set("p", map[string]string{"v": "1"}, yes)   // starts matching: Added
	p3 := s.set("p", map[string]string{"v": "2"}, yes)   // Modified
	p4 := s.set("p", map[string]string{"v": "3"}, no)    // stops matching: Deleted
	s.set("p", map[string]string{"v": "4"}, no)          // never seen
	q := s.create("q", map[string]string{"v": "1"}, yes) // Added
	qGone := s.remove("q")                               // Deleted, last state
	s.remove("p")                                        // never seen
	sentinel := s.create("sentinel", nil, yes)

	expectEqual(s.t, "object that starts matching", expectEvent(s.t, w, storage.Added, "p", rv(p2)).Object, p2)
	expectEvent(s.t, w, storage.Modified, "p", rv(p3))
	expectEqual(s.t, "object that stops matching", expectEvent(s.t, w, storage.Deleted, "p", rv(p4)).Object, p4)
	expectEvent(s.t, w, storage.Added, "q", rv(q))
	expectEqual(s.t, "deleted matching object", expectEvent(s.t, w, storage.Deleted, "q", rv(qGone)).Object, qGone)
	expectEvent(s.t, w, storage.Added, "sentinel", rv(sentinel))

	// From 0, only matching objects are listed.
	s.create("r", nil, no)
	w0 := s.watch(storage.WatchOptions{Predicate: matching})
	expectEvent(s.t, w0, storage.Added, "sentinel", rv(sentinel))
	r2 := s.set("r", nil, yes)
	expectEvent(s.t, w0, storage.Added, "r", rv(r2))
}

func testWatchBookmarks(s *suite) {
	a := s.create("a", nil, nil)
	w := s.watch(storage.WatchOptions{ResourceVersion: rv(a), BookmarkInterval: 100 * time.Millisecond})
	expectBookmark := func(atLeast int64) {
		s.t.Helper()
		ev := nextEvent(s.t, w)
		if ev.Type != storage.Bookmark || ev.Object != nil || ev.Revision < atLeast {
			s.t.Fatalf("event %v (object %v) at %d, want a Bookmark at %d or later", ev.Type, ev.Object, ev.Revision, atLeast)
		}
	}
	expectBookmark(rv(a))
	b := s.create("b", nil, nil)
	for {
		ev := nextEvent(s.t, w)
		if ev.Type == storage.Bookmark {
			if ev.Revision >= rv(b) {
				s.t.Fatalf("bookmark at %d before the event of the write at %d", ev.Revision, rv(b))
			}
			continue
		}
		if ev.Type != storage.Added || ev.Revision != rv(b) {
			s.t.Fatalf("event %v at %d, want Added b at %d", ev.Type, ev.Revision, rv(b))
		}
		break
	}
	expectBookmark(rv(b))
	expectBookmark(rv(b))
}

func testWatchCompacted(s *suite) {
	if s.opts.Compact == nil {
		s.t.Skip("no Compact in Options")
	}
	a := s.create("a", map[string]string{"v": "1"}, nil)
	a2 := s.set("a", map[string]string{"v": "2"}, nil)
	a3 := s.set("a", map[string]string{"v": "3"}, nil)
	if err := s.opts.Compact(s.ctx, rv(a3)); err != nil {
		s.t.Fatalf("compact: %v", err)
	}
	// The history from the compaction revision on is kept: a watch from
	// just before it misses nothing.
	kept := s.watch(storage.WatchOptions{ResourceVersion: rv(a2)})
	expectEvent(s.t, kept, storage.Modified, "a", rv(a3))
	a4 := s.set("a", map[string]string{"v": "4"}, nil)
	expectEvent(s.t, kept, storage.Modified, "a", rv(a4))

	w, err := s.store.Watch(s.ctx, s.prefix(), newConfigMap, storage.WatchOptions{ResourceVersion: rv(a)})
	if err != nil {
		// Refusing at once is as good as ending the watch.
		expectCode(s.t, "watch from a compacted revision", err, codes.OutOfRange, apierrors.ReasonResourceVersionExpired)
		return
	}
	defer w.Stop()
	err = waitClosed(s.t, w)
	expectCode(s.t, "watch from a compacted revision", err, codes.OutOfRange, apierrors.ReasonResourceVersionExpired)
}

func testWatchStop(s *suite) {
	w, err := s.store.Watch(s.ctx, s.prefix(), newConfigMap, storage.WatchOptions{ResourceVersion: s.revision()})
	if err != nil {
		s.t.Fatalf("watch: %v", err)
	}
	// Events the consumer never reads must not keep the watch alive.
	for i := range 150 {
		s.create(fmt.Sprintf("obj-%03d", i), nil, nil)
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		w.Stop()
	}()
	select {
	case <-stopped:
	case <-time.After(eventTimeout):
		s.t.Fatalf("Stop did not return within %v with unread events", eventTimeout)
	}
	if err := waitClosed(s.t, w); err != nil {
		s.t.Fatalf("Err after Stop = %v, want nil", err)
	}
	w.Stop() // a second Stop is harmless
}

func testWatchContextCancel(s *suite) {
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	w, err := s.store.Watch(ctx, s.prefix(), newConfigMap, storage.WatchOptions{ResourceVersion: s.revision(), BookmarkInterval: 50 * time.Millisecond})
	if err != nil {
		s.t.Fatalf("watch: %v", err)
	}
	defer w.Stop()
	a := s.create("a", nil, nil)
	for {
		if ev := nextEvent(s.t, w); ev.Type == storage.Added && ev.Revision == rv(a) {
			break
		}
	}
	for i := range 150 {
		s.create(fmt.Sprintf("obj-%03d", i), nil, nil)
	}
	cancel()
	if err := waitClosed(s.t, w); err != nil {
		s.t.Fatalf("Err after cancel = %v, want nil", err)
	}
}

// fence creates or replaces the lease object name and returns a fence at
// its new epoch.
func (s *suite) fence(name string) *storage.Fence {
	s.t.Helper()
	key := leases.Key(s.ns, name)
	if _, err := s.store.Delete(s.ctx, key, newLease, storage.Preconditions{}, storage.WriteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		s.t.Fatalf("delete lease: %v", err)
	}
	lease := &capstanv1.Lease{Metadata: &capstanv1.ObjectMeta{Name: name, Namespace: s.ns}, Spec: &capstanv1.LeaseSpec{HolderIdentity: "holder"}}
	out, err := s.store.Create(s.ctx, key, lease, storage.WriteOptions{})
	if err != nil {
		s.t.Fatalf("create lease: %v", err)
	}
	// The object's create revision is the revision of its creation.
	return &storage.Fence{LeaseKey: key, Epoch: rv(out), Namespace: s.ns, Name: name}
}

func testFence(s *suite) {
	first := s.fence("leader")
	fenced := storage.WriteOptions{Fence: first}
	bump := func(v string) storage.UpdateFunc {
		return func(cur storage.Object) (storage.Object, error) {
			cur.(*capstanv1.ConfigMap).Data = map[string]string{"v": v}
			return cur, nil
		}
	}
	if _, err := s.store.Create(s.ctx, s.key("a"), s.configMap("a", nil, nil), fenced); err != nil {
		s.t.Fatalf("create at the current epoch: %v", err)
	}
	if _, err := s.store.Update(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{}, bump("1"), fenced); err != nil {
		s.t.Fatalf("update at the current epoch: %v", err)
	}
	s.create("b", nil, nil)
	if _, err := s.store.Delete(s.ctx, s.key("b"), newConfigMap, storage.Preconditions{}, fenced); err != nil {
		s.t.Fatalf("delete at the current epoch: %v", err)
	}
	// A fenced write to the lease object itself.
	if _, err := s.store.Update(s.ctx, first.LeaseKey, newLease, storage.Preconditions{},
		func(cur storage.Object) (storage.Object, error) {
			cur.(*capstanv1.Lease).Spec.LeaseDurationSeconds = 5
			return cur, nil
		}, fenced); err != nil {
		s.t.Fatalf("update the lease at its epoch: %v", err)
	}

	second := s.fence("leader") // deposes the first holder
	if second.Epoch <= first.Epoch {
		s.t.Fatalf("new epoch %d is not after %d", second.Epoch, first.Epoch)
	}
	before := s.get("a")
	s.create("c", nil, nil)
	stale := func(what string, err error) {
		s.t.Helper()
		expectCode(s.t, what, err, codes.FailedPrecondition, apierrors.ReasonLeaseNotHeld)
	}
	_, err := s.store.Create(s.ctx, s.key("new"), s.configMap("new", nil, nil), fenced)
	stale("create at a stale epoch", err)
	_, err = s.store.Update(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{}, bump("stale"), fenced)
	stale("update at a stale epoch", err)
	_, err = s.store.Delete(s.ctx, s.key("c"), newConfigMap, storage.Preconditions{}, fenced)
	stale("delete at a stale epoch", err)
	// Even a create that would also fail for the name says the caller is deposed.
	_, err = s.store.Create(s.ctx, s.key("a"), s.configMap("a", nil, nil), fenced)
	stale("create of a taken name at a stale epoch", err)

	if _, err := s.store.Get(s.ctx, s.key("new"), newConfigMap); !apierrors.IsNotFound(err) {
		s.t.Fatalf("a stale create wrote the object: get = %v", err)
	}
	expectEqual(s.t, "object after a stale update", s.get("a"), before)
	s.get("c")

	current := storage.WriteOptions{Fence: second}
	if _, err := s.store.Create(s.ctx, s.key("new"), s.configMap("new", nil, nil), current); err != nil {
		s.t.Fatalf("create at the new epoch: %v", err)
	}
	if _, err := s.store.Update(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{}, bump("2"), current); err != nil {
		s.t.Fatalf("update at the new epoch: %v", err)
	}
	if _, err := s.store.Delete(s.ctx, s.key("c"), newConfigMap, storage.Preconditions{}, current); err != nil {
		s.t.Fatalf("delete at the new epoch: %v", err)
	}

	// A released lease fences everyone out; so does a fence without an epoch.
	if _, err := s.store.Delete(s.ctx, second.LeaseKey, newLease, storage.Preconditions{}, storage.WriteOptions{}); err != nil {
		s.t.Fatalf("delete lease: %v", err)
	}
	_, err = s.store.Update(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{}, bump("3"), current)
	stale("update after the lease is gone", err)
	_, err = s.store.Create(s.ctx, s.key("zero"), s.configMap("zero", nil, nil),
		storage.WriteOptions{Fence: &storage.Fence{LeaseKey: leases.Key(s.ns, "absent"), Namespace: s.ns, Name: "absent"}})
	stale("create with epoch 0 and no lease", err)
	info := apierrors.ErrorInfo(err).GetMetadata()
	if info["lease"] != s.ns+"/absent" {
		s.t.Fatalf("LEASE_NOT_HELD names lease %q, want %s/absent", info["lease"], s.ns)
	}
}

func testFenceWithLostRace(s *suite) {
	first := s.fence("leader")
	s.create("a", map[string]string{"v": "1"}, nil)
	calls := 0
	_, err := s.store.Update(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{},
		func(cur storage.Object) (storage.Object, error) {
			calls++
			if calls == 1 {
				// Between this read and its write, the object changes and
				// the caller is deposed: both conditions of the write fail.
				s.set("a", map[string]string{"v": "other"}, nil)
				s.fence("leader")
			}
			cur.(*capstanv1.ConfigMap).Data["v"] = "deposed"
			return cur, nil
		}, storage.WriteOptions{Fence: first})
	expectCode(s.t, "update by a deposed holder that lost a race", err, codes.FailedPrecondition, apierrors.ReasonLeaseNotHeld)
	if got := s.get("a").Data["v"]; got != "other" {
		s.t.Fatalf("data v = %q, want other", got)
	}
}

// An update that changes nothing still checks its fence: a deposed leader
// is told, not answered OK.
func testFenceOnUnchangedUpdate(s *suite) {
	first := s.fence("leader")
	s.create("a", map[string]string{"v": "1"}, nil)
	same := func(cur storage.Object) (storage.Object, error) { return cur, nil }
	if _, err := s.store.Update(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{}, same, storage.WriteOptions{Fence: first}); err != nil {
		s.t.Fatalf("unchanged update at the current epoch: %v", err)
	}
	s.fence("leader")
	_, err := s.store.Update(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{}, same, storage.WriteOptions{Fence: first})
	expectCode(s.t, "unchanged update at a stale epoch", err, codes.FailedPrecondition, apierrors.ReasonLeaseNotHeld)
}

// requestID is unique to a subtest and a name.
func (s *suite) requestID(name string) string { return s.ns + "-" + name }

func set(v string) storage.UpdateFunc {
	return func(cur storage.Object) (storage.Object, error) {
		cur.(*capstanv1.ConfigMap).Data = map[string]string{"v": v}
		return cur, nil
	}
}

// A create repeated with its request id gets the first create's result —
// also after the object was changed or deleted — and writes nothing.
func testRequestRecordedCreate(s *suite) {
	opts := storage.WriteOptions{RequestID: s.requestID("create")}
	first, err := s.store.Create(s.ctx, s.key("a"), s.configMap("a", map[string]string{"v": "1"}, nil), opts)
	if err != nil {
		s.t.Fatalf("create: %v", err)
	}
	again, err := s.store.Create(s.ctx, s.key("a"), s.configMap("a", map[string]string{"v": "1"}, nil), opts)
	if err != nil {
		s.t.Fatalf("repeated create: %v", err)
	}
	expectEqual(s.t, "repeated create", again, first)

	s.set("a", map[string]string{"v": "2"}, nil)
	again, err = s.store.Create(s.ctx, s.key("a"), s.configMap("a", map[string]string{"v": "1"}, nil), opts)
	if err != nil {
		s.t.Fatalf("repeated create after a change: %v", err)
	}
	expectEqual(s.t, "repeated create after a change", again, first)

	s.remove("a")
	before := s.revision()
	again, err = s.store.Create(s.ctx, s.key("a"), s.configMap("a", map[string]string{"v": "1"}, nil), opts)
	if err != nil {
		s.t.Fatalf("repeated create after the object was deleted: %v", err)
	}
	expectEqual(s.t, "repeated create after a delete", again, first)
	if _, err := s.store.Get(s.ctx, s.key("a"), newConfigMap); !apierrors.IsNotFound(err) {
		s.t.Fatalf("a repeated create re-created the deleted object: get = %v", err)
	}
	if after := s.revision(); after != before {
		s.t.Fatalf("a repeated create wrote: revision %d -> %d", before, after)
	}
	// Another request creates it again.
	if _, err := s.store.Create(s.ctx, s.key("a"), s.configMap("a", nil, nil), storage.WriteOptions{RequestID: s.requestID("create-2")}); err != nil {
		s.t.Fatalf("create with another request: %v", err)
	}
}

// An update repeated with its request id gets the first update's result,
// whatever happened since and whatever its preconditions say now.
func testRequestRecordedUpdate(s *suite) {
	created := s.create("a", map[string]string{"v": "0"}, nil)
	opts := storage.WriteOptions{RequestID: s.requestID("update")}
	pre := storage.Preconditions{ResourceVersion: rv(created)}
	first, err := s.store.Update(s.ctx, s.key("a"), newConfigMap, pre, set("1"), opts)
	if err != nil {
		s.t.Fatalf("update: %v", err)
	}
	newer := s.set("a", map[string]string{"v": "2"}, nil)
	before := s.revision()
	again, err := s.store.Update(s.ctx, s.key("a"), newConfigMap, pre, set("1"), opts)
	if err != nil {
		s.t.Fatalf("repeated update after a newer write: %v", err)
	}
	expectEqual(s.t, "repeated update", again, first)
	expectEqual(s.t, "object after a repeated update", s.get("a"), newer)
	if after := s.revision(); after != before {
		s.t.Fatalf("a repeated update wrote: revision %d -> %d", before, after)
	}
	// An update that changes nothing is not recorded: the same id may
	// still write, once.
	same := storage.WriteOptions{RequestID: s.requestID("unchanged")}
	if _, err := s.store.Update(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{}, set("2"), same); err != nil {
		s.t.Fatalf("unchanged update: %v", err)
	}
	if _, err := s.store.Update(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{}, set("3"), same); err != nil {
		s.t.Fatalf("update after an unrecorded unchanged one: %v", err)
	}
	if got := s.get("a").Data["v"]; got != "3" {
		s.t.Fatalf("v = %q, want 3", got)
	}
}

// A delete repeated with its request id gets the object as the first delete
// found it, at the deletion's revision — also after a new object of the same
// name was created, which it leaves alone.
func testRequestRecordedDelete(s *suite) {
	s.create("a", map[string]string{"v": "1"}, nil)
	opts := storage.WriteOptions{RequestID: s.requestID("delete")}
	first, err := s.store.Delete(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{}, opts)
	if err != nil {
		s.t.Fatalf("delete: %v", err)
	}
	again, err := s.store.Delete(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{}, opts)
	if err != nil {
		s.t.Fatalf("repeated delete: %v", err)
	}
	expectEqual(s.t, "repeated delete", again, first)

	recreated := s.create("a", map[string]string{"v": "new"}, nil)
	again, err = s.store.Delete(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{}, opts)
	if err != nil {
		s.t.Fatalf("repeated delete after a re-create: %v", err)
	}
	expectEqual(s.t, "repeated delete after a re-create", again, first)
	expectEqual(s.t, "the re-created object", s.get("a"), recreated)
}

// Attempts of one request racing each other: exactly one writes, and every
// one answers with its result.
func testRequestRecordedConcurrently(s *suite) {
	s.create("a", map[string]string{"n": "0"}, nil)
	opts := storage.WriteOptions{RequestID: s.requestID("racing")}
	increment := func(cur storage.Object) (storage.Object, error) {
		cm := cur.(*capstanv1.ConfigMap)
		n, _ := strconv.Atoi(cm.Data["n"])
		cm.Data = map[string]string{"n": strconv.Itoa(n + 1)}
		return cm, nil
	}
	const attempts = 8
	results := make([]storage.Object, attempts)
	errs := make([]error, attempts)
	var wg sync.WaitGroup
	for i := range attempts {
		wg.Go(func() {
			results[i], errs[i] = s.store.Update(s.ctx, s.key("a"), newConfigMap, storage.Preconditions{}, increment, opts)
		})
	}
	wg.Wait()
	for i := range attempts {
		if errs[i] != nil {
			s.t.Fatalf("attempt %d: %v", i, errs[i])
		}
		expectEqual(s.t, fmt.Sprintf("attempt %d", i), results[i], results[0])
	}
	if got := s.get("a").Data["n"]; got != "1" {
		s.t.Fatalf("n = %s after %d attempts of one request, want 1", got, attempts)
	}
}

// A request id names one write: using it for another object is an error.
func testRequestIDOfAnotherObject(s *suite) {
	opts := storage.WriteOptions{RequestID: s.requestID("reused")}
	if _, err := s.store.Create(s.ctx, s.key("a"), s.configMap("a", nil, nil), opts); err != nil {
		s.t.Fatalf("create: %v", err)
	}
	_, err := s.store.Create(s.ctx, s.key("b"), s.configMap("b", nil, nil), opts)
	expectCode(s.t, "a request id reused for another object", err, codes.InvalidArgument, apierrors.ReasonFieldInvalid)
	if _, err := s.store.Get(s.ctx, s.key("b"), newConfigMap); !apierrors.IsNotFound(err) {
		s.t.Fatalf("the reused request id created b: %v", err)
	}
}

// A write whose context's deadline passes before it is sent — the replica
// froze between reading the call and writing — writes nothing.
func testDeadlinePassedBeforeWrite(s *suite) {
	expired, cancel := context.WithDeadline(s.ctx, time.Now().Add(-time.Millisecond))
	defer cancel()
	_, err := s.store.Create(expired, s.key("late"), s.configMap("late", nil, nil), storage.WriteOptions{})
	expectCode(s.t, "create past its deadline", err, codes.DeadlineExceeded, apierrors.ReasonDeadlinePassed)
	if _, err := s.store.Get(s.ctx, s.key("late"), newConfigMap); !apierrors.IsNotFound(err) {
		s.t.Fatalf("a create past its deadline wrote: get = %v", err)
	}

	s.create("a", map[string]string{"v": "1"}, nil)
	ctx, cancel := context.WithTimeout(s.ctx, time.Second)
	defer cancel()
	_, err = s.store.Update(ctx, s.key("a"), newConfigMap, storage.Preconditions{}, func(cur storage.Object) (storage.Object, error) {
		<-ctx.Done() // frozen between the read and the write
		cur.(*capstanv1.ConfigMap).Data = map[string]string{"v": "late"}
		return cur, nil
	}, storage.WriteOptions{})
	expectCode(s.t, "update past its deadline", err, codes.DeadlineExceeded, apierrors.ReasonDeadlinePassed)
	if got := s.get("a").Data["v"]; got != "1" {
		s.t.Fatalf("an update past its deadline wrote v = %q", got)
	}
}

func testCanceledContext(s *suite) {
	s.create("a", nil, nil)
	ctx, cancel := context.WithCancel(s.ctx)
	cancel()
	_, err := s.store.Get(ctx, s.key("a"), newConfigMap)
	expectCode(s.t, "get with a cancelled context", err, codes.Canceled, "")
	_, err = s.store.List(ctx, s.prefix(), newConfigMap, storage.ListOptions{})
	expectCode(s.t, "list with a cancelled context", err, codes.Canceled, "")
	_, err = s.store.Update(ctx, s.key("a"), newConfigMap, storage.Preconditions{},
		func(cur storage.Object) (storage.Object, error) { return cur, nil }, storage.WriteOptions{})
	expectCode(s.t, "update with a cancelled context", err, codes.Canceled, "")
}

func testRevision(s *suite) {
	before := s.revision()
	a := s.create("a", nil, nil)
	after := s.revision()
	if !(before < rv(a) && rv(a) <= after) {
		s.t.Fatalf("revisions: %d before a create at %d, %d after", before, rv(a), after)
	}
}
