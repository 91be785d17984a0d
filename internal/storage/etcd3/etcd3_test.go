package etcd3

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/etcdtest"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/internal/storage"
	"github.com/capstan-dev/capstan/internal/storage/storagetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, etcdtest.IgnoredGoroutines()...) }

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testWriter sends log lines to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func TestConformance(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	client := cluster.Client(t)
	storagetest.RunConformance(t,
		func(t *testing.T) storage.Interface { return New(client, Options{Logger: testLogger(t)}) },
		storagetest.Options{Compact: func(ctx context.Context, rev int64) error {
			_, err := client.Compact(ctx, rev, clientv3.WithCompactPhysical())
			return err
		}})
}

var configMaps = resource.MustLookup("ConfigMap")

func newConfigMap() storage.Object { return &capstanv1.ConfigMap{} }

func configMap(name string) *capstanv1.ConfigMap {
	return &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: name, Namespace: "default"}, Data: map[string]string{"k": "v"}}
}

// TestNoQuorum: with two of three members gone, calls end UNAVAILABLE
// within their deadline instead of hanging or failing otherwise.
func TestNoQuorum(t *testing.T) {
	cluster := etcdtest.Start(t, 3)
	client := cluster.Client(t)
	store := New(client, Options{Logger: testLogger(t)})
	key := configMaps.Key("default", "before")
	if _, err := store.Create(t.Context(), key, configMap("before"), storage.WriteOptions{}); err != nil {
		t.Fatalf("create with quorum: %v", err)
	}
	cluster.Stop(1)
	cluster.Stop(2)

	calls := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"create", func(ctx context.Context) error {
			_, err := store.Create(ctx, configMaps.Key("default", "after"), configMap("after"), storage.WriteOptions{})
			return err
		}},
		{"get", func(ctx context.Context) error { _, err := store.Get(ctx, key, newConfigMap); return err }},
		{"update", func(ctx context.Context) error {
			_, err := store.Update(ctx, key, newConfigMap, storage.Preconditions{},
				func(cur storage.Object) (storage.Object, error) {
					cur.(*capstanv1.ConfigMap).Data["k"] = "changed"
					return cur, nil
				}, storage.WriteOptions{})
			return err
		}},
		{"list", func(ctx context.Context) error {
			_, err := store.List(ctx, configMaps.Prefix("default"), newConfigMap, storage.ListOptions{})
			return err
		}},
		{"revision", func(ctx context.Context) error { _, err := store.Revision(ctx); return err }},
	}
	for _, tc := range calls {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			defer cancel()
			err := tc.call(ctx)
			t.Logf("%s: %v", tc.name, err)
			if apierrors.Code(err) != codes.Unavailable || apierrors.Reason(err) != apierrors.ReasonNoQuorum {
				t.Fatalf("%s without quorum = %v, want UNAVAILABLE %s", tc.name, err, apierrors.ReasonNoQuorum)
			}
		})
	}

	// A watch of a member without a leader ends UNAVAILABLE too, so its
	// consumer resumes elsewhere.
	w, err := store.Watch(t.Context(), configMaps.Prefix("default"), newConfigMap, storage.WatchOptions{ResourceVersion: 1})
	if err != nil {
		if apierrors.Code(err) != codes.Unavailable {
			t.Fatalf("watch without quorum = %v, want UNAVAILABLE", err)
		}
		return
	}
	defer w.Stop()
	deadline := time.After(30 * time.Second)
	for open := true; open; {
		select {
		case _, open = <-w.Events():
		case <-deadline:
			t.Fatal("watch of a member without a leader did not end")
		}
	}
	t.Logf("watch: %v", w.Err())
	if apierrors.Code(w.Err()) != codes.Unavailable {
		t.Fatalf("watch without quorum ended with %v, want UNAVAILABLE", w.Err())
	}
}

// TestStoredValues: the value in etcd holds no
// resource_version, and an undecodable value is INTERNAL naming its key.
func TestStoredValues(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	client := cluster.Client(t)
	store := New(client, Options{Logger: testLogger(t)})
	ctx := t.Context()

	in := configMap("a")
	in.Metadata.ResourceVersion = 99
	key := configMaps.Key("default", "a")
	if _, err := store.Create(ctx, key, in, storage.WriteOptions{}); err != nil {
		t.Fatalf("create: %v", err)
	}
	resp, err := client.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("raw get = %v, %v", resp, err)
	}
	var raw capstanv1.ConfigMap
	if err := proto.Unmarshal(resp.Kvs[0].Value, &raw); err != nil || raw.GetMetadata().GetName() != "a" {
		t.Fatalf("stored value decodes to %v, %v", &raw, err)
	}
	if v := raw.GetMetadata().GetResourceVersion(); v != 0 {
		t.Fatalf("the stored value carries resource_version %d", v)
	}

	badKey := configMaps.Key("default", "garbage")
	if _, err := client.Put(ctx, badKey, "\xff\xff\xff not protobuf"); err != nil {
		t.Fatalf("put garbage: %v", err)
	}
	checkInternal := func(what string, err error) {
		t.Helper()
		if apierrors.Code(err) != codes.Internal || !strings.Contains(err.Error(), badKey) {
			t.Fatalf("%s of an undecodable value = %v, want INTERNAL naming %s", what, err, badKey)
		}
	}
	_, err = store.Get(ctx, badKey, newConfigMap)
	checkInternal("get", err)
	_, err = store.List(ctx, configMaps.Prefix("default"), newConfigMap, storage.ListOptions{})
	checkInternal("list", err)
	_, err = store.Update(ctx, badKey, newConfigMap, storage.Preconditions{},
		func(cur storage.Object) (storage.Object, error) { return cur, nil }, storage.WriteOptions{})
	checkInternal("update", err)

	w, err := store.Watch(ctx, configMaps.Prefix("default"), newConfigMap, storage.WatchOptions{ResourceVersion: resp.Header.Revision})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	defer w.Stop()
	if _, err := client.Put(ctx, badKey, "\xff again"); err != nil {
		t.Fatalf("put garbage: %v", err)
	}
	for range w.Events() {
		t.Fatal("an undecodable value produced an event")
	}
	checkInternal("watch", w.Err())
}

// TestStampCreateRevision: every object the store returns — a write's
// result, a read, a list, a watch event — goes through
// Options.StampCreateRevision with its key's create revision, which etcd
// keeps across updates; a store without the hook returns the objects as they
// are stored.
func TestStampCreateRevision(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	client := cluster.Client(t)
	ctx := t.Context()
	const stamp = "create-revision"
	store := New(client, Options{
		Logger: testLogger(t),
		StampCreateRevision: func(obj storage.Object, createRevision int64) {
			meta := resource.Meta(obj)
			if meta.Annotations == nil {
				meta.Annotations = map[string]string{}
			}
			meta.Annotations[stamp] = fmt.Sprint(createRevision)
		},
	})
	prefix := configMaps.Prefix("stamp")
	key := configMaps.Key("stamp", "a")
	w, err := store.Watch(ctx, prefix, newConfigMap, storage.WatchOptions{ResourceVersion: 1})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	defer w.Stop()

	check := func(what string, obj storage.Object, want int64) {
		t.Helper()
		if got := resource.Meta(obj).GetAnnotations()[stamp]; got != fmt.Sprint(want) {
			t.Errorf("%s: stamped create revision %q, want %d", what, got, want)
		}
	}
	in := configMap("a")
	in.Metadata.Namespace = "stamp"
	created, err := store.Create(ctx, key, in, storage.WriteOptions{})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	createRev := resource.Meta(created).GetResourceVersion()
	check("create", created, createRev)
	updated, err := store.Update(ctx, key, newConfigMap, storage.Preconditions{},
		func(cur storage.Object) (storage.Object, error) {
			cur.(*capstanv1.ConfigMap).Data["k"] = "updated"
			return cur, nil
		}, storage.WriteOptions{})
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	if resource.Meta(updated).GetResourceVersion() == createRev {
		t.Fatal("the update wrote nothing")
	}
	check("update", updated, createRev)
	got, err := store.Get(ctx, key, newConfigMap)
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	check("get", got, createRev)
	list, err := store.List(ctx, prefix, newConfigMap, storage.ListOptions{})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("list = %v, %v", list.Items, err)
	}
	check("list", list.Items[0], createRev)
	deleted, err := store.Delete(ctx, key, newConfigMap, storage.Preconditions{}, storage.WriteOptions{})
	if err != nil {
		t.Fatalf("delete: %v", err)
	}
	check("delete", deleted, createRev)
	for _, typ := range []storage.EventType{storage.Added, storage.Modified, storage.Deleted} {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				t.Fatalf("watch ended: %v", w.Err())
			}
			if ev.Type != typ {
				t.Fatalf("event %v, want %v", ev.Type, typ)
			}
			check(fmt.Sprintf("watch event %v", typ), ev.Object, createRev)
		case <-time.After(15 * time.Second):
			t.Fatalf("no %v event within 15s", typ)
		}
	}

	plain := New(client, Options{Logger: testLogger(t)})
	again, err := plain.Create(ctx, key, in, storage.WriteOptions{})
	if err != nil {
		t.Fatalf("create without the hook: %v", err)
	}
	if got, err := plain.Get(ctx, key, newConfigMap); err != nil || len(got.GetMetadata().GetAnnotations()) != 0 || !proto.Equal(got, again) {
		t.Fatalf("get without the hook = %v, %v; want %v", got, err, again)
	}
}

// TestTTLLease: a key written with an etcd lease goes with it, and an
// update without TTLLease keeps the key on its lease.
func TestTTLLease(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	client := cluster.Client(t)
	store := New(client, Options{Logger: testLogger(t)})
	ctx := t.Context()

	grant, err := client.Grant(ctx, 60)
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	key := configMaps.Key("default", "leased")
	if _, err := store.Create(ctx, key, configMap("leased"), storage.WriteOptions{TTLLease: int64(grant.ID)}); err != nil {
		t.Fatalf("create on a lease: %v", err)
	}
	if _, err := store.Update(ctx, key, newConfigMap, storage.Preconditions{},
		func(cur storage.Object) (storage.Object, error) {
			cur.(*capstanv1.ConfigMap).Data["k"] = "updated"
			return cur, nil
		}, storage.WriteOptions{}); err != nil {
		t.Fatalf("update: %v", err)
	}
	resp, err := client.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease != int64(grant.ID) {
		t.Fatalf("after update the key has lease %v (err %v), want %x", resp.Kvs, err, grant.ID)
	}
	if _, err := client.Revoke(ctx, grant.ID); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if _, err := store.Get(ctx, key, newConfigMap); !apierrors.IsNotFound(err) {
		t.Fatalf("get after the lease was revoked = %v, want NOT_FOUND", err)
	}
	_, err = store.Create(ctx, key, configMap("leased"), storage.WriteOptions{TTLLease: int64(grant.ID)})
	if apierrors.Code(err) != codes.FailedPrecondition {
		t.Fatalf("create on a revoked lease = %v, want FAILED_PRECONDITION", err)
	}
}

func TestStatusOf(t *testing.T) {
	for _, tc := range []struct {
		err    error
		code   codes.Code
		reason string
	}{
		{context.DeadlineExceeded, codes.Unavailable, apierrors.ReasonNoQuorum},
		{fmt.Errorf("wrapped: %w", context.DeadlineExceeded), codes.Unavailable, apierrors.ReasonNoQuorum},
		{context.Canceled, codes.Canceled, ""},
		{status.Error(codes.Canceled, "grpc: the client connection is closing"), codes.Unavailable, apierrors.ReasonNoQuorum},
		{rpctypes.ErrTimeout, codes.Unavailable, apierrors.ReasonNoQuorum},
		{rpctypes.ErrTimeoutDueToLeaderFail, codes.Unavailable, apierrors.ReasonNoQuorum},
		{rpctypes.ErrTimeoutDueToConnectionLost, codes.Unavailable, apierrors.ReasonNoQuorum},
		{rpctypes.ErrNoLeader, codes.Unavailable, apierrors.ReasonNoQuorum},
		{rpctypes.ErrLeaderChanged, codes.Unavailable, apierrors.ReasonNoQuorum},
		{rpctypes.ErrStopped, codes.Unavailable, apierrors.ReasonNoQuorum},
		{rpctypes.ErrTooManyRequests, codes.Unavailable, apierrors.ReasonNoQuorum},
		{rpctypes.Error(rpctypes.ErrGRPCNoLeader), codes.Unavailable, apierrors.ReasonNoQuorum},
		{status.Error(codes.Unavailable, "connection refused"), codes.Unavailable, apierrors.ReasonNoQuorum},
		{status.Error(codes.DeadlineExceeded, "context deadline exceeded"), codes.Unavailable, apierrors.ReasonNoQuorum},
		{rpctypes.ErrCompacted, codes.OutOfRange, apierrors.ReasonResourceVersionExpired},
		{rpctypes.ErrLeaseNotFound, codes.FailedPrecondition, apierrors.ReasonPreconditionFailed},
		{rpctypes.ErrNoSpace, codes.Internal, apierrors.ReasonInternal},
		{rpctypes.ErrRequestTooLarge, codes.Internal, apierrors.ReasonInternal},
		{errors.New("something else"), codes.Internal, apierrors.ReasonInternal},
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			got := statusOf(tc.err)
			if apierrors.Code(got) != tc.code || apierrors.Reason(got) != tc.reason {
				t.Fatalf("statusOf(%v) = %v (reason %q), want %v %q", tc.err, got, apierrors.Reason(got), tc.code, tc.reason)
			}
		})
	}
	if statusOf(nil) != nil {
		t.Fatal("statusOf(nil) is not nil")
	}
}

func TestObjectRef(t *testing.T) {
	for _, tc := range []struct{ key, kind, namespace, name string }{
		{"/capstan/pods/default/web-1", "Pod", "default", "web-1"},
		{"/capstan/configmaps/kube/settings", "ConfigMap", "kube", "settings"},
		{"/capstan/nodes/worker-1", "Node", "", "worker-1"},
		{"/capstan/widgets/a/b", "widgets", "", "a/b"},
		{"/capstan/pods/no-namespace", "Pod", "", "no-namespace"},
		{"/elsewhere/x", "object", "", "/elsewhere/x"},
		{"/capstan/", "object", "", "/capstan/"},
	} {
		kind, ns, name := objectRef(tc.key)
		if kind != tc.kind || ns != tc.namespace || name != tc.name {
			t.Errorf("objectRef(%q) = %q, %q, %q; want %q, %q, %q", tc.key, kind, ns, name, tc.kind, tc.namespace, tc.name)
		}
	}
}

func TestDecodeContinue(t *testing.T) {
	const prefix = "/capstan/pods/default/"
	good := encodeContinue(prefix+"b\x00", 7)
	ct, err := decodeContinue(good, prefix)
	if err != nil || ct.Key != prefix+"b\x00" || ct.Revision != 7 {
		t.Fatalf("decodeContinue(good) = %+v, %v", ct, err)
	}
	for _, bad := range []string{
		"%%%",
		encodeRaw(`not json`),
		encodeRaw(`{"k":"/capstan/pods/default/b","r":7,"x":1}`),
		encodeRaw(`{"k":"/capstan/pods/default/b","r":0}`),
		encodeRaw(`{"k":"/capstan/pods/defaultx/b","r":7}`),
		encodeRaw(`{"k":"/capstan/pods/default/","r":7}`),
		encodeContinue("/capstan/secrets/x", 7),
	} {
		if _, err := decodeContinue(bad, prefix); apierrors.Field(err) != resource.FieldPageToken {
			t.Errorf("decodeContinue(%q) = %v, want INVALID_ARGUMENT on %s", bad, err, resource.FieldPageToken)
		}
	}
}

func encodeRaw(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// TestExpiredNamesCompaction: the OUT_OF_RANGE of a page token tells the
// revision asked for and the one compacted up to.
func TestExpiredNamesCompaction(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	client := cluster.Client(t)
	store := New(client, Options{Logger: testLogger(t)})
	ctx := t.Context()
	for _, name := range []string{"a", "b"} {
		if _, err := store.Create(ctx, configMaps.Key("default", name), configMap(name), storage.WriteOptions{}); err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
	}
	first, err := store.List(ctx, configMaps.Prefix("default"), newConfigMap, storage.ListOptions{Limit: 1})
	if err != nil || first.Continue == "" {
		t.Fatalf("first page = %+v, %v", first, err)
	}
	put, err := client.Put(ctx, "/unrelated", "x")
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	if _, err := client.Compact(ctx, put.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact: %v", err)
	}
	_, err = store.List(ctx, configMaps.Prefix("default"), newConfigMap, storage.ListOptions{Limit: 1, Continue: first.Continue})
	md := apierrors.ErrorInfo(err).GetMetadata()
	if !apierrors.IsExpired(err) || md["requested"] != fmt.Sprint(first.Revision) || md["compacted"] != fmt.Sprint(put.Header.Revision) {
		t.Fatalf("next page = %v (%v), want OUT_OF_RANGE requested=%d compacted=%d", err, md, first.Revision, put.Header.Revision)
	}
}

// TestWatchAcrossMemberStop: when the member serving a watch stops, the
// watch either carries on through another member or ends UNAVAILABLE and
// resumes from its last revision; either way every change arrives once, in
// order.
func TestWatchAcrossMemberStop(t *testing.T) {
	cluster := etcdtest.Start(t, 3)
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{cluster.Member(0).ClientURL, cluster.Member(1).ClientURL},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	t.Cleanup(func() { client.Close() })
	store := New(client, Options{Logger: testLogger(t)})
	ctx := t.Context()
	key := configMaps.Key("default", "counter")
	created, err := store.Create(ctx, key, configMap("counter"), storage.WriteOptions{})
	if err != nil {
		t.Fatalf("create: %v", err)
	}

	// set writes n, retrying while a stopped member makes etcd unavailable;
	// writing the same value again is a no-op, so a retry cannot double it.
	set := func(n int) {
		t.Helper()
		poll.For(t, 30*time.Second, fmt.Sprintf("n=%d written", n), func(ctx context.Context) error {
			callCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			_, err := store.Update(callCtx, key, newConfigMap, storage.Preconditions{},
				func(cur storage.Object) (storage.Object, error) {
					cur.(*capstanv1.ConfigMap).Data["n"] = fmt.Sprint(n)
					return cur, nil
				}, storage.WriteOptions{})
			if err != nil && apierrors.Code(err) != codes.Unavailable {
				t.Fatalf("set %d: %v", n, err)
			}
			return err
		})
	}

	const perPhase = 5
	last := created.GetMetadata().GetResourceVersion()
	w, err := store.Watch(ctx, configMaps.Prefix("default"), newConfigMap, storage.WatchOptions{ResourceVersion: last})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	defer func() { w.Stop() }()
	next := 1
	for phase, stop := range []func(){
		func() {},
		func() { cluster.Stop(0) },
		func() {
			if err := cluster.Member(0).Restart(ctx); err != nil {
				t.Fatalf("restart member 0: %v", err)
			}
			cluster.Stop(1)
		},
	} {
		stop()
		for range perPhase {
			set(next)
			next++
		}
		t.Logf("phase %d written", phase)
	}

	resumes := 0
	for want := 1; want < next; {
		ev, ok := <-w.Events()
		if !ok {
			if apierrors.Code(w.Err()) != codes.Unavailable || resumes > 10 {
				t.Fatalf("watch ended with %v after %d resumes", w.Err(), resumes)
			}
			resumes++
			w, err = store.Watch(ctx, configMaps.Prefix("default"), newConfigMap, storage.WatchOptions{ResourceVersion: last})
			if err != nil {
				t.Fatalf("resume watch from %d: %v", last, err)
			}
			continue
		}
		if got := ev.Object.(*capstanv1.ConfigMap).Data["n"]; ev.Type != storage.Modified || got != fmt.Sprint(want) || ev.Revision <= last {
			t.Fatalf("event %v n=%s at %d (last %d), want Modified n=%d", ev.Type, got, ev.Revision, last, want)
		}
		last = ev.Revision
		want++
	}
	t.Logf("all %d changes seen after %d resumes", next-1, resumes)
}

// A write recorded minutes ago (by a replica, say, whose clock is behind)
// is still found by a repeat; records of minutes older than the kept ones
// are deleted in bulk, younger ones stay.
func TestRequestRecordsByMinute(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	client := cluster.Client(t)
	ctx := t.Context()
	store := New(client, Options{Logger: testLogger(t)})
	key := configMaps.Key("records", "a")
	cm := &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: "a", Namespace: "records"}, Data: map[string]string{"v": "1"}}

	// The write, as recorded by a replica three minutes behind.
	then := time.Now().Add(-3 * time.Minute)
	first, err := createRecordedAt(ctx, store, key, cm, "early", then)
	if err != nil {
		t.Fatalf("create recorded three minutes ago: %v", err)
	}
	again, err := store.Create(ctx, key, cm, storage.WriteOptions{RequestID: "early"})
	if err != nil {
		t.Fatalf("repeat now: %v", err)
	}
	if !proto.Equal(again, first) {
		t.Fatalf("repeat answered %v, want the first write's %v", again, first)
	}

	// An expired minute, and the current one.
	old := minuteKey(time.Now().Unix()/60-requestKeptMinutes-1) + "old"
	current := minuteKey(time.Now().Unix()/60) + "current"
	for _, k := range []string{old, current} {
		if _, err := client.Put(ctx, k, `{"key":"/x"}`); err != nil {
			t.Fatal(err)
		}
	}
	expireCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); store.ExpireRequests(expireCtx) }()
	poll.For(t, 10*time.Second, "the expired minute to be deleted", func(ctx context.Context) error {
		resp, err := client.Get(ctx, old)
		if err != nil {
			return err
		}
		if len(resp.Kvs) != 0 {
			return errors.New("still there")
		}
		return nil
	})
	stop()
	<-done
	for _, k := range []string{current, minuteKey(then.Unix()/60) + "early"} {
		if resp, err := client.Get(ctx, k); err != nil || len(resp.Kvs) != 1 {
			t.Errorf("record %s after expiry: %v, %v; want it kept", k, resp, err)
		}
	}
}

// A create's first attempt can reach etcd after its retry was recorded
// in a later minute: a transaction is evaluated when etcd applies it, and
// one held in a frozen etcd member is applied when the member resumes. If
// the object was deleted meanwhile, the late attempt must not create it
// again: it finds the retry's record, wherever the minutes fall.
func TestLateAttemptFindsTheRecordOfALaterMinute(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	client := cluster.Client(t)
	ctx := t.Context()
	for _, skew := range []time.Duration{time.Minute, 2*time.Minute + 50*time.Second, -time.Minute} {
		t.Run(skew.String(), func(t *testing.T) {
			late := New(client, Options{Logger: testLogger(t)})
			retry := New(client, Options{Logger: testLogger(t), Now: func() time.Time { return time.Now().Add(skew) }})
			name := fmt.Sprintf("late-%d", int64(skew.Seconds()))
			key := configMaps.Key("records", name)
			cm := &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: name, Namespace: "records"}, Data: map[string]string{"v": "1"}}
			id := "late-" + name

			created, err := retry.Create(ctx, key, cm, storage.WriteOptions{RequestID: id})
			if err != nil {
				t.Fatalf("retry's create: %v", err)
			}
			if _, err := late.Delete(ctx, key, newConfigMap, storage.Preconditions{}, storage.WriteOptions{}); err != nil {
				t.Fatalf("another client's delete: %v", err)
			}
			answer, err := late.Create(ctx, key, cm, storage.WriteOptions{RequestID: id})
			if err != nil {
				t.Fatalf("late attempt: %v", err)
			}
			if !proto.Equal(answer, created) {
				t.Errorf("late attempt answered %v, want the recorded create %v", answer, created)
			}
			if resp, err := client.Get(ctx, key); err != nil || len(resp.Kvs) != 0 {
				t.Fatalf("after the late attempt: %v, %v; want the object still deleted", resp, err)
			}
		})
	}
}

// A create refused because its key existed is refused for good under its
// request id: an earlier attempt of the same request that reaches etcd
// late — after the key was deleted — must not create it, or a create
// reported ALREADY_EXISTS would have happened after all. Whatever minute
// each attempt was filed in.
func TestRefusedCreateStaysRefused(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	client := cluster.Client(t)
	ctx := t.Context()
	for _, skew := range []time.Duration{0, time.Minute, -time.Minute} {
		t.Run(skew.String(), func(t *testing.T) {
			late := New(client, Options{Logger: testLogger(t)})
			retry := New(client, Options{Logger: testLogger(t), Now: func() time.Time { return time.Now().Add(skew) }})
			name := fmt.Sprintf("refused-%d", int64(skew.Seconds()))
			key := configMaps.Key("records", name)
			theirs := &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: name, Namespace: "records"}, Data: map[string]string{"v": "theirs"}}
			mine := &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: name, Namespace: "records"}, Data: map[string]string{"v": "mine"}}
			id := "refused-" + name

			if _, err := late.Create(ctx, key, theirs, storage.WriteOptions{}); err != nil {
				t.Fatalf("another client's create: %v", err)
			}
			if _, err := retry.Create(ctx, key, mine, storage.WriteOptions{RequestID: id}); !apierrors.IsAlreadyExists(err) {
				t.Fatalf("retry over the other client's object: %v, want ALREADY_EXISTS", err)
			}
			if _, err := late.Delete(ctx, key, newConfigMap, storage.Preconditions{}, storage.WriteOptions{}); err != nil {
				t.Fatalf("another client's delete: %v", err)
			}
			if _, err := late.Create(ctx, key, mine, storage.WriteOptions{RequestID: id}); !apierrors.IsAlreadyExists(err) {
				t.Errorf("late first attempt: %v, want the recorded ALREADY_EXISTS", err)
			}
			if resp, err := client.Get(ctx, key); err != nil || len(resp.Kvs) != 0 {
				t.Fatalf("after the late attempt: %v, %v; want the object still deleted", resp, err)
			}
			// A create of a free key with a new id is not affected.
			if _, err := late.Create(ctx, key, mine, storage.WriteOptions{RequestID: id + "-new"}); err != nil {
				t.Errorf("create with a new id: %v", err)
			}
		})
	}
}

// createRecordedAt is Create with the request recorded as at time at.
func createRecordedAt(ctx context.Context, s *Store, key string, obj storage.Object, id string, at time.Time) (storage.Object, error) {
	req := newRequest(id, at)
	stored := resource.Clone(obj)
	data, err := encode(key, stored)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.Txn(ctx).If(append(req.absent(), clientv3.Compare(clientv3.CreateRevision(key), "=", 0))...).
		Then(clientv3.OpPut(key, string(data)), req.put(key, false)).Commit()
	if err != nil || !resp.Succeeded {
		return nil, fmt.Errorf("txn: %v, succeeded %v", err, resp != nil && resp.Succeeded)
	}
	resource.Meta(stored).ResourceVersion = resp.Header.Revision
	return stored, nil
}

// A write that etcd applies after its deadline — it waited in a frozen
// member — writes nothing. The store's transactions are delivered late
// here: after the call's deadline has passed and the cluster clock has
// moved on past it, exactly as a member resuming would propose them. Each
// kind of write leaves the key as it was; delivered on time, the same
// writes land.
func TestWriteAppliedAfterItsDeadlineWritesNothing(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	client := cluster.Client(t)
	ctx := t.Context()
	onTime := New(client, Options{Logger: testLogger(t)})
	late := New(client, Options{Logger: testLogger(t)})
	// The replicas' ticks when the frozen member resumes, two seconds on.
	ticker := New(client, Options{Logger: testLogger(t), Now: func() time.Time { return time.Now().Add(2 * time.Second) }})
	delivered := 0
	late.writeTxn = func(callCtx context.Context, conds []clientv3.Cmp, then, orElse []clientv3.Op) (*clientv3.TxnResponse, error) {
		<-callCtx.Done() // the caller gives up
		if err := ticker.advanceClock(ctx); err != nil {
			return nil, err
		}
		delivered++
		if _, err := client.Txn(ctx).If(conds...).Then(then...).Else(orElse...).Commit(); err != nil {
			t.Errorf("late delivery: %v", err)
		}
		return nil, callCtx.Err()
	}
	key := configMaps.Key("clock", "a")
	cm := &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: "a", Namespace: "clock"}, Data: map[string]string{"v": "1"}}
	withDeadline := func() context.Context {
		c, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		t.Cleanup(cancel)
		return c
	}
	// The clock is measured first, as TickClock would have.
	if err := late.advanceClock(ctx); err != nil {
		t.Fatal(err)
	}

	if _, err := late.Create(withDeadline(), key, cm, storage.WriteOptions{RequestID: "clock-late-create"}); err == nil {
		t.Fatal("late create answered OK")
	}
	if _, err := onTime.Get(ctx, key, newConfigMap); !apierrors.IsNotFound(err) {
		t.Fatalf("late create's object: %v, want NOT_FOUND", err)
	}
	created, err := onTime.Create(withDeadline(), key, cm, storage.WriteOptions{RequestID: "clock-create"})
	if err != nil {
		t.Fatalf("create on time: %v", err)
	}
	_, err = late.Update(withDeadline(), key, newConfigMap, storage.Preconditions{}, func(obj storage.Object) (storage.Object, error) {
		obj.(*capstanv1.ConfigMap).Data["v"] = "2"
		return obj, nil
	}, storage.WriteOptions{RequestID: "clock-late-update"})
	if err == nil {
		t.Error("late update answered OK")
	}
	if _, err := late.Delete(withDeadline(), key, newConfigMap, storage.Preconditions{}, storage.WriteOptions{}); err == nil {
		t.Error("late delete answered OK")
	}
	got, err := onTime.Get(ctx, key, newConfigMap)
	if err != nil || !proto.Equal(got, created) {
		t.Errorf("after the late writes: %v, %v; want %v unchanged", got, err, created)
	}

	// A late create over someone else's object records no refusal either:
	// its retry, once that object is gone, creates it.
	if _, err := late.Create(withDeadline(), key, cm, storage.WriteOptions{RequestID: "clock-late-refused"}); err == nil {
		t.Error("late create over an existing object answered OK")
	}
	if _, err := onTime.Delete(ctx, key, newConfigMap, storage.Preconditions{}, storage.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := onTime.Create(withDeadline(), key, cm, storage.WriteOptions{RequestID: "clock-late-refused"}); err != nil {
		t.Errorf("the retry of a create that reached etcd late, the name now free: %v", err)
	}
	if delivered != 4 {
		t.Fatalf("%d transactions delivered late, want 4", delivered)
	}
}

// The cluster clock is the fastest replica's; a replica whose clock is
// behind measures the lead and states its deadlines in the cluster's time,
// so an hour's difference between replica clocks fails no write — not even
// the first, made before the slow replica measured anything. The slow
// replica moves the clock on at the pace of real time, not back.
func TestReplicaClocksThatDifferFailNoWrite(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	client := cluster.Client(t)
	ctx := t.Context()
	fast := New(client, Options{Logger: testLogger(t), Now: func() time.Time { return time.Now().Add(time.Hour) }})
	slow := New(client, Options{Logger: testLogger(t)})
	if err := fast.advanceClock(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		name := fmt.Sprintf("skew-%d", i)
		_, err := slow.Create(callCtx, configMaps.Key("clock", name), &capstanv1.ConfigMap{Metadata: &capstanv1.ObjectMeta{Name: name, Namespace: "clock"}}, storage.WriteOptions{})
		cancel()
		if err != nil {
			t.Fatalf("write %d of the replica an hour behind: %v", i, err)
		}
	}
	if lead := time.Duration(slow.clockLead.Load()); lead < 59*time.Minute {
		t.Errorf("the slow replica measured a lead of %v, want about an hour", lead)
	}
	// The slow replica keeps the clock at the pace of real time from the
	// value it read, never back to its own time.
	before, err := client.Get(ctx, ClockKey)
	if err != nil || len(before.Kvs) != 1 {
		t.Fatalf("clock: %v, %v", before, err)
	}
	since := time.Now()
	if err := slow.advanceClock(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := client.Get(ctx, ClockKey)
	if err != nil || len(after.Kvs) != 1 {
		t.Fatalf("clock: %v, %v", after, err)
	}
	b, _ := strconv.ParseInt(string(before.Kvs[0].Value), 10, 64)
	a, _ := strconv.ParseInt(string(after.Kvs[0].Value), 10, 64)
	if moved := time.Duration(a-b) * time.Millisecond; moved < 0 || moved > time.Since(since)+time.Second {
		t.Errorf("the slow replica moved the clock by %v in %v", moved, time.Since(since))
	}
}
