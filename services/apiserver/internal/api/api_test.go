package api_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// etcd's embedded server and client keep a few process-wide goroutines.
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/client/pkg/v3/logutil.(*MergeLogger).outputLoop"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

type env struct {
	cluster *apiservertest.Cluster
	conns   []*grpc.ClientConn
}

func newEnv(t *testing.T, replicas int) *env { return newEnvTB(t, replicas) }

func newEnvB(b *testing.B) *env { return newEnvTB(b, 1) }

func newEnvTB(t testing.TB, replicas int) *env {
	t.Helper()
	c := apiservertest.Start(t, replicas)
	e := &env{cluster: c}
	for _, addr := range c.Addrs() {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		e.conns = append(e.conns, conn)
	}
	return e
}

func (e *env) pods(i int) capstanv1.PodServiceClient {
	return capstanv1.NewPodServiceClient(e.conns[i])
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func testPod(name string) *capstanv1.Pod {
	return &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Name: name, Labels: map[string]string{"app": "web"}},
		Spec: &capstanv1.PodSpec{Containers: []*capstanv1.Container{{
			Name: "main", Command: []string{"/bin/sleep", "1000"},
		}}},
	}
}

func TestCreateSetsServerFieldsAndIsReadOnEveryReplica(t *testing.T) {
	e := newEnv(t, 3)
	ctx := ctxT(t)
	in := testPod("web-1")
	in.Metadata.Uid = "client-chosen"
	in.Metadata.Generation = 7
	in.Status = &capstanv1.PodStatus{Phase: "Running"}
	created, err := e.pods(0).CreatePod(ctx, &capstanv1.CreatePodRequest{Pod: in})
	if err != nil {
		t.Fatal(err)
	}
	m := created.GetPod().GetMetadata()
	if m.GetUid() == "" || m.GetUid() == "client-chosen" || m.GetGeneration() != 1 || m.GetResourceVersion() == 0 ||
		m.GetNamespace() != "default" || m.GetCreateTime() == nil {
		t.Fatalf("server-set metadata wrong: %v", m)
	}
	if got := created.GetPod().GetStatus().GetPhase(); got != "Pending" {
		t.Fatalf("phase = %q, want Pending (client status ignored)", got)
	}
	for i := 1; i < 3; i++ {
		got, err := e.pods(i).GetPod(ctx, &capstanv1.GetPodRequest{Name: "web-1"})
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
		if !proto.Equal(got.GetPod(), created.GetPod()) {
			t.Fatalf("replica %d read %v, want %v", i, got.GetPod(), created.GetPod())
		}
	}
}

func TestUpdateSemantics(t *testing.T) {
	e := newEnv(t, 1)
	ctx := ctxT(t)
	cm := capstanv1.NewConfigMapServiceClient(e.conns[0])
	created, err := cm.CreateConfigMap(ctx, &capstanv1.CreateConfigMapRequest{ConfigMap: &capstanv1.ConfigMap{
		Metadata: &capstanv1.ObjectMeta{Name: "cfg"}, Data: map[string]string{"a": "1"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	obj := created.GetConfigMap()

	// A label change keeps the generation; a data change bumps it.
	obj.Metadata.Labels = map[string]string{"x": "y"}
	upd, err := cm.UpdateConfigMap(ctx, &capstanv1.UpdateConfigMapRequest{ConfigMap: obj})
	if err != nil {
		t.Fatal(err)
	}
	if upd.GetConfigMap().GetMetadata().GetGeneration() != 1 {
		t.Fatalf("metadata-only update bumped generation: %v", upd.GetConfigMap().GetMetadata())
	}
	obj = upd.GetConfigMap()
	obj.Data["a"] = "2"
	upd, err = cm.UpdateConfigMap(ctx, &capstanv1.UpdateConfigMapRequest{ConfigMap: obj})
	if err != nil {
		t.Fatal(err)
	}
	if upd.GetConfigMap().GetMetadata().GetGeneration() != 2 {
		t.Fatalf("data update did not bump generation: %v", upd.GetConfigMap().GetMetadata())
	}
	if upd.GetConfigMap().GetMetadata().GetUid() != created.GetConfigMap().GetMetadata().GetUid() {
		t.Fatal("uid changed on update")
	}

	// A stale resource_version is ABORTED and changes nothing.
	stale := proto.Clone(obj).(*capstanv1.ConfigMap)
	stale.Data["a"] = "stale"
	_, err = cm.UpdateConfigMap(ctx, &capstanv1.UpdateConfigMapRequest{ConfigMap: stale})
	if status.Code(err) != codes.Aborted || apierrors.Reason(err) != apierrors.ReasonConflict {
		t.Fatalf("stale update: %v, want ABORTED CONFLICT", err)
	}
	got, err := cm.GetConfigMap(ctx, &capstanv1.GetConfigMapRequest{Name: "cfg"})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetConfigMap().GetData()["a"] != "2" {
		t.Fatalf("stale update changed the object: %v", got.GetConfigMap())
	}
}

func TestStatusOnlyThroughUpdateStatus(t *testing.T) {
	e := newEnv(t, 1)
	ctx := ctxT(t)
	created, err := e.pods(0).CreatePod(ctx, &capstanv1.CreatePodRequest{Pod: testPod("p")})
	if err != nil {
		t.Fatal(err)
	}
	pod := created.GetPod()
	pod.Status.Phase = "Running"
	pod.Metadata.Labels["extra"] = "1"
	upd, err := e.pods(0).UpdatePod(ctx, &capstanv1.UpdatePodRequest{Pod: pod})
	if err != nil {
		t.Fatal(err)
	}
	if upd.GetPod().GetStatus().GetPhase() != "Pending" {
		t.Fatalf("Update changed status: %v", upd.GetPod().GetStatus())
	}
	st := upd.GetPod()
	st.Status.Phase = "Running"
	st.Metadata.Labels = nil
	st2, err := e.pods(0).UpdatePodStatus(ctx, &capstanv1.UpdatePodStatusRequest{Pod: st})
	if err != nil {
		t.Fatal(err)
	}
	if st2.GetPod().GetStatus().GetPhase() != "Running" || st2.GetPod().GetMetadata().GetLabels()["extra"] != "1" {
		t.Fatalf("UpdateStatus: %v", st2.GetPod())
	}
}

func TestConcurrentUpdatesSameVersionExactlyOneWins(t *testing.T) {
	e := newEnv(t, 3)
	ctx := ctxT(t)
	created, err := e.pods(0).CreatePod(ctx, &capstanv1.CreatePodRequest{Pod: testPod("race")})
	if err != nil {
		t.Fatal(err)
	}
	const writers = 12
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			p := proto.Clone(created.GetPod()).(*capstanv1.Pod)
			p.Metadata.Labels["writer"] = string(rune('a' + i))
			_, errs[i] = e.pods(i%3).UpdatePod(ctx, &capstanv1.UpdatePodRequest{Pod: p})
		}(i)
	}
	wg.Wait()
	wins := 0
	for _, err := range errs {
		switch status.Code(err) {
		case codes.OK:
			wins++
		case codes.Aborted:
		default:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d updates won, want exactly 1", wins)
	}
}

func TestBindPodIsCompareAndSwap(t *testing.T) {
	e := newEnv(t, 1)
	ctx := ctxT(t)
	created, err := e.pods(0).CreatePod(ctx, &capstanv1.CreatePodRequest{Pod: testPod("b")})
	if err != nil {
		t.Fatal(err)
	}
	// A bind decided on a version the pod has left is refused.
	seen := created.GetPod().GetMetadata().GetResourceVersion()
	changed := created.GetPod()
	changed.Metadata.Labels = map[string]string{"changed": "yes"}
	if _, err := e.pods(0).UpdatePod(ctx, &capstanv1.UpdatePodRequest{Pod: changed}); err != nil {
		t.Fatal(err)
	}
	_, err = e.pods(0).BindPod(ctx, &capstanv1.BindPodRequest{Name: "b", NodeName: "node-1", ResourceVersion: seen})
	if status.Code(err) != codes.Aborted {
		t.Fatalf("bind at a stale resource_version: %v, want ABORTED", err)
	}
	_, err = e.pods(0).BindPod(ctx, &capstanv1.BindPodRequest{Name: "b", NodeName: "node-1", ResourceVersion: -1})
	if status.Code(err) != codes.InvalidArgument || apierrors.Field(err) != "resource_version" {
		t.Fatalf("bind at a negative resource_version: %v, want INVALID_ARGUMENT on resource_version", err)
	}
	bound, err := e.pods(0).BindPod(ctx, &capstanv1.BindPodRequest{Name: "b", NodeName: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	if bound.GetPod().GetSpec().GetNodeName() != "node-1" {
		t.Fatalf("not bound: %v", bound.GetPod().GetSpec())
	}
	// Retrying the same bind is fine; binding elsewhere is not.
	if _, err := e.pods(0).BindPod(ctx, &capstanv1.BindPodRequest{Name: "b", NodeName: "node-1"}); err != nil {
		t.Fatalf("idempotent re-bind: %v", err)
	}
	_, err = e.pods(0).BindPod(ctx, &capstanv1.BindPodRequest{Name: "b", NodeName: "node-2"})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("second bind: %v, want FAILED_PRECONDITION", err)
	}
	// Update cannot move a pod either.
	p := bound.GetPod()
	p.Spec.NodeName = "node-2"
	_, err = e.pods(0).UpdatePod(ctx, &capstanv1.UpdatePodRequest{Pod: p})
	if status.Code(err) != codes.InvalidArgument || apierrors.Field(err) != "pod.spec.node_name" {
		t.Fatalf("update of node_name: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	e := newEnv(t, 1)
	ctx := ctxT(t)
	pods := e.pods(0)
	tests := []struct {
		name  string
		call  func() error
		code  codes.Code
		field string
	}{
		{"missing pod", func() error { _, err := pods.CreatePod(ctx, &capstanv1.CreatePodRequest{}); return err },
			codes.InvalidArgument, "pod"},
		{"bad name", func() error {
			p := testPod("Bad_Name")
			_, err := pods.CreatePod(ctx, &capstanv1.CreatePodRequest{Pod: p})
			return err
		}, codes.InvalidArgument, "pod.metadata.name"},
		{"no containers", func() error {
			p := testPod("x")
			p.Spec.Containers = nil
			_, err := pods.CreatePod(ctx, &capstanv1.CreatePodRequest{Pod: p})
			return err
		}, codes.InvalidArgument, "pod.spec.containers"},
		{"bad label", func() error {
			p := testPod("x")
			p.Metadata.Labels = map[string]string{"bad key!": "v"}
			_, err := pods.CreatePod(ctx, &capstanv1.CreatePodRequest{Pod: p})
			return err
		}, codes.InvalidArgument, ""},
		{"bad get name", func() error { _, err := pods.GetPod(ctx, &capstanv1.GetPodRequest{Name: "UPPER"}); return err },
			codes.InvalidArgument, "name"},
		{"bad namespace", func() error {
			_, err := pods.GetPod(ctx, &capstanv1.GetPodRequest{Namespace: "a/b", Name: "x"})
			return err
		}, codes.InvalidArgument, "namespace"},
		{"unknown field selector", func() error {
			_, err := pods.ListPods(ctx, &capstanv1.ListPodsRequest{FieldSelector: "spec.nope=1"})
			return err
		}, codes.InvalidArgument, "field_selector"},
		{"bad label selector", func() error {
			_, err := pods.ListPods(ctx, &capstanv1.ListPodsRequest{LabelSelector: "a in (b"})
			return err
		}, codes.InvalidArgument, "label_selector"},
		{"bad page token", func() error {
			_, err := pods.ListPods(ctx, &capstanv1.ListPodsRequest{PageSize: 1, PageToken: "garbage"})
			return err
		}, codes.InvalidArgument, "page_token"},
		{"not found", func() error { _, err := pods.GetPod(ctx, &capstanv1.GetPodRequest{Name: "absent"}); return err },
			codes.NotFound, ""},
		{"delete stale version", func() error {
			created, err := pods.CreatePod(ctx, &capstanv1.CreatePodRequest{Pod: testPod("del")})
			if err != nil {
				return err
			}
			_, err = pods.DeletePod(ctx, &capstanv1.DeletePodRequest{Name: "del", Preconditions: &capstanv1.Preconditions{
				ResourceVersion: created.GetPod().GetMetadata().GetResourceVersion() - 1,
			}})
			return err
		}, codes.Aborted, ""},
		{"oversize", func() error {
			p := testPod("big")
			p.Metadata.Annotations = map[string]string{"big": strings.Repeat("x", 2<<20)}
			_, err := pods.CreatePod(ctx, &capstanv1.CreatePodRequest{Pod: p})
			return err
		}, codes.ResourceExhausted, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if status.Code(err) != tt.code {
				t.Fatalf("got %v, want %v", err, tt.code)
			}
			if tt.field != "" && apierrors.Field(err) != tt.field {
				t.Fatalf("field = %q, want %q (%v)", apierrors.Field(err), tt.field, err)
			}
		})
	}
	// Nothing half-written: only the one valid pod exists.
	list, err := pods.ListPods(ctx, &capstanv1.ListPodsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetPods()) != 1 || list.GetPods()[0].GetMetadata().GetName() != "del" {
		t.Fatalf("pods after bad input: %v", list.GetPods())
	}
}

func TestListSelectorsAndPages(t *testing.T) {
	e := newEnv(t, 1)
	ctx := ctxT(t)
	pods := e.pods(0)
	for _, name := range []string{"a", "b", "c", "d"} {
		p := testPod(name)
		if name == "b" || name == "d" {
			p.Metadata.Labels["tier"] = "db"
		}
		if _, err := pods.CreatePod(ctx, &capstanv1.CreatePodRequest{Pod: p}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pods.BindPod(ctx, &capstanv1.BindPodRequest{Name: "c", NodeName: "n1"}); err != nil {
		t.Fatal(err)
	}
	names := func(ps []*capstanv1.Pod) string {
		var out []string
		for _, p := range ps {
			out = append(out, p.GetMetadata().GetName())
		}
		return strings.Join(out, ",")
	}
	for sel, want := range map[string]string{"tier=db": "b,d", "!tier": "a,c", "tier notin (db)": "a,c", "app in (web),tier": "b,d"} {
		l, err := pods.ListPods(ctx, &capstanv1.ListPodsRequest{LabelSelector: sel})
		if err != nil {
			t.Fatal(err)
		}
		if got := names(l.GetPods()); got != want {
			t.Errorf("%q: %s, want %s", sel, got, want)
		}
	}
	l, err := pods.ListPods(ctx, &capstanv1.ListPodsRequest{FieldSelector: "spec.node_name=n1"})
	if err != nil || names(l.GetPods()) != "c" {
		t.Fatalf("field selector: %v %v", l, err)
	}
	var all []*capstanv1.Pod
	token := ""
	for {
		page, err := pods.ListPods(ctx, &capstanv1.ListPodsRequest{PageSize: 3, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page.GetPods()...)
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	if names(all) != "a,b,c,d" {
		t.Fatalf("pages: %s", names(all))
	}
}

func TestWatchOverGRPC(t *testing.T) {
	e := newEnv(t, 2)
	ctx := ctxT(t)
	created, err := e.pods(0).CreatePod(ctx, &capstanv1.CreatePodRequest{Pod: testPod("w")})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := e.pods(1).WatchPods(wctx, &capstanv1.WatchPodsRequest{ResourceVersion: created.GetPod().GetMetadata().GetResourceVersion()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.pods(0).DeletePod(ctx, &capstanv1.DeletePodRequest{Name: "w"}); err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if ev.GetType() == capstanv1.WatchEventType_WATCH_EVENT_TYPE_BOOKMARK {
			continue
		}
		if ev.GetType() != capstanv1.WatchEventType_WATCH_EVENT_TYPE_DELETED || ev.GetPod().GetMetadata().GetName() != "w" {
			t.Fatalf("event %v", ev)
		}
		return
	}
}

// TestDeleteRacingBindIsNotAborted: a delete without a version that meets a
// concurrent BindPod decides again (the pod is now bound: graceful) instead
// of failing with ABORTED.
func TestDeleteRacingBindIsNotAborted(t *testing.T) {
	e := newEnv(t, 1)
	ctx := ctxT(t)
	pods := e.pods(0)
	for i := 0; i < 30; i++ {
		name := "race-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		if _, err := pods.CreatePod(ctx, &capstanv1.CreatePodRequest{Pod: testPod(name)}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = pods.BindPod(ctx, &capstanv1.BindPodRequest{Name: name, NodeName: "n1"})
		}()
		_, err := pods.DeletePod(ctx, &capstanv1.DeletePodRequest{Name: name})
		wg.Wait()
		if err != nil {
			t.Fatalf("delete racing a bind: %v", err)
		}
	}
}
