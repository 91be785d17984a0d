package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	capstanv1 "github.com/capstan-dev/capstan/gen/capstan/v1"
	"github.com/capstan-dev/capstan/internal/apierrors"
	"github.com/capstan-dev/capstan/internal/poll"
	"github.com/capstan-dev/capstan/internal/resource"
	"github.com/capstan-dev/capstan/services/apiserver/apiservertest"
)

func TestMain(m *testing.M) {
	if os.Getenv(frozenCallerEnv) != "" {
		os.Exit(runFrozenCaller())
	}
	goleak.VerifyTestMain(m)
}

var (
	podKind       = resource.MustLookup("Pod")
	nodeKind      = resource.MustLookup("Node")
	configMapKind = resource.MustLookup("ConfigMap")
)

// countingHandler counts log records with one message.
type countingHandler struct {
	message string
	count   atomic.Int64
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.message {
		h.count.Add(1)
	}
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

func newClient(t *testing.T, endpoints ...string) *Client {
	t.Helper()
	c, err := New(Config{Endpoints: endpoints, UserAgent: "client-test"})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newPod(namespace, name string) *capstanv1.Pod {
	return &capstanv1.Pod{
		Metadata: &capstanv1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{"app": "web"}},
		Spec:     &capstanv1.PodSpec{Containers: []*capstanv1.Container{{Name: "main", Command: []string{"/bin/sleep", "1"}}}},
	}
}

func newConfigMap(namespace, name string, data map[string]string) *capstanv1.ConfigMap {
	return &capstanv1.ConfigMap{
		Metadata: &capstanv1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{"set": namespace}},
		Data:     data,
	}
}

func TestEndpointsFrom(t *testing.T) {
	tests := []struct {
		name, flag, env string
		want            []string
	}{
		{"flag wins", "a:1, b:2,,", "c:3", []string{"a:1", "b:2"}},
		{"env when no flag", "", "c:3,d:4", []string{"c:3", "d:4"}},
		{"default", "", "", []string{"127.0.0.1:6441", "127.0.0.1:6442", "127.0.0.1:6443"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(EnvServer, tt.env)
			if got := EndpointsFrom(tt.flag); !slices.Equal(got, tt.want) {
				t.Errorf("EndpointsFrom(%q) with %s=%q = %q, want %q", tt.flag, EnvServer, tt.env, got, tt.want)
			}
		})
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no endpoints", Config{}},
		{"blank endpoint", Config{Endpoints: []string{" "}}},
		{"list in one endpoint", Config{Endpoints: []string{"a:1,b:2"}}},
		{"negative timeout", Config{Endpoints: []string{"a:1"}, CallTimeout: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if c, err := New(tt.cfg); err == nil {
				_ = c.Close()
				t.Fatalf("New(%+v) succeeded", tt.cfg)
			}
		})
	}
}

func TestTypedCRUD(t *testing.T) {
	cluster := apiservertest.Start(t, 3)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)

	created, err := c.Pods().CreatePod(ctx, &capstanv1.CreatePodRequest{Pod: newPod("typed", "web-1")})
	if err != nil {
		t.Fatalf("CreatePod: %v", err)
	}
	pod := created.GetPod()
	if pod.GetMetadata().GetUid() == "" || pod.GetMetadata().GetResourceVersion() == 0 {
		t.Fatalf("created pod lacks uid or resource_version: %v", pod.GetMetadata())
	}
	got, err := c.Pods().GetPod(ctx, &capstanv1.GetPodRequest{Namespace: "typed", Name: "web-1"})
	if err != nil || !proto.Equal(got.GetPod(), pod) {
		t.Fatalf("GetPod = %v, %v; want %v", got.GetPod(), err, pod)
	}

	update := resource.Clone(pod)
	update.Metadata.Labels["tier"] = "front"
	updated, err := c.Pods().UpdatePod(ctx, &capstanv1.UpdatePodRequest{Pod: update})
	if err != nil {
		t.Fatalf("UpdatePod: %v", err)
	}
	if updated.GetPod().GetMetadata().GetResourceVersion() <= pod.GetMetadata().GetResourceVersion() {
		t.Errorf("update did not advance resource_version: %d -> %d", pod.GetMetadata().GetResourceVersion(), updated.GetPod().GetMetadata().GetResourceVersion())
	}
	// The first attempt's ABORTED is the caller's to handle: never retried.
	if _, err := c.Pods().UpdatePod(ctx, &capstanv1.UpdatePodRequest{Pod: update}); !apierrors.IsConflict(err) {
		t.Errorf("UpdatePod with a stale resource_version = %v, want ABORTED", err)
	}

	withStatus := resource.Clone(updated.GetPod())
	withStatus.Status = &capstanv1.PodStatus{Phase: "Running"}
	st, err := c.Pods().UpdatePodStatus(ctx, &capstanv1.UpdatePodStatusRequest{Pod: withStatus})
	if err != nil || st.GetPod().GetStatus().GetPhase() != "Running" {
		t.Fatalf("UpdatePodStatus = %v, %v", st.GetPod().GetStatus(), err)
	}

	bound, err := c.Pods().BindPod(ctx, &capstanv1.BindPodRequest{Namespace: "typed", Name: "web-1", NodeName: "node-a"})
	if err != nil || bound.GetPod().GetSpec().GetNodeName() != "node-a" {
		t.Fatalf("BindPod = %v, %v", bound.GetPod().GetSpec(), err)
	}
	if _, err := c.Pods().BindPod(ctx, &capstanv1.BindPodRequest{Namespace: "typed", Name: "web-1", NodeName: "node-b"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("BindPod to another node = %v, want FAILED_PRECONDITION", err)
	}

	list, err := c.Pods().ListPods(ctx, &capstanv1.ListPodsRequest{Namespace: "typed", LabelSelector: "tier=front"})
	if err != nil || len(list.GetPods()) != 1 || list.GetResourceVersion() == 0 {
		t.Fatalf("ListPods = %v, %v; want one pod and a resource_version", list, err)
	}

	if _, err := c.Pods().DeletePod(ctx, &capstanv1.DeletePodRequest{Namespace: "typed", Name: "web-1", GracePeriodSeconds: proto.Int64(0)}); err != nil {
		t.Fatalf("DeletePod: %v", err)
	}
	if _, err := c.Pods().GetPod(ctx, &capstanv1.GetPodRequest{Namespace: "typed", Name: "web-1"}); !apierrors.IsNotFound(err) {
		t.Errorf("GetPod after delete = %v, want NOT_FOUND", err)
	}

	if _, err := c.Pods().CreatePod(ctx, &capstanv1.CreatePodRequest{Pod: &capstanv1.Pod{Metadata: &capstanv1.ObjectMeta{Name: "no-spec"}}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("CreatePod without containers = %v, want INVALID_ARGUMENT", err)
	}

	cs, err := c.Cluster().GetClusterStatus(ctx, &capstanv1.GetClusterStatusRequest{})
	if err != nil && status.Code(err) != codes.Unimplemented {
		t.Errorf("GetClusterStatus: %v", err)
	} else if err == nil && cs.GetRevision() == 0 {
		t.Errorf("GetClusterStatus revision is 0")
	}
}

func TestGenericCRUD(t *testing.T) {
	cluster := apiservertest.Start(t, 3)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)

	var names []string
	for i := range 5 {
		name := fmt.Sprintf("cm-%d", i)
		names = append(names, name)
		obj, err := c.Create(ctx, newConfigMap("generic", name, map[string]string{"i": fmt.Sprint(i)}))
		if err != nil {
			t.Fatalf("Create %s: %v", name, err)
		}
		if _, ok := obj.(*capstanv1.ConfigMap); !ok {
			t.Fatalf("Create returned a %T", obj)
		}
	}
	if _, err := c.Create(ctx, newConfigMap("generic", "cm-0", nil)); !apierrors.IsAlreadyExists(err) {
		t.Errorf("second Create of cm-0 = %v, want ALREADY_EXISTS", err)
	}

	page, err := c.List(ctx, configMapKind, ListOptions{Namespace: "generic", PageSize: 2})
	if err != nil || len(page.Items) != 2 || page.NextPageToken == "" {
		t.Fatalf("List page of 2 = %d items, token %q, %v", len(page.Items), page.NextPageToken, err)
	}
	all, err := c.ListAll(ctx, configMapKind, ListOptions{Namespace: "generic", PageSize: 2, LabelSelector: "set=generic"})
	if err != nil {
		t.Fatalf("ListAll: %v", err)
	}
	var got []string
	for _, obj := range all.Items {
		got = append(got, obj.GetMetadata().GetName())
	}
	if !slices.Equal(got, names) || all.ResourceVersion == 0 {
		t.Fatalf("ListAll = %q at %d, want %q", got, all.ResourceVersion, names)
	}

	obj, err := c.Get(ctx, configMapKind, "generic", "cm-1")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	cm := resource.Clone(obj.(*capstanv1.ConfigMap))
	cm.Data["i"] = "changed"
	updated, err := c.Update(ctx, cm)
	if err != nil || updated.(*capstanv1.ConfigMap).GetData()["i"] != "changed" {
		t.Fatalf("Update = %v, %v", updated, err)
	}
	if _, err := c.Update(ctx, cm); !apierrors.IsConflict(err) {
		t.Errorf("Update with a stale resource_version = %v, want ABORTED", err)
	}
	if _, err := c.UpdateStatus(ctx, cm); status.Code(err) != codes.Unimplemented {
		t.Errorf("UpdateStatus of a ConfigMap = %v, want UNIMPLEMENTED", err)
	}

	node := &capstanv1.Node{Metadata: &capstanv1.ObjectMeta{Name: "node-1"}}
	if _, err := c.Create(ctx, node); err != nil {
		t.Fatalf("Create node: %v", err)
	}
	gotNode, err := c.Get(ctx, nodeKind, "", "node-1")
	if err != nil || gotNode.GetMetadata().GetNamespace() != "" {
		t.Fatalf("Get node = %v, %v", gotNode, err)
	}
	withStatus := resource.Clone(gotNode.(*capstanv1.Node))
	withStatus.Status = &capstanv1.NodeStatus{Capacity: map[string]string{"cpu": "4"}}
	if _, err := c.UpdateStatus(ctx, withStatus); err != nil {
		t.Fatalf("UpdateStatus node: %v", err)
	}

	pre := &capstanv1.Preconditions{ResourceVersion: 1}
	if _, err := c.Delete(ctx, configMapKind, "generic", "cm-2", pre); !apierrors.IsConflict(err) {
		t.Errorf("Delete with a wrong resource_version = %v, want ABORTED", err)
	}
	deleted, err := c.Delete(ctx, configMapKind, "generic", "cm-2", nil)
	if err != nil || deleted.GetMetadata().GetName() != "cm-2" {
		t.Fatalf("Delete = %v, %v", deleted, err)
	}
	if _, err := c.Delete(ctx, configMapKind, "generic", "cm-2", nil); !apierrors.IsNotFound(err) {
		t.Errorf("Delete of a deleted object = %v, want NOT_FOUND (not retried)", err)
	}
	if _, err := c.Get(ctx, configMapKind, "generic", "cm-2"); !apierrors.IsNotFound(err) {
		t.Errorf("Get after Delete = %v, want NOT_FOUND", err)
	}
}

func TestWriteOnOneReplicaReadOnAnother(t *testing.T) {
	cluster := apiservertest.Start(t, 3)
	addrs := cluster.Addrs()
	ctx := testContext(t)
	writer := newClient(t, addrs[0])
	created, err := writer.Create(ctx, newConfigMap("rw", "shared", map[string]string{"k": "v"}))
	if err != nil {
		t.Fatalf("Create on replica 0: %v", err)
	}
	for i, addr := range addrs[1:] {
		got, err := newClient(t, addr).Get(ctx, configMapKind, "rw", "shared")
		if err != nil {
			t.Fatalf("Get on replica %d: %v", i+1, err)
		}
		if got.GetMetadata().GetResourceVersion() != created.GetMetadata().GetResourceVersion() || !proto.Equal(got, created) {
			t.Errorf("replica %d read %v, want %v", i+1, got, created)
		}
	}
}

// injector makes the first attempt of a call fail in a chosen way, through
// a plain connection to one replica, and passes later attempts on.
type injector struct {
	raw *grpc.ClientConn
	// landed: the first attempt reaches the server (and its answer is
	// kept in first), but the caller sees UNAVAILABLE; otherwise it never
	// reaches the server. before, if set, runs between the first attempt
	// and the retry (another writer's change).
	landed bool
	before func()
	first  proto.Message
	calls  atomic.Int32
}

func (in *injector) invoke(ctx context.Context, method string, req, reply any, _ *grpc.ClientConn, opts ...grpc.CallOption) error {
	if in.calls.Add(1) > 1 {
		return in.raw.Invoke(ctx, method, req, reply, opts...)
	}
	if in.landed {
		in.first = proto.Clone(reply.(proto.Message))
		if err := in.raw.Invoke(ctx, method, req, in.first, opts...); err != nil {
			return fmt.Errorf("the first attempt itself failed: %w", err)
		}
	}
	if in.before != nil {
		in.before()
	}
	return status.Error(codes.Unavailable, "injected: connection lost")
}

type exactEnv struct {
	t   *testing.T
	ctx context.Context
	c   *Client
	raw *grpc.ClientConn
}

func newExactEnv(t *testing.T) *exactEnv {
	cluster := apiservertest.Start(t, 1)
	raw, err := grpc.NewClient(cluster.Addrs()[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	return &exactEnv{t: t, ctx: testContext(t), c: newClient(t, cluster.Addrs()...), raw: raw}
}

// call makes one call through the client's retry rules with in injecting
// the first attempt's failure.
func (e *exactEnv) call(in *injector, method string, req, reply proto.Message) error {
	in.raw = e.raw
	return e.c.interceptUnary(e.ctx, method, req, reply, e.c.Conn(), in.invoke)
}

// A retried write whose first attempt landed returns that attempt's result
// — the same object, at the same resource_version — even when the object
// has changed since: the server recorded the request id with the write.
func TestRetriedWriteReturnsTheFirstAttemptsResult(t *testing.T) {
	e := newExactEnv(t)
	check := func(what string, in *injector, err error, got proto.Message) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s whose answer was lost: %v", what, err)
		}
		if in.calls.Load() != 2 {
			t.Fatalf("%s: %d attempts, want 2", what, in.calls.Load())
		}
		if !proto.Equal(got, in.first) {
			t.Fatalf("%s: the retry returned\n%v\nthe first attempt had\n%v", what, got, in.first)
		}
	}

	create := &injector{landed: true}
	created := &capstanv1.CreatePodResponse{}
	err := e.call(create, capstanv1.PodService_CreatePod_FullMethodName, &capstanv1.CreatePodRequest{Pod: newPod("exact", "p")}, created)
	check("create", create, err, created)

	// Between the first attempt and the retry another writer changes the
	// pod: the retry still answers with what the first attempt wrote, and
	// the other change stays.
	next := resource.Clone(created.GetPod())
	next.Metadata.ResourceVersion = 0
	next.Metadata.Labels["v"] = "2"
	update := &injector{landed: true, before: func() {
		other := resource.Clone(next)
		other.Metadata.Labels["other"] = "yes"
		other.Metadata.Labels["v"] = "other"
		if _, err := e.c.Update(e.ctx, other); err != nil {
			t.Errorf("the other writer: %v", err)
		}
	}}
	updated := &capstanv1.UpdatePodResponse{}
	err = e.call(update, capstanv1.PodService_UpdatePod_FullMethodName, &capstanv1.UpdatePodRequest{Pod: next}, updated)
	check("update", update, err, updated)
	if updated.GetPod().GetMetadata().GetLabels()["v"] != "2" {
		t.Fatalf("update result %v", updated.GetPod().GetMetadata())
	}
	stored, err := e.c.Get(e.ctx, resource.MustLookup("Pod"), "exact", "p")
	if err != nil {
		t.Fatal(err)
	}
	if l := stored.GetMetadata().GetLabels(); l["other"] != "yes" || l["v"] != "other" {
		t.Fatalf("the retry overwrote the newer write: labels %v", l)
	}

	withStatus := resource.Clone(stored.(*capstanv1.Pod))
	withStatus.Status = &capstanv1.PodStatus{Phase: "Running"}
	statusUpdate := &injector{landed: true}
	statusResp := &capstanv1.UpdatePodStatusResponse{}
	err = e.call(statusUpdate, capstanv1.PodService_UpdatePodStatus_FullMethodName, &capstanv1.UpdatePodStatusRequest{Pod: withStatus}, statusResp)
	check("status update", statusUpdate, err, statusResp)

	bind := &injector{landed: true}
	bindResp := &capstanv1.BindPodResponse{}
	err = e.call(bind, capstanv1.PodService_BindPod_FullMethodName, &capstanv1.BindPodRequest{Namespace: "exact", Name: "p", NodeName: "n1"}, bindResp)
	check("bind", bind, err, bindResp)

	del := &injector{landed: true}
	deleted := &capstanv1.DeletePodResponse{}
	err = e.call(del, capstanv1.PodService_DeletePod_FullMethodName, &capstanv1.DeletePodRequest{Namespace: "exact", Name: "p", GracePeriodSeconds: proto.Int64(0)}, deleted)
	check("delete", del, err, deleted)
	if deleted.GetPod().GetMetadata().GetUid() != created.GetPod().GetMetadata().GetUid() {
		t.Fatalf("delete returned %v, want the deleted pod", deleted.GetPod())
	}

	// A create whose first attempt landed, and whose pod was deleted
	// before the retry: the retry does not create it again.
	again := &injector{landed: true, before: func() {
		if _, err := e.c.Delete(e.ctx, resource.MustLookup("Pod"), "exact", "q", nil, GracePeriod(0)); err != nil {
			t.Errorf("delete q: %v", err)
		}
	}}
	err = e.call(again, capstanv1.PodService_CreatePod_FullMethodName, &capstanv1.CreatePodRequest{Pod: newPod("exact", "q")}, &capstanv1.CreatePodResponse{})
	if err != nil {
		t.Fatalf("create of q: %v", err)
	}
	if _, err := e.c.Get(e.ctx, resource.MustLookup("Pod"), "exact", "q"); !apierrors.IsNotFound(err) {
		t.Fatalf("pod q after its create was retried: %v, want NOT_FOUND (the retry must not re-create it)", err)
	}
}

// A retried write whose first attempt never reached a server is applied
// exactly once: one new revision, its own result.
func TestRetriedWriteThatDidNotLandIsAppliedOnce(t *testing.T) {
	e := newExactEnv(t)
	cmKind := resource.MustLookup("ConfigMap")
	revision := func() int64 {
		t.Helper()
		res, err := e.c.List(e.ctx, cmKind, ListOptions{Namespace: "once"})
		if err != nil {
			t.Fatal(err)
		}
		return res.ResourceVersion
	}

	before := revision()
	create := &injector{}
	created := &capstanv1.CreateConfigMapResponse{}
	if err := e.call(create, capstanv1.ConfigMapService_CreateConfigMap_FullMethodName,
		&capstanv1.CreateConfigMapRequest{ConfigMap: newConfigMap("once", "c", map[string]string{"k": "1"})}, created); err != nil {
		t.Fatalf("create: %v", err)
	}
	// One write: the create, and nothing else since (List reads at the
	// current revision; the record shares the write's revision).
	if rv := created.GetConfigMap().GetMetadata().GetResourceVersion(); rv <= before || revision() != rv {
		t.Fatalf("create at revision %d (store at %d, was %d): want exactly one write", rv, revision(), before)
	}

	next := resource.Clone(created.GetConfigMap())
	next.Data["k"] = "2"
	update := &injector{}
	updated := &capstanv1.UpdateConfigMapResponse{}
	if err := e.call(update, capstanv1.ConfigMapService_UpdateConfigMap_FullMethodName, &capstanv1.UpdateConfigMapRequest{ConfigMap: next}, updated); err != nil {
		t.Fatalf("update: %v", err)
	}
	if rv := updated.GetConfigMap().GetMetadata().GetResourceVersion(); rv != revision() || updated.GetConfigMap().GetData()["k"] != "2" {
		t.Fatalf("update result %v at %d, store at %d", updated.GetConfigMap().GetData(), rv, revision())
	}

	del := &injector{}
	deleted := &capstanv1.DeleteConfigMapResponse{}
	if err := e.call(del, capstanv1.ConfigMapService_DeleteConfigMap_FullMethodName, &capstanv1.DeleteConfigMapRequest{Namespace: "once", Name: "c"}, deleted); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if deleted.GetConfigMap().GetData()["k"] != "2" {
		t.Fatalf("delete returned %v", deleted.GetConfigMap())
	}
}

// The reproduced defect: a cordoned, tainted node is uncordoned with a
// write conditional on the version read; the first attempt fails without
// being applied while the agent's heartbeat moves the node's version on.
// The retry must not report success unless the change is stored: it is
// ABORTED, and the node is still cordoned and tainted. Without a version
// the same retry applies the change.
func TestUncordonNeverSucceedsWithoutTheChange(t *testing.T) {
	e := newExactEnv(t)
	nodeKind := resource.MustLookup("Node")
	created, err := e.c.Create(e.ctx, &capstanv1.Node{
		Metadata: &capstanv1.ObjectMeta{Name: "n1"},
		Spec:     &capstanv1.NodeSpec{Unschedulable: true, Taints: []*capstanv1.Taint{{Key: "maintenance", Effect: "NoSchedule"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	heartbeat := func() {
		node, err := e.c.Get(e.ctx, nodeKind, "", "n1")
		if err != nil {
			t.Errorf("heartbeat read: %v", err)
			return
		}
		n := resource.Clone(node.(*capstanv1.Node))
		n.Status = &capstanv1.NodeStatus{Conditions: []*capstanv1.Condition{{Type: "Ready", Status: "True", LastHeartbeatTime: timestamppb.Now()}}}
		if _, err := e.c.UpdateStatus(e.ctx, n); err != nil {
			t.Errorf("heartbeat: %v", err)
		}
	}
	uncordon := resource.Clone(created.(*capstanv1.Node))
	uncordon.Spec.Unschedulable = false
	uncordon.Spec.Taints = nil

	err = e.call(&injector{before: heartbeat}, capstanv1.NodeService_UpdateNode_FullMethodName,
		&capstanv1.UpdateNodeRequest{Node: uncordon}, &capstanv1.UpdateNodeResponse{})
	if !apierrors.IsConflict(err) {
		t.Fatalf("uncordon at a version the heartbeat moved on: %v, want ABORTED", err)
	}
	stored, err := e.c.Get(e.ctx, nodeKind, "", "n1")
	if err != nil {
		t.Fatal(err)
	}
	if spec := stored.(*capstanv1.Node).GetSpec(); !spec.GetUnschedulable() || len(spec.GetTaints()) != 1 {
		t.Fatalf("node after a refused uncordon: %v", spec)
	}

	uncordon.Metadata.ResourceVersion = 0 // apply to whatever is current
	resp := &capstanv1.UpdateNodeResponse{}
	if err := e.call(&injector{before: heartbeat}, capstanv1.NodeService_UpdateNode_FullMethodName, &capstanv1.UpdateNodeRequest{Node: uncordon}, resp); err != nil {
		t.Fatalf("unconditional uncordon: %v", err)
	}
	stored, err = e.c.Get(e.ctx, nodeKind, "", "n1")
	if err != nil {
		t.Fatal(err)
	}
	if spec := stored.(*capstanv1.Node).GetSpec(); spec.GetUnschedulable() || len(spec.GetTaints()) != 0 {
		t.Fatalf("node after a successful uncordon: %v", spec)
	}
	if !proto.Equal(resp.GetNode(), stored) {
		t.Fatalf("uncordon returned %v, stored %v", resp.GetNode(), stored)
	}
}

// TestNoFailedCallWhileReplicasStop runs writers and readers while each
// replica in turn is stopped and started again: no call may fail.
func TestNoFailedCallWhileReplicasStop(t *testing.T) {
	cluster := apiservertest.Start(t, 3)
	retries := &countingHandler{message: "retrying call"}
	c, err := New(Config{Endpoints: cluster.Addrs(), Logger: slog.New(retries)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := testContext(t)

	var (
		ops    atomic.Int64
		mu     sync.Mutex
		failed []error
		stop   = make(chan struct{})
		wg     sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		failed = append(failed, err)
		mu.Unlock()
	}
	for w := range 4 {
		wg.Go(func() {
			ns := fmt.Sprintf("w%d", w)
			var mine []*capstanv1.ConfigMap
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				switch i % 4 {
				case 0:
					var obj resource.Object
					obj, err = c.Create(ctx, newConfigMap(ns, fmt.Sprintf("cm-%d", i), map[string]string{"n": "0"}))
					if err == nil {
						mine = append(mine, obj.(*capstanv1.ConfigMap))
					}
				case 1:
					cm := mine[len(mine)-1]
					_, err = c.Get(ctx, configMapKind, ns, cm.GetMetadata().GetName())
				case 2:
					_, err = c.List(ctx, configMapKind, ListOptions{Namespace: ns})
				case 3:
					next := resource.Clone(mine[len(mine)-1])
					next.Data["n"] = fmt.Sprint(i)
					var obj resource.Object
					obj, err = c.Update(ctx, next) // with its resource_version
					if err == nil {
						mine[len(mine)-1] = obj.(*capstanv1.ConfigMap)
					}
				}
				if err != nil {
					fail(fmt.Errorf("writer %d op %d: %w", w, i, err))
					if i%4 == 0 {
						return // later ops need the object
					}
					continue
				}
				ops.Add(1)
			}
		})
	}
	progress := func(what string) {
		from := ops.Load()
		poll.For(t, 30*time.Second, "200 more "+what, func(context.Context) error {
			if done := ops.Load() - from; done < 200 {
				return fmt.Errorf("%d calls done", done)
			}
			return nil
		})
	}
	progress("calls before any stop")
	for i := range 3 {
		cluster.StopReplica(i)
		progress(fmt.Sprintf("calls with replica %d stopped", i))
		cluster.StartReplica(i)
		progress(fmt.Sprintf("calls after replica %d restarted", i))
	}
	close(stop)
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d calls failed, first: %v", len(failed), errors.Join(failed[:min(len(failed), 5)]...))
	}
	t.Logf("%d calls, none failed, %d attempts retried", ops.Load(), retries.count.Load())
}

// collectAdded reads events until it has n of them.
func collectAdded(t *testing.T, w *Watcher, n int) []WatchEvent {
	t.Helper()
	var evs []WatchEvent
	timeout := time.After(60 * time.Second)
	for len(evs) < n {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				t.Fatalf("watch ended after %d events: %v", len(evs), w.Err())
			}
			evs = append(evs, ev)
		case <-timeout:
			t.Fatalf("timed out with %d of %d events", len(evs), n)
		}
	}
	return evs
}

func checkSequence(t *testing.T, evs []WatchEvent, first int) {
	t.Helper()
	var last int64
	for i, ev := range evs {
		want := fmt.Sprintf("seq-%03d", first+i)
		if ev.Type != Added || ev.Object.GetMetadata().GetName() != want {
			t.Fatalf("event %d = %v %s, want ADDED %s", i, ev.Type, ev.Object.GetMetadata().GetName(), want)
		}
		if ev.ResourceVersion <= last {
			t.Fatalf("event %d at version %d after %d", i, ev.ResourceVersion, last)
		}
		last = ev.ResourceVersion
	}
}

func TestWatchResumesOnAnotherReplica(t *testing.T) {
	cluster := apiservertest.Start(t, 3)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)

	start, err := c.List(ctx, configMapKind, ListOptions{Namespace: "seq"})
	if err != nil {
		t.Fatal(err)
	}
	w := c.Watch(ctx, configMapKind, WatchOptions{Namespace: "seq", ResourceVersion: start.ResourceVersion})
	defer w.Stop()

	n := 0
	write := func(count int) {
		for range count {
			if _, err := c.Create(ctx, newConfigMap("seq", fmt.Sprintf("seq-%03d", n), nil)); err != nil {
				t.Fatalf("create seq-%03d: %v", n, err)
			}
			n++
		}
	}
	write(10)
	evs := collectAdded(t, w, 10)
	// The stream is on one of the replicas; stopping each in turn breaks
	// it at least once, with writes made while it is broken.
	for i := range 3 {
		cluster.StopReplica(i)
		write(10)
		cluster.StartReplica(i)
		write(5)
	}
	evs = append(evs, collectAdded(t, w, n-10)...)
	checkSequence(t, evs, 0)
	if w.resumes.Load() == 0 {
		t.Errorf("the watch never had to resume")
	}
	select {
	case ev := <-w.Events():
		t.Errorf("extra event %v %v", ev.Type, ev.Object)
	case <-time.After(300 * time.Millisecond):
	}
}

func TestWatchFromZeroListsFirst(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)
	for i := range 3 {
		if _, err := c.Create(ctx, newConfigMap("seq", fmt.Sprintf("seq-%03d", i), nil)); err != nil {
			t.Fatal(err)
		}
	}
	w := c.Watch(ctx, configMapKind, WatchOptions{Namespace: "seq", Bookmarks: true})
	defer w.Stop()
	var adds []WatchEvent
	for len(adds) < 3 {
		ev := <-w.Events()
		if ev.Type == Bookmark {
			t.Fatalf("bookmark before the initial objects")
		}
		adds = append(adds, ev)
	}
	checkSequence(t, adds, 0)
	if ev := <-w.Events(); ev.Type != Bookmark || ev.ResourceVersion < adds[2].ResourceVersion {
		t.Fatalf("after the initial objects: %v at %d, want a BOOKMARK", ev.Type, ev.ResourceVersion)
	}
	if _, err := c.Create(ctx, newConfigMap("seq", "seq-003", nil)); err != nil {
		t.Fatal(err)
	}
	for {
		ev := <-w.Events()
		if ev.Type == Bookmark {
			continue
		}
		if ev.Type != Added || ev.Object.GetMetadata().GetName() != "seq-003" {
			t.Fatalf("got %v %v, want ADDED seq-003", ev.Type, ev.Object)
		}
		break
	}
}

func TestWatchEndsExpiredAfterCompaction(t *testing.T) {
	cluster := apiservertest.Start(t, 2)
	addrs := cluster.Addrs()
	watching := newClient(t, addrs[0])
	writer := newClient(t, addrs[1])
	ctx := testContext(t)

	first, err := writer.Create(ctx, newConfigMap("exp", "a", nil))
	if err != nil {
		t.Fatal(err)
	}
	w := watching.Watch(ctx, configMapKind, WatchOptions{Namespace: "exp", ResourceVersion: first.GetMetadata().GetResourceVersion()})
	defer w.Stop()
	if _, err := writer.Create(ctx, newConfigMap("exp", "b", nil)); err != nil {
		t.Fatal(err)
	}
	if ev := <-w.Events(); ev.Object.GetMetadata().GetName() != "b" {
		t.Fatalf("first event %v, want b", ev.Object)
	}
	// The watch's only replica goes away; meanwhile history moves on and is
	// compacted, so the resume finds its version gone.
	cluster.StopReplica(0)
	for _, name := range []string{"c", "d", "e"} {
		if _, err := writer.Create(ctx, newConfigMap("exp", name, nil)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cluster.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	cluster.StartReplica(0)
	select {
	case ev, ok := <-w.Events():
		if ok {
			t.Fatalf("got %v %v after compaction, want the watch to end", ev.Type, ev.Object)
		}
	case <-ctx.Done():
		t.Fatal("the watch did not end")
	}
	if !apierrors.IsExpired(w.Err()) {
		t.Fatalf("Err() = %v, want RESOURCE_VERSION_EXPIRED", w.Err())
	}
}

func TestWatchStopAndInvalid(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c := newClient(t, cluster.Addrs()...)
	ctx := testContext(t)

	w := c.Watch(ctx, podKind, WatchOptions{Namespace: "x", LabelSelector: "bad selector ((", ResourceVersion: 1})
	for range w.Events() {
	}
	if status.Code(w.Err()) != codes.InvalidArgument {
		t.Errorf("watch with a bad selector ended with %v, want INVALID_ARGUMENT", w.Err())
	}
	w.Stop()

	w = c.Watch(ctx, podKind, WatchOptions{Namespace: "x"})
	w.Stop()
	w.Stop()
	if _, ok := <-w.Events(); ok {
		t.Error("event after Stop")
	}
	if w.Err() != nil {
		t.Errorf("Err after Stop = %v, want nil", w.Err())
	}
}

func TestWatchEndsWhenClientCloses(t *testing.T) {
	cluster := apiservertest.Start(t, 1)
	c, err := New(Config{Endpoints: cluster.Addrs()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	w := c.Watch(ctx, configMapKind, WatchOptions{Namespace: "x", ResourceVersion: 1})
	defer w.Stop()
	_ = c.Close()
	for range w.Events() {
	}
	if w.Err() == nil {
		t.Error("watch on a closed client ended without an error")
	}
}
